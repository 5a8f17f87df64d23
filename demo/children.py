"""The programs the demo runs (the listener, ansible-playbook, ``worldland onboard``, ...), each in a
process group of its own, so that a failure or Ctrl-C stops each of them with everything it started
(ssh, ansible workers) by group id - never by name."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO


class DemoError(RuntimeError):
    """A phase did not get what it needed: the message says what, for someone who has not read the code."""


class Children:
    def __init__(self) -> None:
        self.running: dict[int, subprocess.Popen[str]] = {}

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        log: Path | None = None,
        stdout: Path | None = None,
    ) -> subprocess.Popen[str]:
        """``argv`` in the background, its output in ``log`` (or discarded); its stdout alone in ``stdout``
        when given."""
        with contextlib.ExitStack() as files:
            err: IO[str] | int = files.enter_context(open(log, "a")) if log else subprocess.DEVNULL
            out: IO[str] | int = files.enter_context(open(stdout, "w")) if stdout else err
            proc = subprocess.Popen(
                list(argv), env=dict(env) if env is not None else None, cwd=cwd, stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, text=True, start_new_session=True,
            )  # fmt: skip
        self.running[proc.pid] = proc
        return proc

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        what: str,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` to its end (output captured); DemoError when it takes longer than ``timeout``."""
        proc = subprocess.Popen(
            list(argv), env=dict(env) if env is not None else None, cwd=cwd, text=True,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        self.running[proc.pid] = proc
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            raise DemoError(f"{what} did not finish within {timeout:.0f} s") from None
        finally:
            if proc.poll() is None:  # interrupted (Ctrl-C): the group goes now, not at teardown
                self.stop(proc)
            self.running.pop(proc.pid, None)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def stop(self, proc: subprocess.Popen[str], grace: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL to what is left of it after ``grace`` seconds."""
        self._signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        self._signal_group(proc.pid, signal.SIGKILL)  # its children too, even when it exited itself
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        self.running.pop(proc.pid, None)

    def stop_all(self) -> None:
        for proc in list(self.running.values()):
            self.stop(proc)

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
