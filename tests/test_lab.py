"""The SSH lab itself: isolation of the hosts, network safety, the stand-ins, ansible over real SSH, and
teardown (also after a forced failure). Needs root, iproute2, openssh-server and util-linux."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab import HostGpus, Lab, LabUnsafe
from tests.lab.gpus import GpuPlan
from tests.lab.kubestub import KubeStub, bootstrap_token_secret
from tests.lab.lab import NET_BASE, REGISTRY, footprint, lab_resources, route_problems, subnet_is_free

REPO = Path(__file__).resolve().parent.parent
PRIVATE = ("/etc/kubernetes", "/etc/containerd", "/var/lib/kubelet", "/etc/worldland", "/var/log/worldland")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("sshd", path="/usr/sbin:/usr/bin") is None,
    reason="the lab needs root and openssh-server (make install provides it)",
)


def kinds(found: set[tuple]) -> dict[str, int]:
    return {kind: sum(1 for f in found if f[0] == kind) for kind in ("netns", "link", "process")}


def gone(before: set[tuple], slot: int, lab_dir: str | Path) -> bool:
    """None of the lab's namespaces, links or processes (by identity) exist any more. Identities, not
    names: under pytest-xdist another worker's lab may take the freed slot, and its names, at once."""
    assert before, "nothing was recorded"
    left = before & footprint(slot, lab_dir)
    assert not left, f"left behind: {sorted(left)}"
    if not (REGISTRY / f"slot-{slot}.json").exists():  # the slot is free: its backstop route is gone too
        assert f"{NET_BASE}.{slot}.0/24" not in lab_resources()["routes"]
    return not Path(lab_dir).exists()


# A child process that starts a lab, reports its slot, directory and footprint as one JSON line, then
# fails, waits for a signal, or is killed.
CHILD = """
import json, time
from tests.lab import Lab
from tests.lab.lab import footprint
from tests.lab.fixtures import _sigterm_to_interrupt
_sigterm_to_interrupt()
def report(lab):
    found = sorted(footprint(lab.slot, lab.dir))
    print(json.dumps({"slot": lab.slot, "dir": str(lab.dir), "footprint": found}), flush=True)
"""


def child_lab(body: str) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD + body],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    info = json.loads(proc.stdout.readline() or "{}")
    assert info, proc.stderr.read()
    info["footprint"] = {tuple(f) for f in info["footprint"]}
    return proc, info


# --- pure parts -----------------------------------------------------------------------------------------


def test_gpu_specs_parse_loosely_and_cycle_over_hosts() -> None:
    plan = GpuPlan.parse("RTX 4090:2,A100:8/nodriver,none")
    assert [len(plan.for_host(i).models) for i in range(4)] == [2, 8, 0, 2]
    assert plan.for_host(0).models[0].name == "NVIDIA GeForce RTX 4090"
    assert plan.for_host(1).models[0].name == "NVIDIA A100-SXM4-80GB"
    assert not plan.for_host(1).driver and plan.for_host(2).driver
    assert HostGpus.parse("nvidia-geforce-rtx-4090").models[0].memory_mib == 24564
    assert HostGpus.parse("My Card@12288:3").models[2].memory_mib == 12288
    assert str(HostGpus.parse("L4:1+Tesla T4:2/nodriver")) == "NVIDIA L4:1+Tesla T4:2/nodriver"
    with pytest.raises(ValueError, match="unknown GPU model"):
        HostGpus.parse("Voodoo 5:1")
    records = HostGpus.parse("A100:2").records("h1")
    assert records == HostGpus.parse("A100:2").records("h1")  # stable UUIDs and bus ids
    assert len({r["uuid"] for r in records}) == 2


def test_route_check_refuses_anything_but_the_bridge() -> None:
    bridge = "wlab7"
    assert route_problems({"10.213.7.11": [{"dst": "10.213.7.11", "dev": bridge}]}, bridge) == []
    via_gateway = {"10.213.7.11": [{"dst": "10.213.7.11", "gateway": "192.0.2.1", "dev": "eth0"}]}
    assert "gateway 192.0.2.1" in route_problems(via_gateway, bridge)[0]
    assert route_problems({"10.213.7.11": [{"dst": "10.213.7.11", "dev": "eth0"}]}, bridge)
    assert route_problems({"10.213.7.11": [{"type": "unreachable", "dst": "10.213.7.11"}]}, bridge)
    assert route_problems({"10.213.7.11": []}, bridge)


def test_subnets_overlapping_a_route_or_address_are_not_used() -> None:
    import ipaddress

    net = ipaddress.ip_network("10.213.7.0/24")
    default = {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"}
    assert subnet_is_free(net, [default, {"dst": "192.0.2.0/24", "dev": "eth0"}], ["192.0.2.2"])
    assert not subnet_is_free(net, [default, {"dst": "10.0.0.0/8", "gateway": "192.0.2.9"}], [])
    assert not subnet_is_free(net, [{"dst": "10.213.7.128/25", "dev": "tun0"}], [])
    assert not subnet_is_free(net, [default], ["10.213.7.200"])


# --- the hosts --------------------------------------------------------------------------------------------


def test_each_host_has_its_own_hostname_address_and_private_dirs(lab) -> None:
    view = lab(n=3)
    h1, h2, h3 = view.hosts
    assert len({h.name for h in view.hosts}) == len({h.address for h in view.hosts}) == 3
    for host in view.hosts:
        out = host.ssh(
            "hostname; cat /etc/hostname; ip -4 -o addr show dev eth0; ip -4 route"
        ).stdout.splitlines()
        assert out[0] == out[1] == host.name
        assert f"inet {host.address}/24" in out[2]
        routes = [line.strip() for line in out[3:]]  # only the lab subnet: a host has no way off this machine
        assert routes == [f"{view.subnet} dev eth0 proto kernel scope link src {host.address}"]

    marker = f"written-on-{h1.name}-{time.time_ns()}"
    writes = "; ".join(f"mkdir -p {d} && echo {marker} > {d}/lab-marker" for d in PRIVATE)
    h1.ssh(writes)
    for d in PRIVATE:
        assert h1.ssh(f"cat {d}/lab-marker").stdout.strip() == marker
        assert h1.private_path(f"{d}/lab-marker").read_text().strip() == marker  # h1's copy, on this machine
        assert not Path(d, "lab-marker").exists(), f"{d} leaked onto the real filesystem"
    checks = " && ".join(f"test ! -e {d}/lab-marker" for d in PRIVATE)
    assert h2.ssh(checks, check=False).returncode == 0
    assert h3.run(checks, check=False).returncode == 0

    # the whole of /etc is private: a role writing elsewhere there does not touch this machine either
    h2.ssh("echo lab > /etc/lab-only.conf")
    assert not Path("/etc/lab-only.conf").exists()
    assert h1.ssh("test -e /etc/lab-only.conf", check=False).returncode == 1


def test_fresh_hosts_are_wiped_unless_asked_not_to(lab) -> None:
    host = lab(n=1).hosts[0]
    host.ssh("echo x > /etc/kubernetes/left-over")
    assert lab(n=1, fresh=False).hosts[0].run("cat /etc/kubernetes/left-over").stdout == "x\n"
    fresh = lab(n=1).hosts[0]
    assert fresh.address == host.address
    assert fresh.run("test -e /etc/kubernetes/left-over", check=False).returncode == 1
    assert fresh.ssh("hostname").stdout.strip() == fresh.name  # same host key: known_hosts still valid


def test_ansible_ping_every_host_with_host_key_checking(lab) -> None:
    view = lab(n=3)
    for host in view.hosts:
        assert host.inventory_vars["ansible_python_interpreter"] == "/usr/bin/python3"
        assert "StrictHostKeyChecking=yes" in host.inventory_vars["ansible_ssh_common_args"]
    result = view.ansible("all", "-m", "ansible.builtin.ping")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == 3

    # a wrong host key is refused: h1's address with h2's key
    h1, h2 = view.hosts[:2]
    wrong = view.dir / "known_hosts.wrong"
    wrong.write_text(
        f"{h1.address} " + " ".join((h2.dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]) + "\n"
    )
    opts = [f"UserKnownHostsFile={wrong}", "GlobalKnownHostsFile=/dev/null", "StrictHostKeyChecking=yes",
            "BatchMode=yes", "ControlPath=none"]  # fmt: skip
    argv = ["ssh", "-F", "/dev/null", "-i", str(view.lab.key), *[x for o in opts for x in ("-o", o)]]
    proc = subprocess.run([*argv, f"root@{h1.address}", "true"], capture_output=True, text=True, check=False)
    assert proc.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in proc.stderr or "verification failed" in proc.stderr


# --- stand-ins ----------------------------------------------------------------------------------------------


def test_nvidia_smi_answers_in_its_real_formats(lab) -> None:
    view = lab(n=2, gpus="A100-SXM4-80GB:2,none/nodriver")
    gpu_host, bare = view.hosts
    assert gpu_host.ssh("command -v nvidia-smi").stdout.strip() == "/usr/local/sbin/nvidia-smi"

    listing = gpu_host.ssh("nvidia-smi -L").stdout.splitlines()
    assert len(listing) == 2
    for i, line in enumerate(listing):
        assert re.fullmatch(
            rf"GPU {i}: NVIDIA A100-SXM4-80GB \(UUID: GPU-[0-9a-f]{{8}}(-[0-9a-f]{{4}}){{3}}-[0-9a-f]{{12}}\)",  # noqa: E501
            line,
        )

    fields = "index,name,memory.total,uuid,driver_version,pci.bus_id"
    rows = gpu_host.run(f"nvidia-smi --query-gpu={fields} --format=csv,noheader,nounits").stdout.splitlines()
    uuids = [r["uuid"] for r in gpu_host.config()["gpus"]]
    assert rows == [
        f"0, NVIDIA A100-SXM4-80GB, 81920, {uuids[0]}, 550.127.05, 00000000:07:00.0",
        f"1, NVIDIA A100-SXM4-80GB, 81920, {uuids[1]}, 550.127.05, 00000000:0F:00.0",
    ]
    with_header = gpu_host.run(
        "nvidia-smi --query-gpu=memory.total,name,index --format=csv"
    ).stdout.splitlines()
    assert with_header[0] == "memory.total [MiB], name, index"
    assert with_header[1] == "81920 MiB, NVIDIA A100-SXM4-80GB, 0"
    one = gpu_host.run("nvidia-smi --query-gpu=uuid --format=csv,noheader -i 1").stdout
    assert one == uuids[1] + "\n"

    table = gpu_host.run("nvidia-smi").stdout.splitlines()
    assert "Driver Version: 550.127.05" in table[2] and "CUDA Version: 12.4" in table[2]
    assert all(len(line) == 91 for line in table[1:])
    gpu_rows = [line for line in table if "NVIDIA A100-SXM4-80GB" in line]
    assert len(gpu_rows) == 2 and "00000000:07:00.0" in gpu_rows[0]
    assert sum("81920MiB" in line for line in table) == 2
    assert table[-2].startswith("|  No running processes found")

    bad = gpu_host.run("nvidia-smi --query-gpu=name,bogus --format=csv", check=False)
    assert bad.returncode == 2 and 'Field "bogus" is not a valid field to query.' in bad.stdout

    for command in ("nvidia-smi", "nvidia-smi -L", "nvidia-smi --query-gpu=name --format=csv"):
        failed = bare.ssh(command, check=False)
        assert failed.returncode == 9
        assert failed.stdout.startswith(
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver"
        )

    gpu_host.configure(gpus="L4:1")
    assert gpu_host.run("nvidia-smi -L").stdout.startswith("GPU 0: NVIDIA L4 (UUID: GPU-")
    bare.configure(gpus="none")
    assert bare.run("nvidia-smi -L", check=False).stdout == "No devices were found\n"


def test_systemctl_stand_in_serves_ansibles_systemd_module(lab, tmp_path) -> None:
    view = lab(n=1)
    host = view.hosts[0]
    task = "ansible.builtin.systemd: {name: containerd, state: started, enabled: true}"
    playbook = tmp_path / "units.yml"
    playbook.write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        f"  - {{register: first, {task}}}\n"
        f"  - {{register: again, {task}}}\n"
        "  - ansible.builtin.assert: {that: [first is changed, again is not changed, first.enabled]}\n"
    )
    run = subprocess.run(
        [str(REPO / ".venv/bin/ansible-playbook"), "-i", str(view.inventory), str(playbook)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr

    assert host.ssh("systemctl is-active containerd").stdout == "active\n"
    assert host.run("systemctl is-enabled containerd.service").stdout == "enabled\n"
    assert host.run("systemctl is-active kubelet", check=False).returncode == 3
    assert "LoadState=not-found" in host.run("systemctl show nosuch").stdout
    assert host.run("systemctl start nosuch", check=False).returncode == 5
    assert host.run("systemctl status containerd").stdout.startswith("● containerd.service")
    host.run("systemctl daemon-reload && systemctl restart containerd && systemctl stop containerd")
    assert host.units()["containerd.service"] == host.units()["containerd.service"] | {
        "active": False,
        "enabled": True,
    }

    actions = [(e["verb"], e["units"]) for e in host.standin_log("systemctl")]
    assert ("enable", ["containerd.service"]) in actions and ("start", ["containerd.service"]) in actions
    assert actions[-3:] == [
        ("daemon-reload", []),
        ("restart", ["containerd.service"]),
        ("stop", ["containerd.service"]),
    ]
    assert lab(n=1).hosts[0].units() == {}  # a fresh host has no unit state


def test_kubeadm_stand_in_joins_only_with_a_valid_token_and_pinned_ca(lab, tmp_path) -> None:
    stub_view = lab(n=0)
    with KubeStub(stub_view.gateway) as kube:
        view = lab(n=2, gpus="RTX-4090:2,none/nodriver", kubeconfig=kube.kubeconfig(tmp_path / "admin.conf"))
        gpu_host, bare = view.hosts
        token = "abcdef.0123456789abcdef"
        kube.secrets["bootstrap-token-abcdef"] = bootstrap_token_secret(token)
        good = f"kubeadm join {kube.endpoint} --token {token} --discovery-token-ca-cert-hash {kube.ca_hash}"

        assert gpu_host.ssh("kubeadm version -o short").stdout == "v1.31.4\n"

        def refused(host, command: str, message: str) -> None:
            proc = host.run(command, check=False)
            assert proc.returncode == 1, proc.stdout + proc.stderr
            assert message in proc.stderr, proc.stderr

        refused(gpu_host, good, "[ERROR CRI]: container runtime is not running")
        gpu_host.run("systemctl start containerd")
        refused(gpu_host, good + " --discovery-token-unsafe-skip-ca-verification", "refusing")
        refused(
            gpu_host, f"kubeadm join {kube.endpoint} --token {token}", "without caCertHashes can be unsafe"
        )
        refused(gpu_host, good.replace(kube.ca_hash, "sha256:" + "0" * 64), "none of the public keys")
        refused(gpu_host, good.replace(token, "zzzzzz.0123456789abcdef"), 'token id "zzzzzz" is invalid')
        refused(gpu_host, good.replace(token, "abcdef.ffffffffffffffff"), "is invalid for this cluster")
        refused(gpu_host, good.replace(token, "abc.def"), "was not of the form")
        kube.secrets["bootstrap-token-expird"] = bootstrap_token_secret("expird.0123456789abcdef", minutes=-1)
        refused(gpu_host, good.replace(token, "expird.0123456789abcdef"), "or it has expired")
        nosign = bootstrap_token_secret("nosign.0123456789abcdef", **{"usage-bootstrap-signing": "false"})
        kube.secrets["bootstrap-token-nosign"] = nosign
        refused(gpu_host, good.replace(token, "nosign.0123456789abcdef"), "is invalid")
        assert kube.nodes == {}

        joined = gpu_host.ssh(good + " --node-name rig-01")
        assert "This node has joined the cluster" in joined.stdout
        node = kube.nodes["rig-01"]
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
        assert {"type": "Ready", "status": "True"}.items() <= node["status"]["conditions"][0].items()
        assert node["status"]["addresses"][0] == {"type": "InternalIP", "address": gpu_host.address}
        conf = gpu_host.run("cat /etc/kubernetes/kubelet.conf").stdout
        assert f"server: https://{kube.endpoint}" in conf
        assert gpu_host.private_path("/etc/kubernetes/kubelet.conf").exists()
        real = Path("/etc/kubernetes/kubelet.conf")
        assert not real.exists() or kube.endpoint not in real.read_text()  # not written on this machine
        assert bare.run("test -e /etc/kubernetes/kubelet.conf", check=False).returncode == 1
        assert gpu_host.units()["kubelet.service"]["active"] is True
        refused(gpu_host, good + " --node-name rig-01", "[ERROR FileAvailable--etc-kubernetes-kubelet.conf]")

        # the same node name, Ready, from another host: refused as kubeadm does
        bare.run("systemctl start containerd")
        refused(
            bare, good + " --node-name rig-01", 'a Node with name "rig-01" and status "Ready" already exists'
        )

        # --config with a v1beta4 JoinConfiguration; no driver -> no GPUs advertised; node labels applied
        bare.run(
            "mkdir -p /etc/worldland && cat > /etc/worldland/join.yaml",
            input=(
                "apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\ndiscovery:\n  bootstrapToken:\n"
                f"    apiServerEndpoint: {kube.endpoint}\n    token: {token}\n"
                f"    caCertHashes: [{kube.ca_hash}]\n"
                "nodeRegistration:\n  name: rig-02\n  kubeletExtraArgs:\n"
                "  - {name: node-labels, value: worldland.io/lab=yes}\n"
            ),
        )
        refused(
            bare, f"kubeadm join {kube.endpoint} --config /etc/worldland/join.yaml", "can not mix '--config'"
        )
        assert bare.ssh("kubeadm join --config /etc/worldland/join.yaml").returncode == 0
        assert "nvidia.com/gpu" not in kube.nodes["rig-02"]["status"]["allocatable"]
        assert kube.nodes["rig-02"]["metadata"]["labels"]["worldland.io/lab"] == "yes"

        assert gpu_host.run("kubeadm reset", check=False, input="").returncode == 1  # asks; no answer: aborts
        assert "Deleting files" in gpu_host.ssh("kubeadm reset -f").stdout
        assert gpu_host.run("test -e /etc/kubernetes/kubelet.conf", check=False).returncode == 1
        assert gpu_host.units()["kubelet.service"]["active"] is False

        logged = (gpu_host.dir / "standin.log").read_text()
        assert "0123456789abcdef" not in logged  # the token secret is never logged
        assert any(e.get("action") == "join" for e in gpu_host.standin_log("kubeadm"))


# --- network safety, parallel labs, teardown --------------------------------------------------------------


def test_lab_refuses_addresses_routed_off_the_bridge(lab) -> None:
    view = lab(n=1)
    view.lab.check_routes([h.address for h in view.hosts])  # its own hosts: fine
    with pytest.raises(LabUnsafe, match="refusing to start"):
        view.lab.check_routes(["203.0.113.5"])  # a FIB lookup only; would use the default route


def test_second_lab_in_parallel_gets_its_own_subnet_and_names(lab) -> None:
    first = lab(n=1)
    with Lab(hosts=1) as second:
        assert second.slot != first.lab.slot and second.subnet != first.subnet
        assert second.bridge != first.lab.bridge and second.hosts[0].netns != first.hosts[0].netns
        assert second.hosts[0].ssh("hostname").stdout.strip() == second.hosts[0].name
        assert first.hosts[0].ssh("hostname").stdout.strip() == first.hosts[0].name
        before = footprint(second.slot, second.dir)
        counts = kinds(before)  # sshd, the ssh control master that ssh() left, its session in the netns
        assert counts["netns"] == 1 and counts["link"] == 2 and counts["process"] >= 2
    assert gone(before, second.slot, second.dir)
    assert first.hosts[0].ssh("true").returncode == 0  # the session's lab is untouched


def test_teardown_after_exception_sigterm_and_kill_9_leaves_nothing(lab) -> None:
    session = lab(n=1)  # the session's lab is up meanwhile: none of this may touch it

    # 1. an exception inside the lab's with-block
    proc, info = child_lab(
        "with Lab(hosts=2) as lab:\n    report(lab)\n    raise RuntimeError('test failed')"
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "test failed" in err
    assert kinds(info["footprint"]) == {"netns": 2, "link": 3, "process": 2}
    assert gone(info["footprint"], info["slot"], info["dir"])

    # 2. SIGTERM, handled as the pytest fixtures handle it (pytest unwinds, the fixture tears down)
    proc, info = child_lab("with Lab(hosts=2) as lab:\n    report(lab)\n    time.sleep(60)")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert gone(info["footprint"], info["slot"], info["dir"])

    # 3. kill -9: namespaces, links and sshd outlive the owner ...
    proc, info = child_lab("lab = Lab(hosts=2).start()\nreport(lab)\ntime.sleep(60)")
    proc.kill()
    proc.communicate(timeout=30)
    left = info["footprint"] & footprint(info["slot"], info["dir"])
    assert kinds(left) == {"netns": 2, "link": 3, "process": 2}
    # ... until the next lab starts: it removes what a dead owner left, and nothing of a live one
    with Lab(hosts=1) as after:
        assert not info["footprint"] & footprint(info["slot"], info["dir"])
        assert session.hosts[0].ssh("true").returncode == 0
        before = footprint(after.slot, after.dir)
    assert gone(before, after.slot, after.dir)
    assert session.hosts[0].ssh("true").returncode == 0


def test_command_line_up_status_down_from_separate_processes() -> None:
    lab_dir = Path(f"/tmp/wlab-cli-test-{os.getpid()}")  # short: SSH control sockets live in it

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tests.lab", *args, "--dir", str(lab_dir)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    up = cli("up", "--hosts", "2", "--gpus", "H100:8,none")
    assert up.returncode == 0, up.stderr
    assert "wl" in up.stdout and "10.213." in up.stdout
    status = cli("status", "--json")
    assert status.returncode == 0, status.stderr
    state = json.loads(status.stdout)
    before = footprint(state["slot"], state["dir"])
    assert kinds(before) == {"netns": 2, "link": 3, "process": 2}
    assert [h["up"] for h in state["hosts"]] == [True, True]
    assert state["hosts"][0]["gpus"] == "NVIDIA H100 80GB HBM3:8"
    host = Lab.load(lab_dir).hosts[0]
    assert host.ssh("nvidia-smi -L | wc -l").stdout.strip() == "8"
    assert cli("up", "--hosts", "1").returncode == 1  # one lab per directory
    down = cli("down")
    assert down.returncode == 0, down.stderr
    assert gone(before, state["slot"], state["dir"])
    assert cli("status").returncode == 1


def test_bind_mode_where_overlays_are_unavailable() -> None:
    absent = [p for p in PRIVATE if not os.path.lexists(p)]
    with Lab(hosts=1, etc_mode="bind", gpus="T4:1") as lab:
        host = lab.hosts[0]
        assert lab.etc_mode == "bind"
        assert host.ssh("hostname").stdout.strip() == host.name
        host.ssh("echo b > /etc/kubernetes/bind-marker && echo b > /var/lib/kubelet/bind-marker")
        assert host.private_path("/etc/kubernetes/bind-marker").read_text() == "b\n"
        assert not Path("/etc/kubernetes/bind-marker").exists()
        assert not Path("/var/lib/kubelet/bind-marker").exists()
        assert host.ssh("nvidia-smi -L").stdout.startswith("GPU 0: Tesla T4")
        before = footprint(lab.slot, lab.dir)
    assert gone(before, lab.slot, lab.dir)
    entries = [json.loads(p.read_text()) for p in REGISTRY.glob("slot-*.json")]
    if not any(e.get("etc_mode") == "bind" for e in entries):  # (else they are handed to that lab)
        assert not [p for p in absent if os.path.lexists(p)], "mount points left on this machine"


def test_down_of_a_stale_lab_never_touches_the_lab_now_in_its_slot(lab, tmp_path) -> None:
    live = lab(n=1)
    # the record of an older lab that had the same slot (its processes long gone), left in another dir
    state = json.loads((live.dir / "lab.json").read_text())
    for host in state["hosts"]:
        host["start"] = 1  # no live process has started at tick 1
    stale_dir = tmp_path / "stale"
    stale_dir.mkdir()
    (stale_dir / "lab.json").write_text(json.dumps(state))
    Lab.load(stale_dir).stop()
    assert live.hosts[0].ssh("hostname").stdout.strip() == live.hosts[0].name
    assert (live.dir / "lab.json").exists()


def test_kubeadm_stand_in_against_the_kubernetes_api_test_server(lab) -> None:
    """The same join against testkit/kube_server (skipped where that server is absent), with the token made
    by worldland.kube as the listener makes it; the node is then what the project reads as joinable."""
    server_mod = pytest.importorskip("testkit.kube_server.server")
    kube = pytest.importorskip("worldland.kube")
    gateway = lab(n=0).gateway
    with server_mod.KubeApiServer(extra_ips=[gateway]) as server:
        host = lab(n=1, gpus="H100:8", kubeconfig=server.kubeconfig_path).hosts[0]
        with kube.KubeClient.connect(str(server.kubeconfig_path)) as client:
            token = client.create_bootstrap_token(ttl_seconds=900)
            host.run("systemctl start containerd")
            name = f"lab-{host.name}"
            join = f"kubeadm join {gateway}:{server.port} --token {token.token} --node-name {name}"
            wrong = host.run(f"{join} --discovery-token-ca-cert-hash sha256:{'1' * 64}", check=False)
            assert wrong.returncode == 1 and "none of the public keys" in wrong.stderr
            joined = host.ssh(f"{join} --discovery-token-ca-cert-hash {server.ca_cert_hash}", check=False)
            assert joined.returncode == 0, joined.stderr
            node = client.node_state(name)
        assert node.exists and node.ready and node.gpus == 8 and node.schedulable_gpus


def test_this_machines_own_worldland_dirs_never_show_through_to_a_host(lab) -> None:
    # Before: /etc/worldland was an empty overlay upper, so this machine's /etc/worldland/provider-id
    # showed through and every lab host got the same provider id.
    probe_dir = Path("/etc/worldland")
    created = not probe_dir.exists()
    probe = probe_dir / f"lab-leak-probe-{time.time_ns()}"
    probe_dir.mkdir(exist_ok=True)
    probe.write_text("this machine's\n")
    try:
        view = lab(n=1)
        assert view.hosts[0].run(f"test ! -e {probe}", check=False).returncode == 0
        assert view.hosts[0].run("ls -A /etc/worldland").stdout.strip() == ""
    finally:
        probe.unlink()
        if created:
            probe_dir.rmdir()
