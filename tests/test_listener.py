"""The listener against a real redis-server, speaking the deployed Go agent's stream protocol."""

from __future__ import annotations

import json

import pytest
import redis

from testkit.agent import Agent
from testkit.factories import heartbeat_dict, registration, registration_dict
from testkit.fleet import put_in
from testkit.listener import drain, make_listener
from testkit.nodes import create_node, set_node_status
from tests.conftest import load_go_agent, load_protocol
from worldland.control.listener import Listener, ListenerSettings
from worldland.control.onboarding import Onboarding
from worldland.domain.join import join_command
from worldland.domain.lifecycle import Status
from worldland.domain.policy import ApprovalMode, ApprovalPolicy
from worldland.protocol.streams import AGENT_RESPONSE_GROUP, StreamNames
from worldland.state.ledger import CapacityError

AGENT_ID = "0x3f5CE5FBFe3E9af3971dD833D26bA9b5C936f0bE"


@pytest.fixture
def agent(client: redis.Redis, names: StreamNames) -> Agent:
    return Agent(client, names)


def test_manual_policy_answers_pending_exactly_as_the_agent_reads_it(fleet, names, agent):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.MANUAL))
    agent.register(load_protocol("registration.agent.json"))
    drain(listener)
    answer = agent.await_answer(AGENT_ID)
    assert answer is not None, "the answer written before the agent's group existed was missed"
    assert answer["success"] is True
    assert answer["status"] == "pending"
    assert "join_token" not in answer
    record = fleet.store.require(AGENT_ID)
    assert record.status is Status.PENDING
    assert fleet.ledger.get(AGENT_ID).gpus["A100-SXM4-80GB"].total == 2
    assert fleet.client.xpending(names.registration, listener.settings.group)["pending"] == 0


def test_the_same_registration_twice_has_the_effect_of_once(fleet, names, agent):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.MANUAL))
    message = load_protocol("registration.agent.json")
    agent.register(message)
    agent.register(message)
    drain(listener)
    assert fleet.store.ids() == [AGENT_ID]
    assert fleet.store.counts()["pending"] == 1
    assert fleet.ledger.get(AGENT_ID).gpus["A100-SXM4-80GB"].total == 2


MALFORMED = [
    ("not json", "{nope", None, "message: is not valid JSON"),
    (
        "placeholder wallet",
        json.dumps(load_protocol("registration.seed.json")),
        "provider-uuid",
        "wallet_addr",
    ),
    (
        "private address",
        json.dumps(registration_dict("p-private", public_ip="10.1.2.3")),
        "p-private",
        "public_ip",
    ),
    ("hostile id", json.dumps({**registration_dict("x"), "provider_id": "../../etc"}), None, "provider_id"),
    ("too many gpus", json.dumps(registration_dict("p-big", gpus=65)), "p-big", "spec"),
]


@pytest.mark.parametrize(("case", "data", "readable_id", "reason"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_registrations_are_dead_lettered_and_answered(
    fleet, names, agent, case, data, readable_id, reason
):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.AUTO))
    agent.register(data)
    agent.register(load_protocol("registration.agent.json"))  # the listener keeps going
    drain(listener)
    dead = fleet.client.xrange(names.dead_letter(names.registration))
    assert len(dead) == 1
    assert reason in dead[0][1]["reason"]
    assert dead[0][1]["data"] == data
    if readable_id:
        answer = agent.await_answer(readable_id)
        assert answer == {"success": False, "status": "rejected", "message": dead[0][1]["reason"]}
        assert fleet.store.get(readable_id) is None  # nothing written to its state
    assert fleet.store.ids() == [AGENT_ID]
    assert fleet.client.xpending(names.registration, listener.settings.group)["pending"] == 0


def test_policy_refusal_is_stored_as_rejected_with_the_reason(fleet, names, agent):
    policy = ApprovalPolicy(mode=ApprovalMode.AUTO, allowed_gpu_models=["RTX 4090"])
    listener = make_listener(fleet, names, policy)
    agent.register(load_protocol("registration.agent.json"))
    drain(listener)
    answer = agent.await_answer(AGENT_ID)
    assert answer["status"] == "rejected" and answer["success"] is False
    assert "A100-SXM4-80GB not accepted" in answer["message"]
    assert fleet.store.require(AGENT_ID).status is Status.REJECTED


def test_a_registration_from_another_wallet_is_refused_without_answering_the_owner(fleet, names, agent):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.MANUAL))
    fleet.register(registration("p-owned"))
    impostor = registration_dict("p-owned", wallet="0x" + "ab" * 20)
    agent.register(impostor)
    drain(listener)
    dead = fleet.client.xrange(names.dead_letter(names.registration))
    assert "another wallet" in dead[0][1]["reason"]
    assert agent.await_answer("p-owned") is None
    assert fleet.store.require("p-owned").wallet_addr != impostor["wallet_addr"]


def test_heartbeats_are_recorded_and_unknown_ones_dead_lettered(fleet, names, agent):
    listener = make_listener(fleet, names, ApprovalPolicy())
    example = load_protocol("heartbeat.agent.json")
    fleet.register(registration(AGENT_ID, wallet=AGENT_ID))
    put_in(fleet.store, "p-offline", Status.OFFLINE, previous=Status.AVAILABLE)
    agent.publish(names.heartbeat, json.dumps(example))
    agent.publish(names.heartbeat, json.dumps({**example, "provider_id": "ghost"}))
    agent.publish(names.heartbeat, json.dumps({**example, "provider_id": "p-offline"}))
    agent.publish(names.heartbeat, json.dumps({**example, "active_jobs": -1}))
    drain(listener)
    assert fleet.heartbeats.last_beat_times([AGENT_ID, "ghost"])[AGENT_ID] is not None
    assert fleet.store.require(AGENT_ID).status is Status.PENDING  # the agent's "available" is not truth
    assert fleet.store.require("p-offline").status is Status.AVAILABLE  # back from offline
    reasons = sorted(f["reason"] for _id, f in fleet.client.xrange(names.dead_letter(names.heartbeat)))
    assert len(reasons) == 2
    assert reasons[0].startswith("active_jobs: ")
    assert reasons[1] == "provider_id: 'ghost' is unknown; beat dropped"
    metrics = listener.metrics.registry
    assert metrics.get_sample_value("worldland_heartbeats_total", {"outcome": "recorded"}) == 1
    assert metrics.get_sample_value("worldland_heartbeats_total", {"outcome": "recovered"}) == 1
    assert metrics.get_sample_value("worldland_dead_letters_total", {"stream": "heartbeat"}) == 2


def test_capacity_updates_never_shrink_below_what_is_in_use(fleet, names, agent):
    listener = make_listener(fleet, names, ApprovalPolicy())
    fleet.register(registration("p"))
    put_in(fleet.store, "p", Status.AVAILABLE)
    fleet.ledger.allocate("job-1", "p", "RTX-4090", 3, 4, 1024)
    agent.publish(
        names.capacity, json.dumps({"provider_id": "p", "total_gpus": {"NVIDIA GeForce RTX 4090": 2}})
    )
    agent.publish(
        names.capacity, json.dumps({"provider_id": "p", "total_gpus": {"NVIDIA GeForce RTX 4090": 9}})
    )
    agent.publish(names.capacity, json.dumps({"provider_id": "p", "capacity": {"total_cpu_cores": 16}}))
    drain(listener)
    reasons = [fields["reason"] for _id, fields in fleet.client.xrange(names.dead_letter(names.capacity))]
    assert len(reasons) == 2
    assert "3 in use" in reasons[0]
    assert "offers 9 RTX-4090 but spec lists 4" in reasons[1]
    capacity = fleet.ledger.get("p")
    assert capacity.gpus["RTX-4090"].total == 4 and capacity.gpus["RTX-4090"].in_use == 3
    assert capacity.cpu.total == 16


def test_a_failing_handler_dead_letters_the_entry_and_the_listener_goes_on(fleet, names, agent, monkeypatch):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.MANUAL))
    real = listener.onboarding.handle_registration

    def flaky(raw: str) -> str:
        if "p-poison" in raw:
            raise RuntimeError("a bug")
        return real(raw)

    monkeypatch.setattr(listener.onboarding, "handle_registration", flaky)
    agent.register(registration_dict("p-poison"))
    agent.register(registration_dict("p-fine"))
    drain(listener)
    dead = fleet.client.xrange(names.dead_letter(names.registration))
    assert [fields["reason"] for _id, fields in dead] == [
        "internal error (RuntimeError); see the listener's log"
    ]
    assert fleet.store.ids() == ["p-fine"]
    assert fleet.client.xpending(names.registration, listener.settings.group)["pending"] == 0
    assert (
        listener.metrics.registry.get_sample_value("worldland_registrations_total", {"outcome": "failed"})
        == 1
    )


def test_entries_left_pending_by_a_crashed_consumer_are_claimed(fleet, names, agent, client):
    crashed = make_listener(fleet, names, ApprovalPolicy(), consumer="crashed")
    crashed.consumer.ensure_groups()
    agent.register(registration_dict("p-claimed"))
    # The crashed consumer read the entry and died before acknowledging it.
    assert len(crashed.consumer.read(10, 50)) == 1
    survivor = make_listener(fleet, names, ApprovalPolicy(), consumer="survivor", claim_idle_ms=0)
    drain(survivor)
    assert fleet.store.require("p-claimed").status is Status.PENDING
    assert client.xpending(names.registration, survivor.settings.group)["pending"] == 0


# -- with the Kubernetes API test server ---------------------------------------------------------


@pytest.fixture
def cluster(kube_api):
    from worldland.kube import KubeClient

    return KubeClient.from_kubeconfig(kube_api.kubeconfig)


def test_auto_approval_answers_with_a_short_lived_join_token(fleet, names, agent, cluster, kube_api, caplog):
    caplog.set_level("DEBUG", logger="worldland")
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.AUTO), cluster)
    agent.register(load_protocol("registration.agent.json"))
    drain(listener)
    answer = agent.await_answer(AGENT_ID)
    assert set(answer) == set(load_protocol("response.example.json"))
    assert answer["success"] is True and answer["status"] == "approved"
    token = answer["join_token"]
    host, port = cluster.join_endpoint()
    assert (answer["master_ip"], answer["master_port"]) == (host, port)
    assert answer["ca_hash"] == cluster.ca_cert_hash()
    assert answer["join_command"] == (
        f"kubeadm join {host}:{port} --token {token} --discovery-token-ca-cert-hash {answer['ca_hash']}"
    )
    record = fleet.store.require(AGENT_ID)
    assert record.status is Status.APPROVED
    assert answer["node_name"] == record.node_name
    assert answer["labels"]["worldland.io/gpu-model"] == "A100-SXM4-80GB"
    token_id, secret = token.split(".")
    assert cluster.bootstrap_token_secret(token_id) == secret
    stored = kube_api.server.get_object("secrets", f"bootstrap-token-{token_id}", "kube-system")
    assert stored["type"] == "bootstrap.kubernetes.io/token"
    lifetime = record.token_expires_at - fleet.store.clock()
    assert 15 * 60 - 5 <= lifetime <= 60 * 60
    # Never in a log line, the record, or the inventory-facing description.
    assert secret not in caplog.text and token not in caplog.text
    assert secret not in json.dumps(fleet.provider_view(AGENT_ID))


def test_reregistration_of_approved_resends_the_token_until_it_nears_expiry(fleet, names, agent, cluster):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.AUTO), cluster)
    agent.register(load_protocol("registration.agent.json"))
    drain(listener)
    first = agent.await_answer(AGENT_ID)["join_token"]
    agent.register(load_protocol("registration.agent.json"))
    drain(listener)
    assert agent.await_answer(AGENT_ID)["join_token"] == first
    # Later, the recorded token has expired: a fresh one.
    fleet.store.record_token(AGENT_ID, first.split(".")[0], fleet.store.clock() - 1)
    agent.register(load_protocol("registration.agent.json"))
    drain(listener)
    fresh = agent.await_answer(AGENT_ID)["join_token"]
    assert fresh != first
    assert cluster.bootstrap_token_secret(fresh.split(".")[0]) == fresh.split(".")[1]


def test_joined_provider_reregistering_gets_its_state_and_no_token(fleet, names, agent, cluster):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.AUTO), cluster)
    fleet.register(registration(AGENT_ID, wallet=AGENT_ID))
    put_in(fleet.store, AGENT_ID, Status.JOINED)
    agent.register(load_protocol("registration.agent.json"))
    drain(listener)
    answer = agent.await_answer(AGENT_ID)
    assert answer["status"] == "joined" and answer["success"] is True
    assert "join_token" not in answer


def test_kubernetes_down_leaves_the_provider_approved_and_the_token_is_retried(
    fleet, names, agent, cluster, kube_api
):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.AUTO), cluster)
    agent.register(load_protocol("registration.agent.json"))
    with kube_api.server.outage("refuse"):
        drain(listener)
    record = fleet.store.require(AGENT_ID)
    assert record.status is Status.APPROVED
    assert record.last_error.startswith("token: ")
    assert agent.await_answer(AGENT_ID) is None  # no answer without a token
    listener.reconcile()
    answer = agent.await_answer(AGENT_ID)
    assert answer["status"] == "approved" and answer["join_token"]
    assert fleet.store.require(AGENT_ID).last_error == ""


def test_reconcile_moves_approved_to_joined_to_available_and_labels_from_the_control_plane(
    fleet, names, agent, cluster, kube_api
):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.AUTO), cluster)
    agent.register(load_protocol("registration.agent.json"))
    drain(listener)
    node = fleet.store.require(AGENT_ID).node_name
    listener.reconcile()
    assert fleet.store.require(AGENT_ID).status is Status.APPROVED  # no node yet
    create_node(kube_api, node, ready=False)
    listener.reconcile()
    assert fleet.store.require(AGENT_ID).status is Status.JOINED
    set_node_status(kube_api, node, ready=True, gpus=2)
    listener.reconcile()
    assert fleet.store.require(AGENT_ID).status is Status.AVAILABLE
    labels = kube_api.server.get_object("nodes", node)["metadata"]["labels"]
    assert labels["worldland.io/rental-type"] == "gpu"
    assert labels["worldland.io/provider-id"] == AGENT_ID
    assert labels["worldland.io/gpu-model"] == "A100-SXM4-80GB"
    assert labels["worldland.io/rental-status"] == "available"
    before = kube_api.write_counts()
    listener.reconcile()
    assert kube_api.write_counts() == before  # nothing changed, nothing written


def test_steady_state_heartbeats_write_nothing_to_kubernetes(fleet, names, agent, cluster, kube_api):
    listener = make_listener(fleet, names, ApprovalPolicy(), cluster)
    ids = [f"p-{i}" for i in range(50)]
    for pid in ids:
        fleet.register(registration(pid))
        put_in(fleet.store, pid, Status.AVAILABLE)
    example = load_protocol("heartbeat.agent.json")
    for round_ in range(20):
        for pid in ids:
            agent.publish(
                names.heartbeat, json.dumps({**example, "provider_id": pid, "active_jobs": round_ % 2})
            )
    before = kube_api.write_counts()
    drain(listener, rounds=50)
    assert (
        listener.metrics.registry.get_sample_value("worldland_heartbeats_total", {"outcome": "recorded"})
        == 1000
    )
    assert kube_api.write_counts() == before


# -- issue 9: hostile bytes and poison entries ----------------------------------------------------


BAD_BYTES = [
    ("data", {b"data": b"\x80", b"timestamp": b"2026-11-26T09:15:02Z"}),
    ("timestamp", {b"data": b"{}", b"timestamp": b"\xff\xfe"}),
    ("field name", {b"da\xc3ta": b"{}", b"timestamp": b"2026-11-26T09:15:02Z"}),
]


@pytest.mark.parametrize("stream_kind", ["registration", "heartbeat", "capacity"])
@pytest.mark.parametrize(("where", "fields"), BAD_BYTES, ids=[b[0] for b in BAD_BYTES])
def test_an_entry_with_invalid_utf8_is_dead_lettered_and_the_listener_goes_on(
    fleet, names, agent, redis_url, stream_kind, where, fields
):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.MANUAL))
    stream = getattr(names, stream_kind)
    raw = redis.Redis.from_url(redis_url)  # writes bytes as an attacker would
    raw.xadd(stream, fields)
    agent.register(registration_dict("p-after-poison"))
    drain(listener)  # before the fix: UnicodeDecodeError out of run_once
    assert fleet.store.require("p-after-poison").status is Status.PENDING
    [(_id, dead)] = fleet.client.xrange(names.dead_letter(stream))
    assert dead["reason"].startswith("undecodable: ")
    assert "not valid UTF-8" in dead["reason"]
    kept = json.loads(dead["fields"])  # the raw bytes, escaped
    expected = {
        k.decode("utf-8", "backslashreplace"): v.decode("utf-8", "backslashreplace")
        for k, v in fields.items()
    }
    assert kept == expected
    assert "\\x" in dead["fields"]
    for name in names.inputs:
        assert fleet.client.xpending(name, listener.settings.group)["pending"] == 0


def test_an_entry_delivered_too_often_is_dead_lettered_whatever_killed_its_readers(fleet, names, agent):
    agent.register(registration_dict("p-killer"))
    # Each "crashed" listener takes the entry and dies before acknowledging it (a kill -9, an OOM).
    for attempt in range(4):
        crashed = make_listener(
            fleet, names, ApprovalPolicy(), consumer=f"crashed-{attempt}", claim_idle_ms=0
        )
        crashed.consumer.ensure_groups()
        taken = crashed.consumer.read(10, 10) if attempt == 0 else crashed.consumer.claim_stale(0, 10)
        assert [e.deliveries for e in taken] == [attempt + 1]
    survivor = make_listener(
        fleet, names, ApprovalPolicy(), consumer="survivor", claim_idle_ms=0, max_deliveries=4
    )
    drain(survivor)
    assert fleet.store.get("p-killer") is None, "a poison entry was handled a fifth time"
    [(_id, dead)] = fleet.client.xrange(names.dead_letter(names.registration))
    assert dead["reason"].startswith("delivered 5 times without being acknowledged")
    assert fleet.client.xpending(names.registration, survivor.settings.group)["pending"] == 0


def test_an_entry_under_the_delivery_bound_is_still_handled(fleet, names, agent):
    agent.register(registration_dict("p-retried"))
    crashed = make_listener(fleet, names, ApprovalPolicy(), consumer="crashed")
    crashed.consumer.ensure_groups()
    assert len(crashed.consumer.read(10, 10)) == 1
    survivor = make_listener(fleet, names, ApprovalPolicy(), consumer="survivor", claim_idle_ms=0)
    drain(survivor)
    assert fleet.store.require("p-retried").status is Status.PENDING
    assert fleet.client.xlen(names.dead_letter(names.registration)) == 0


# -- issue 9: every check before any write --------------------------------------------------------


def read_as_go_agent(
    client, stream: str, group: str = AGENT_RESPONSE_GROUP, create_at: str = "$"
) -> dict | None:
    """The Go agent/SDK after a restart: create its group at "$" (kept if it exists), read COUNT 1 ">"."""
    try:
        client.xgroup_create(stream, group, id=create_at, mkstream=True)
    except redis.ResponseError as exc:
        assert "BUSYGROUP" in str(exc)
    reply = client.xreadgroup(group, "go-1", {stream: ">"}, count=1, block=50)
    if not reply:
        return None
    _stream, [(entry_id, fields)] = reply[0]
    client.xack(stream, group, entry_id)
    return json.loads(fields["data"])


def test_a_registration_from_another_wallet_leaves_the_victims_ledger_alone(fleet, names, agent):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.AUTO))
    fleet.register(registration("victim", gpus=2))
    put_in(fleet.store, "victim", Status.AVAILABLE)
    before = fleet.ledger.get("victim")
    impostor = registration_dict("victim", gpu_name="NVIDIA H100 80GB HBM3", gpus=1, wallet="0x" + "cd" * 20)
    agent.register(impostor)
    drain(listener)
    assert fleet.ledger.get("victim") == before  # before the fix: 1x H100-80GB-HBM3
    assert fleet.store.require("victim").gpu_models == ["RTX-4090"]
    with pytest.raises(CapacityError):
        fleet.ledger.allocate("job-h100", "victim", "H100-80GB-HBM3", 1, 1, 1024)
    assert agent.await_answer("victim") is None
    counted = listener.metrics.registry.get_sample_value(
        "worldland_registrations_total", {"outcome": "wallet_mismatch"}
    )
    assert counted == 1


def test_a_registration_refused_for_capacity_is_answered_and_writes_nothing(fleet, names, agent):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.MANUAL))
    fleet.register(registration("p-busy", gpus=4))
    put_in(fleet.store, "p-busy", Status.AVAILABLE)
    fleet.ledger.allocate("job-3", "p-busy", "RTX-4090", 3, 4, 1024)
    record_before, ledger_before = fleet.store.require("p-busy"), fleet.ledger.get("p-busy")
    agent.register(registration_dict("p-busy", gpus=2, hostname="renamed"))
    drain(listener)
    answer = agent.await_answer("p-busy")
    assert answer["success"] is False and answer["status"] == "available"
    assert "3 in use by jobs" in answer["message"]
    assert fleet.ledger.get("p-busy") == ledger_before
    assert fleet.store.require("p-busy").registration_json == record_before.registration_json
    [(_id, dead)] = fleet.client.xrange(names.dead_letter(names.registration))
    assert dead["reason"].startswith("capacity: ")


def test_a_malformed_registration_for_someone_elses_id_is_never_answered(fleet, names, agent):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.AUTO))
    fleet.register(registration("tok-0"))
    put_in(fleet.store, "tok-0", Status.APPROVED)
    agent.register({"provider_id": "tok-0", "wallet_addr": "x", "spec": {}})
    agent.register({"provider_id": "tok-0", "spec": {}})
    drain(listener)
    assert agent.await_answer("tok-0") is None  # before the fix: success false, rejected
    assert fleet.store.require("tok-0").status is Status.APPROVED
    assert fleet.client.xlen(names.dead_letter(names.registration)) == 2
    counted = listener.metrics.registry.get_sample_value(
        "worldland_registrations_total", {"outcome": "wallet_mismatch"}
    )
    assert counted == 2
    # The owner's own malformed message is answered: it tells the owner what to fix.
    own = registration_dict("tok-0")
    own["spec"]["cpu_cores"] = "many"
    agent.register(own)
    drain(listener)
    answer = agent.await_answer("tok-0")
    assert answer["success"] is False and "spec.cpu_cores" in answer["message"]


# -- issue 9: the approval policy holds for re-registrations --------------------------------------


STRICT = {"allowed_gpu_models": ["RTX 4090"], "max_gpu_price_per_hour": 1.0, "min_gpus": 2}


def approved_provider(fleet, pid: str, status: Status, **kwargs) -> None:
    fleet.register(registration(pid, **kwargs))
    put_in(fleet.store, pid, status)


def priced(doc: dict, price: float) -> dict:
    doc["capacity"] = {"gpu_price_per_hour": price}
    return doc


REFUSED_CHANGES = [
    (
        "model outside allowed_gpu_models",
        registration_dict("p-live", gpu_name="NVIDIA H100 80GB HBM3"),
        "H100",
    ),
    ("price above the maximum", priced(registration_dict("p-live"), 5.0), "exceeds the policy maximum"),
    ("fewer than min_gpus", registration_dict("p-live", gpus=1), "at least 2"),
]


@pytest.mark.parametrize("status", [Status.APPROVED, Status.JOINED, Status.AVAILABLE])
@pytest.mark.parametrize(("case", "message", "why"), REFUSED_CHANGES, ids=[c[0] for c in REFUSED_CHANGES])
@pytest.mark.parametrize("mode", [ApprovalMode.AUTO, ApprovalMode.MANUAL])
def test_a_reregistration_the_policy_refuses_changes_nothing(
    fleet, names, agent, status, case, message, why, mode
):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=mode, **STRICT))
    approved_provider(fleet, "p-live", status)
    record_before, ledger_before = fleet.store.require("p-live"), fleet.ledger.get("p-live")
    agent.register(message)
    drain(listener)
    answer = agent.await_answer("p-live")
    assert answer["success"] is False and answer["status"] == status.value
    assert why in answer["message"] and "registration change refused" in answer["message"]
    after = fleet.store.require("p-live")
    assert after.status is status
    assert after.registration_json == record_before.registration_json
    assert fleet.ledger.get("p-live") == ledger_before


def test_more_gpus_under_a_manual_policy_wait_for_an_operator(fleet, names, agent):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.MANUAL))
    approved_provider(fleet, "p-grow", Status.AVAILABLE, gpus=2)
    agent.register(registration_dict("p-grow", gpus=4))
    drain(listener)
    answer = agent.await_answer("p-grow")
    assert answer["status"] == "available" and "waits for an operator's approval" in answer["message"]
    assert fleet.ledger.get("p-grow").gpus["RTX-4090"].total == 2  # not offered before approval
    record = fleet.store.require("p-grow")
    assert record.pending_registration and record.to_dict()["change_awaiting_approval"] is True
    assert listener.onboarding.approve("p-grow")
    assert fleet.ledger.get("p-grow").gpus["RTX-4090"].total == 4
    record = fleet.store.require("p-grow")
    assert record.status is Status.AVAILABLE and not record.pending_registration
    assert "registration change approved" in agent.await_answer("p-grow")["message"]


def test_fewer_gpus_apply_at_once_and_auto_policy_applies_accepted_changes(fleet, names, agent):
    manual = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.MANUAL))
    approved_provider(fleet, "p-shrink", Status.JOINED, gpus=4)
    agent.register(registration_dict("p-shrink", gpus=3))
    drain(manual)
    assert fleet.ledger.get("p-shrink").gpus["RTX-4090"].total == 3
    auto = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.AUTO), consumer="auto")
    agent.register(registration_dict("p-shrink", gpus=4))
    drain(auto)
    assert fleet.ledger.get("p-shrink").gpus["RTX-4090"].total == 4
    assert fleet.store.require("p-shrink").status is Status.JOINED


# -- issue 9: revoking, and rejected providers stay rejected --------------------------------------


def test_revoking_an_approved_provider_deletes_its_join_token(fleet, names, agent, cluster):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.AUTO), cluster)
    agent.register(registration_dict("p-revoke"))
    drain(listener)
    token_id, secret = agent.await_answer("p-revoke")["join_token"].split(".")
    assert cluster.bootstrap_token_secret(token_id) == secret
    listener.onboarding.reject("p-revoke", "hardware audit failed")
    assert cluster.bootstrap_token_secret(token_id) is None  # before the fix: valid until expiry
    assert fleet.store.require("p-revoke").token_id == ""
    assert agent.await_answer("p-revoke")["status"] == "rejected"


def test_a_revocation_while_kubernetes_is_down_is_retried_by_reconcile(
    fleet, names, agent, cluster, kube_api
):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.AUTO), cluster)
    agent.register(registration_dict("p-revoke-later"))
    drain(listener)
    token_id = agent.await_answer("p-revoke-later")["join_token"].split(".")[0]
    with kube_api.server.outage("refuse"):
        listener.onboarding.reject("p-revoke-later", "revoked")
        assert listener.onboarding.reconcile().errors
    assert fleet.client.smembers(fleet.keys.revoked_tokens) == {token_id}
    assert cluster.bootstrap_token_secret(token_id) is not None
    listener.reconcile()
    assert cluster.bootstrap_token_secret(token_id) is None
    assert fleet.client.smembers(fleet.keys.revoked_tokens) == set()


def test_an_operator_rejected_provider_stays_rejected_under_an_auto_policy(fleet, names, agent, cluster):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.AUTO), cluster)
    agent.register(registration_dict("p-operator"))
    drain(listener)
    agent.await_answer("p-operator")
    listener.onboarding.reject("p-operator", "not our customer")
    agent.await_answer("p-operator")
    agent.register(registration_dict("p-operator"))  # identical, sent again
    drain(listener)
    answer = agent.await_answer("p-operator")
    assert answer["status"] == "rejected" and "rejected by an operator" in answer["message"]
    assert fleet.store.require("p-operator").status is Status.REJECTED  # before the fix: approved at once
    listener.onboarding.reset("p-operator")
    assert agent.await_answer("p-operator")["status"] == "pending"
    agent.register(registration_dict("p-operator"))
    drain(listener)
    assert agent.await_answer("p-operator")["status"] == "approved"


def test_a_policy_rejected_provider_may_register_again_corrected(fleet, names, agent):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.MANUAL, min_gpus=2))
    agent.register(registration_dict("p-fix", gpus=1))
    drain(listener)
    assert agent.await_answer("p-fix")["status"] == "rejected"
    agent.register(registration_dict("p-fix", gpus=2))
    drain(listener)
    assert agent.await_answer("p-fix")["status"] == "pending"


def test_an_operator_approves_a_rejected_provider(fleet, names, agent, cluster):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.MANUAL), cluster)
    fleet.register(registration("p-back"))
    listener.onboarding.reject("p-back", "wrong wallet, we thought")
    assert listener.onboarding.approve("p-back")
    record = fleet.store.require("p-back")
    assert record.status is Status.APPROVED and record.rejected_by == ""


# -- issue 9: the Go agent's and SDK's exact readers and shapes ------------------------------------


@pytest.mark.parametrize("policy", [{"min_gpus": 1}, {"min_gpus": 0}], ids=["min_gpus=1", "min_gpus=0"])
def test_a_go_agent_cpu_only_host_is_answered_by_the_policy(fleet, names, agent, policy):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.MANUAL, **policy))
    doc = load_go_agent("registration.cpu-only.json")
    agent.register(doc)
    drain(listener)
    answer = agent.await_answer(doc["provider_id"])
    if policy["min_gpus"]:
        assert answer["status"] == "rejected"
        assert answer["message"] == "spec.gpus: offers 0 GPU(s); the policy requires at least 1"
    else:
        assert answer["status"] == "pending"
    assert fleet.client.xlen(names.dead_letter(names.registration)) == 0


def test_the_sdk_reader_gets_a_fast_answer_and_so_does_the_agent(fleet, names, agent):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.MANUAL))
    doc = load_go_agent("registration.sdk.json")
    agent.register(doc)
    drain(listener)  # answered before either reader created its group (network delay)
    stream = names.response(doc["provider_id"])
    sdk_answer = read_as_go_agent(fleet.client, stream, group="sdk-group")
    assert sdk_answer is not None and sdk_answer["status"] == "pending"  # before the fix: missed
    assert read_as_go_agent(fleet.client, stream, group="agent-group")["status"] == "pending"


def test_agent_groups_are_a_setting(fleet, names, agent):
    onboarding = Onboarding(
        fleet=fleet, streams=names, policy=ApprovalPolicy(), cluster=None, agent_groups=("custom-group",)
    )
    listener = Listener(onboarding, ListenerSettings(block_ms=50, consumer="c", reconcile_every_s=3600))
    agent.register(registration_dict("p-custom"))
    drain(listener)
    groups = {g["name"] for g in fleet.client.xinfo_groups(names.response("p-custom"))}
    assert groups == {"custom-group"}


def test_a_restarted_go_agent_reads_the_newest_answer_not_an_old_rejection(fleet, names, agent):
    strict = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.MANUAL, min_gpus=8))
    agent.register(registration_dict("p-restart", gpus=4))
    drain(strict)  # rejected while the agent was down: the answer stays unread
    lenient = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.MANUAL), consumer="lenient")
    agent.register(registration_dict("p-restart", gpus=4))
    drain(lenient)
    answer = read_as_go_agent(fleet.client, names.response("p-restart"))
    assert answer["status"] == "pending"  # before the fix: the old "rejected", and the agent exits
    assert fleet.client.xlen(names.response("p-restart")) <= 100


def test_sdk_registration_offers_what_it_shares_and_starts_mining(fleet, names, agent):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.MANUAL))
    doc = load_go_agent("registration.sdk.json")
    agent.register(doc)
    drain(listener)
    capacity = fleet.ledger.get(doc["provider_id"])
    assert capacity.cpu.total == 24 and capacity.memory.total == 196608
    gpus = capacity.gpus["RTX-4090"]
    assert (gpus.total, gpus.available, gpus.mining, gpus.in_use) == (4, 3, 1, 0)


SHELL_BAIT = "$(touch /tmp/pwned); `id` | rm -rf / & echo 'x' \"y\" > /etc/passwd; {{ lookup('pipe','id') }}"


def test_join_command_holds_only_values_this_project_produced(fleet, names, agent, cluster):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.AUTO), cluster)
    doc = load_protocol("registration.agent.json")
    # Every free-text provider field carries shell metacharacters (the id, wallet, hostname and IPs
    # are checked formats and refuse them).
    for key in ("os", "kernel_ver", "cpu_model"):
        doc["spec"][key] = SHELL_BAIT[:128]
    for gpu in doc["spec"]["gpus"]:
        gpu["name"] = "NVIDIA A100-SXM4-80GB"
        gpu["uuid"] = SHELL_BAIT[:64]
        for key in ("driver_ver", "cuda_version", "pci_bus_id"):
            gpu[key] = SHELL_BAIT[:32]
    doc["agent_version"] = SHELL_BAIT[:32]
    agent.register(doc)
    drain(listener)
    answer = agent.await_answer(AGENT_ID)
    host, port = cluster.join_endpoint()
    assert answer["join_command"] == (
        f"kubeadm join {host}:{port} --token {answer['join_token']} "
        f"--discovery-token-ca-cert-hash {cluster.ca_cert_hash()}"
    )
    assert not set(answer["join_command"]) & set("$`|&;<>'\"(){}\\\n")


@pytest.mark.parametrize(
    ("host", "port", "token", "ca_hash", "why"),
    [
        ("10.0.0.1;id", 6443, "abcdef.0123456789abcdef", "sha256:" + "a" * 64, "master_ip"),
        ("10.0.0.1", 0, "abcdef.0123456789abcdef", "sha256:" + "a" * 64, "master_port"),
        ("10.0.0.1", 6443, "abcdef.0123456789abcdef;id", "sha256:" + "a" * 64, "join_token"),
        ("10.0.0.1", 6443, "abcdef.0123456789abcdef", "sha256:$(id)", "ca_hash"),
    ],
)
def test_join_command_refuses_anything_but_its_exact_formats(host, port, token, ca_hash, why):
    with pytest.raises(ValueError, match=why):
        join_command(host, port, token, ca_hash)


# -- issue 11: the agent learns that the listener does not know it --------------------------------


def test_a_heartbeat_from_an_unknown_id_is_answered_unknown_provider_and_a_known_one_is_not(
    fleet, names, agent
):
    listener = make_listener(fleet, names, ApprovalPolicy())
    fleet.register(registration("p-known"))
    agent.publish(names.heartbeat, json.dumps(heartbeat_dict("p-lost")))
    agent.publish(names.heartbeat, json.dumps(heartbeat_dict("p-lost")))  # one answer per batch, not per beat
    agent.publish(names.heartbeat, json.dumps(heartbeat_dict("p-known")))
    drain(listener)
    [(_id, fields)] = fleet.client.xrange(names.response("p-lost"))
    answer = json.loads(fields["data"])
    assert answer["code"] == "unknown_provider" and answer["success"] is False
    assert "register again" in answer["message"]
    assert fleet.client.exists(names.response("p-known")) == 0


def test_joined_becomes_available_only_with_every_registered_gpu_allocatable(
    fleet, names, agent, cluster, kube_api
):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.AUTO), cluster)
    agent.register(registration_dict("p-gpus", gpus=4))
    drain(listener)
    node = fleet.store.require("p-gpus").node_name
    create_node(kube_api, node, ready=True, gpus=3)
    report = listener.onboarding.reconcile()
    assert fleet.store.require("p-gpus").status is Status.JOINED
    assert report.waiting == {"p-gpus": "3 of 4 GPUs allocatable (nvidia.com/gpu)"}
    set_node_status(kube_api, node, ready=True, gpus=4)
    listener.onboarding.reconcile()
    assert fleet.store.require("p-gpus").status is Status.AVAILABLE
