"""The Redis key layout: the one place that knows key names.

Every key of one deployment starts with the same prefix (default ``worldland:``), so several
deployments or test runs can share a Redis without touching each other's data.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "worldland:"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

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
