"""The fleet: one entry point over the store, heartbeat index and capacity ledger.

The CLI, the listener and the plugins go through here, so a registration always lands in the
store and the ledger together, and a provider is always shown the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from worldland.domain.lifecycle import MAX_REASON_CHARS, Status
from worldland.domain.registration import Registration
from worldland.state.heartbeats import HeartbeatIndex
from worldland.state.keys import Keys
from worldland.state.ledger import CapacityLedger
from worldland.state.providers import Clock, ProviderStore, TransitionResult, UpsertResult, iso_time


def checked_reason(reason: str, what: str) -> str:
    """An operator's reason as stored and told: stripped, not empty, at most ``MAX_REASON_CHARS``."""
    reason = reason.strip()
    if not reason:
        raise ValueError(f"reason: must not be empty; the provider is told why it was {what}")
    if len(reason) > MAX_REASON_CHARS:
        raise ValueError(f"reason: at most {MAX_REASON_CHARS} characters")
    return reason


@dataclass
class Fleet:
    client: redis.Redis
    keys: Keys
    store: ProviderStore
    heartbeats: HeartbeatIndex
    ledger: CapacityLedger

    @classmethod
    def open(cls, client: redis.Redis, keys: Keys | None = None, clock: Clock = time.time) -> Fleet:
        keys = keys or Keys()
        return cls(
            client=client,
            keys=keys,
            store=ProviderStore(client, keys, clock),
            heartbeats=HeartbeatIndex(client, keys, clock),
            ledger=CapacityLedger(client, keys),
        )

    def register(self, request: Registration) -> UpsertResult:
        """Store a validated registration and the capacity it offers; idempotent by provider id.

        One atomic step: a registration refused for its wallet or its capacity (a total below what
        running jobs use) leaves both the stored record and the ledger untouched.
        """
        return self.store.upsert_registration(request)

    def reject(self, provider_id: str, reason: str) -> TransitionResult:
        reason = checked_reason(reason, "rejected")
        result = self.store.transition(provider_id, Status.REJECTED, reason=reason)
        self.store.mark_rejected_by_operator(provider_id)
        self.heartbeats.forget(provider_id)
        return result

    def remove(self, provider_id: str, reason: str, *, expected: Status | None = None) -> TransitionResult:
        """Mark a provider offboarded (Removed, with the reason; ``expected`` makes it a compare-and-set),
        dropping a registration change that waited for approval and its place in the heartbeat index (never
        counted stale again). Its node, token and capacity are the
        caller's (``worldland.control.offboarding``)."""
        reason = checked_reason(reason, "offboarded")
        result = self.store.transition(provider_id, Status.REMOVED, reason=reason, expected=expected)
        if result.changed:
            self.store.drop_held_change(provider_id)
        self.heartbeats.forget(provider_id)
        return result

    def provider_views(self, statuses: list[Status] | None = None) -> list[dict[str, Any]]:
        """Providers as plain dicts (record, time of last heartbeat, capacity); a few round trips."""
        records = self.store.list(statuses)
        ids = [r.provider_id for r in records]
        beat_times = self.heartbeats.last_beat_times(ids)
        capacities = self.ledger.get_many(ids)
        described = []
        for record in records:
            item = record.to_dict(include_spec=False)
            item["last_heartbeat"] = iso_time(beat_times.get(record.provider_id))
            capacity = capacities.get(record.provider_id)
            item["capacity"] = capacity.to_dict() if capacity else None
            described.append(item)
        return described

    def provider_view(self, provider_id: str) -> dict[str, Any]:
        """One provider in full: the list view plus its spec and its last heartbeat's details."""
        record = self.store.require(provider_id)
        beat = self.heartbeats.last_beats([provider_id])[provider_id]
        item = record.to_dict(include_spec=True)
        item["last_heartbeat"] = iso_time(beat.received_at) if beat else None
        item["heartbeat"] = beat.to_dict() if beat else None
        item["capacity"] = self.ledger.get(provider_id).to_dict()
        return item
