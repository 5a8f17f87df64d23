"""What the stand-ins share: the host's config, its unit state (under a lock), and their logs."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CONFIG_ENV = "WORLDLAND_LAB_HOST_CONFIG"


def config() -> dict[str, Any]:
    path = os.environ.get(CONFIG_ENV)
    if not path:
        sys.exit(f"{Path(sys.argv[0]).name}: lab stand-in run outside a lab host ({CONFIG_ENV} is unset)")
    return json.loads(Path(path).read_text())


def write_json(path: str | Path, data: Any) -> None:
    """Atomic replace, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def units(cfg: dict[str, Any]) -> Iterator[dict[str, dict[str, Any]]]:
    """The host's systemd unit state, read and written back under an exclusive lock."""
    path = Path(cfg["units_state"])
    with open(str(path) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads(path.read_text()) if path.exists() else {}
        yield state
        write_json(path, state)


def log(cfg: dict[str, Any], command: str, **fields: Any) -> None:
    """One JSON line per stand-in invocation in the host's log (outside the host's private dirs)."""
    line = json.dumps({"time": round(time.time(), 3), "command": command, **fields}, sort_keys=True)
    with open(cfg["standin_log"], "a") as out:
        fcntl.flock(out, fcntl.LOCK_EX)
        out.write(line + "\n")
