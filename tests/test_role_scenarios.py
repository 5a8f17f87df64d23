"""The onboarding roles' Molecule scenarios (``roles/<role>/molecule/default``), each ``molecule test``
against its own kube-mode lab host: create and destroy are the playbooks the scenarios share
(tests/lab/molecule/, ``python -m tests.lab.onboarding up|down``); converge, idempotence and verify are the
role's.

- nvidia_driver: the lab's driver package installed, held, answering nvidia-smi; nouveau blacklisted;
- container_runtime: containerd, runc, CNI plugins and the NVIDIA container toolkit; containerd serving with
  the nvidia runtime; the CDI spec of the host's GPUs;
- kubernetes_node (containerd first, in prepare.yml): kubelet and kubeadm v1.32.13 held, kernel modules and
  sysctls through the lab's stand-ins, the kubelet's flags;
- kubeadm_join (the three roles before it, then the provider registered and approved, in prepare.yml): a
  real kubeadm join; the node Ready in the real kube-apiserver;
- apt_source: the lab's signed repository as one source, its key fetched by URL; apt reads it;
- audit_cron (Debian's real cron and the role's user, in prepare.yml): the crontab entry and the Redis URL
  line as the real crontab writes them, the log and lock directories; the entry run as cron runs it;
- kubeadm_reset (what kubeadm_join's prepares, then the join, in prepare.yml): the kubelet stopped and
  disabled, a real kubeadm reset; the join's files, the CNI configuration and state, the kubelet's directory
  and the iptables rules gone, the packages kept.

The selected scenarios run two at a time (``WORLDLAND_MOLECULE_JOBS``), longest first: each is mostly
waiting on SSH round trips, package scripts and the apiserver, so two share this machine's cores well.
Each run is watched from here: once its lab is up, its state (tests/lab/onboarding.py) names the lab's
namespaces, cgroups and processes, and after ``molecule test`` none of them, nor the lab's directory, may be
left. Their times are printed (``-s``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testkit.realkube import available
from tests.lab.lab import SSHD, lab_cgroups, netns_names
from tests.lab.onboarding import running

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# in the order onboard.yml runs them, then the roles the others include or that run elsewhere
SCENARIOS = (
    "nvidia_driver", "container_runtime", "kubernetes_node", "kubeadm_join", "apt_source", "audit_cron",
    "kubeadm_reset",
)  # fmt: skip
LONGEST_FIRST = (
    "kubeadm_reset", "kubeadm_join", "kubernetes_node", "container_runtime", "nvidia_driver", "audit_cron",
    "apt_source",
)  # fmt: skip
JOBS = int(os.environ.get("WORLDLAND_MOLECULE_JOBS", "2"))
ENV = {"ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "PY_COLORS": "0", "NO_COLOR": "1"}
TEST = "test_the_role_scenario_passes_and_leaves_nothing"


def lab_dir_of(ephemeral: Path) -> Path:
    """The lab directory tests/lab/molecule/vars.yml names after the scenario's ephemeral directory."""
    digest = hashlib.sha1(str(ephemeral).encode(), usedforsecurity=False).hexdigest()
    return Path(f"/tmp/wl-molecule-{digest[:8]}")


@dataclass
class Run:
    role: str
    ephemeral: Path
    result: subprocess.CompletedProcess[str]
    took: float
    state: dict[str, Any] | None  # the lab's, read while it was up
    lab_dir_left: bool


def watch_state(path: Path, done: threading.Event, seen: list[dict[str, Any]]) -> None:
    """Reads the lab's state as soon as create.yml has started it (destroy.yml removes it)."""
    while not seen and not done.wait(0.2):
        try:
            seen.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue


def molecule_test(role: str, ephemeral: Path) -> Run:
    """``molecule test`` of the role's scenario, with its own ephemeral directory (and so its own lab)."""
    lab_dir = lab_dir_of(ephemeral)
    env = {**os.environ, **ENV, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["MOLECULE_EPHEMERAL_DIRECTORY"] = str(ephemeral)
    seen: list[dict[str, Any]] = []
    done = threading.Event()
    watcher = threading.Thread(
        target=watch_state, args=(lab_dir / "onboarding.json", done, seen), daemon=True
    )
    watcher.start()
    t0 = time.monotonic()
    try:
        result = subprocess.run(
            [str(BIN / "molecule"), "test"], cwd=REPO / "roles" / role, env=env, capture_output=True,
            text=True, timeout=480, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        result = subprocess.CompletedProcess(exc.cmd, -9, output, "molecule test timed out")
    finally:
        took = time.monotonic() - t0
        done.set()
        watcher.join()
        left = lab_dir.exists()
        if left:  # never leave a lab behind, even when the test fails
            subprocess.run(
                [sys.executable, "-m", "tests.lab.onboarding", "down", "--dir", str(lab_dir)],
                cwd=REPO, capture_output=True, timeout=180, check=False,
            )  # fmt: skip
    return Run(role, ephemeral, result, took, seen[0] if seen else None, left)


@pytest.fixture(scope="module")
def runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[Run]]]:
    """The selected scenarios' runs, started together (``JOBS`` at a time) when the first test needs one."""
    tools = ("ip", "unshare", "nsenter", "ssh", "ssh-keygen", "setpriv", SSHD, "redis-server")
    missing = [t for t in tools if not shutil.which(t)]
    if os.geteuid() != 0 or missing:
        pytest.skip(f"the SSH lab needs root and {', '.join(missing) or 'its tools'} (make install)")
    status = available()
    if not status:
        pytest.skip(f"kube-mode lab hosts need ../shared/kube ({status.reason})")
    selected = {
        item.callspec.params["role"]
        for item in request.session.items
        if getattr(item, "originalname", None) == TEST and hasattr(item, "callspec")
    }
    # short ephemeral directories: the lab's Redis socket is under them
    ephemeral = {role: tmp_path_factory.mktemp(role) / "m" for role in LONGEST_FIRST if role in selected}
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(JOBS, 1)) as pool:
        futures = {role: pool.submit(molecule_test, role, path) for role, path in ephemeral.items()}
        try:
            yield futures
        finally:
            for future in futures.values():
                future.cancel()  # those not started yet (an interrupted session)
    print(f"\nmolecule test of {len(futures)} scenarios, {JOBS} at a time: {time.monotonic() - t0:.1f} s")


def leftovers(state: dict[str, Any]) -> list[str]:
    """What of the lab in ``state`` is still on this machine."""
    names = [h["netns"] for h in state["hosts"]]
    left = [f"netns {ns}" for ns in netns_names() if ns in names]
    left += [f"cgroup {path}" for path in lab_cgroups(state["slot"], names)]
    processes = [state["serve"], *state["processes"], *state["hosts"]]
    left += [f"process {p['pid']}" for p in processes if running(p["pid"], p["start"])]
    return left


def test_down_removes_what_a_killed_lab_left(tmp_path: Path) -> None:
    """``serve`` killed (-9): its Redis has no parent-death signal and stays; ``down`` finds it by its
    working directory, and the lab's namespace and cgroups by the lab's directory."""
    if os.geteuid() != 0 or not available():
        pytest.skip("the SSH lab needs root and ../shared/kube")
    lab_dir = lab_dir_of(tmp_path)
    command = [sys.executable, "-m", "tests.lab.onboarding"]
    state: dict[str, Any] = {"hosts": [], "slot": -1, "serve": {"pid": 0, "start": 0}, "processes": []}
    try:
        up = subprocess.run(
            [*command, "up", "--dir", str(lab_dir)], cwd=REPO, capture_output=True, text=True, timeout=300,
            check=True,
        )  # fmt: skip
        state = json.loads(up.stdout)
        os.kill(state["serve"]["pid"], signal.SIGKILL)
        redis = next(p for p in state["processes"] if p["name"] == "redis-server")
        time.sleep(0.5)
        assert running(redis["pid"], redis["start"])  # what a killed serve leaves
        assert leftovers(state)  # its namespace, its host's sshd
    finally:
        down = subprocess.run(
            [*command, "down", "--dir", str(lab_dir)], cwd=REPO, capture_output=True, text=True, timeout=180,
            check=False,
        )  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert leftovers(state) == []
    assert not lab_dir.exists()


@pytest.mark.slow  # `make test` runs it (nothing deselects slow tests there)
@pytest.mark.timeout(1200)  # its run may wait for others to finish first
@pytest.mark.parametrize("role", SCENARIOS)
def test_the_role_scenario_passes_and_leaves_nothing(role: str, runs: dict[str, Future[Run]]) -> None:
    run = runs[role].result()
    text = run.result.stdout + run.result.stderr
    assert run.result.returncode == 0, text[-8000:]
    steps = re.findall(r"\[default > (\w+)\] Executed: (\w+)", text)
    sequence = ["destroy", "create", "converge", "idempotence", "verify", "destroy"]
    if (REPO / "roles" / role / "molecule" / "default" / "prepare.yml").exists():
        sequence.insert(2, "prepare")
    # idempotence Successful: Molecule ran converge again and no task changed anything
    assert steps == [(step, "Successful") for step in sequence], steps
    recap = re.search(r"default\s+: actions=.*", text)
    assert recap and "failed=0" in recap.group(0), text[-3000:]
    assert run.state is not None, "the lab's state never appeared: " + text[-3000:]
    assert not run.lab_dir_left, "destroy.yml left the lab's directory"
    assert leftovers(run.state) == []
    links = ("onboarding", "known_hosts", "inventory/worldland-lab.yml")  # create.yml's
    assert not [name for name in links if (run.ephemeral / name).exists()]
    print(f"molecule test of {role}: {run.took:.1f} s; {recap.group(0)}")
