"""``worldland status --watch`` on the demo's terminal while a phase waits: the real command, on a
pseudo-terminal of its own (so it draws its live table), its output passed through the demo's
token-masking writer. Stopped with SIGINT, as an operator stops it with Ctrl-C."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import signal
import struct
import subprocess
import termios
import threading
from collections.abc import Mapping, Sequence
from typing import IO

from demo.children import Children


class FleetWatch:
    def __init__(
        self,
        children: Children,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        out: IO[str],
        columns: int,
        rows: int = 24,
    ) -> None:
        self.children, self.argv, self.env, self.out = children, list(argv), dict(env), out
        self.size = (rows, columns)
        self.proc: subprocess.Popen[str] | None = None
        self.master = -1
        self.reader: threading.Thread | None = None

    def __enter__(self) -> FleetWatch:
        self.master, follower = pty.openpty()
        rows, columns = self.size
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        env = {**self.env, "COLUMNS": str(columns), "LINES": str(rows), "TERM": self.env.get("TERM", "xterm")}
        try:
            self.proc = subprocess.Popen(
                self.argv, stdin=follower, stdout=follower, stderr=follower, env=env, text=True,
                start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(follower)
        self.children.running[self.proc.pid] = self.proc
        self.reader = threading.Thread(target=self._copy, name="fleet-watch", daemon=True)
        self.reader.start()
        return self

    def _copy(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: the command closed its terminal
                break
            if not chunk:
                break
            pending += chunk
            # whole lines at a time, so a token is never split between two writes (and missed)
            head, sep, pending = pending.rpartition(b"\n")
            if sep:
                self.out.write((head + sep).decode(errors="replace"))
                self.out.flush()
        if pending:
            self.out.write(pending.decode(errors="replace"))
            self.out.flush()

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C: it ends its live display cleanly
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            self.children.stop(proc, grace=2)
        if self.reader is not None:
            self.reader.join(timeout=5)
        with contextlib.suppress(OSError):
            os.close(self.master)
