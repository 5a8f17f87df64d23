"""Figures for the lab: start and teardown times, and `ansible -m ping` over 1, 5, 25 hosts.

    python -m tests.lab bench [--sizes 1,5,25] [--json FILE]

For each size, in one run: start a lab of N hosts (network + sshd per host, until every sshd answers),
`ansible all -m ping` with host key checking on - cold (new SSH connections) with ansible's default
5 forks and with N forks, then warm (control masters reused) with N forks - and the teardown.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

from tests.lab.lab import Lab, lab_resources

ANSIBLE = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "ansible"


def _ping(lab: Lab, forks: int) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(ANSIBLE), "-i", str(lab.inventory), "all", "-m", "ping", "-f", str(forks)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    elapsed = time.monotonic() - t0
    ok = proc.stdout.count("SUCCESS")
    if proc.returncode != 0 or ok != len(lab.hosts):
        raise RuntimeError(
            f"ping failed ({ok}/{len(lab.hosts)} ok): {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
        )
    return elapsed


def _close_masters(lab: Lab) -> None:
    for host in lab.hosts:
        subprocess.run(
            [*host.ssh_argv()[:-1], "-O", "exit", f"root@{host.address}"], capture_output=True, check=False
        )


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        "?",
    )
    ansible = subprocess.run([str(ANSIBLE), "--version"], capture_output=True, text=True, check=False).stdout
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False).stderr.strip()
    return {
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "ansible": ansible.splitlines()[0] if ansible else "?",
        "openssh": ssh,
    }


def run(sizes: list[int], json_path: str | None = None) -> list[dict[str, float]]:
    results = []
    for n in sizes:
        t0 = time.monotonic()
        lab = Lab(hosts=n).start()
        start_s = time.monotonic() - t0
        try:
            cold_default = _ping(lab, 5)
            _close_masters(lab)
            cold_n = _ping(lab, n)
            warm_n = _ping(lab, n)
        finally:
            t1 = time.monotonic()
            lab.stop()
            stop_s = time.monotonic() - t1
        left = lab_resources()
        if any(left.values()):
            raise RuntimeError(f"teardown left {left}")
        row = {
            "hosts": n,
            "start_s": round(start_s, 2),
            "ping_cold_forks5_s": round(cold_default, 2),
            "ping_cold_forksN_s": round(cold_n, 2),
            "ping_warm_forksN_s": round(warm_n, 2),
            "stop_s": round(stop_s, 2),
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    info = machine()
    print(
        "\n| hosts | lab start | ping, cold, 5 forks | ping, cold, N forks | ping, warm, N forks | teardown |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['hosts']} | {r['start_s']:.2f} s | {r['ping_cold_forks5_s']:.2f} s "
            f"| {r['ping_cold_forksN_s']:.2f} s "
            f"| {r['ping_warm_forksN_s']:.2f} s | {r['stop_s']:.2f} s |"
        )
    print("\n" + ", ".join(f"{k}: {v}" for k, v in info.items()))
    if json_path:
        Path(json_path).write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")
    return results
