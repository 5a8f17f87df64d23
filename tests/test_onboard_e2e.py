"""End to end: three kube-mode lab hosts -> registrations -> the listener approves -> ``worldland onboard``
(ansible-runner, playbooks/onboard.yml, real SSH) -> real ``kubeadm join`` against the real kube-apiserver of
``../shared/kube`` -> Joined then Available, with Node objects read back from that apiserver.

What stands in (tests/lab/onboarding.py): the GPUs, the NVIDIA driver and toolkit packages' contents, kernel
changes that would reach this machine, the cluster's CNI and NVIDIA's device-plugin DaemonSet. Registrations
are published as the deployed Go agent publishes them (its fields and groups), from this machine: before the
driver is installed a host has no nvidia-smi for an agent to discover GPUs with.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s

from testkit.kube_server.certs import cluster_info_kubeconfig, make_ca
from testkit.realkube import available
from tests.lab.lab import LabHost, kill_pids, netns_pids
from tests.lab.onboarding import BIN, REPO, OnboardingLab, wait_for
from worldland.domain.names import GPU_RESOURCE, LABEL_RENTAL_TYPE, RENTAL_TYPE_GPU
from worldland.protocol.status import Status

PLAN = ["RTX-4090:2", "A100:1", "H100:2"]
# failing joins fail fast: discovery/TLS bootstrap and the whole join bounded tightly
SHORT_JOIN = ("-e", "kubeadm_join_discovery_timeout=20", "-e", "kubeadm_join_timeout=60")
TOKEN_RE = re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b")
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def env() -> Iterator[OnboardingLab]:
    if os.geteuid() != 0:
        pytest.skip("the SSH lab needs root")
    status = available()
    if not status:
        pytest.skip(f"no real control plane ({status.reason}): the onboarding e2e needs a real kubeadm join")
    with OnboardingLab(hosts=3, gpus=PLAN) as lab:
        yield lab


def onboard_argv(env: OnboardingLab, *args: str) -> list[str]:
    runs, config = str(env.lab.dir / "runs"), str(REPO / "ansible.cfg")
    return [str(BIN / "worldland"), "onboard", "--inventory", str(env.inventory), "--json",
            "--runs-dir", runs, "--ansible-config", config, *args]  # fmt: skip


def node_of(env: OnboardingLab, host: LabHost) -> str:
    return env.fleet().store.require(env.provider_id(host)).node_name


def statuses(env: OnboardingLab) -> dict[str, tuple[Status, str]]:
    fleet = env.fleet()
    out = {}
    for host in env.lab.hosts:
        record = fleet.store.require(env.provider_id(host))
        out[host.name] = (record.status, record.last_error)
    return out


def test_approved_providers_are_joined_and_available_and_a_lost_host_is_retried(env: OnboardingLab) -> None:
    env.register_all()
    env.approve_all()
    assert {s for s, _ in statuses(env).values()} == {Status.APPROVED}
    lost = env.lab.hosts[-1]
    started = time.monotonic()
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    run = subprocess.Popen(onboard_argv(env), cwd=REPO, env=env.env, **pipes)
    # mid-run (its driver repository written), the host goes away: sshd and all in its namespaces killed
    source = lost.private_path("/etc/apt/sources.list.d/worldland-nvidia-driver.sources")
    wait_for(source.exists, 300, f"{lost.name} to be half-way through the driver role")
    kill_pids(netns_pids(lost.netns))
    out, err = run.communicate(timeout=800)
    first_run = time.monotonic() - started
    assert run.returncode == 2, (out[-3000:], err[-3000:])
    result = json.loads(out)
    assert (
        result["hosts"][node_of(env, lost)]["unreachable"] >= 1
        or result["hosts"][node_of(env, lost)]["failed"]
    )
    after = statuses(env)
    assert all(after[h.name] == (Status.AVAILABLE, "") for h in env.lab.hosts[:-1]), after
    assert after[lost.name][0] is Status.APPROVED and after[lost.name][1], after  # its error recorded
    print(f"onboard.yml, 3 hosts, one lost mid-run: {first_run:.1f} s")


def test_a_cluster_info_ca_that_is_not_pinned_fails_the_join_and_is_recorded(env: OnboardingLab) -> None:
    """The lost host comes back (fresh, as after a reinstall). cluster-info now presents another CA (as a
    man in the middle would): the pinned CA hash refuses it, the provider stays Approved with the reason."""
    lost = env.lab.hosts[-1]
    env.lab.restart_hosts([lost], keep_config=True)
    env.prepare(lost)
    with env.kube.api_client() as api:
        core = k8s.CoreV1Api(api)
        info = core.read_namespaced_config_map("cluster-info", "kube-public")
        genuine = info.data["kubeconfig"]
        other_ca, _ = make_ca("not-the-cluster-ca")
        info.data["kubeconfig"] = cluster_info_kubeconfig(
            env.kube.url_for(env.lab.gateway), other_ca.cert_pem
        )
        core.replace_namespaced_config_map("cluster-info", "kube-public", info)
        try:
            proc = env.playbook("onboard.yml", *SHORT_JOIN)
        finally:
            info = core.read_namespaced_config_map("cluster-info", "kube-public")
            info.data["kubeconfig"] = genuine
            core.replace_namespaced_config_map("cluster-info", "kube-public", info)
    assert proc.returncode == 2, proc.stdout[-3000:]
    status, error = statuses(env)[lost.name]
    assert status is Status.APPROVED
    assert "kubeadm join failed" in error and "none of the public keys" in error, error
    print(f"recorded: {error}")
    assert not TOKEN_RE.search(error) and not TOKEN_RE.search(proc.stdout)


def test_a_token_gone_before_the_join_fails_it_and_is_recorded(env: OnboardingLab) -> None:
    """The token expires (the token cleaner deletes it) between the lookup that issued it and the join."""
    lost = env.lab.hosts[-1]
    config = lost.private_path("/etc/kubernetes/worldland-join.yaml")
    fleet = env.fleet()
    run = subprocess.Popen(
        [str(BIN / "ansible-playbook"), "-i", str(env.inventory), str(REPO / "playbooks" / "onboard.yml"),
         *SHORT_JOIN], cwd=REPO, env=env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(config.exists, 300, "the join configuration to be written", interval=0.02)
    token_id = fleet.store.require(env.provider_id(lost)).token_id
    with env.kube.api_client() as api:
        k8s.CoreV1Api(api).delete_namespaced_secret(f"bootstrap-token-{token_id}", "kube-system")
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 2, out[-3000:]
    status, error = statuses(env)[lost.name]
    assert status is Status.APPROVED and "kubeadm join failed" in error, error
    print(f"recorded: {error}")
    assert not TOKEN_RE.search(error) and not TOKEN_RE.search(out)
    assert not config.exists()  # removed whatever happened


def test_the_next_run_completes_the_lost_host(env: OnboardingLab) -> None:
    started = time.monotonic()
    proc = subprocess.run(onboard_argv(env), cwd=REPO, env=env.env, capture_output=True, text=True,
                          timeout=800, check=False)  # fmt: skip
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert statuses(env) == {h.name: (Status.AVAILABLE, "") for h in env.lab.hosts}
    fleet = env.fleet()
    with env.kube.api_client() as api:
        core = k8s.CoreV1Api(api)
        for host in env.lab.hosts:
            record = fleet.store.require(env.provider_id(host))
            node = core.read_node(record.node_name)
            ready = {c.type: c.status for c in node.status.conditions}["Ready"]
            assert ready == "True", host.name
            assert node.status.allocatable[GPU_RESOURCE] == str(len(host.gpus.models)), host.name
            assert node.metadata.labels[LABEL_RENTAL_TYPE] == RENTAL_TYPE_GPU
            assert any(a.address == host.address for a in node.status.addresses), node.status.addresses
            assert node.status.node_info.kubelet_version == "v1.32.13"
            assert node.status.node_info.container_runtime_version.startswith("containerd://")
            # the join configuration held a token: it is gone
            assert host.run("test ! -e /etc/kubernetes/worldland-join.yaml", check=False).returncode == 0
            assert host.run("dpkg-query -W -f '${db:Status-Abbrev}' kubelet").stdout.startswith("hi")
    print(f"the lost host's retry: {time.monotonic() - started:.1f} s")


def test_a_second_run_changes_nothing(env: OnboardingLab) -> None:
    """The same roles over the now Available hosts: every task finds its work done."""
    inventory = env.write_inventory(statuses=("available",), name="inventory-available")
    proc = env.playbook("onboard.yml", "-e", "worldland_onboard_hosts=available", inventory=inventory)
    assert proc.returncode == 0, proc.stdout[-4000:]
    recap = dict(re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", proc.stdout, re.MULTILINE))
    assert len(recap) == 4, proc.stdout[-2000:]  # localhost and the three hosts
    assert set(recap.values()) == {"0"}, proc.stdout[-6000:]


def test_offboard_one_host(env: OnboardingLab) -> None:
    """offboard.yml on one Available host: on the controller its node cordoned, drained and deleted, its join
    token revoked, its capacity released, the provider Removed; on the host the kubelet stopped and disabled,
    ``kubeadm reset`` and what it leaves removed. The other two stay Available; a second run changes nothing.

    Lab hosts share this machine's PID namespace (``pgrep kubelet`` in one sees every host's kubelet), so a
    host's kubelet is looked for among the processes of its network namespace. The device-plugin stand-in is
    a host process here; on a real host it is a DaemonSet pod that ``kubeadm reset`` removes with every
    container, so it is stopped first, as reset would (it would put its socket back in /var/lib/kubelet)."""
    from pathlib import Path

    from worldland.domain.names import LABEL_PROVIDER_ID, label_value

    gone, others = env.lab.hosts[0], env.lab.hosts[1:]

    def kubelets(host: LabHost) -> list[int]:
        return [p for p in netns_pids(host.netns) if Path(f"/proc/{p}/comm").read_text().strip() == "kubelet"]

    fleet = env.fleet()
    pid = env.provider_id(gone)
    record = fleet.store.require(pid)
    node, token_id = record.node_name, record.token_id
    assert record.status is Status.AVAILABLE and not fleet.ledger.get(pid).empty
    assert kubelets(gone), "the host's kubelet runs before it is offboarded"
    plugin = gone.dir / "device-plugin.pid"
    if plugin.exists():
        kill_pids([int(plugin.read_text())])
    inventory = env.write_inventory(statuses=("available", "removed"), name="inventory-offboard")
    started = time.monotonic()
    proc = env.playbook("offboard.yml", "-e", f"worldland_offboard_hosts={node}", inventory=inventory)
    assert proc.returncode == 0, proc.stdout[-6000:]
    recap = dict(re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", proc.stdout, re.MULTILINE))
    assert set(recap) == {"localhost", node} and int(recap[node]) > 0, proc.stdout[-3000:]

    with env.kube.api_client() as api:
        core = k8s.CoreV1Api(api)
        nodes = {n.metadata.name for n in core.list_node().items}
        assert node not in nodes and {node_of(env, h) for h in others} <= nodes
        tokens = core.list_namespaced_secret(
            "kube-system", field_selector="type=bootstrap.kubernetes.io/token"
        )
        assert not [
            s for s in tokens.items if (s.metadata.labels or {}).get(LABEL_PROVIDER_ID) == label_value(pid)
        ]
        assert not token_id or f"bootstrap-token-{token_id}" not in {s.metadata.name for s in tokens.items}
    assert kubelets(gone) == [] and all(kubelets(h) for h in others)
    unit = gone.units()["kubelet.service"]
    assert not unit.get("active") and not unit.get("enabled"), unit
    assert gone.run("test ! -e /etc/kubernetes/kubelet.conf", check=False).returncode == 0
    assert gone.run("ls -A /var/lib/kubelet /etc/cni/net.d").stdout.split() == [
        "/etc/cni/net.d:",
        "/var/lib/kubelet:",
    ]
    record = fleet.store.require(pid)
    assert (record.status, record.token_id, record.last_error) == (Status.REMOVED, "", "")
    assert fleet.ledger.get(pid).empty  # its capacity released: nothing offered, nothing held
    after = statuses(env)
    assert all(after[h.name] == (Status.AVAILABLE, "") for h in others), after
    print(f"offboard.yml, one host: {time.monotonic() - started:.1f} s")

    again = env.playbook("offboard.yml", "-e", f"worldland_offboard_hosts={node}", inventory=inventory)
    assert again.returncode == 0, again.stdout[-4000:]
    recap = dict(re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", again.stdout, re.MULTILINE))
    assert recap == {"localhost": "0", node: "0"}, again.stdout[-6000:]
