"""The SSH lab in kube mode: hosts that install real Debian packages and can run a real containerd and
kubelet without touching this machine (private /usr, /var, /run; apt without this machine's sources;
cgroups the lab removes; the kubelet's global sysctls masked). One lab of two hosts for the module; the
tests run in file order and the last ones stop it. Needs root, openssh-server, util-linux and dpkg-deb."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.lab.fixtures import LabPool, LabView
from tests.lab.lab import (
    KUBELET_SYSCTLS,
    PCI_DEVICES,
    LabHost,
    cgroup_hierarchies,
    lab_cgroups,
    lab_resources,
    netns_pids,
    sweep,
)

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0
    or shutil.which("sshd", path="/usr/sbin:/usr/bin") is None
    or shutil.which("dpkg-deb") is None,
    reason="the kube lab needs root, openssh-server and dpkg-deb (make install provides them)",
)

# Stands in for tests/lab/standins/device_plugin.py: records how the lab started it, then waits.
FAKE_DEVICE_PLUGIN = """\
import json, os, sys, time
from pathlib import Path
config = os.environ["WORLDLAND_LAB_HOST_CONFIG"]
Path(config).with_name("fake-device-plugin.json").write_text(
    json.dumps({"argv": sys.argv[1:], "config": config, "pid": os.getpid()})
)
time.sleep(3600)
"""


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabView]:
    plugin = tmp_path_factory.mktemp("plugin") / "device_plugin.py"
    plugin.write_text(FAKE_DEVICE_PLUGIN)
    pool = LabPool(kube=True, device_plugin=plugin)
    try:
        yield pool.view(n=2, gpus="A100:2,none")
    finally:
        pool.close()


def test_the_kube_lab_fixture_hands_out_kube_hosts_that_ansible_reaches(
    kube_lab: Callable[..., LabView],
) -> None:
    view = kube_lab(n=1, gpus="L4:1")
    host = view.hosts[0]
    assert view.kube and host.kubelet_cgroup_root == f"/{host.netns}"
    assert host.config()["lab_mode"] == "kube" and host.config()["known_units"] == ["ssh.service"]
    ping = view.ansible("all", "-m", "ansible.builtin.ping")
    assert ping.returncode == 0 and '"ping": "pong"' in ping.stdout, ping.stdout + ping.stderr


def dead(pid: int) -> bool:
    """Gone, or a zombie waiting for this machine's init to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def build_deb(out: Path, name: str, files: dict[str, tuple[str, int]]) -> Path:
    root = out / name
    for path, (text, mode) in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: worldland lab <lab@invalid>\n"
        f"Description: worldland lab test package\n"
    )
    deb = out / f"{name}_1.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True,
                   capture_output=True)  # fmt: skip
    return deb


# a unit and drop-in shaped like the kubelet package's (10-kubeadm.conf); the command records its argv
PROBE_UNIT = """\
[Unit]
Description=worldland lab probe
[Service]
Environment="PROBE_ARGS=--from-unit"
ExecStart=/usr/lib/wlab-probe/run --packaged
Restart=always
RestartSec=1
"""
PROBE_DROP_IN = """\
[Service]
Environment="PROBE_KUBECONFIG_ARGS=--kubeconfig=/etc/k.conf --bootstrap"
EnvironmentFile=-/etc/default/wlab-probe
EnvironmentFile=-/var/lib/wlab-probe/never-written.env
ExecStartPre=-/bin/false
ExecStartPre=/bin/sh -c 'echo pre-ran > /run/wlab-probe.pre'
ExecStart=
ExecStart=/usr/lib/wlab-probe/run $PROBE_ARGS $PROBE_KUBECONFIG_ARGS $PROBE_EXTRA_ARGS \\
  $UNSET --one=${PROBE_ONE} %n
"""
PROBE_RUN = """\
#!/bin/sh
printf '%s\\n' "$@" > /run/wlab-probe.args
echo "$PROBE_ONE" > /run/wlab-probe.env
exec sleep 3600
"""


@pytest.fixture(scope="module")
def installed(kube: LabView, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """wlab-probe installed with dpkg -i on the first host, wlab-probe-apt with apt-get on the second."""
    out = tmp_path_factory.mktemp("debs")
    probe = build_deb(out, "wlab-probe", {
        "/usr/share/wlab-probe/hello": ("hello\n", 0o644),
        "/usr/lib/wlab-probe/run": (PROBE_RUN, 0o755),
        # as Debian 12 packages ship them: under /lib, a symlink to usr/lib in the hosts
        "/lib/systemd/system/wlab-probe.service": (PROBE_UNIT, 0o644),
        "/lib/systemd/system/wlab-probe.service.d/10-probe.conf": (PROBE_DROP_IN, 0o644),
    })  # fmt: skip
    by_apt = build_deb(out, "wlab-probe-apt", {"/usr/share/wlab-probe-apt/hello": ("apt\n", 0o644)})
    h1, h2 = kube.hosts
    h1.ssh(f"dpkg -i {probe}", timeout=120)
    h2.ssh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {by_apt}", timeout=300)
    return {"probe": probe, "apt": by_apt}


def test_usr_var_and_run_writes_stay_in_their_host(kube: LabView) -> None:
    h1, h2 = kube.hosts
    marker = f"wlab-probe-{time.time_ns()}"
    paths = [f"/usr/lib/{marker}", f"/usr/local/bin/{marker}", f"/run/{marker}", f"/var/cache/{marker}"]
    h1.ssh("; ".join(f"echo {marker} > {p}" for p in paths))
    for path in paths:
        assert h1.run(f"cat {path}").stdout.strip() == marker
        assert h1.private_path(path).read_text().strip() == marker  # the host's copy, in its upper dir
        assert not Path(path).exists(), f"{path} leaked onto this machine"
        assert h2.run(f"test ! -e {path}", check=False).returncode == 0, f"{path} leaked to {h2.name}"
    assert h1.private_path("/usr/local/sbin/systemctl") == h1.dir / "upper/usr/local/sbin/systemctl"
    assert h1.private_path("/usr/local/sbin/systemctl").is_file()

    # containerd's and the kubelet's state on a real filesystem (overlayfs snapshots cannot sit on overlayfs)
    fs = h1.ssh("stat -f -c %T /var/lib/containerd /var/lib/kubelet /run/containerd /usr").stdout.split()
    assert "overlayfs" not in fs[:2], fs
    assert fs[2] == "tmpfs" and fs[3] == "overlayfs"
    h1.ssh(f"echo {marker} > /var/lib/kubelet/{marker}")
    assert h1.private_path(f"/var/lib/kubelet/{marker}") == h1.dir / "var-lib-kubelet" / marker
    assert h1.private_path(f"/var/lib/kubelet/{marker}").read_text().strip() == marker
    assert h2.run(f"test ! -e /var/lib/kubelet/{marker}", check=False).returncode == 0


def test_dpkg_and_apt_install_change_one_host_only(kube: LabView, installed: dict[str, Path]) -> None:
    h1, h2 = kube.hosts
    assert "Status: install ok installed" in h1.run("dpkg -s wlab-probe").stdout
    assert h1.run("cat /usr/share/wlab-probe/hello").stdout == "hello\n"
    assert "Status: install ok installed" in h2.run("dpkg -s wlab-probe-apt").stdout
    for package in ("wlab-probe", "wlab-probe-apt"):
        here = subprocess.run(["dpkg", "-s", package], capture_output=True, check=False)
        assert here.returncode != 0, f"{package} was installed on this machine"
    assert h2.run("dpkg -s wlab-probe", check=False).returncode != 0
    assert h1.run("dpkg -s wlab-probe-apt", check=False).returncode != 0
    assert not Path("/usr/share/wlab-probe").exists() and not Path("/usr/share/wlab-probe-apt").exists()
    # the package's /lib files land in the host's own /usr/lib (Debian 12: /lib -> usr/lib)
    assert h1.private_path("/usr/lib/systemd/system/wlab-probe.service").is_file()
    # dpkg starts from this machine's installed set
    assert h1.run("dpkg -s dpkg").returncode == 0
    # package scripts are told not to start services
    policy = h1.run("/usr/sbin/policy-rc.d wlab-probe start", check=False)
    assert policy.returncode == 101
    assert h1.private_path("/usr/sbin/policy-rc.d").is_file()


def test_apt_sees_none_of_this_machines_sources(kube: LabView) -> None:
    here = subprocess.run(["apt-cache", "policy"], capture_output=True, text=True, check=False).stdout
    if "deb.debian.org" not in here:
        pytest.skip("this machine has no deb.debian.org source to hide")
    host = kube.hosts[1]
    update = host.ssh("apt-get update", timeout=120)
    assert "deb.debian.org" not in update.stdout + update.stderr
    assert not [line for line in update.stdout.splitlines() if line.startswith(("Get:", "Hit:", "Ign:"))]
    assert "deb.debian.org" not in host.run("apt-cache policy").stdout
    assert host.run("ls -A /etc/apt/sources.list.d; cat /etc/apt/sources.list").stdout == ""
    assert "deb.debian.org" not in host.run("ls /var/lib/apt/lists").stdout


def test_package_unit_runs_with_drop_ins_environment_files_and_stops(
    kube: LabView, installed: dict[str, Path]
) -> None:
    h1, h2 = kube.hosts
    h1.ssh(
        "mkdir -p /etc/systemd/system/wlab-probe.service.d && printf '%s\\n' '[Service]' "
        "'Environment=\"PROBE_ONE=a b\"' > /etc/systemd/system/wlab-probe.service.d/20-local.conf && "
        "printf '%s\\n' '# as kubeadm-flags.env' 'PROBE_ARGS=--from-env-file' "
        "'PROBE_EXTRA_ARGS=\"--node-ip=10.0.0.1 --extra\"' > /etc/default/wlab-probe"
    )
    assert h1.ssh("systemctl is-active wlab-probe", check=False).returncode == 3  # installed, not started
    assert h1.ssh("systemctl start wlab-probe", check=False).returncode == 0
    deadline = time.monotonic() + 15
    while h1.run("test -s /run/wlab-probe.args", check=False).returncode != 0:
        assert time.monotonic() < deadline, h1.run("cat /var/log/worldland/wlab-probe.service.log").stdout
        time.sleep(0.1)
    argv = h1.run("cat /run/wlab-probe.args").stdout.splitlines()
    assert argv == [
        "--from-env-file",  # EnvironmentFile= overrides Environment=
        "--kubeconfig=/etc/k.conf",
        "--bootstrap",
        "--node-ip=10.0.0.1",
        "--extra",
        "--one=a b",  # ${VAR}: one word
        "wlab-probe.service",
    ]
    assert h1.run("cat /run/wlab-probe.env").stdout == "a b\n"  # the unit's environment reaches it
    assert h1.run("cat /run/wlab-probe.pre").stdout == "pre-ran\n"
    show = h1.run("systemctl show -p FragmentPath -p DropInPaths wlab-probe").stdout
    assert "FragmentPath=/usr/lib/systemd/system/wlab-probe.service" in show
    assert "20-local.conf" in show and "10-probe.conf" in show
    assert h1.ssh("systemctl is-active wlab-probe").stdout == "active\n"
    pid = h1.units()["wlab-probe.service"]["pid"]
    assert not dead(pid)

    h1.ssh("systemctl restart wlab-probe")
    new_pid = h1.units()["wlab-probe.service"]["pid"]
    assert new_pid != pid and dead(pid) and not dead(new_pid)
    h1.ssh("systemctl stop wlab-probe")
    assert h1.ssh("systemctl is-active wlab-probe", check=False).returncode == 3
    assert dead(new_pid)

    # not installed there: no such unit; a unit whose required EnvironmentFile is missing does not start
    assert h2.ssh("systemctl start wlab-probe", check=False).returncode == 5
    h2.ssh(
        "printf '%s\\n' '[Service]' 'EnvironmentFile=/etc/default/wlab-absent' 'ExecStart=/bin/sleep 60' "
        "> /etc/systemd/system/wlab-needs-env.service"
    )
    failed = h2.ssh("systemctl start wlab-needs-env", check=False)
    assert failed.returncode == 1 and "environment" in failed.stderr.lower()
    assert h2.ssh("systemctl is-active wlab-needs-env", check=False).returncode == 3


def test_kubelet_sysctls_are_masked_and_the_rest_of_proc_sys_is_read_only(kube: LabView) -> None:
    h1, h2 = kube.hosts
    paths = {key: "/proc/sys/" + key.replace(".", "/") for key in KUBELET_SYSCTLS}
    before = {key: Path(path).read_text() for key, path in paths.items()}
    assert h1.run(f"cat {paths['vm.overcommit_memory']}").stdout == "1\n"  # what the kubelet wants
    for key, path in paths.items():
        value = str(int(KUBELET_SYSCTLS[key]) + 7)
        h1.ssh(f"echo {value} > {path}")
        assert h1.run(f"cat {path}").stdout == value + "\n"
    assert {key: Path(path).read_text() for key, path in paths.items()} == before
    assert h2.run(f"cat {paths['vm.overcommit_memory']}").stdout == "1\n"  # each host has its own
    # everything else global is read-only; the host's own network settings are not
    assert h1.ssh("echo 4096 > /proc/sys/kernel/msgmax", check=False).returncode != 0
    h1.ssh("echo 1 > /proc/sys/net/ipv4/ip_forward")
    # and no host can load a kernel module, reboot or set the clock of this machine
    bounding = int(h1.ssh("grep CapBnd /proc/self/status").stdout.split()[1], 16)
    for cap in (16, 22, 25):  # CAP_SYS_MODULE, CAP_SYS_BOOT, CAP_SYS_TIME
        assert not bounding & (1 << cap)


def test_pod_addresses_reach_nothing_beyond_their_host(kube: LabView) -> None:
    """No masquerading: a reply to a pod address would take this machine's default route."""
    host = kube.hosts[1]
    assert host.pod_cidr is not None
    pod, cni = host.pod_cidr.replace(".0/24", ".5"), host.pod_cidr.replace(".0/24", ".1")
    host.run(f"ip link add cni0 type bridge && ip addr add {cni}/24 dev cni0 && ip link set cni0 up")
    try:
        host.run("echo 1 > /proc/sys/net/ipv4/ip_forward")  # as the bridge plugin sets it
        out = host.run(f"ip route get {kube.gateway} from {pod} iif cni0", check=False)
        assert out.returncode != 0 and "unreachable" in out.stderr, out.stdout
        assert host.run(f"ip route get {cni} from {pod} iif cni0").stdout.startswith(f"local {cni}")
    finally:
        host.run("ip link del cni0")


def test_cgroup_root_pci_tree_cni_standin_env_and_device_plugin(kube: LabView) -> None:
    h1, h2 = kube.hosts
    for host in kube.hosts:
        root = host.kubelet_cgroup_root
        assert root == f"/{host.netns}" == host.config()["kubelet_cgroup_root"]
        for h in cgroup_hierarchies():
            assert host.ssh(f"test -d {h['path']}{root}", check=False).returncode == 0, h["path"]
            assert Path(h["path"] + root).is_dir()  # the same cgroup, as this machine sees it
            if "cpuset" in h["options"]:
                assert host.run(f"cat {h['path']}{root}/cpuset.cpus").stdout.strip()

    def pci(host: LabHost) -> dict[str, tuple[str, ...]]:
        out = host.run(
            f"cd {PCI_DEVICES} && for d in *; do echo $d $(cat $d/vendor $d/device $d/class); done"
        )
        return {line.split()[0]: tuple(line.split()[1:]) for line in out.stdout.splitlines()}

    bridge = {"0000:00:00.0": ("0x8086", "0x29c0", "0x060000")}
    a100 = ("0x10de", "0x20b2", "0x030200")
    assert h1.config()["pci_devices_dir"] == PCI_DEVICES
    assert pci(h1) == bridge | {"0000:07:00.0": a100, "0000:0f:00.0": a100}
    assert pci(h2) == bridge
    h2.configure(gpus="T4:1")
    assert pci(h2) == bridge | {"0000:07:00.0": ("0x10de", "0x1eb8", "0x030200")}

    conflist = json.loads(h1.run("cat /etc/cni/net.d/10-worldland-lab.conflist").stdout)
    plugin = conflist["plugins"][0]
    assert plugin["bridge"] == "cni0" and plugin["ipMasq"] is False
    assert plugin["ipam"]["ranges"] == [[{"subnet": h1.pod_cidr}]] and h1.pod_cidr != h2.pod_cidr

    script = 'set -a; . /etc/worldland-lab/standin.env; set +a; "$WORLDLAND_LAB_PYTHON" -c '
    script += '\'import json, os; print(json.load(open(os.environ["WORLDLAND_LAB_HOST_CONFIG"]))["name"])\''
    assert h1.ssh(script).stdout.strip() == h1.name
    assert h1.ssh(". /etc/worldland-lab/standin.env; ls $WORLDLAND_LAB_STANDINS").stdout.count("systemctl.py")
    # real packages bring kubeadm and nvidia-smi: no stand-in wrappers for them
    assert h1.ssh("ls /usr/local/sbin").stdout.split() == ["systemctl"]

    started = json.loads((h1.dir / "fake-device-plugin.json").read_text())
    assert started["argv"] == ["--plugin-dir", "/var/lib/kubelet/device-plugins"]
    assert started["config"] == str(h1.config_path)
    assert started["pid"] in netns_pids(h1.netns)  # so the lab's teardown by namespace ends it


POD = (
    "mkdir -p {cg}/pids{root}/pod && echo $$ > {cg}/pids{root}/pod/cgroup.procs && "
    "echo $$ > {cg}/memory{root}/cgroup.procs && echo $$ > /run/wlab-pod.pid && exec sleep 3600"
)


def start_pod(host: LabHost) -> int:
    """A process as a pod's: in a network namespace of its own (not the host's), in the host's cgroups."""
    script = POD.format(cg="/sys/fs/cgroup", root=host.kubelet_cgroup_root)
    host.ssh(f"rm -f /run/wlab-pod.pid; setsid unshare --net sh -c '{script}' > /dev/null 2>&1 < /dev/null &")
    deadline = time.monotonic() + 10
    while not (out := host.run("cat /run/wlab-pod.pid", check=False).stdout.strip()):
        assert time.monotonic() < deadline, "the pod process did not start"
        time.sleep(0.05)
    pid = int(out)
    assert pid not in netns_pids(host.netns)  # not found by the lab's network namespace
    procs = Path(f"/sys/fs/cgroup/pids{host.kubelet_cgroup_root}/pod/cgroup.procs").read_text()
    assert str(pid) in procs.split()
    return pid


def test_restart_and_stop_kill_cgroup_processes_and_remove_the_cgroups(kube: LabView) -> None:
    h1, h2 = kube.hosts
    lab = kube.lab
    pod = start_pod(h1)
    lab.restart_hosts([h1])
    assert dead(pod)
    assert not Path(f"/sys/fs/cgroup/pids{h1.kubelet_cgroup_root}/pod").exists()  # removed, root made anew
    assert Path(f"/sys/fs/cgroup/pids{h1.kubelet_cgroup_root}").is_dir()

    pods = [start_pod(h1), start_pod(h2)]
    assert len(lab_cgroups(lab.slot)) == 2 * len(cgroup_hierarchies())
    lab.stop()
    assert all(dead(p) for p in pods)
    assert lab_cgroups(lab.slot) == []
    assert not [c for c in lab_resources()["cgroups"] if c.endswith((h1.netns, h2.netns))]


LEFTOVER = """
import json, subprocess, time
from tests.lab.lab import Lab
lab = Lab(hosts=1, kube=True, device_plugin=None).start()
host = lab.hosts[0]
cg = "/sys/fs/cgroup/pids" + host.kubelet_cgroup_root
host.ssh("setsid unshare --net sh -c 'echo $$ > %s/cgroup.procs && exec sleep 3600' > /dev/null 2>&1 &" % cg)
while not open(cg + "/cgroup.procs").read().split():
    time.sleep(0.05)
print(json.dumps({"slot": lab.slot, "pod": int(open(cg + "/cgroup.procs").read().split()[0])}), flush=True)
time.sleep(600)
"""


def test_a_leftover_kube_lab_loses_its_cgroups_and_their_processes() -> None:
    proc = subprocess.Popen([sys.executable, "-c", LEFTOVER], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line, proc.stderr.read()  # type: ignore[union-attr]
        info = json.loads(line)
        assert not dead(info["pod"]) and lab_cgroups(info["slot"])
    finally:
        proc.send_signal(signal.SIGKILL)  # its owner is gone: the lab is a leftover
        proc.wait(timeout=30)
    sweep()  # what the next lab start does (a lab started elsewhere meanwhile may have done it already)
    assert dead(info["pod"])
    assert lab_cgroups(info["slot"]) == []
