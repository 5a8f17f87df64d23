"""Services the systemctl stand-in runs for real: units whose file the host itself wrote to its
``/etc/systemd/system`` with an ``ExecStart=``.

Only the host's own unit files count (the copy in its private directory): through the overlay a host also
sees this machine's ``/etc/systemd/system`` (``sshd.service``, ``redis.service``, ...), and those must never
start inside a lab host. The command starts in the background in the host's namespaces (so the lab's
teardown by PID and namespace removes it), in a new session with a systemd-like environment, its output
appended to ``/var/log/worldland/<unit>.log``; it is stopped by its recorded PID and start time.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UNIT_DIR = "/etc/systemd/system"
LOG_DIR = Path("/var/log/worldland")
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # systemd's default
STOP_TIMEOUT_S = 5.0  # SIGTERM, then SIGKILL after this long (systemd: TimeoutStopSec)


@dataclass(frozen=True)
class Service:
    argv: list[str]
    environment: dict[str, str]
    working_directory: str


def own_unit_file(cfg: dict[str, Any], name: str) -> Path | None:
    """``/etc/systemd/system/<name>`` when the host wrote it (its private copy exists), else None."""
    path = Path(UNIT_DIR) / name
    private = Path(cfg["units_state"]).parent / "upper" / UNIT_DIR.lstrip("/") / name
    if path.is_file() and not path.is_symlink() and private.is_file():
        return path
    return None


def parse_service(text: str) -> Service | None:
    """The ``[Service]`` section's command (the last ``ExecStart=``; an empty one resets), its
    ``Environment=`` and ``WorkingDirectory=``; None without a command."""
    section = ""
    command = ""
    environment: dict[str, str] = {}
    working_directory = "/"
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if section != "Service" or not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "ExecStart":
            command = value
        elif key == "Environment":
            for item in shlex.split(value):
                var, _, setting = item.partition("=")
                environment[var] = setting
        elif key == "WorkingDirectory":
            working_directory = value.lstrip("-") or "/"
    argv = shlex.split(command.lstrip("-@+!:")) if command else []
    return Service(argv, environment, working_directory) if argv else None


def service_of(cfg: dict[str, Any], name: str) -> Service | None:
    path = own_unit_file(cfg, name)
    return None if path is None else parse_service(path.read_text(encoding="utf-8", errors="replace"))


def proc_start(pid: int) -> int | None:
    """Start time in clock ticks (field 22 of /proc/PID/stat); None when gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def running(unit: dict[str, Any]) -> bool:
    """Whether the process the stand-in started for ``unit`` still lives (same PID and start time)."""
    start = unit.get("pid_start")
    return start is not None and proc_start(int(unit.get("pid", 0))) == start


def start(name: str, service: Service) -> dict[str, Any]:
    """Start the command in the background; what to record in the unit's state (OSError: not started)."""
    LOG_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}.log"
    env = {"PATH": SERVICE_PATH, "LANG": "C.UTF-8", **service.environment}
    with open(log_path, "ab") as out:
        out.write(f"-- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {shlex.join(service.argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            service.argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=service.working_directory,
            env=env,
            start_new_session=True,  # outlives the SSH session that ran systemctl
            close_fds=True,
        )
    return {"pid": proc.pid, "pid_start": proc_start(proc.pid), "exec": service.argv, "log": str(log_path)}


def stop(unit: dict[str, Any], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the recorded process, SIGKILL it if it is still there after ``timeout``; by PID only."""
    if running(unit):
        pid = int(unit["pid"])
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while running(unit) and time.monotonic() < deadline:
                time.sleep(0.02)
            if not running(unit):
                break
    unit.pop("pid_start", None)


def refresh(state: dict[str, dict[str, Any]]) -> None:
    """Units whose process has exited are no longer active."""
    for name, unit in state.items():
        if not name.startswith("_") and unit.get("pid_start") is not None and not running(unit):
            unit["active"] = False
            unit.pop("pid_start")
            unit["exited"] = unit.get("exited", 0) + 1
