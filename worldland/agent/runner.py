"""``worldland-provider run``: register when there is no answer yet, then heartbeat every interval,
from the first answer on (pending included, as the Go agent does).

Redis lost: reconnect with capped, jittered backoff, no crash. A listener that answers it does not know
the provider (``code: unknown_provider``): register again. SIGTERM/SIGINT: every wait is on one event,
so the process exits 0 within a second.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from worldland.agent import usage
from worldland.agent.config import AgentSettings
from worldland.agent.discovery import HostFacts, discover, gpu_usage
from worldland.agent.join import JoinResult, join
from worldland.agent.registration import Outcome, build_message, checked, outcome_of
from worldland.agent.wire import AgentWire, connect
from worldland.protocol.messages import UNKNOWN_PROVIDER, RegistrationResponse
from worldland.protocol.status import Status
from worldland.protocol.streams import StreamNames, rfc3339_now

log = logging.getLogger("worldland.agent")

STATE_FILE = "state.json"  # the last answer's status and node name (never a token)
REREGISTER_AFTER_S = 60.0  # no answer yet: publish the registration again this often
BACKOFF_START_S, BACKOFF_MAX_S = 1.0, 30.0


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter (so a fleet does not reconnect in step)."""

    start: float = BACKOFF_START_S
    cap: float = BACKOFF_MAX_S
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next(self) -> float:
        ceiling = min(self.cap, self.start * 2**self.attempt)
        self.attempt += 1
        return self.rng.uniform(self.start / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class KnownState:
    status: Status
    node_name: str | None

    @classmethod
    def of(cls, answer: RegistrationResponse) -> KnownState:
        return cls(answer.status, answer.node_name)


class Runner:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        state_dir: Path,
        auto_join: bool = False,
        names: StreamNames | None = None,
        discover_host: Callable[[], HostFacts] | None = None,
        joiner: Callable[[RegistrationResponse], JoinResult] = join,
    ) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self.auto_join = auto_join
        self.names = names or StreamNames()
        self.discover_host = discover_host or (lambda: discover(settings.public_ip, settings.data_path))
        self.joiner = joiner
        self.stop = threading.Event()
        self.exit_code = 0
        self.beats_sent = 0
        self._jobs_note_given = False

    # -- state ------------------------------------------------------------------------------------

    def load_state(self) -> KnownState | None:
        try:
            data = json.loads((self.state_dir / STATE_FILE).read_text(encoding="utf-8"))
            return KnownState(Status(data["status"]), data.get("node_name"))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save_state(self, state: KnownState | None) -> None:
        path = self.state_dir / STATE_FILE
        if state is None:
            path.unlink(missing_ok=True)
            return
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"status": state.status.value, "node_name": state.node_name}))
        os.replace(tmp, path)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Until stopped; returns the exit code (0, or 11 when the listener rejects the provider)."""
        known = self.load_state()
        backoff = Backoff()
        while not self.stop.is_set():
            client = connect(self.settings.redis_url)
            try:
                wire = AgentWire(client, self.settings.provider_id, self.names)
                if known is None:
                    known = self._register(wire)
                else:
                    self._ensure_group(wire)
                if known is not None:
                    backoff.reset()
                    known = self._beat(wire, known)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # A restarted Redis lost the answer group: the next round creates it again.
                log.warning("the answer group is gone (Redis restarted?); creating it again")
                self.stop.wait(backoff.next())
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                delay = backoff.next()
                log.warning("redis unavailable (%s); retrying in %.1f s", " ".join(str(exc).split()), delay)
                self.stop.wait(delay)
            finally:
                client.close()
        return self.exit_code

    def _ensure_group(self, wire: AgentWire) -> None:
        try:
            wire.client.xgroup_create(wire.response_stream, "agent-group", id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _register(self, wire: AgentWire) -> KnownState | None:
        message = build_message(self.settings, self.discover_host())
        checked(message)
        wire.prepare_answers()
        while not self.stop.is_set():
            wire.publish_registration(message)
            log.info("registration of %s sent", self.settings.provider_id)
            waited = 0.0
            while waited < REREGISTER_AFTER_S and not self.stop.is_set():
                answer = wire.next_answer(block_ms=1000)
                waited += 1.0
                if answer is not None:
                    return self._take(answer)
        return None

    def _take(self, answer: RegistrationResponse) -> KnownState | None:
        """Act on an answer; the state to heartbeat with, or None to register again."""
        if answer.code == UNKNOWN_PROVIDER:
            log.warning("the listener does not know this provider; registering again")
            self.save_state(None)
            return None
        outcome = outcome_of(answer)
        log.info("answer: %s: %s", answer.status.value, " ".join(answer.message.split()))
        if outcome is Outcome.REJECTED:
            self.exit_code = int(Outcome.REJECTED)
            self.stop.set()
        state = KnownState.of(answer)
        self.save_state(state)
        if outcome is Outcome.APPROVED and answer.join_token and self.auto_join:
            result = self.joiner(answer)
            log.info("join: %s", result.summary)
        return state

    def _beat(self, wire: AgentWire, known: KnownState) -> KnownState | None:
        usage.cpu_usage()  # prime the counter: the first real figure comes with the first beat
        while not self.stop.is_set():
            wire.publish_heartbeat(self.heartbeat(known))
            self.beats_sent += 1
            while (answer := wire.next_answer(block_ms=None)) is not None:
                taken = self._take(answer)
                if taken is None:
                    return None
                known = taken
            self.stop.wait(self.settings.heartbeat_interval)
        return known

    def heartbeat(self, known: KnownState) -> dict[str, Any]:
        utilisation, memory_used = gpu_usage()
        jobs = usage.active_jobs()
        if jobs is None and not self._jobs_note_given:
            log.info("active jobs: neither crictl nor ctr answers; reporting 0")
            self._jobs_note_given = True
        return {
            "provider_id": self.settings.provider_id,
            "node_name": known.node_name or socket.gethostname(),
            "status": known.status.value,
            "gpu_usage": utilisation,
            "gpu_memory_used_mb": memory_used,
            "cpu_usage": usage.cpu_usage(),
            "memory_usage": usage.memory_usage(),
            "active_jobs": jobs or 0,
            "timestamp": rfc3339_now(),
        }
