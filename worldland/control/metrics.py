"""The listener's Prometheus metrics (names documented in the README and alerted on by the rules)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Prometheus metrics of one listener (own registry, so tests can run several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.registrations = Counter(
            "worldland_registrations_total", "Registrations by outcome", ["outcome"], registry=self.registry
        )
        self.heartbeats = Counter(
            "worldland_heartbeats_total", "Heartbeats by outcome", ["outcome"], registry=self.registry
        )
        self.capacity_updates = Counter(
            "worldland_capacity_updates_total",
            "Capacity updates by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "worldland_dead_letters_total", "Entries dead-lettered", ["stream"], registry=self.registry
        )
        self.pending = Gauge(
            "worldland_pending_entries", "Entries delivered but not yet acknowledged", registry=self.registry
        )
        self.stale = Gauge(
            "worldland_stale_providers",
            "Providers whose last heartbeat is older than the threshold",
            registry=self.registry,
        )
        self.latency = Histogram(
            "worldland_batch_seconds",
            "Time to process one batch, by stream",
            ["stream"],
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.redis_errors = Counter(
            "worldland_redis_errors_total", "Redis connection failures", registry=self.registry
        )
