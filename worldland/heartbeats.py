"""The heartbeat index: last beat per provider, and who has gone quiet.

A sorted set (``Keys.heartbeat_index``) scores each provider by the time of its last heartbeat as
seen by *our* clock when the beat arrived; the agent's own timestamp is kept for information only,
since a provider could otherwise claim to be alive forever. Recording is O(1) (one Lua call), and
finding stale providers is a range query: its cost grows with the number stale, not the fleet.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from worldland.keys import Keys
from worldland.models import Heartbeat
from worldland.store import LUA_TRANSITION_PRELUDE, STATUS_ORDER, Clock, iso_time

HEARTBEAT_INTERVAL_S = 30
STALE_AFTER_S = 120
RECORD_BATCH = 1000

# KEYS: provider, heartbeat details, heartbeat index, status indexes (6).
# ARGV: id, now, active_jobs, gpu_usage json, cpu_usage, memory_usage, reported status, node_name, agent time.
# Returns {outcome, status}: outcome is 'recorded', 'recovered' (Offline -> previous state), 'unknown'
# or 'rejected' (dropped: nothing written).
_RECORD_SCRIPT = (
    LUA_TRANSITION_PRELUDE
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'unknown', ''} end
if status == 'rejected' then return {'rejected', status} end
local last = tonumber(redis.call('HGET', KEYS[2], 'received_at') or '0')
if tonumber(ARGV[2]) >= last then
  redis.call('HSET', KEYS[2], 'received_at', ARGV[2], 'active_jobs', ARGV[3], 'gpu_usage', ARGV[4],
    'cpu_usage', ARGV[5], 'memory_usage', ARGV[6], 'reported_status', ARGV[7], 'node_name', ARGV[8],
    'agent_time', ARGV[9])
  redis.call('ZADD', KEYS[3], 'GT', ARGV[2], ARGV[1])
end
if status == 'offline' then
  local previous = redis.call('HGET', KEYS[1], 'previous_status') or ''
  local result = transition(KEYS[1], ARGV[1], 4, status, previous, ARGV[2], 'heartbeat resumed')
  if result[1] == 'ok' then return {'recovered', previous} end
end
return {'recorded', status}
"""
)


@dataclass(frozen=True, slots=True)
class BeatOutcome:
    provider_id: str
    outcome: str  # recorded | recovered | unknown | rejected
    status: str  # the provider's status after the beat ('' when unknown)

    @property
    def accepted(self) -> bool:
        return self.outcome in ("recorded", "recovered")


@dataclass(frozen=True, slots=True)
class LastBeat:
    received_at: float
    active_jobs: int
    gpu_usage: list[float]
    cpu_usage: float | None
    memory_usage: float | None
    reported_status: str
    node_name: str
    agent_time: str

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> LastBeat:
        return cls(
            received_at=float(data["received_at"]),
            active_jobs=int(data.get("active_jobs") or 0),
            gpu_usage=json.loads(data.get("gpu_usage") or "[]"),
            cpu_usage=float(data["cpu_usage"]) if data.get("cpu_usage") else None,
            memory_usage=float(data["memory_usage"]) if data.get("memory_usage") else None,
            reported_status=data.get("reported_status", ""),
            node_name=data.get("node_name", ""),
            agent_time=data.get("agent_time", ""),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "received_at": iso_time(self.received_at),
            "active_jobs": self.active_jobs,
            "gpu_usage": self.gpu_usage,
            "cpu_usage": self.cpu_usage,
            "memory_usage": self.memory_usage,
            "reported_status": self.reported_status or None,
            "agent_time": self.agent_time or None,
        }


class HeartbeatIndex:
    def __init__(self, client: redis.Redis, keys: Keys | None = None, clock: Clock = time.time) -> None:
        self.client = client
        self.keys = keys or Keys()
        self.clock = clock
        self._record = client.register_script(_RECORD_SCRIPT)
        self._index_keys = [self.keys.status_index(s) for s in STATUS_ORDER]

    def _call_args(self, beat: Heartbeat, now: float) -> tuple[list[str], list[Any]]:
        pid = beat.provider_id
        keys = [
            self.keys.provider(pid),
            self.keys.heartbeat(pid),
            self.keys.heartbeat_index,
            *self._index_keys,
        ]
        args = [
            pid,
            repr(now),
            beat.active_jobs,
            json.dumps(beat.gpu_usage),
            "" if beat.cpu_usage is None else repr(beat.cpu_usage),
            "" if beat.memory_usage is None else repr(beat.memory_usage),
            beat.status or "",
            beat.node_name or "",
            beat.timestamp.isoformat() if beat.timestamp else "",
        ]
        return keys, args

    def record(self, beat: Heartbeat, now: float | None = None) -> BeatOutcome:
        return self.record_many([beat], now)[0]

    def record_many(self, beats: Sequence[Heartbeat], now: float | None = None) -> list[BeatOutcome]:
        """Record heartbeats, RECORD_BATCH per round trip; one outcome per beat, in order."""
        received = self.clock() if now is None else now
        outcomes: list[BeatOutcome] = []
        for start in range(0, len(beats), RECORD_BATCH):
            batch = beats[start : start + RECORD_BATCH]
            pipe = self.client.pipeline(transaction=False)
            for beat in batch:
                keys, args = self._call_args(beat, received)
                self._record(keys=keys, args=args, client=pipe)
            for beat, (outcome, status) in zip(batch, pipe.execute(), strict=True):
                outcomes.append(BeatOutcome(beat.provider_id, outcome, status))
        return outcomes

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
        if limit is None:
            rows = self.client.zrangebyscore(
                self.keys.heartbeat_index, "-inf", f"({cutoff!r}", withscores=True
            )
        else:
            rows = self.client.zrangebyscore(
                self.keys.heartbeat_index, "-inf", f"({cutoff!r}", start=0, num=limit, withscores=True
            )
        return [(pid, score) for pid, score in rows]

    def forget(self, provider_id: str) -> None:
        self.client.zrem(self.keys.heartbeat_index, provider_id)
        self.client.delete(self.keys.heartbeat(provider_id))
