"""The heartbeat audit (``worldland audit``) against a real redis-server and the Kubernetes API test
server, with a clock the tests control: nothing here waits for minutes."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid

import pytest
import redis
from click.testing import CliRunner

from testkit.agent import Agent
from testkit.clock import FakeClock
from testkit.commands import WORLDLAND
from testkit.factories import registration
from testkit.fleet import beat, new_id, provider, status
from testkit.listener import drain, make_listener
from testkit.nodes import create_node, set_node_status
from worldland.cli.main import main
from worldland.control.audit import Audit, AuditConfigError, AuditSettings
from worldland.control.onboarding import Onboarding
from worldland.domain.lifecycle import LIVE_STATES, Status
from worldland.domain.names import heartbeat_label_value
from worldland.domain.policy import ApprovalPolicy
from worldland.protocol.streams import StreamNames
from worldland.state.connection import connect
from worldland.state.fleet import Fleet
from worldland.state.heartbeats import HeartbeatIndex
from worldland.state.keys import Keys
from worldland.state.ledger import CapacityError, JobRequest

OFFLINE_TAINT = {"key": "worldland.io/offline", "effect": "NoSchedule"}
T0 = 1_790_000_000.0  # a fixed, realistic epoch: label values are readable dates


# -- fixtures and helpers --------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return connect(redis_url)


@pytest.fixture
def fleet(client: redis.Redis, keys: Keys, clock: FakeClock) -> Fleet:
    return Fleet.open(client, keys, clock)


@pytest.fixture
def names() -> StreamNames:
    return StreamNames(namespace=f"t{uuid.uuid4().hex[:6]}:")


@pytest.fixture
def cluster(kube_api):
    from worldland.kube import KubeClient

    return KubeClient.from_kubeconfig(kube_api.kubeconfig)


def make_audit(fleet: Fleet, clock, cluster=None, names=None, **settings) -> Audit:
    onboarding = Onboarding(
        fleet=fleet, streams=names or StreamNames(), policy=ApprovalPolicy(), cluster=cluster, clock=clock
    )
    return Audit(onboarding, AuditSettings(**settings), clock)


def node_of(fleet: Fleet, pid: str) -> str:
    return fleet.store.require(pid).node_name


def with_node(fleet: Fleet, kube_api, pid: str, ready: bool = True, gpus: int = 4) -> str:
    node = node_of(fleet, pid)
    create_node(kube_api, node, ready=ready, gpus=gpus)
    return node


def labels(kube_api, node: str) -> dict[str, str]:
    return kube_api.server.get_object("nodes", node)["metadata"].get("labels") or {}


def taints(kube_api, node: str) -> list[dict]:
    return kube_api.server.get_object("nodes", node)["spec"].get("taints") or []


def pending_syncs(fleet: Fleet) -> list[str]:
    return fleet.client.zrange(fleet.keys.node_sync, 0, -1)


def _url(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


# -- Offline after more than 120 s, in every live state ----------------------------------------------


@pytest.mark.parametrize("state", [Status.APPROVED, Status.JOINED, Status.AVAILABLE])
def test_each_live_state_goes_offline_at_121_s_and_not_at_119_s(fleet, clock, cluster, kube_api, state):
    pid = provider(fleet, state)
    node = None
    if state is not Status.APPROVED:  # joined: a node that is not ready; available: ready with GPUs
        node = with_node(fleet, kube_api, pid, ready=state is Status.AVAILABLE)
    audit = make_audit(fleet, clock, cluster)
    beat(fleet, pid, at=clock.now)
    first = audit.run()
    assert first.ok and first.newly_offline == []
    if node:
        assert labels(kube_api, node)["worldland.io/rental-status"] == state.value
        assert taints(kube_api, node) == []

    clock.now = T0 + 119
    report = audit.run()
    assert report.ok and report.newly_offline == [] and status(fleet, pid) is state

    clock.now = T0 + 121
    report = audit.run()
    assert report.ok, report.errors
    assert report.newly_offline == [pid]
    record = fleet.store.require(pid)
    assert record.status is Status.OFFLINE and record.previous_status is state
    assert "no heartbeat for more than 120 s" in record.status_reason
    if node:
        assert labels(kube_api, node)["worldland.io/rental-status"] == "offline"
        assert taints(kube_api, node) == [OFFLINE_TAINT]
        assert report.synced == [pid]
    assert pending_syncs(fleet) == []
    # The next pass finds nothing new to do and writes nothing.
    before = kube_api.write_counts()
    again = audit.run()
    assert again.ok and again.newly_offline == [] and again.synced == []
    assert kube_api.write_counts() == before


def test_exactly_120_s_is_not_stale_and_the_threshold_is_configurable(fleet, clock):
    pid = provider(fleet, Status.AVAILABLE)
    beat(fleet, pid, at=T0)
    clock.now = T0 + 120
    assert make_audit(fleet, clock).run().newly_offline == []
    clock.now = T0 + 200
    assert make_audit(fleet, clock, stale_after=300).run().newly_offline == []
    assert make_audit(fleet, clock, stale_after=150).run().newly_offline == [pid]


def test_an_offline_provider_is_never_allocated(fleet, clock):
    pid = provider(fleet, Status.AVAILABLE)
    fleet.ledger.allocate("job-before", pid, "RTX-4090", 1, 1, 1024)
    beat(fleet, pid, at=T0)
    clock.now = T0 + 121
    assert make_audit(fleet, clock).run().newly_offline == [pid]
    with pytest.raises(CapacityError, match="is offline, not available"):
        fleet.ledger.allocate("job-while-offline", pid, "RTX-4090", 1, 1, 1024)
    [refused] = fleet.ledger.allocate_many([JobRequest("job-batched", pid, "RTX-4090", 1)])
    assert isinstance(refused, CapacityError) and "is offline" in str(refused)
    assert fleet.ledger.get(pid).gpus["RTX-4090"].in_use == 1  # the running job is untouched
    beat(fleet, pid, at=clock.now)
    assert status(fleet, pid) is Status.AVAILABLE
    assert fleet.ledger.allocate("job-after", pid, "RTX-4090", 1, 1, 1024).gpus == 1


# -- recovery: the listener or the audit first, one result ---------------------------------------------


@pytest.mark.parametrize("first", ["listener", "audit"])
@pytest.mark.parametrize("before", [Status.JOINED, Status.AVAILABLE])
def test_recovery_returns_the_previous_state_label_and_removes_the_taint_whoever_sees_the_beat_first(
    fleet, clock, cluster, kube_api, names, client, monkeypatch, first, before
):
    pid = provider(fleet, before)
    node = with_node(fleet, kube_api, pid, ready=before is Status.AVAILABLE)
    audit = make_audit(fleet, clock, cluster, names)
    beat(fleet, pid, at=T0, active_jobs=2)
    clock.now = T0 + 121
    assert audit.run().newly_offline == [pid]
    assert labels(kube_api, node)["worldland.io/rental-status"] == "offline"
    assert taints(kube_api, node) == [OFFLINE_TAINT]

    clock.now = T0 + 150
    if first == "listener":
        listener = make_listener(fleet, names, ApprovalPolicy(), cluster)
        agent = Agent(client, names)
        agent.publish(
            names.heartbeat, json.dumps({"provider_id": pid, "status": "available", "active_jobs": 0})
        )
        drain(listener)
        assert status(fleet, pid) is before  # the listener brought it back ...
        assert pending_syncs(fleet) == [pid]  # ... and marked the node for the audit.
        # Its heartbeat path writes no node; a Joined provider's node is put in line by the listener's
        # reconcile pass, by the one rule the audit uses too (worldland.domain.names.desired_node).
        assert taints(kube_api, node) == ([] if before is Status.JOINED else [OFFLINE_TAINT])
    else:
        # The beat is recorded but nothing recovered it (say the listener died right after recording).
        monkeypatch.setattr(HeartbeatIndex, "_recover_if_offline", lambda self, outcome: outcome)
        beat(fleet, pid, at=clock.now, active_jobs=0)
        monkeypatch.undo()
        assert status(fleet, pid) is Status.OFFLINE

    clock.now = T0 + 160
    report = audit.run()
    assert report.ok, report.errors
    assert report.recovered == ([pid] if first == "audit" else [])
    assert report.newly_offline == []
    assert report.synced == ([] if first == "listener" and before is Status.JOINED else [pid])
    record = fleet.store.require(pid)
    assert record.status is before and record.previous_status is None
    node_labels = labels(kube_api, node)
    assert node_labels["worldland.io/rental-status"] == before.value  # Go fault 3: not "offline" forever
    assert node_labels["worldland.io/active-jobs"] == "0"
    assert node_labels["worldland.io/last-heartbeat"] == heartbeat_label_value(T0 + 150, 600)
    assert taints(kube_api, node) == []
    assert pending_syncs(fleet) == []
    # And it can go Offline again later, and come back again.
    clock.now = T0 + 150 + 121
    assert audit.run().newly_offline == [pid]
    assert taints(kube_api, node) == [OFFLINE_TAINT]


def test_a_stale_beat_does_not_recover_and_a_beat_before_going_offline_does_not_count(fleet, clock):
    pid = provider(fleet, Status.AVAILABLE)
    beat(fleet, pid, at=T0)
    clock.now = T0 + 121
    audit = make_audit(fleet, clock)
    assert audit.run().newly_offline == [pid]
    clock.now = T0 + 125  # the old beat is still the last one: stays offline
    report = audit.run()
    assert report.recovered == [] and status(fleet, pid) is Status.OFFLINE


# -- the grace period for providers that never beat ------------------------------------------------------


def test_a_provider_that_never_beat_gets_a_grace_period_from_its_approval(fleet, clock, keys):
    pid = provider(fleet, Status.APPROVED)  # approved at T0, never beat
    audit = make_audit(fleet, clock, grace=600)
    clock.now = T0 + 599
    assert audit.run().newly_offline == []
    clock.now = T0 + 601
    report = audit.run()
    assert report.newly_offline == [pid]
    assert fleet.store.require(pid).previous_status is Status.APPROVED
    assert fleet.client.zscore(keys.awaiting_first_beat, pid) is None  # out of the grace set for good
    # Its first beat brings it back to Approved (a machine still installing: nothing is lost).
    assert beat(fleet, pid, at=clock.now) == "recovered"
    assert status(fleet, pid) is Status.APPROVED


def test_grace_counts_from_approval_even_if_the_provider_beat_while_pending(fleet, clock):
    pid = new_id()
    fleet.register(registration(pid))
    beat(fleet, pid, at=T0 - 500)  # the agent beats while waiting for approval
    clock.now = T0
    fleet.store.transition(pid, Status.APPROVED)
    audit = make_audit(fleet, clock, grace=600)
    clock.now = T0 + 300  # its last beat is 800 s old, but it has not had its grace yet
    assert audit.run().newly_offline == []
    clock.now = T0 + 601
    assert audit.run().newly_offline == [pid]


def test_once_it_beats_after_approval_the_normal_threshold_applies(fleet, clock, keys):
    pid = provider(fleet, Status.APPROVED)
    beat(fleet, pid, at=T0 + 10)
    audit = make_audit(fleet, clock, grace=600)
    clock.now = T0 + 10 + 121
    assert audit.run().newly_offline == [pid]


def test_the_grace_set_holds_only_providers_within_grace_after_a_pass(fleet, clock, keys):
    beaten = provider(fleet, Status.APPROVED)
    beat(fleet, beaten, at=T0 + 5)
    waiting = provider(fleet, Status.APPROVED)
    fleet.reject(provider(fleet, Status.APPROVED, pid=new_id("revoked")), "operator revoked it")
    clock.now = T0 + 30
    late = provider(fleet, Status.APPROVED)  # approved later: still within its grace
    clock.now = T0 + 601
    beat(fleet, beaten, at=clock.now)
    report = make_audit(fleet, clock, grace=600).run()
    assert report.newly_offline == [waiting]
    assert fleet.client.zrange(keys.awaiting_first_beat, 0, -1) == [late]


# -- the Go broker's faults (DESIGN.md), each shown absent ---------------------------------------------


def test_go_fault_1_every_live_state_is_swept_not_only_joined(fleet, clock):
    """The Go sweep looked only at `joined`, and heartbeats turned everyone into `available`."""
    ids = {state: provider(fleet, state) for state in (Status.APPROVED, Status.JOINED, Status.AVAILABLE)}
    for pid in ids.values():
        beat(fleet, pid, at=T0, reported="available")
    clock.now = T0 + 121
    report = make_audit(fleet, clock).run()
    assert sorted(report.newly_offline) == sorted(ids.values())
    for state, pid in ids.items():
        assert fleet.store.require(pid).previous_status is state


def test_go_fault_1_heartbeats_never_overwrite_the_state(fleet, clock):
    joined = provider(fleet, Status.JOINED)
    for i in range(5):
        beat(fleet, joined, at=T0 + 30 * i, reported="available")
    assert status(fleet, joined) is Status.JOINED
    clock.now = T0 + 4 * 30 + 121
    assert make_audit(fleet, clock).run().newly_offline == [joined]
    beat(fleet, joined, at=clock.now, reported="available")
    assert status(fleet, joined) is Status.JOINED  # back to what it was, not to what the agent claims


def test_go_fault_4_steady_heartbeats_and_audits_write_nothing_and_a_change_writes_once(
    fleet, clock, cluster, kube_api
):
    pid = provider(fleet, Status.AVAILABLE)
    node = with_node(fleet, kube_api, pid)
    audit = make_audit(fleet, clock, cluster)
    beat(fleet, pid, at=T0, active_jobs=1)
    assert audit.run().synced == [pid]  # first sync: the labels appear
    assert labels(kube_api, node)["worldland.io/active-jobs"] == "1"
    assert labels(kube_api, node)["worldland.io/last-heartbeat"] == heartbeat_label_value(T0, 600)
    before = kube_api.write_counts()
    for i in range(1, 40):  # 20 minutes of beats every 30 s, an audit every minute
        clock.now = T0 + 30 * i
        beat(fleet, pid, at=clock.now, active_jobs=1)
        if i % 2 == 0:
            assert audit.run().synced == []
    assert kube_api.write_counts() == before
    beat(fleet, pid, at=clock.now, active_jobs=3)
    beat(fleet, pid, at=clock.now + 1, active_jobs=2)  # two changes before the next pass: one write
    clock.now += 2
    report = audit.run()
    assert report.synced == [pid]
    assert kube_api.write_counts() - before == {"nodes": 1}
    assert labels(kube_api, node)["worldland.io/active-jobs"] == "2"
    assert labels(kube_api, node)["worldland.io/last-heartbeat"] == heartbeat_label_value(clock.now - 1, 600)


# -- promotion: Joined -> Available through the listener's code ------------------------------------------


def test_the_audit_moves_joined_nodes_that_are_ready_with_gpus_to_available(
    fleet, clock, cluster, kube_api, monkeypatch
):
    pid = provider(fleet, Status.JOINED)
    node = with_node(fleet, kube_api, pid, ready=False, gpus=0)
    approved = provider(fleet, Status.APPROVED)
    approved_node = with_node(fleet, kube_api, approved, ready=False, gpus=0)
    calls = []
    real = Onboarding.advance_nodes
    monkeypatch.setattr(Onboarding, "advance_nodes", lambda self, **kw: calls.append(kw) or real(self, **kw))
    audit = make_audit(fleet, clock, cluster)
    beat(fleet, pid, at=T0)
    beat(fleet, approved, at=T0)
    report = audit.run()
    assert report.promoted == [] and report.joined == [approved]
    set_node_status(kube_api, node, ready=True, gpus=2)  # the machine registered 4: a hard check
    report = audit.run()
    assert report.promoted == [] and status(fleet, pid) is Status.JOINED
    set_node_status(kube_api, node, ready=True, gpus=4)
    report = audit.run()
    assert report.promoted == [pid] and status(fleet, pid) is Status.AVAILABLE
    assert len(calls) == 3  # one per pass: the one implementation, shared with the listener's reconcile
    assert labels(kube_api, node)["worldland.io/rental-status"] == "available"
    assert labels(kube_api, approved_node)["worldland.io/rental-status"] == "joined"


# -- concurrency: two audits at once change each provider once ---------------------------------------------


def _race(fleet_factory, count: int, clock) -> list:
    barrier = threading.Barrier(count)
    reports: list = [None] * count

    def one(i: int) -> None:
        audit = make_audit(fleet_factory(), clock, max_offline_fraction=1.0)
        barrier.wait()
        reports[i] = audit.run()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return reports


@pytest.mark.parametrize("lock", [True, False], ids=["with-lock", "lock-expired"])
def test_concurrent_audits_change_each_provider_once(redis_url, keys, clock, monkeypatch, lock):
    fleet = Fleet.open(connect(redis_url), keys, clock)
    ids = [provider(fleet, Status.AVAILABLE, pid=f"race-{i:03d}") for i in range(40)]
    for pid in ids:
        beat(fleet, pid, at=T0)
    clock.now = T0 + 121
    if not lock:  # as if each pass outlived the lock: the compare-and-set alone must hold
        monkeypatch.setattr(Audit, "_acquire_lock", lambda self: True)
        monkeypatch.setattr(Audit, "_refresh_lock", lambda self: True)
    marks = fleet.client.zscore(keys.node_sync, ids[0])
    reports = _race(lambda: Fleet.open(connect(redis_url), keys, clock), 4, clock)
    changed = [pid for r in reports for pid in r.newly_offline]
    assert sorted(changed) == ids  # every provider exactly once
    assert all(r.ok for r in reports), [r.errors for r in reports]
    if lock:
        assert sum(1 for r in reports if r.skipped or not r.newly_offline) >= 3
    counts = fleet.store.counts()
    assert counts["offline"] == 40 and counts["available"] == 0
    assert fleet.client.zscore(keys.node_sync, ids[0]) == marks + 1  # one transition marked it once


def test_the_lock_skips_a_second_pass_and_only_its_owner_releases_it(fleet, clock, keys):
    pid = provider(fleet, Status.AVAILABLE)
    beat(fleet, pid, at=T0)
    clock.now = T0 + 121
    holder = make_audit(fleet, clock, lock_ttl=60)
    assert holder._acquire_lock()
    assert 0 < fleet.client.pttl(keys.audit_lock) <= 60_000
    other = make_audit(fleet, clock)
    report = other.run()
    assert report.skipped and report.ok and "another audit holds the lock" in report.skip_reason
    assert status(fleet, pid) is Status.AVAILABLE  # nothing applied by the skipped pass
    other._release_lock()  # not its lock: stays
    assert fleet.client.get(keys.audit_lock) == holder._token
    holder._release_lock()
    assert fleet.client.get(keys.audit_lock) is None
    assert other.run().newly_offline == [pid]
    assert fleet.client.get(keys.audit_lock) is None  # released after the pass


def test_two_audit_processes_at_once(redis_url, keys):
    """Two `worldland audit` processes started together (real time): each provider changes once."""
    fleet = Fleet.open(connect(redis_url), keys, clock=lambda: time.time() - 3600)  # approved long ago
    ids = [provider(fleet, Status.AVAILABLE, pid=f"proc-{i:03d}") for i in range(30)]
    for pid in ids:
        beat(fleet, pid, at=time.time() - 200)
    cmd = [str(WORLDLAND), "--redis-url", redis_url, "--key-prefix", keys.prefix, "audit", "--json"]
    cmd.append("--max-offline-fraction=1")
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    reports = [json.loads(out) for out, _err in outputs]
    changed = [pid for r in reports for pid in r["newly_offline"]]
    assert sorted(changed) == ids


# -- Kubernetes unreachable, or not configured --------------------------------------------------------


def test_kubernetes_outage_changes_state_records_pending_writes_and_the_next_pass_syncs(
    fleet, clock, cluster, kube_api
):
    pid = provider(fleet, Status.AVAILABLE)
    node = with_node(fleet, kube_api, pid)
    audit = make_audit(fleet, clock, cluster)
    beat(fleet, pid, at=T0)
    audit.run()
    clock.now = T0 + 121
    with kube_api.server.outage("refuse"):
        report = audit.run()
    assert report.newly_offline == [pid] and status(fleet, pid) is Status.OFFLINE
    assert not report.ok and any("Kubernetes unavailable" in e for e in report.errors)
    assert report.pending == 1 and pending_syncs(fleet) == [pid]
    assert taints(kube_api, node) == []  # nothing reached the node
    clock.now = T0 + 181
    report = audit.run()
    assert report.ok and report.synced == [pid] and report.pending == 0
    assert taints(kube_api, node) == [OFFLINE_TAINT]
    assert labels(kube_api, node)["worldland.io/rental-status"] == "offline"


def test_without_a_cluster_state_changes_happen_and_node_writes_stay_pending(fleet, clock, cluster, kube_api):
    pid = provider(fleet, Status.AVAILABLE)
    node = with_node(fleet, kube_api, pid)
    beat(fleet, pid, at=T0)
    clock.now = T0 + 121
    report = make_audit(fleet, clock).run()
    assert report.ok and report.newly_offline == [pid] and report.pending == 1
    assert taints(kube_api, node) == []
    report = make_audit(fleet, clock, cluster).run()
    assert report.synced == [pid] and report.pending == 0
    assert taints(kube_api, node) == [OFFLINE_TAINT]


def test_nodes_of_providers_without_a_node_are_dropped_from_the_sync_set(fleet, clock, cluster):
    pid = provider(fleet, Status.AVAILABLE)  # no node object exists
    rejected = provider(fleet, Status.APPROVED)
    fleet.reject(rejected, "revoked")
    report = make_audit(fleet, clock, cluster).run()
    assert report.ok and report.synced == [] and report.pending == 0
    assert pending_syncs(fleet) == []
    assert status(fleet, pid) is Status.AVAILABLE


# -- dry run, the mass-offline guard, settings ---------------------------------------------------------


def test_dry_run_reports_what_would_change_and_writes_nothing(fleet, clock, cluster, kube_api, keys):
    stale = provider(fleet, Status.AVAILABLE)
    with_node(fleet, kube_api, stale)
    ready = provider(fleet, Status.JOINED)
    with_node(fleet, kube_api, ready, ready=True, gpus=4)
    beat(fleet, stale, at=T0)
    beat(fleet, ready, at=T0 + 100)
    clock.now = T0 + 121
    raw = redis.Redis.from_url(_url(fleet.client))
    before = {k: raw.dump(k) for k in raw.scan_iter(match=f"{keys.prefix}*")}
    writes = kube_api.write_counts()
    dry = make_audit(fleet, clock, cluster).run(dry_run=True)
    assert dry.dry_run and dry.ok
    assert dry.newly_offline == [stale] and dry.promoted == [ready]
    assert sorted(dry.synced) == sorted([stale, ready])
    assert {k: raw.dump(k) for k in raw.scan_iter(match=f"{keys.prefix}*")} == before
    assert kube_api.write_counts() == writes
    real = make_audit(fleet, clock, cluster).run()
    assert real.newly_offline == dry.newly_offline and real.promoted == dry.promoted


def test_refuses_to_mark_most_of_the_fleet_offline_at_once(fleet, clock):
    ids = [provider(fleet, Status.AVAILABLE) for _ in range(20)]
    for pid in ids:
        beat(fleet, pid, at=T0)
    clock.now = T0 + 121  # nobody beat for two minutes: the heartbeat path is down, not 20 providers
    report = make_audit(fleet, clock).run()
    assert not report.ok and "refused to mark 20 of 20" in report.errors[0]
    assert fleet.store.counts()["available"] == 20
    report = make_audit(fleet, clock, max_offline_fraction=1.0).run()
    assert report.ok and len(report.newly_offline) == 20


def test_a_failing_step_is_an_error_and_the_other_steps_still_run(
    fleet, clock, cluster, kube_api, monkeypatch
):
    pid = provider(fleet, Status.AVAILABLE)
    node = with_node(fleet, kube_api, pid)
    beat(fleet, pid, at=T0)
    clock.now = T0 + 121

    def broken(self, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(Onboarding, "advance_nodes", broken)
    report = make_audit(fleet, clock, cluster).run()
    assert report.errors == ["promote: RuntimeError: boom"]
    assert report.newly_offline == [pid] and report.synced == [pid]
    assert taints(kube_api, node) == [OFFLINE_TAINT]
    assert fleet.client.get(fleet.keys.audit_lock) is None


def test_settings_from_a_config_file_and_flags(tmp_path):
    path = tmp_path / "worldland.yml"
    path.write_text("audit:\n  stale_after: 300\n  grace: 900\n  kube_workers: 2\n")
    settings = AuditSettings.load(path, stale_after=None, grace=60)
    assert (settings.stale_after, settings.grace, settings.kube_workers) == (300.0, 60.0, 2)
    path.write_text("audit:\n  stale_afterr: 300\n")
    with pytest.raises(AuditConfigError, match="unknown audit setting"):
        AuditSettings.load(path)
    path.write_text("audit:\n  kube_workers: 2.5\n")
    with pytest.raises(AuditConfigError, match="whole number"):
        AuditSettings.load(path)
    with pytest.raises(AuditConfigError, match="stale_after"):
        AuditSettings(stale_after=0)


def test_cost_follows_the_candidates_not_the_fleet(fleet, clock):
    healthy = [provider(fleet, Status.AVAILABLE) for _ in range(30)]
    stale = provider(fleet, Status.AVAILABLE)
    for pid in healthy:
        beat(fleet, pid, at=T0 + 100)
    beat(fleet, stale, at=T0)
    clock.now = T0 + 121
    report = make_audit(fleet, clock).run()
    assert report.newly_offline == [stale]
    assert report.checked == 1  # the 30 healthy providers were never looked at


# -- the command ---------------------------------------------------------------------------------------


def run_cli(redis_url: str, keys: Keys, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(WORLDLAND), "--redis-url", redis_url, "--key-prefix", keys.prefix, "audit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_cli_json_summary_and_exit_codes(redis_url, keys, kube_api, tmp_path):
    fleet = Fleet.open(connect(redis_url), keys, clock=lambda: time.time() - 3600)  # approved long ago
    pid = provider(fleet, Status.AVAILABLE)
    node = with_node(fleet, kube_api, pid)
    beat(fleet, pid, at=time.time() - 200)
    healthy = provider(fleet, Status.AVAILABLE)
    beat(fleet, healthy, at=time.time())

    dry = run_cli(redis_url, keys, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "audit (dry run): checked 2, would be newly offline 1," in dry.stdout  # + the grace set's
    assert f"would mark {pid} offline (was available)" in dry.stdout
    assert status(fleet, pid) is Status.AVAILABLE

    kubeconfig = str(kube_api.kubeconfig)
    with kube_api.server.outage("refuse"):
        down = run_cli(redis_url, keys, "--json", "--kubeconfig", kubeconfig)
    assert down.returncode == 1, down.stderr
    report = json.loads(down.stdout)
    for key in ("checked", "newly_offline", "recovered", "promoted", "errors", "skipped"):
        assert key in report
    assert report["newly_offline"] == [pid] and not report["skipped"]
    assert report["pending"] == 2  # its node, and the healthy provider's first sync
    assert "Kubernetes unavailable" in down.stderr

    up = run_cli(redis_url, keys, "--kubeconfig", kubeconfig)
    assert up.returncode == 0, up.stderr
    assert "newly offline 0" in up.stdout and "nodes written 1" in up.stdout
    assert taints(kube_api, node) == [OFFLINE_TAINT]


def test_cli_refuses_bad_settings_and_an_unreachable_redis(redis_url, keys, tmp_path):
    runner = CliRunner()
    config = tmp_path / "audit.yml"
    config.write_text("audit:\n  stale_after: -1\n")
    bad = runner.invoke(
        main,
        ["--redis-url", redis_url, "audit"],
        env={"WORLDLAND_CONFIG": str(config)},
        catch_exceptions=False,
    )
    assert bad.exit_code == 1 and "stale_after" in bad.output
    unreachable = runner.invoke(
        main, ["--redis-url", "redis://127.0.0.1:1/0", "audit"], catch_exceptions=False
    )
    assert unreachable.exit_code == 1 and "cannot reach Redis" in unreachable.output


def test_live_states_are_the_ones_the_audit_sweeps():
    assert {Status.APPROVED, Status.JOINED, Status.AVAILABLE} == LIVE_STATES


# -- issue 10: one rule for a node, whoever writes it -----------------------------------------------


def test_the_listener_reconcile_and_the_audit_write_the_same_labels(fleet, clock, cluster, kube_api, names):
    pid = provider(fleet, Status.APPROVED)
    node = with_node(fleet, kube_api, pid, ready=True, gpus=4)
    beat(fleet, pid, at=T0, active_jobs=3)
    clock.now = T0 + 5
    listener = make_listener(fleet, names, ApprovalPolicy(), cluster)
    listener.reconcile()  # Approved -> Joined -> Available, and the node written by the reconcile
    assert status(fleet, pid) is Status.AVAILABLE
    by_reconcile = labels(kube_api, node)
    # Before: the reconcile wrote 4 labels and the audit 6; now both write the one desired set.
    assert by_reconcile["worldland.io/active-jobs"] == "3"
    assert by_reconcile["worldland.io/last-heartbeat"] == heartbeat_label_value(T0, 600)
    writes = kube_api.write_counts()
    report = make_audit(fleet, clock, cluster, names).run()
    assert report.ok, report.errors
    assert labels(kube_api, node) == by_reconcile
    assert kube_api.write_counts() == writes  # nothing left for the audit to change
