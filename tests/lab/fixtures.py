"""pytest fixtures for the SSH lab (registered by ``pytest_plugins`` in tests/conftest.py).

``lab`` is a factory: ``view = lab(n=3, gpus="A100:2", kubeconfig=..., redis_url=...)``. One lab per test
session (per xdist worker: each gets its own subnet and names) is started on first use and grown as tests
ask for more hosts, so 25 hosts start once. Each call hands out the first ``n`` hosts, restarted fresh
(private directories wiped, stand-in state reset, processes in their namespaces killed; same addresses and
host keys) unless ``fresh=False``, configured with ``gpus`` (default: one RTX 4090 each) and with the
Redis URL / kubeconfig given, and writes an inventory of exactly those hosts.

``kube_lab`` is the same factory for a second session lab in kube mode (``Lab(kube=True)``: hosts that
install real packages with apt/dpkg and run a real containerd and kubelet; see tests/lab/lab.py), with
the same ``LabView``; its hosts have ``kubelet_cgroup_root`` and ``pod_cidr``. A session lab cannot
switch modes, so the two are separate labs (own subnet, names and hosts), each started on first use.

``lab_gateway`` is the bridge address in the root namespace: a server the hosts must reach (the
Kubernetes API test server, Redis) has to listen there - the hosts have no route to 127.0.0.1 of this
machine.

The lab is torn down at the end of the session, on SIGTERM (turned into KeyboardInterrupt so pytest
unwinds), and at interpreter exit; a session killed with -9 leaves it behind and the next lab start
removes it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.lab.gpus import GpuPlan, HostGpus
from tests.lab.lab import SSHD, Lab, LabHost

ANSIBLE_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


@dataclass
class LabView:
    """What a test gets: ``n`` hosts of the session's lab, and an inventory of just them."""

    lab: Lab
    hosts: list[LabHost]
    inventory: Path

    @property
    def gateway(self) -> str:
        return self.lab.gateway

    @property
    def kube(self) -> bool:
        """Whether the hosts are kube-mode hosts (real packages, containerd, kubelet)."""
        return self.lab.kube

    @property
    def subnet(self) -> str:
        return self.lab.subnet

    @property
    def dir(self) -> Path:
        return self.lab.dir

    @property
    def redis_url(self) -> str | None:
        return self.lab.attached.get("redis_url")

    @property
    def kubeconfig(self) -> str | None:
        return self.lab.attached.get("kubeconfig")

    def ansible(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """``ansible -i <this view's inventory> ARGS`` with the project's ansible from .venv."""
        return subprocess.run(
            [str(ANSIBLE_BIN / "ansible"), "-i", str(self.inventory), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


class LabPool:
    """The session's lab, started lazily (with no host) and grown on demand (``kube``: in kube mode)."""

    def __init__(self, kube: bool = False, **lab_options: Any) -> None:
        self.kube = kube
        self.lab_options = lab_options  # more Lab() arguments (device_plugin=...)
        self._lab: Lab | None = None
        self._handed_out: set[str] = set()

    @property
    def lab(self) -> Lab:
        if self._lab is None:
            missing = [
                t for t in ("ip", "unshare", "nsenter", "ssh", "ssh-keygen", SSHD) if shutil.which(t) is None
            ]
            if os.geteuid() != 0 or missing:
                pytest.skip(f"the SSH lab needs root and {', '.join(missing) or 'its tools'} (make install)")
            self._lab = Lab(hosts=0, kube=self.kube, **self.lab_options).start()
        return self._lab

    def view(
        self,
        n: int = 1,
        gpus: str | list[str | HostGpus] | GpuPlan | None = None,
        fresh: bool = True,
        kubeconfig: str | Path | None = None,
        redis_url: str | None = None,
        **settings: Any,
    ) -> LabView:
        lab = self.lab
        if n > len(lab.hosts):
            lab.add_hosts(n - len(lab.hosts))
        hosts = lab.hosts[:n]
        dirty = [h for h in hosts if h.name in self._handed_out]
        if fresh and dirty:
            lab.restart_hosts(dirty)
        lab.attached = {}  # what an earlier test attached (its servers may be gone) does not carry over
        lab.attach(kubeconfig=kubeconfig, redis_url=redis_url)
        plan = GpuPlan.parse(gpus)
        for i, host in enumerate(hosts):
            host.configure(gpus=plan.for_host(i), **settings)
        self._handed_out |= {h.name for h in hosts}
        inventory = lab.write_inventory(hosts, lab.dir / f"inventory-{n}.yml")
        return LabView(lab, hosts, inventory)

    def close(self) -> None:
        if self._lab is not None:
            self._lab.stop()
            self._lab = None


def _sigterm_to_interrupt() -> Callable[[], None]:
    """While the lab is up, SIGTERM unwinds pytest (fixture teardown runs) instead of killing it."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        return lambda: None

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def lab_pool() -> Iterator[LabPool]:
    restore = _sigterm_to_interrupt()
    pool = LabPool()
    try:
        yield pool
    finally:
        pool.close()
        restore()


@pytest.fixture(scope="session")
def kube_lab_pool() -> Iterator[LabPool]:
    restore = _sigterm_to_interrupt()
    pool = LabPool(kube=True)
    try:
        yield pool
    finally:
        pool.close()
        restore()


@pytest.fixture(scope="session")
def lab_gateway(lab_pool: LabPool) -> str:
    """Address of the lab bridge on this machine: where servers for the lab's hosts must listen."""
    return lab_pool.lab.gateway


@pytest.fixture
def lab(lab_pool: LabPool) -> Callable[..., LabView]:
    """``lab(n=1, gpus=None, fresh=True, kubeconfig=None, redis_url=None, **host_settings) -> LabView``."""
    return lab_pool.view


@pytest.fixture
def kube_lab(kube_lab_pool: LabPool) -> Callable[..., LabView]:
    """``lab``'s factory for the session's kube-mode lab (real packages, containerd and kubelet)."""
    return kube_lab_pool.view
