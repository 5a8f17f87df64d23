"""A listener with test settings (short blocks, no periodic reconcile), and running it until idle; and
the installed ``worldland listen`` as a process with its JSON log."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from pathlib import Path

from testkit.commands import WORLDLAND
from worldland.control.listener import Listener, ListenerSettings
from worldland.control.onboarding import Onboarding
from worldland.domain.policy import ApprovalPolicy
from worldland.protocol.streams import StreamNames
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys


def make_listener(
    fleet: Fleet, names: StreamNames, policy: ApprovalPolicy, cluster=None, **settings
) -> Listener:
    onboarding = Onboarding(fleet=fleet, streams=names, policy=policy, cluster=cluster)
    defaults = {"block_ms": 50, "consumer": "test-consumer", "reconcile_every_s": 3600}
    return Listener(onboarding, ListenerSettings(**{**defaults, **settings}))


def drain(listener: Listener, rounds: int = 20) -> None:
    """Run until nothing new arrives (bounded)."""
    for _ in range(rounds):
        if listener.run_once() == 0:
            return


class ListenerProcess:
    """``worldland listen`` on a test's key prefix and streams, short blocks, its log in ``workdir``."""

    def __init__(self, redis_url: str, keys: Keys, names: StreamNames, workdir: Path, *extra: str) -> None:
        self.args = [
            str(WORLDLAND),
            "--redis-url",
            redis_url,
            "--key-prefix",
            keys.prefix,
            "listen",
            "--stream-namespace",
            names.namespace,
            "--block-ms",
            "100",
            *extra,
        ]
        self.log_path = workdir / f"listener-{uuid.uuid4().hex[:6]}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> ListenerProcess:
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def log_lines(self) -> list[dict]:
        lines = []
        for line in self.log_path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"message": line})
        return lines

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self.log.close()
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if not self.log.closed:
            self.log.close()
