"""Provider states and their legal transitions (pure: no I/O).

The Redis store enforces this same table atomically; it is generated from ``TRANSITIONS``.
"""

from __future__ import annotations

from worldland.protocol.status import Status

__all__ = [
    "LIVE_STATES",
    "MAX_REASON_CHARS",
    "NODE_STATES",
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

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.APPROVED, Status.REJECTED}),
    # An operator may revoke an approval before the machine joins.
    Status.APPROVED: frozenset({Status.JOINED, Status.OFFLINE, Status.REJECTED}),
    Status.JOINED: frozenset({Status.AVAILABLE, Status.OFFLINE}),
    # A node that loses readiness or its GPUs stops taking jobs but stays joined.
    Status.AVAILABLE: frozenset({Status.JOINED, Status.OFFLINE}),
    # Only back to the live state held before going Offline (checked against ``previous``).
    Status.OFFLINE: LIVE_STATES,
    # A corrected re-registration starts over.
    Status.REJECTED: frozenset({Status.PENDING}),
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

    ``previous`` is the live state held before Offline; recovery must return to exactly it.
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
    if current is Status.OFFLINE and target != previous:
        raise TransitionError(
            provider_id,
            current,
            target,
            f"an offline provider returns to its previous state ({previous or 'unknown'})",
        )
