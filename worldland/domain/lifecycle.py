"""Provider states and their legal transitions (pure: no I/O).

The Redis store enforces this same table atomically; it is generated from ``TRANSITIONS``.
"""

from __future__ import annotations

from worldland.protocol.status import Status

__all__ = [
    "CLOSED_STATES",
    "LIVE_STATES",
    "MAX_REASON_CHARS",
    "NODE_STATES",
    "REMOVABLE_STATES",
    "TRANSITIONS",
    "Status",
    "TransitionError",
    "check_transition",
]

MAX_REASON_CHARS = 512  # a status reason or a dead letter's reason, as stored and as told

# States in which a provider is expected to heartbeat and may go Offline.
LIVE_STATES = frozenset({Status.APPROVED, Status.JOINED, Status.AVAILABLE})

# States in which a provider has (or is about to have) a node in the cluster carrying our labels and
# taint: a transition from or to one of them marks the node for a label/taint sync.
NODE_STATES = frozenset({Status.JOINED, Status.AVAILABLE, Status.OFFLINE})

# States an operator may offboard a provider from (``worldland.control.offboarding``): it was approved, so
# it may hold a join token, a node and capacity.
REMOVABLE_STATES = frozenset({*LIVE_STATES, Status.OFFLINE})

# States whose provider is out of the fleet: its heartbeats and capacity updates are dropped, and only a
# registration (or an operator) brings it back, through Pending.
CLOSED_STATES = frozenset({Status.REJECTED, Status.REMOVED})

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.APPROVED, Status.REJECTED}),
    # An operator may revoke an approval before the machine joins, or offboard it.
    Status.APPROVED: frozenset({Status.JOINED, Status.OFFLINE, Status.REJECTED, Status.REMOVED}),
    Status.JOINED: frozenset({Status.AVAILABLE, Status.OFFLINE, Status.REMOVED}),
    # A node that loses readiness or its GPUs stops taking jobs but stays joined.
    Status.AVAILABLE: frozenset({Status.JOINED, Status.OFFLINE, Status.REMOVED}),
    # Back only to the live state held before going Offline (checked against ``previous``), or offboarded.
    Status.OFFLINE: frozenset({*LIVE_STATES, Status.REMOVED}),
    # A corrected re-registration starts over.
    Status.REJECTED: frozenset({Status.PENDING}),
    # Offboarded: only a fresh registration starts over.
    Status.REMOVED: frozenset({Status.PENDING}),
}


class TransitionError(ValueError):
    """An illegal state change; nothing was written."""

    def __init__(self, provider_id: str, current: str | None, target: str, reason: str) -> None:
        self.provider_id = provider_id
        self.current = current
        self.target = target
        self.reason = reason
        super().__init__(f"provider {provider_id!r}: cannot go from {current} to {target}: {reason}")


def check_transition(
    provider_id: str, current: Status, target: Status, previous: Status | None = None
) -> None:
    """Raise ``TransitionError`` unless ``current -> target`` is legal.

    ``previous`` is the live state held before Offline; recovery (Offline to a live state) must
    return to exactly it.
    """
    # Accept the plain strings a store reads back: "offline" is not Status.OFFLINE by identity.
    try:
        current, target = Status(current), Status(target)
        previous = Status(previous) if previous is not None else None
    except ValueError as exc:
        raise TransitionError(provider_id, current, target, str(exc)) from None
    if target not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing"
        raise TransitionError(provider_id, current, target, f"{current} may only go to {allowed}")
    if current is Status.OFFLINE and target in LIVE_STATES and target != previous:
        raise TransitionError(
            provider_id,
            current,
            target,
            f"an offline provider returns to its previous state ({previous or 'unknown'})",
        )
