"""Offboarding on real Redis: the Removed state as the store enforces it (generated Lua), what a removed
provider's messages do, the ledger giving capacity back, and ``Onboarding.offboard`` step by step against a
fake cluster (the real apiserver's part is tests/test_offboard_realkube.py)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pytest

from testkit.factories import heartbeat_dict, registration, registration_dict
from testkit.fleet import put_in
from testkit.listener import drain, make_listener
from worldland.control.inventory import DEFAULT_STATUSES
from worldland.control.offboarding import OffboardRefused
from worldland.control.onboarding import Onboarding, Rejected
from worldland.domain.lifecycle import REMOVABLE_STATES, Status, TransitionError
from worldland.domain.names import LABEL_PROVIDER_ID, label_value
from worldland.domain.policy import ApprovalMode, ApprovalPolicy
from worldland.kube import BootstrapTokenInfo, DrainResult, KubeUnavailable, NodeState
from worldland.protocol.messages import CapacityUpdate, parse_heartbeat
from worldland.protocol.streams import StreamNames
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys
from worldland.state.ledger import Capacity

S = Status


def last_answer(fleet: Fleet, names: StreamNames, pid: str) -> dict:
    entries = fleet.client.xrevrange(names.response(pid), count=1)
    assert entries, f"no answer to {pid}"
    return json.loads(entries[0][1]["data"])


# -- the state, as the store enforces it ------------------------------------------------------------------


@pytest.mark.parametrize("source", sorted(REMOVABLE_STATES))
def test_every_approved_state_is_removed_with_its_reason_and_only_a_registration_starts_over(
    fleet: Fleet, keys: Keys, source: Status
) -> None:
    put_in(fleet.store, "p", source)
    result = fleet.remove("p", "  returned to its owner  ")
    assert (result.previous, result.current, result.changed) == (source, S.REMOVED, True)
    record = fleet.store.require("p")
    assert (record.status, record.status_reason, record.previous_status) == (
        S.REMOVED,
        "returned to its owner",
        None,
    )
    assert fleet.store.ids([S.REMOVED]) == ["p"] and fleet.store.ids([source]) == []
    assert fleet.store.counts()["removed"] == 1
    assert fleet.client.zscore(keys.awaiting_first_beat, "p") is None  # out of the audit's grace set
    for target in (S.APPROVED, S.JOINED, S.AVAILABLE, S.OFFLINE, S.REJECTED):
        with pytest.raises(TransitionError, match="removed may only go to pending"):
            fleet.store.transition("p", target)
    assert fleet.remove("p", "again").changed is False  # already there: a no-op
    assert fleet.store.transition("p", S.PENDING).changed


@pytest.mark.parametrize("source", [S.PENDING, S.REJECTED])
def test_a_provider_never_approved_is_not_removed(fleet: Fleet, source: Status) -> None:
    put_in(fleet.store, "p", source)
    with pytest.raises(TransitionError):
        fleet.remove("p", "no")
    assert fleet.store.require("p").status is source


def test_an_empty_reason_is_refused(fleet: Fleet) -> None:
    put_in(fleet.store, "p", S.AVAILABLE)
    with pytest.raises(ValueError, match="reason: must not be empty"):
        fleet.remove("p", "   ")
    assert fleet.store.require("p").status is S.AVAILABLE


def test_removal_marks_a_node_state_for_the_label_sync_and_drops_a_held_change(fleet: Fleet, keys: Keys):
    put_in(fleet.store, "p", S.AVAILABLE)
    fleet.store.hold_change("p", registration("p", gpus=8))
    before = fleet.client.zscore(keys.node_sync, "p") or 0
    fleet.remove("p", "gone")
    assert fleet.client.zscore(keys.node_sync, "p") > before  # the audit finds no node state: unmarks it
    assert fleet.store.require("p").pending_registration == ""


def test_a_removed_providers_heartbeats_are_dropped(fleet: Fleet, keys: Keys) -> None:
    put_in(fleet.store, "p", S.AVAILABLE)
    fleet.remove("p", "gone")
    outcome = fleet.heartbeats.record(parse_heartbeat(json.dumps(heartbeat_dict("p"))), now=1000.0)
    assert (outcome.outcome, outcome.status, outcome.accepted) == ("removed", "removed", False)
    assert fleet.client.zscore(keys.heartbeat_index, "p") is None
    assert fleet.store.require("p").status is S.REMOVED


def test_the_inventory_leaves_removed_providers_out_unless_asked() -> None:
    assert S.REMOVED not in DEFAULT_STATUSES and S.REJECTED not in DEFAULT_STATUSES
    assert set(DEFAULT_STATUSES) == {S.PENDING, S.APPROVED, S.JOINED, S.AVAILABLE, S.OFFLINE}


# -- what a removed provider's messages do ----------------------------------------------------------------


def test_a_removed_provider_that_registers_again_starts_over_as_pending(fleet, names) -> None:
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.MANUAL))
    put_in(fleet.store, "p-back", S.AVAILABLE)
    fleet.remove("p-back", "gone")
    fleet.client.xadd(names.registration, {"data": json.dumps(registration_dict("p-back", gpus=2))})
    drain(listener)
    record = fleet.store.require("p-back")
    assert (record.status, record.status_reason) == (S.PENDING, "registered again after being offboarded")
    assert fleet.ledger.get("p-back").gpu("RTX-4090").total == 2  # its new offer
    assert last_answer(fleet, names, "p-back")["status"] == "pending"


def test_a_removed_provider_the_policy_refuses_stays_removed_and_is_told_so(fleet, names) -> None:
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.MANUAL, min_gpus=8))
    fleet.register(registration("p-no"))
    put_in(fleet.store, "p-no", S.AVAILABLE)
    fleet.remove("p-no", "gone")
    fleet.ledger.withdraw("p-no")
    fleet.client.xadd(names.registration, {"data": json.dumps(registration_dict("p-no", gpus=4))})
    drain(listener)
    assert fleet.store.require("p-no").status is S.REMOVED
    assert fleet.ledger.get("p-no").empty  # nothing stored for a refused registration
    answer = last_answer(fleet, names, "p-no")
    assert answer["success"] is False and answer["status"] == "rejected"  # the wire has no "removed"
    assert "stays so" in answer["message"]


def test_an_operator_cannot_approve_a_removed_provider_back(fleet, names) -> None:
    onboarding = Onboarding(fleet=fleet, streams=names, policy=ApprovalPolicy(), cluster=None)
    put_in(fleet.store, "p", S.AVAILABLE)
    fleet.remove("p", "gone")
    with pytest.raises(TransitionError, match="only by registering again"):
        onboarding.approve("p")
    assert fleet.store.require("p").status is S.REMOVED


def test_a_removed_providers_capacity_updates_are_refused(fleet, names) -> None:
    onboarding = Onboarding(fleet=fleet, streams=names, policy=ApprovalPolicy(), cluster=None)
    fleet.register(registration("p"))
    put_in(fleet.store, "p", S.AVAILABLE)
    fleet.remove("p", "gone")
    fleet.ledger.withdraw("p")
    update = CapacityUpdate.model_validate({"provider_id": "p", "capacity": {"gpu_count": 4}})
    with pytest.raises(Rejected, match="is removed"):
        onboarding.apply_capacity(update)
    assert fleet.ledger.get("p").empty


# -- the ledger gives capacity back -----------------------------------------------------------------------


def test_withdraw_takes_back_everything_no_job_holds(fleet: Fleet) -> None:
    fleet.ledger.set_totals("p", {"RTX-4090": 4, "A100": 2}, 32, 65536, mining={"RTX-4090": 1})
    before, after = fleet.ledger.withdraw("p")
    assert before.gpu("RTX-4090").total == 4 and after.empty
    assert fleet.ledger.withdraw("p") == (after, after)  # nothing left: nothing written


def test_withdraw_never_goes_below_what_running_jobs_hold(fleet: Fleet, keys: Keys) -> None:
    fleet.register(registration("p", gpus=4))
    put_in(fleet.store, "p", S.AVAILABLE)
    fleet.ledger.set_mining("p", "RTX-4090", 1)
    fleet.ledger.allocate("job-1", "p", "RTX-4090", 2, 8, 16384)
    fleet.ledger.allocate("job-2", "p", None, 0, 4, 1024)
    _, after = fleet.ledger.withdraw("p")
    gpu = after.gpu("RTX-4090")
    assert (gpu.total, gpu.available, gpu.in_use, gpu.mining) == (2, 0, 2, 0)
    assert (after.cpu.total, after.cpu.available, after.memory.total) == (12, 0, 17408)
    assert fleet.ledger.withdraw("p")[1] == after  # idempotent
    fleet.ledger.release("job-1")  # its GPUs come back as available...
    assert fleet.ledger.get("p").gpu("RTX-4090").available == 2
    _, after = fleet.ledger.withdraw("p")  # ...and a second withdraw takes them too
    assert after.gpus == {} and (after.cpu.total, after.cpu.in_use) == (4, 4)


# -- Onboarding.offboard against a fake cluster -------------------------------------------------------------


@dataclass
class FakeCluster:
    """The Kubernetes side offboarding uses, in memory; ``down`` makes every call fail as unreachable."""

    nodes: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> labels
    cordoned: set[str] = field(default_factory=set)
    pods: dict[str, list[str]] = field(default_factory=dict)  # node -> pods on it
    tokens: dict[str, str] = field(default_factory=dict)  # token id -> provider label
    down: bool = False
    calls: list[str] = field(default_factory=list)

    def _call(self, what: str) -> None:
        self.calls.append(what)
        if self.down:
            raise KubeUnavailable(f"{what}: Kubernetes API unreachable")

    def node_state(self, name: str) -> NodeState:
        self._call(f"get {name}")
        if name not in self.nodes:
            return NodeState(name=name, exists=False)
        return NodeState(name=name, exists=True, labels=self.nodes[name], unschedulable=name in self.cordoned)

    def cordon(self, node_name: str, *, unschedulable: bool = True) -> bool:
        self._call(f"cordon {node_name}")
        was = node_name in self.cordoned
        self.cordoned.add(node_name)
        return not was

    def evict_pods(self, node_name: str, *, timeout_s: float) -> DrainResult:
        self._call(f"drain {node_name} {timeout_s:g}")
        pods = self.pods.pop(node_name, [])
        return DrainResult(
            evicted=[p for p in pods if "ds-" not in p and "stuck" not in p],
            skipped=[p for p in pods if "ds-" in p],
            left={p: "evicted, still terminating" for p in pods if "stuck" in p},
        )

    def delete_node(self, node_name: str) -> bool:
        self._call(f"delete {node_name}")
        return self.nodes.pop(node_name, None) is not None

    def delete_bootstrap_token(self, token_id: str) -> bool:
        self._call(f"delete token {token_id}")
        return self.tokens.pop(token_id, None) is not None

    def list_bootstrap_tokens(self, provider_id: str | None = None) -> list[BootstrapTokenInfo]:
        self._call("list tokens")
        wanted = label_value(provider_id) if provider_id else None
        return [
            BootstrapTokenInfo(token_id=t, expires_at=None, provider_label=label, description="")
            for t, label in sorted(self.tokens.items())
            if wanted is None or label == wanted
        ]


def available_provider(fleet: Fleet, cluster: FakeCluster, pid: str = "p-off") -> str:
    """An Available provider with a node, a recorded join token (and an older one), 4 GPUs offered."""
    fleet.register(registration(pid, gpus=4))
    put_in(fleet.store, pid, S.AVAILABLE)
    fleet.store.record_token(pid, "abc123", time.time() + 900)
    node = fleet.store.require(pid).node_name
    cluster.nodes[node] = {LABEL_PROVIDER_ID: label_value(pid)}
    cluster.tokens.update({"abc123": label_value(pid), "old999": label_value(pid), "zzz000": "another"})
    cluster.pods[node] = ["rental/job-a", "kube-system/ds-device-plugin"]
    return pid


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def onboarding(fleet: Fleet, names: StreamNames, cluster: FakeCluster) -> Onboarding:
    return Onboarding(fleet=fleet, streams=names, policy=ApprovalPolicy(), cluster=cluster)  # type: ignore[arg-type]


def test_offboard_does_every_step_and_a_second_run_finds_nothing_to_do(fleet, names, cluster, onboarding):
    pid = available_provider(fleet, cluster)
    node = fleet.store.require(pid).node_name
    report = onboarding.offboard(pid, reason="hardware returned", drain_timeout_s=30)
    assert (report.before, report.after, report.changed, report.complete) == (
        S.AVAILABLE,
        S.REMOVED,
        True,
        True,
    )
    assert report.cordoned and report.node_deleted and node not in cluster.nodes
    assert (report.evicted, report.skipped, report.left) == (
        ["rental/job-a"],
        ["kube-system/ds-device-plugin"],
        {},
    )
    assert cluster.calls[:4] == [f"get {node}", f"cordon {node}", f"drain {node} 30", f"delete {node}"]
    assert report.tokens_revoked == ["abc123", "old999"] and report.tokens_queued == []
    assert set(cluster.tokens) == {"zzz000"}  # another provider's token stays
    assert report.capacity_released and fleet.ledger.get(pid).empty
    record = fleet.store.require(pid)
    assert (record.status, record.status_reason, record.token_id, record.last_error) == (
        S.REMOVED,
        "hardware returned",
        "",
        "",
    )
    answer = last_answer(fleet, names, pid)  # its agent is told, as the Go agent understands it
    assert (answer["success"], answer["status"], answer["code"]) == (False, "rejected", "removed")
    assert "hardware returned" in answer["message"] and "register again" in answer["message"]
    answers = fleet.client.xlen(names.response(pid))

    again = onboarding.offboard(pid, reason="hardware returned")
    assert again.changed is False and again.complete and (again.before, again.after) == (S.REMOVED, S.REMOVED)
    assert not (again.cordoned or again.evicted or again.node_deleted or again.tokens_revoked)
    assert fleet.client.xlen(names.response(pid)) == answers  # told once


def test_an_offline_provider_is_offboarded_too(fleet, cluster, onboarding) -> None:
    pid = available_provider(fleet, cluster)
    fleet.store.transition(pid, S.OFFLINE)
    report = onboarding.offboard(pid)
    assert (report.before, report.after, report.complete) == (S.OFFLINE, S.REMOVED, True)
    record = fleet.store.require(pid)
    assert record.previous_status is None and record.status_reason == "offboarded by an operator"


def test_running_jobs_refuse_it_unless_forced_and_forced_they_keep_what_they_hold(fleet, cluster, onboarding):
    pid = available_provider(fleet, cluster)
    fleet.ledger.allocate("job-7", pid, "RTX-4090", 2, 4, 4096)
    with pytest.raises(
        OffboardRefused, match=r"1 running job\(s\) hold its resources \(job job-7: 2 RTX-4090"
    ):
        onboarding.offboard(pid)
    assert fleet.store.require(pid).status is S.AVAILABLE and cluster.calls == []  # nothing done
    assert fleet.ledger.get(pid).gpu("RTX-4090").total == 4
    report = onboarding.offboard(pid, force=True)
    assert report.forced and report.after is S.REMOVED and report.node_deleted
    assert report.held_by_jobs == [
        "job job-7: 2 RTX-4090 GPU(s), 4 CPU core(s), 4096 MiB memory on provider p-off"
    ]
    capacity = fleet.ledger.get(pid)
    assert capacity.gpu("RTX-4090").total == 2 == capacity.gpu("RTX-4090").in_use
    fleet.ledger.release("job-7")  # the job system lets go: a later offboard takes the rest back
    assert onboarding.offboard(pid).capacity_released and fleet.ledger.get(pid).empty


@pytest.mark.parametrize("status", [S.PENDING, S.REJECTED])
def test_a_provider_never_approved_is_refused(fleet, cluster, onboarding, status: Status) -> None:
    put_in(fleet.store, "p-new", status)
    with pytest.raises(OffboardRefused, match="only an approved provider"):
        onboarding.offboard("p-new")
    assert fleet.store.require("p-new").status is status and cluster.calls == []


def test_no_cluster_is_refused_before_anything(fleet, names) -> None:
    onboarding = Onboarding(fleet=fleet, streams=names, policy=ApprovalPolicy(), cluster=None)
    put_in(fleet.store, "p", S.JOINED)
    with pytest.raises(OffboardRefused, match="no Kubernetes access"):
        onboarding.offboard("p")
    assert fleet.store.require("p").status is S.JOINED


def test_a_drain_timeout_out_of_range_is_refused(fleet, cluster, onboarding) -> None:
    pid = available_provider(fleet, cluster)
    with pytest.raises(ValueError, match="drain_timeout_s"):
        onboarding.offboard(pid, drain_timeout_s=-1)
    assert fleet.store.require(pid).status is S.AVAILABLE


def test_kubernetes_down_leaves_it_removed_with_the_error_and_a_later_run_finishes(
    fleet, keys, cluster, onboarding
) -> None:
    pid = available_provider(fleet, cluster)
    node = fleet.store.require(pid).node_name
    cluster.down = True
    report = onboarding.offboard(pid)
    assert report.after is S.REMOVED and not report.complete and report.changed
    assert not report.node_deleted and node in cluster.nodes
    assert report.tokens_queued == ["abc123"]  # the recorded one: queued before the record forgot it
    assert fleet.client.smembers(keys.revoked_tokens) == {"abc123"}
    assert report.capacity_released and fleet.ledger.get(pid).empty  # Redis' part is done anyway
    record = fleet.store.require(pid)
    assert record.status is S.REMOVED and record.token_id == ""
    assert record.last_error.startswith("offboard: node ") and "unreachable" in record.last_error
    cluster.down = False
    again = onboarding.offboard(pid)
    assert again.complete and again.node_deleted and again.tokens_revoked == ["abc123", "old999"]
    assert fleet.client.smembers(keys.revoked_tokens) == set() and set(cluster.tokens) == {"zzz000"}
    assert fleet.store.require(pid).last_error == ""


def test_stuck_pods_are_reported_and_the_node_goes_anyway(fleet, cluster, onboarding) -> None:
    pid = available_provider(fleet, cluster)
    node = fleet.store.require(pid).node_name
    cluster.pods[node] = ["rental/stuck-1"]
    report = onboarding.offboard(pid, drain_timeout_s=0)
    assert report.left == {"rental/stuck-1": "evicted, still terminating"}
    assert report.node_deleted and report.complete


def test_a_node_labelled_for_another_provider_is_left_alone(fleet, cluster, onboarding) -> None:
    pid = available_provider(fleet, cluster)
    node = fleet.store.require(pid).node_name
    cluster.nodes[node] = {LABEL_PROVIDER_ID: "someone-else"}
    report = onboarding.offboard(pid)
    assert node in cluster.nodes and node not in cluster.cordoned
    assert report.errors == [f"node {node} is labelled for provider 'someone-else', not this one: left alone"]
    assert report.after is S.REMOVED and not report.complete


def test_a_report_says_what_it_did_as_plain_data(fleet, cluster, onboarding) -> None:
    pid = available_provider(fleet, cluster)
    data = onboarding.offboard(pid).to_dict()
    json.dumps(data)
    assert data["status"] == "removed" and data["previous_status"] == "available" and data["changed"] is True
    assert data["capacity"] == Capacity(pid).to_dict()
