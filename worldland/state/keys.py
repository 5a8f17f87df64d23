"""The Redis key layout: the one place that knows key names.

Every key of one deployment starts with the same prefix (default ``worldland:``), so several
deployments or test runs can share a Redis without touching each other's data.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "worldland:"

# The deployed Go agent's streams live outside any prefix, at names it fixes: provider:registration,
# provider:heartbeat, provider:capacity and provider:response:<provider id> (plus their ":dead"
# letters; streams.py). No key of ours may ever be able to land on one (DESIGN.md, "Wire protocol").
AGENT_STREAM_PREFIX = "provider:"
AGENT_STREAMS = "provider:registration, provider:heartbeat, provider:capacity, provider:response:<id>"

# Every key family below, as (method or property name, takes an id). Keys.__post_init__ checks each
# against the agent's streams; tests/test_config.py checks that this list names every family.
_FAMILIES: tuple[tuple[str, bool], ...] = (
    ("provider", True),
    ("status_index", True),
    ("node_claim", True),
    ("heartbeat_index", False),
    ("heartbeat", True),
    ("node_sync", False),
    ("awaiting_first_beat", False),
    ("audit_lock", False),
    ("capacity", True),
    ("job", True),
    ("provider_jobs", True),
    ("revoked_tokens", False),
)


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        """Refuse a prefix under which some key could be one of the agent's streams.

        With an empty prefix ``provider:<id>`` is ``provider:registration`` for a provider named
        ``registration`` (a heartbeat then hits the stream: WRONGTYPE); a prefix starting with
        ``provider:`` puts every key among the stream names.
        """
        if not isinstance(self.prefix, str):
            raise TypeError(f"key_prefix: must be a string, not {type(self.prefix).__name__}")
        if not self.prefix:
            raise ValueError(
                "key_prefix: must not be empty: keys would share the agent's stream names "
                f"({AGENT_STREAMS}), e.g. provider:<id> of a provider named 'registration'; "
                f"use a prefix such as {DEFAULT_PREFIX!r}"
            )
        for name, takes_id in _FAMILIES:
            member = getattr(self, name)
            stem = member("") if takes_id else member
            # A key is stem + id (any id) or exactly stem: it can be a stream name when it starts
            # with the streams' common prefix, or (with an id) when it could still grow into one.
            if stem.startswith(AGENT_STREAM_PREFIX) or (takes_id and AGENT_STREAM_PREFIX.startswith(stem)):
                key = f"{stem}<id>" if takes_id else stem
                raise ValueError(
                    f"key_prefix: {self.prefix!r} collides with the agent's stream names ({AGENT_STREAMS}): "
                    f"keys such as {key} fall under {AGENT_STREAM_PREFIX!r}, which the agent owns; "
                    f"use a prefix such as {DEFAULT_PREFIX!r}"
                )

    def provider(self, provider_id: str) -> str:
        """Hash: the provider record (status, wallet, node name, registration JSON, ...)."""
        return f"{self.prefix}provider:{provider_id}"

    def status_index(self, status: str) -> str:
        """Set: ids of the providers in one status."""
        return f"{self.prefix}status:{status}"

    def node_claim(self, node_name: str) -> str:
        """String: the provider id that owns a Kubernetes node name (keeps node names unique)."""
        return f"{self.prefix}node:{node_name}"

    @property
    def heartbeat_index(self) -> str:
        """Sorted set: provider id scored by the time of its last heartbeat (epoch seconds)."""
        return f"{self.prefix}heartbeats"

    def heartbeat(self, provider_id: str) -> str:
        """Hash: the last heartbeat's details (time, active jobs, usage, reported status)."""
        return f"{self.prefix}heartbeat:{provider_id}"

    @property
    def node_sync(self) -> str:
        """Sorted set: providers whose node labels/taint must be brought in line with their state.

        Marked (ZINCRBY 1) by every transition that involves a node state (store.py's Lua prelude) and
        by a heartbeat whose active jobs changed (heartbeats.py); drained by the audit, which removes
        a member only if its score is still the one it synced. Members left here are the node writes
        still pending (e.g. Kubernetes was unreachable).
        """
        return f"{self.prefix}node-sync"

    @property
    def awaiting_first_beat(self) -> str:
        """Sorted set: providers approved and not yet seen beating since, scored by approval time.

        Added by the Pending -> Approved transition (store.py's Lua prelude); pruned by the audit,
        whose grace period for providers that never beat reads only the expired part of it.
        """
        return f"{self.prefix}awaiting-first-beat"

    @property
    def audit_lock(self) -> str:
        """String with expiry: the token of the audit pass holding the lock (SET NX PX)."""
        return f"{self.prefix}audit-lock"

    def capacity(self, provider_id: str) -> str:
        """Hash: the provider's capacity ledger (per GPU model, CPU cores, memory)."""
        return f"{self.prefix}capacity:{provider_id}"

    def job(self, job_id: str) -> str:
        """Hash: what one rental job took from which provider."""
        return f"{self.prefix}job:{job_id}"

    def provider_jobs(self, provider_id: str) -> str:
        """Set: ids of the jobs currently holding resources of a provider."""
        return f"{self.prefix}jobs:{provider_id}"

    @property
    def revoked_tokens(self) -> str:
        """Set: ids of the join tokens of revoked providers still to be deleted from the cluster.

        Added by ``worldland reject`` before the provider record forgets its token; drained by the
        listener's reconcile when Kubernetes could not be reached at once.
        """
        return f"{self.prefix}revoked-tokens"
