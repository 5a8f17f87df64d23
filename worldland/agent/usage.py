"""What a heartbeat reports: CPU and memory usage (psutil) and active jobs (running containers in
containerd's ``k8s.io`` namespace, through ``crictl`` or ``ctr`` when present)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import psutil

Run = Callable[..., subprocess.CompletedProcess[str]]
COMMAND_TIMEOUT_S = 5


def cpu_usage() -> float:
    """CPU use in percent since the previous call (the first call primes the counter and gives 0)."""
    return float(psutil.cpu_percent(interval=None))


def memory_usage() -> float:
    return float(psutil.virtual_memory().percent)


def active_jobs(run: Run = subprocess.run, which: Callable[[str], str | None] = shutil.which) -> int | None:
    """Running containers in the ``k8s.io`` namespace, or None when neither crictl nor ctr can tell."""
    if which("crictl"):
        result = _quiet(run, ["crictl", "ps", "--state", "Running", "--quiet"])
        if result is not None and result.returncode == 0:
            return len([line for line in result.stdout.splitlines() if line.strip()])
    if which("ctr"):
        result = _quiet(run, ["ctr", "--namespace", "k8s.io", "tasks", "list"])
        if result is not None and result.returncode == 0:
            rows = result.stdout.splitlines()[1:]  # TASK PID STATUS
            return sum(1 for row in rows if row.split()[-1:] == ["RUNNING"])
    return None


def _quiet(run: Run, args: list[str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
