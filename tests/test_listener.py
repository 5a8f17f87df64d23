"""The listener against a real redis-server, speaking the deployed Go agent's stream protocol."""

from __future__ import annotations

import json
import uuid

import pytest
import redis

from tests.conftest import load_protocol
from tests.factories import registration, registration_dict
from tests.test_store import put_in
from worldland.config import connect
from worldland.fleet import Fleet
from worldland.keys import Keys
from worldland.lifecycle import Status
from worldland.listener import Listener, ListenerSettings
from worldland.onboarding import Onboarding
from worldland.policy import ApprovalMode, ApprovalPolicy
from worldland.streams import AGENT_RESPONSE_GROUP, StreamNames

AGENT_ID = "0x3f5CE5FBFe3E9af3971dD833D26bA9b5C936f0bE"


class Agent:
    """Talks to Redis exactly as the deployed Go agent does (fields, groups, ids)."""

    def __init__(self, client: redis.Redis, names: StreamNames) -> None:
        self.client = client
        self.names = names

    def publish(self, stream: str, data: str) -> str:
        return self.client.xadd(stream, {"data": data, "timestamp": "2026-11-26T09:15:02.123456789Z"})

    def register(self, message: dict | str) -> str:
        data = message if isinstance(message, str) else json.dumps(message)
        return self.publish(self.names.registration, data)

    def await_answer(self, provider_id: str, block_ms: int = 100) -> dict | None:
        """The agent creates its group at "$" after publishing, then reads ">"."""
        stream = self.names.response(provider_id)
        try:
            self.client.xgroup_create(stream, AGENT_RESPONSE_GROUP, id="$", mkstream=True)
        except redis.ResponseError as exc:
            assert "BUSYGROUP" in str(exc)
        reply = self.client.xreadgroup(
            AGENT_RESPONSE_GROUP, "agent-1", {stream: ">"}, count=1, block=block_ms
        )
        if not reply:
            return None
        _stream, [(entry_id, fields)] = reply[0]
        self.client.xack(stream, AGENT_RESPONSE_GROUP, entry_id)
        assert set(fields) == {"data", "timestamp"}
        return json.loads(fields["data"])


@pytest.fixture
def names() -> StreamNames:
    return StreamNames(namespace=f"t{uuid.uuid4().hex[:6]}:")


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return connect(redis_url)


@pytest.fixture
def fleet(client: redis.Redis, keys: Keys) -> Fleet:
    return Fleet.open(client, keys)


@pytest.fixture
def agent(client: redis.Redis, names: StreamNames) -> Agent:
    return Agent(client, names)


def make_listener(
    fleet: Fleet, names: StreamNames, policy: ApprovalPolicy, cluster=None, **settings
) -> Listener:
    onboarding = Onboarding(fleet=fleet, streams=names, policy=policy, cluster=cluster)
    defaults = {"block_ms": 50, "consumer": "test-consumer", "reconcile_every_s": 3600}
    return Listener(onboarding, ListenerSettings(**{**defaults, **settings}))


def drain(listener: Listener, rounds: int = 20) -> None:
    """Run until nothing new arrives (bounded)."""
    for _ in range(rounds):
        if listener.run_once() == 0:
            return


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


def create_node(kube_api, name: str, ready: bool = False, gpus: int = 0) -> None:
    import kubernetes

    api = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(str(kube_api.kubeconfig)))
    api.create_node({"metadata": {"name": name}})
    set_node_status(kube_api, name, ready, gpus)


def set_node_status(kube_api, name: str, ready: bool, gpus: int) -> None:
    def change(node: dict) -> None:
        node["status"] = {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "32"},
        }

    kube_api.server.mutate("nodes", name, change)


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
    assert secret not in json.dumps(fleet.describe_one(AGENT_ID))


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
