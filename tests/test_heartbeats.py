from __future__ import annotations

import json

import pytest
import redis

from testkit.clock import FakeClock
from testkit.factories import registration
from testkit.fleet import put_in
from tests.conftest import load_protocol
from worldland.domain.lifecycle import Status
from worldland.protocol.messages import Heartbeat, parse_heartbeat
from worldland.state.fleet import Fleet
from worldland.state.heartbeats import HeartbeatIndex
from worldland.state.keys import Keys
from worldland.state.providers import ProviderStore


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(redis_client: redis.Redis, keys: Keys, clock: FakeClock) -> ProviderStore:
    return ProviderStore(redis_client, keys, clock)


@pytest.fixture
def index(redis_client: redis.Redis, keys: Keys, clock: FakeClock) -> HeartbeatIndex:
    return HeartbeatIndex(redis_client, keys, clock)


def beat(provider_id: str, **fields) -> Heartbeat:
    return Heartbeat(provider_id=provider_id, **fields)


def test_agent_heartbeat_is_recorded_with_our_receive_time(store, index, clock):
    example = load_protocol("heartbeat.agent.json")
    put_in(store, example["provider_id"], Status.AVAILABLE)
    outcome = index.record(parse_heartbeat(json.dumps(example)))
    assert outcome.accepted and outcome.outcome == "recorded" and outcome.status == "available"
    last = index.last_beats([example["provider_id"]])[example["provider_id"]]
    assert last is not None
    # Our clock, not the agent's timestamp (2026-11-26T09:20:32.5Z), decides staleness.
    assert last.received_at == clock.now
    assert last.active_jobs == 1
    shown = last.to_dict()
    assert shown["gpu_usage"] == [12.5, 0.0]
    assert shown["reported_status"] == "available"
    assert shown["agent_time"].startswith("2026-11-26T09:20:32.5")


def test_active_jobs_change_is_reported_so_labels_are_written_only_then(store, index):
    put_in(store, "p", Status.AVAILABLE)
    assert index.record(beat("p", active_jobs=0), now=1.0).active_jobs_changed  # first beat
    assert not index.record(beat("p", active_jobs=0), now=2.0).active_jobs_changed
    assert index.record(beat("p", active_jobs=2), now=3.0).active_jobs_changed
    assert not index.record(beat("p", active_jobs=2), now=4.0).active_jobs_changed


def test_reported_status_never_changes_the_lifecycle(store, index):
    put_in(store, "p", Status.JOINED)
    index.record(beat("p", status="available"))
    assert store.require("p").status is Status.JOINED


@pytest.mark.parametrize("status", [None, Status.REJECTED])
def test_beats_from_unknown_or_rejected_providers_are_dropped(store, index, redis_client, keys, status):
    if status is not None:
        put_in(store, "p", status)
    outcome = index.record(beat("p", active_jobs=3))
    assert not outcome.accepted
    assert outcome.outcome == ("unknown" if status is None else "rejected")
    assert redis_client.zscore(keys.heartbeat_index, "p") is None
    assert not redis_client.exists(keys.heartbeat("p"))


def test_stale_threshold_is_strict_and_cost_is_a_range(store, index, clock):
    put_in(store, "old", Status.AVAILABLE)
    put_in(store, "new", Status.AVAILABLE)
    index.record(beat("old"), now=1000.0)
    index.record(beat("new"), now=1100.0)
    assert index.stale(120, now=1119.0) == []
    assert index.stale(120, now=1120.0) == []  # exactly 120 s is not "more than" 120 s
    assert index.stale(120, now=1121.0) == [("old", 1000.0)]
    assert index.stale(120, now=1300.0) == [("old", 1000.0), ("new", 1100.0)]
    assert index.stale(120, now=1300.0, limit=1) == [("old", 1000.0)]


def test_a_late_duplicate_never_moves_the_last_beat_backwards(store, index):
    put_in(store, "p", Status.AVAILABLE)
    index.record(beat("p", active_jobs=2), now=2000.0)
    index.record(beat("p", active_jobs=9), now=1500.0)  # redelivered old message
    assert index.last_beat_times(["p"]) == {"p": 2000.0}
    assert index.last_beats(["p"])["p"].active_jobs == 2


@pytest.mark.parametrize("before", [Status.APPROVED, Status.JOINED, Status.AVAILABLE])
def test_a_beat_brings_an_offline_provider_back_to_its_previous_state(store, index, before):
    put_in(store, "p", Status.OFFLINE, previous=before)
    outcome = index.record(beat("p"))
    assert outcome.outcome == "recovered"
    assert outcome.status == before.value
    record = store.require("p")
    assert record.status is before and record.previous_status is None
    assert store.ids([Status.OFFLINE]) == []
    # A second beat is an ordinary one.
    assert index.record(beat("p")).outcome == "recorded"


def test_record_many_batches_and_keeps_order(store, index, monkeypatch):
    for i in range(5):
        store.upsert_registration(registration(f"p-{i}"))
    monkeypatch.setattr("worldland.state.heartbeats.RECORD_BATCH", 2)
    beats = [beat(f"p-{i}") for i in range(5)] + [beat("ghost")]
    outcomes = index.record_many(beats, now=50.0)
    assert [o.provider_id for o in outcomes] == [b.provider_id for b in beats]
    assert [o.accepted for o in outcomes] == [True] * 5 + [False]
    assert index.stale(10, now=61.0) == [(f"p-{i}", 50.0) for i in range(5)]


@pytest.mark.parametrize("leave", ["remove", "reject"])
def test_a_provider_out_of_the_fleet_is_never_counted_stale_again(redis_client, keys, clock, leave):
    fleet = Fleet.open(redis_client, keys, clock)
    # an agent beats from approval on; only Pending and Approved may be rejected, any approved one removed
    put_in(fleet.store, "gone", Status.AVAILABLE if leave == "remove" else Status.APPROVED)
    put_in(fleet.store, "quiet", Status.AVAILABLE)
    for pid in ("gone", "quiet"):
        fleet.heartbeats.record(beat(pid))
    clock.now += 300
    assert fleet.heartbeats.count_stale() == 2
    if leave == "remove":
        fleet.remove("gone", "hardware returned")
    else:
        fleet.reject("gone", "terms broken")
    assert fleet.heartbeats.count_stale() == 1
    assert [pid for pid, _ in fleet.heartbeats.stale()] == ["quiet"]
    # its beats are dropped from now on, and its last beat's details are kept
    assert not fleet.heartbeats.record(beat("gone")).accepted
    assert fleet.heartbeats.count_stale() == 1
    assert fleet.heartbeats.last_beats(["gone"])["gone"] is not None
