"""The heartbeat index: last beat per provider, and who has gone quiet.

A sorted set (``Keys.heartbeat_index``) scores each provider by the time of its last heartbeat as
seen by *our* clock when the beat arrived; the agent's own timestamp is kept for information only,
since a provider could otherwise claim to be alive forever. Recording is O(1) (one small Lua call,
pipelined), and finding stale providers is a range query: its cost grows with the number stale,
not the fleet.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from worldland.domain.lifecycle import Status, TransitionError
from worldland.protocol.messages import Heartbeat
from worldland.protocol.timing import STALE_AFTER_S
from worldland.state import decoded
from worldland.state.keys import Keys
from worldland.state.providers import Clock, ProviderStore, StatusConflict, iso_time
from worldland.state.scripts import script

RECORD_BATCH = 500  # beats per script call: each call holds Redis for a few milliseconds at most

# One call records a whole batch (lua/heartbeat_record.lua says its KEYS, ARGV and reply); which
# states have a node comes from the generated header (lifecycle.NODE_STATES).
_RECORD_SCRIPT = script("heartbeat_record")


@dataclass(frozen=True, slots=True)
class BeatOutcome:
    provider_id: str
    outcome: str  # recorded | recovered | unknown | rejected | removed (the last three: dropped)
    status: str  # the provider's status after the beat ('' when unknown)
    active_jobs_changed: bool = False

    @property
    def accepted(self) -> bool:
        return self.outcome in ("recorded", "recovered")


@dataclass(frozen=True, slots=True)
class LastBeat:
    received_at: float
    active_jobs: int
    beat: dict[str, Any]  # the agent's heartbeat as validated: usage, reported status, its own time

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> LastBeat:
        return cls(
            received_at=float(data["received_at"]),
            active_jobs=int(data.get("active_jobs") or 0),
            beat=json.loads(data.get("beat") or "{}"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "received_at": iso_time(self.received_at),
            "active_jobs": self.active_jobs,
            "gpu_usage": self.beat.get("gpu_usage", []),
            "cpu_usage": self.beat.get("cpu_usage"),
            "memory_usage": self.beat.get("memory_usage"),
            "reported_status": self.beat.get("status"),
            "agent_time": self.beat.get("timestamp"),
        }


class HeartbeatIndex:
    """Records heartbeats; a beat from an Offline provider brings it back (``store.recover``)."""

    def __init__(self, client: redis.Redis, keys: Keys | None = None, clock: Clock = time.time) -> None:
        self.client = client
        self.keys = keys or Keys()
        self.clock = clock
        self.store = ProviderStore(client, self.keys, clock)
        self._record = client.register_script(_RECORD_SCRIPT)

    def record(self, beat: Heartbeat, now: float | None = None) -> BeatOutcome:
        return self.record_many([beat], now)[0]

    def record_many(self, beats: Sequence[Heartbeat], now: float | None = None) -> list[BeatOutcome]:
        """Record heartbeats, RECORD_BATCH per call; one outcome per beat, in order."""
        received = repr(self.clock() if now is None else now)
        fixed = [received, self.keys.provider(""), self.keys.heartbeat("")]
        index_keys = [self.keys.heartbeat_index, self.keys.node_sync]
        outcomes: list[BeatOutcome] = []
        for start in range(0, len(beats), RECORD_BATCH):
            batch = beats[start : start + RECORD_BATCH]
            args: list[str | int] = [*fixed]
            for beat in batch:
                args += (beat.provider_id, beat.active_jobs, beat.model_dump_json(exclude={"provider_id"}))
            reply = self._record(keys=index_keys, args=args)
            for i, beat in enumerate(batch):
                outcome, status, changed = reply[3 * i : 3 * i + 3]
                outcomes.append(BeatOutcome(beat.provider_id, outcome, status, bool(changed)))
        return [self._recover_if_offline(o) for o in outcomes]

    def _recover_if_offline(self, outcome: BeatOutcome) -> BeatOutcome:
        """Offline -> the state held before, whoever sees the beat first (a compare-and-set)."""
        if outcome.status != Status.OFFLINE:
            return outcome
        try:
            result = self.store.recover(outcome.provider_id)
        except (TransitionError, StatusConflict):  # recovered (or changed) by someone else meanwhile
            return outcome
        return BeatOutcome(
            outcome.provider_id, "recovered", result.current.value, outcome.active_jobs_changed
        )

    def forget(self, provider_id: str) -> None:
        """Take a provider out of the fleet's liveness (rejected or offboarded: its beats are dropped from
        now on), so it is never counted stale or audited again. Its last beat's details stay."""
        self.client.zrem(self.keys.heartbeat_index, provider_id)

    def last_beat_times(self, provider_ids: Iterable[str]) -> dict[str, float | None]:
        ids = list(provider_ids)
        scores = self.client.zmscore(self.keys.heartbeat_index, ids) if ids else []
        return dict(zip(ids, scores, strict=True))

    def last_beats(self, provider_ids: Sequence[str]) -> dict[str, LastBeat | None]:
        pipe = self.client.pipeline(transaction=False)
        for pid in provider_ids:
            pipe.hgetall(self.keys.heartbeat(pid))
        return {
            pid: LastBeat.from_hash(data) if data else None
            for pid, data in zip(provider_ids, pipe.execute(), strict=True)
        }

    def stale(
        self, older_than: float = STALE_AFTER_S, now: float | None = None, limit: int | None = None
    ) -> list[tuple[str, float]]:
        """(provider id, last beat) for providers whose last beat is more than ``older_than`` s ago.

        Oldest first. O(log N + stale): a range query on the sorted set.
        """
        cutoff = (self.clock() if now is None else now) - older_than
        start = 0 if limit is not None else None
        rows = decoded.zrangebyscore_withscores(
            self.client, self.keys.heartbeat_index, "-inf", f"({cutoff!r}", start=start, num=limit
        )
        return [(pid, score) for pid, score in rows]

    def count_stale(self, older_than: float = STALE_AFTER_S, now: float | None = None) -> int:
        """How many providers are stale: O(log N), for metrics."""
        cutoff = (self.clock() if now is None else now) - older_than
        return int(self.client.zcount(self.keys.heartbeat_index, "-inf", f"({cutoff!r}"))
