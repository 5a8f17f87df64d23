"""Providers put in a known state through the core (registration, legal transitions, heartbeats)."""

from __future__ import annotations

import uuid

from testkit.factories import registration
from worldland.domain.lifecycle import Status
from worldland.protocol.messages import Heartbeat
from worldland.state.fleet import Fleet
from worldland.state.providers import ProviderStore

# The legal transitions from Pending to each state (Offline: see ``put_in``).
PATH_TO = {
    Status.PENDING: [],
    Status.APPROVED: [Status.APPROVED],
    Status.JOINED: [Status.APPROVED, Status.JOINED],
    Status.AVAILABLE: [Status.APPROVED, Status.JOINED, Status.AVAILABLE],
    Status.REJECTED: [Status.REJECTED],
    Status.REMOVED: [Status.APPROVED, Status.REMOVED],
}


def put_in(store: ProviderStore, provider_id: str, status: Status, previous: Status | None = None) -> None:
    """Register a provider (unless it is already) and walk it to ``status`` along legal transitions;
    Offline is reached from ``previous`` (Available unless given)."""
    if store.get(provider_id) is None:
        store.upsert_registration(registration(provider_id))
    if status is Status.OFFLINE:
        for step in PATH_TO[previous or Status.AVAILABLE]:
            store.transition(provider_id, step)
        store.transition(provider_id, Status.OFFLINE)
        return
    for step in PATH_TO[status]:
        store.transition(provider_id, step)


def new_id(prefix: str = "p") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def provider(fleet: Fleet, status: Status, previous: Status | None = None, pid: str | None = None) -> str:
    """Register a provider through ``Fleet.register`` (ledger too) and walk it to ``status``; its id."""
    pid = pid or new_id()
    fleet.register(registration(pid))
    put_in(fleet.store, pid, status, previous)
    return pid


def beat(fleet: Fleet, pid: str, at: float, active_jobs: int = 0, reported: str = "available") -> str:
    """Record one heartbeat at ``at``, which must be accepted; the recorder's outcome."""
    outcome = fleet.heartbeats.record(
        Heartbeat(provider_id=pid, status=reported, active_jobs=active_jobs), at
    )
    assert outcome.accepted
    return outcome.outcome


def status(fleet: Fleet, pid: str) -> Status:
    return fleet.store.require(pid).status
