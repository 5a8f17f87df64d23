"""``worldland-provider install``: the config (mode 0600 in a 0700 directory) and a systemd unit that runs
the agent and restarts it on failure, enabled and started. Idempotent: only what differs is written;
``dry_run`` says what would be written and writes nothing."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

UNIT_NAME = "worldland-provider.service"
UNIT_DIR = Path("/etc/systemd/system")
Run = Callable[..., subprocess.CompletedProcess[str]]


@dataclass(frozen=True, slots=True)
class PlannedFile:
    path: Path
    content: str
    mode: int
    yaml: bool = False  # compared by meaning (the same settings in another layout are the same file)

    def differs(self) -> bool:
        try:
            current = self.path.read_text(encoding="utf-8")
            same = _loaded(current) == _loaded(self.content) if self.yaml else current == self.content
            return not same or (self.path.stat().st_mode & 0o777) != self.mode
        except FileNotFoundError:
            return True


def _loaded(text: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def unit_text(executable: str, config: Path, state_dir: Path) -> str:
    # Exit 11 (rejected) is final: restarting would only be refused again.
    return f"""[Unit]
Description=WorldLand provider agent (registers this machine and heartbeats)
Wants=network-online.target
After=network-online.target

[Service]
ExecStart={executable} --config {config} run --state-dir {state_dir}
Restart=on-failure
RestartSec=5
RestartPreventExitStatus=11 2
NoNewPrivileges=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
"""


def plan(
    config: Path, settings: dict[str, Any], executable: str, state_dir: Path, unit_dir: Path = UNIT_DIR
) -> list[PlannedFile]:
    text = yaml.safe_dump({k: v for k, v in settings.items() if v is not None}, sort_keys=True)
    return [
        PlannedFile(config, text, 0o600, yaml=True),
        PlannedFile(unit_dir / UNIT_NAME, unit_text(executable, config, state_dir), 0o644),
    ]


def apply(files: list[PlannedFile], *, dry_run: bool, run: Run = subprocess.run) -> list[Path]:
    """Write what differs, then (when anything did) enable the unit and restart it so the new config and
    unit take effect; returns what changed. A secret file's directory is kept at 0700."""
    changed = [
        f for f in files if f.differs() or (f.mode == 0o600 and _mode(f.path.parent) not in (None, 0o700))
    ]
    if dry_run:
        return [f.path for f in changed]
    for planned in changed:
        private = planned.mode == 0o600
        planned.path.parent.mkdir(mode=0o700 if private else 0o755, parents=True, exist_ok=True)
        if private:
            os.chmod(planned.path.parent, 0o700)
        tmp = planned.path.with_name(planned.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, planned.mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(planned.content)
        os.chmod(tmp, planned.mode)
        os.replace(tmp, planned.path)
    if changed:
        for args in (
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", UNIT_NAME],
            ["systemctl", "restart", UNIT_NAME],  # starts it when stopped
        ):
            run(args, check=True, capture_output=True, text=True, timeout=60)
    return [f.path for f in changed]


def _mode(path: Path) -> int | None:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return None
