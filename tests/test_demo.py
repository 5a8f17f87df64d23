"""``make demo``: ``python -m demo`` run as an operator runs it (a subprocess, output to a pipe: plain lines).

The whole flow on two lab hosts (real sshd, apt, containerd, kubelet and ``kubeadm join`` against the real
control plane of ``../shared/kube``, a real Prometheus): exit 0, every phase reported done, both providers
Available in the final ``worldland status``, no bootstrap token anywhere in the output, and nothing of it left
on this machine afterwards (namespaces, links, routes, processes, its directory). The same on one host with
``../shared/kube`` taken away (``$WORLDLAND_REALKUBE=0``): the Kubernetes API test server and the lab's
kubeadm stand-in instead, and the output says so. A phase that fails (a wheelhouse without wheels) and Ctrl-C
mid-run both stop it, tear everything down and say so.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demo.flow import PHASES
from demo.report import Reporter, scrub
from testkit.realkube import DISABLE_ENV
from tests.lab.lab import NET_BASE

REPO = Path(__file__).resolve().parent.parent
TOKEN_RE = re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}")
WORKDIR_RE = re.compile(r"lives in (/tmp/wldemo-\S+) and goes")
SLOT_RE = re.compile(r"provider host wl(\d+)-h01 at")
pytestmark = pytest.mark.timeout(900)  # the whole demo takes 2-5 minutes on 2 cores


def demo_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "demo", *args]


@pytest.fixture(scope="module")
def can_run_lab() -> None:
    """Root and Prometheus: what the demo needs with any cluster."""
    if os.geteuid() != 0:
        pytest.skip("the demo's lab hosts need root")
    from testkit import prometheus

    prom = prometheus.available()
    if not prom:
        pytest.skip(f"no Prometheus ({prom.reason})")


@pytest.fixture(scope="module")
def can_run(can_run_lab: None) -> None:
    """... and the real control plane of ../shared/kube."""
    from testkit.realkube import available

    kube = available()
    if not kube:
        pytest.skip(f"no real control plane ({kube.reason}): the demo joins real kubelets")


def leftovers(output: str) -> list[str]:
    """What of the demo whose output this is is still on this machine, checked with the system's tools."""
    workdir = WORKDIR_RE.search(output)
    assert workdir, output[:500]
    directory = workdir.group(1)
    left = [f"directory {directory}"] if Path(directory).exists() else []
    pgrep = subprocess.run(["pgrep", "-af", directory], capture_output=True, text=True, check=False)
    left += [f"process {line}" for line in pgrep.stdout.splitlines()]
    slot = SLOT_RE.search(output)
    if slot:
        prefix = f"wlab{slot.group(1)}"
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        left += [f"netns {n}" for n in re.findall(rf"^({prefix}-h\d+)\b", netns, re.MULTILINE)]
        links = subprocess.run(
            ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True
        ).stdout
        left += [f"link {n}" for n in re.findall(rf"^\d+: ({prefix}(?:h\d+)?)[@:]", links, re.MULTILINE)]
        routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True,
                                check=True).stdout  # fmt: skip
        subnet = f"{NET_BASE}.{slot.group(1)}.0/24"
        left += [f"route {line}" for line in routes.splitlines() if subnet in line]
    return left


def test_the_demo_runs_end_to_end_and_leaves_nothing(can_run: None) -> None:
    started = time.monotonic()
    proc = subprocess.run(demo_argv("--hosts", "2"), cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)  # fmt: skip
    took = time.monotonic() - started
    output = proc.stdout + proc.stderr
    print(output)
    assert proc.returncode == 0, output[-4000:]
    assert re.search(
        r"^ *Kubernetes: real kube-apiserver v1\.32\.\d+ from \.\./shared/kube, API at ", output, re.M
    )
    assert "kubelet/kubeadm: real v1.32.13 from ../shared/kube" in output
    assert "deploy/kubernetes's ServiceAccount token alone" in output
    check_the_whole_flow(output, hosts=2)
    print(f"python -m demo --hosts 2: {took:.1f} s")


def test_without_shared_kube_it_runs_on_the_kubernetes_api_test_server(can_run_lab: None) -> None:
    """../shared/kube taken away: the test server is the cluster and the lab's kubeadm stand-in registers the
    Node, Ready with the host's GPUs; the output says so, and the rest of the flow is the same."""
    started = time.monotonic()
    env = {**os.environ, DISABLE_ENV: "0"}
    proc = subprocess.run(demo_argv("--hosts", "1"), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=400, check=False)  # fmt: skip
    took = time.monotonic() - started
    output = proc.stdout + proc.stderr
    print(output)
    assert proc.returncode == 0, output[-4000:]
    server = r"the project's Kubernetes API test server, testkit/kube_server"
    assert re.search(rf"^ *Kubernetes: {server} \(\${DISABLE_ENV}=0\), API at https://", output, re.M), output
    assert "no kubelet joins it: the kubeadm stand-in" in output
    assert "kubelet/kubeadm: stand-in" in output
    assert "the test server's admin token (it has no RBAC)" in output
    assert "real kube-apiserver" not in output
    # the stand-in's Node: Ready, the host's 2 (stand-in) RTX 4090s allocatable, the package's version
    assert re.search(r"Ready=True, nvidia\.com/gpu=2, kubelet v1\.32\.13, containerd://", output), output
    check_the_whole_flow(output, hosts=1)
    print(f"{DISABLE_ENV}=0 python -m demo --hosts 1: {took:.1f} s")


def check_the_whole_flow(output: str, hosts: int) -> None:
    """Every phase done, every provider Available at the end, the audit through Offline and back with the
    alert, no token shown, nothing left on this machine."""
    for index, phase in enumerate(PHASES, 1):
        assert re.search(
            rf"^\[{index}/{len(PHASES)}\] {phase.name}: done in \d+\.\d s$", output, re.MULTILINE
        )
    assert output.count("stands in for: ") == len(PHASES)
    assert not TOKEN_RE.search(output), TOKEN_RE.search(output)

    providers = re.findall(r"registered as provider (\S+)$", output, re.MULTILINE)
    assert len(providers) == hosts, providers
    summary = output[output.index("$ worldland status", output.index(f"] {PHASES[-1].name}: ")) :]
    table = summary[: summary.index("nodes, as the Kubernetes API has them")]
    assert f"providers: {hosts} available" in table, table
    for provider in providers:
        row = next(line for line in table.splitlines() if provider in line)
        assert re.search(r"\bavailable\b", row), row
    nodes = summary[summary.index("nodes, as the Kubernetes API has them") :]
    assert nodes.count("worldland.io/rental-status=available") == hosts, nodes
    assert "worldland.io/offline" not in nodes  # the audited host's taint was removed again
    # the audit phase really went through Offline and back, with the alert from Prometheus's own API
    assert re.search(r": available -> offline, \d+ s after its agent stopped$", output, re.MULTILINE)
    assert "worldland.io/rental-status=offline, taints worldland.io/offline:NoSchedule" in output
    assert re.search(r"/api/v1/alerts: WorldlandProvidersOffline firing since ", output)
    assert re.search(r": offline -> available, \d+ s after it started again$", output, re.MULTILINE)
    assert "Prometheus: WorldlandProvidersOffline no longer firing" in output

    assert "demo finished: every phase passed, nothing left running" in output
    assert leftovers(output) == []


def test_a_failing_phase_is_named_and_everything_is_torn_down(can_run_lab: None, tmp_path: Path) -> None:
    """A wheelhouse without wheels: the agents phase fails with the role's reason, after the lab, Redis,
    control plane and Prometheus are up; all of them go."""
    empty = tmp_path / "wheelhouse"
    empty.mkdir()
    proc = subprocess.run(demo_argv("--hosts", "1", "--wheelhouse", str(empty)), cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    output = proc.stdout + proc.stderr
    print(output)
    assert proc.returncode == 1, output[-3000:]
    assert re.search(r"^\[1/\d\] lab: done in", output, re.MULTILINE)
    assert re.search(
        r"^\[2/\d\] agents: FAILED after \d+\.\d s: install_agent\.yml failed", output, re.MULTILINE
    )
    assert f"no worldland wheel in {empty}" in output
    assert re.search(r"^demo: failed in phase 2/\d 'agents': ", proc.stderr, re.MULTILINE), proc.stderr
    assert "teardown: done in" in output
    assert "[3/" not in output  # nothing ran after the failure
    assert leftovers(output) == []


def test_ctrl_c_stops_it_and_tears_everything_down(can_run_lab: None) -> None:
    """SIGINT while Ansible installs the agents (a playbook and its SSH sessions running): exit 130."""
    demo = subprocess.Popen(demo_argv("--hosts", "1"), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert demo.stdout is not None
    output = io.StringIO()
    deadline = time.monotonic() + 240
    try:
        for line in demo.stdout:
            output.write(line)
            if line.startswith("      wheelhouse: ") or time.monotonic() > deadline:
                break  # install_agent.yml starts now
        time.sleep(3)
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
    output.write(rest)
    text = output.getvalue()
    print(text)
    assert demo.returncode == 130, text[-3000:]
    assert re.search(r"^\[2/\d\] agents: interrupted after \d+\.\d s \(SIGINT\)$", text, re.MULTILINE)
    assert "teardown: done in" in text
    assert leftovers(text) == []


def test_tokens_never_reach_the_output() -> None:
    """What the demo prints goes through one writer that masks bootstrap tokens, whoever printed them."""
    token = "abcdef.0123456789abcdef"
    assert scrub(f"kubeadm join 10.0.0.1:6443 --token {token} --discovery-token-ca-cert-hash sha256:00") == (
        "kubeadm join 10.0.0.1:6443 --token ******.**************** --discovery-token-ca-cert-hash sha256:00"
    )
    out = io.StringIO()
    report = Reporter(total=1, stream=out, interactive=False)
    report.phase_started(1, "onboarding", "join", "kubeadm")
    report.step(f"join line: --token {token}")
    report.show(f"a renderable with {token} in it")
    report.phase_finished(1, "onboarding", 1.25)
    text = out.getvalue()
    assert token not in text and text.count("******.****************") == 2
    assert "[1/1] onboarding: done in 1.2 s" in text
    # provider text is shown literally: rich markup in it is not interpreted, control characters escaped
    report.step("[bold red]not markup[/] \x1b[2J")
    assert "[bold red]not markup[/] \\x1b[2J" in out.getvalue()
