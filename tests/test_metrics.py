"""The listener's metrics that the alert rules need: providers per status read from Redis at scrape time,
and the counters the rules take rates of present from the start."""

from __future__ import annotations

import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from testkit.agent import Agent
from testkit.fleet import put_in
from testkit.listener import drain, make_listener
from testkit.redis_server import free_port
from worldland.control.metrics import Metrics
from worldland.domain.lifecycle import Status
from worldland.domain.policy import ApprovalPolicy
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys
from worldland.state.providers import ProviderStore


def scrape(metrics: Metrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """What a scrape serves (the text the HTTP endpoint returns, parsed): {sample name: {labels: value}}."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def providers_by_status(metrics: Metrics) -> dict[str, float]:
    return {dict(labels)["status"]: value for labels, value in scrape(metrics)["worldland_providers"].items()}


def test_providers_by_status_are_read_from_the_store_at_each_scrape(fleet: Fleet, client: redis.Redis):
    for pid, status in (("a-1", Status.AVAILABLE), ("a-2", Status.AVAILABLE), ("p-1", Status.PENDING)):
        put_in(fleet.store, pid, status)
    put_in(fleet.store, "o-1", Status.OFFLINE, previous=Status.JOINED)
    elsewhere = ProviderStore(client, Keys(prefix=f"{fleet.keys.prefix}other:"))
    put_in(elsewhere, "x-1", Status.OFFLINE)  # another prefix: another fleet, not counted
    metrics = Metrics()
    metrics.count_providers(fleet.store)

    expected = {status.value: 0.0 for status in Status}
    assert providers_by_status(metrics) == {**expected, "available": 2, "pending": 1, "offline": 1}

    fleet.store.transition("a-1", Status.OFFLINE)  # no listener loop in between: read when scraped
    assert providers_by_status(metrics) == {**expected, "available": 1, "pending": 1, "offline": 2}


def test_an_unreachable_redis_leaves_providers_out_and_the_scrape_still_serves_the_rest():
    closed = redis.Redis(port=free_port(), socket_connect_timeout=1, decode_responses=True)
    metrics = Metrics()
    metrics.count_providers(ProviderStore(closed))  # registering reads nothing from Redis
    metrics.pending.set(7)
    served = scrape(metrics)
    assert "worldland_providers" not in served
    assert served["worldland_pending_entries"] == {(): 7.0}


def test_one_registry_counts_providers_from_one_store(fleet: Fleet):
    metrics = Metrics()
    metrics.count_providers(fleet.store)
    with pytest.raises(ValueError, match="already"):
        metrics.count_providers(fleet.store)


def test_a_fresh_listener_serves_the_counters_the_rules_take_rates_of_at_zero(fleet, names, client):
    """A series that appears with its first increment hides that increment from rate(): the rules'
    dead-letter and heartbeat alerts need these at 0 from the start, under the labels the listener uses."""
    listener = make_listener(fleet, names, ApprovalPolicy())
    fresh = scrape(listener.metrics)
    assert fresh["worldland_dead_letters_total"] == {
        (("stream", "registration"),): 0.0,
        (("stream", "heartbeat"),): 0.0,
        (("stream", "capacity"),): 0.0,
    }
    assert fresh["worldland_heartbeats_total"] == {
        (("outcome", "recorded"),): 0.0,
        (("outcome", "recovered"),): 0.0,
    }
    agent = Agent(client, names)
    agent.register('{"provider_id": "not json')
    agent.publish(names.heartbeat, '{"provider_id": "not json')
    agent.publish(names.capacity, '{"provider_id": "not json')
    drain(listener)
    # the same series counted up, no new label value beside them
    assert scrape(listener.metrics)["worldland_dead_letters_total"] == {
        (("stream", "registration"),): 1.0,
        (("stream", "heartbeat"),): 1.0,
        (("stream", "capacity"),): 1.0,
    }
