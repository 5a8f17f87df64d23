"""The listener's Prometheus metrics (names documented in the README and alerted on by the rules in
``deploy/prometheus/worldland-rules.yml``; docs/alerts.md says what each alert means)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worldland.protocol.streams import StreamNames
from worldland.state.providers import ProviderStore

log = logging.getLogger("worldland.metrics")

PROVIDERS_METRIC = "worldland_providers"
# Label values present from the start at 0: a counter's first increment is invisible to rate() and
# increase() when the series only appears with it, and the rules alert on these rates.
DEAD_LETTER_STREAMS = tuple(stream.rpartition(":")[2] for stream in StreamNames().inputs)
ACCEPTED_HEARTBEAT_OUTCOMES = ("recorded", "recovered")


class ProvidersByStatus(Collector):
    """``worldland_providers{status}``: the fleet per status, read from Redis at each scrape.

    ``count`` is one cheap round trip (``ProviderStore.counts``: one SCARD per status index, pipelined),
    so the figure is as fresh as the scrape and costs the same for 10 or 10,000 providers. When Redis
    cannot be read the family is left out of that scrape (the other metrics are still served, and the
    listener counts and logs its own Redis errors): a scrape never fails because of it."""

    def __init__(self, count: Callable[[], Mapping[str, int]]) -> None:
        self._count = count

    def describe(self) -> Iterator[Metric]:
        # Registering (which calls this) must not read Redis.
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        try:
            counts = self._count()
        except redis.RedisError as exc:
            log.debug("providers by status not read for this scrape", extra={"error": str(exc)})
            return
        family = self._family()
        for status, count in sorted(counts.items()):
            family.add_metric([status], count)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            PROVIDERS_METRIC, "Providers by status, read from Redis at scrape time", labels=["status"]
        )


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
        for stream in DEAD_LETTER_STREAMS:
            self.dead_letters.labels(stream=stream)
        for outcome in ACCEPTED_HEARTBEAT_OUTCOMES:
            self.heartbeats.labels(outcome=outcome)
        self._providers: ProvidersByStatus | None = None

    def count_providers(self, store: ProviderStore) -> None:
        """Serve ``worldland_providers{status}`` from ``store`` (read at each scrape); once per registry."""
        if self._providers is not None:
            raise ValueError("providers by status are already served from a store")
        self._providers = ProvidersByStatus(store.counts)
        self.registry.register(self._providers)
