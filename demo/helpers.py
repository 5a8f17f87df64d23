"""Small things the phases share: waiting with a deadline, a free port, reading ansible-playbook output."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from demo.children import DemoError

T = TypeVar("T")


def wait_until(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    """``check()``'s first truthy value; DemoError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ansible_failure(output: str, limit: int = 3) -> str:
    """The failed tasks' messages in ansible-playbook output (``fatal: [h]: FAILED! => {...}``)."""
    found = []
    for host, body in re.findall(r"^fatal: \[([^\]]+)\]: FAILED! => (\{.*\})$", output, re.MULTILINE):
        try:
            message = json.loads(body).get("msg", body)
        except ValueError:
            message = body
        found.append(f"{host}: {' '.join(str(message).split())[:400]}")
    unreachable = re.findall(r"^fatal: \[([^\]]+)\]: UNREACHABLE! => (.*)$", output, re.MULTILINE)
    found += [f"{host}: unreachable: {message[:300]}" for host, message in unreachable]
    return "; ".join(found[:limit]) or " ".join(output.strip().splitlines()[-3:])[-600:]


def recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP counts (ok, changed, failed, ...) per host."""
    return {
        host: {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counts)}
        for host, counts in re.findall(r"^(\S+)\s+: (ok=\d+.*)$", output, re.MULTILINE)
    }


def since(started: float) -> str:
    """Seconds since ``started`` (``time.monotonic()``), as the output shows them: ``12.3 s``."""
    return f"{time.monotonic() - started:.1f} s"
