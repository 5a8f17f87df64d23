"""Contract tests for ``worldland/kube.py``: what the listener and the audit rely on.

Each test runs against two targets:

- ``test-server``: the local Kubernetes API test server (``testkit/kube_server``), always;
- ``real-cluster``: the cluster that ``$WORLDLAND_TEST_KUBECONFIG`` points to when it is set, else
  the real kube-apiserver + controller-manager from ``../shared/kube`` (``real_kube``: one per
  session, ``testkit/realkube.py``), else skipped with the reason. The run's summary says which
  (``kube: real-cluster = real kube-apiserver v1.32.13 from ../shared/kube``). The credentials need to
  create/delete Nodes and Secrets in kube-system. Tests only touch objects with unique names
  (``wl-contract-...``) and delete them afterwards; the bootstrap tokens they make expire in 15
  minutes anyway.

A few tests need the test server's fault injection or write log; they say so and are skipped on
the real cluster.
"""

from __future__ import annotations

import base64
import os
import re
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from testkit.kube_server import KubeApiServer
from testkit.realkube_fixtures import TEST_SERVER, record_kube_target
from worldland import kube
from worldland.domain.join import IN_CLUSTER
from worldland.domain.names import is_label_value, node_labels
from worldland.kube import (
    GPU_RESOURCE,
    LABEL_GPU_MODEL,
    LABEL_PROVIDER_ID,
    LABEL_RENTAL_STATUS,
    LABEL_RENTAL_TYPE,
    NODE_TOKEN_GROUP,
    OFFLINE_TAINT_KEY,
    BootstrapToken,
    KubeClient,
    KubeError,
    KubeNotFound,
    KubeUnavailable,
    NodeState,
    Taint,
)

REAL_CLUSTER_ENV = "WORLDLAND_TEST_KUBECONFIG"
TOKEN_SHAPE = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")


@dataclass
class Target:
    """One API server under contract: a ``KubeClient`` to test, and an admin client for set-up."""

    name: str
    kubeconfig: Path
    client: KubeClient
    admin: k8s.CoreV1Api
    server: KubeApiServer | None  # None on a real cluster
    nodes: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)

    def need_server(self, why: str) -> KubeApiServer:
        if self.server is None:
            pytest.skip(f"needs the test server ({why})")
        return self.server

    def node(
        self,
        labels: dict[str, str] | None = None,
        *,
        ready: bool | None = None,
        gpus: str | None = None,
        taints: list[dict[str, str]] | None = None,
    ) -> str:
        name = f"wl-contract-{uuid.uuid4().hex[:12]}"
        body: dict[str, Any] = {"metadata": {"name": name, "labels": labels or {}}}
        if taints:
            body["spec"] = {"taints": taints}
        self.admin.create_node(body)
        self.nodes.append(name)
        if ready is not None or gpus is not None:
            status: dict[str, Any] = {}
            if ready is not None:
                status["conditions"] = [
                    {
                        "type": "Ready",
                        "status": "True" if ready else "False",
                        "reason": "KubeletReady" if ready else "KubeletNotReady",
                        "message": "contract test",
                        "lastHeartbeatTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }
                ]
            if gpus is not None:
                status["allocatable"] = {GPU_RESOURCE: gpus, "cpu": "4", "memory": "8Gi", "pods": "110"}
                status["capacity"] = dict(status["allocatable"])
            self.admin.patch_node_status(name, {"status": status})
        return name

    def labels_of(self, name: str) -> dict[str, str]:
        return dict(self.admin.read_node(name).metadata.labels or {})

    def taints_of(self, name: str) -> list[tuple[str, str, str]]:
        taints = self.admin.read_node(name).spec.taints or []
        return sorted((t.key, t.value or "", t.effect) for t in taints)

    def server_writes(self) -> int | None:
        return self.server.write_seq if self.server is not None else None

    def cleanup(self) -> None:
        for name in self.nodes:
            try:
                self.admin.delete_node(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        for token_id in self.tokens:
            try:
                self.admin.delete_namespaced_secret(f"bootstrap-token-{token_id}", "kube-system")
            except ApiException as exc:
                if exc.status != 404:
                    raise


@pytest.fixture(params=["test-server", "real-cluster"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    server: KubeApiServer | None
    if request.param == "test-server":
        server = request.getfixturevalue("kube_server")
        kubeconfig, description = server.kubeconfig_path, TEST_SERVER
    elif path := os.environ.get(REAL_CLUSTER_ENV):  # an explicit cluster wins over ../shared/kube
        server, kubeconfig, description = None, Path(path), f"the cluster of ${REAL_CLUSTER_ENV} ({path})"
    else:  # skips with the reason where ../shared/kube or etcd cannot be had
        plane = request.getfixturevalue("real_kube")
        server, kubeconfig, description = None, plane.kubeconfig, plane.description
    record_kube_target(request, request.param, description)
    admin_client = k8s_config.new_client_from_config(config_file=str(kubeconfig), persist_config=False)
    t = Target(
        request.param, kubeconfig, KubeClient.from_kubeconfig(kubeconfig), k8s.CoreV1Api(admin_client), server
    )
    try:
        yield t
    finally:
        t.cleanup()
        t.client.close()
        admin_client.close()


def secret_data(target: Target, token_id: str) -> tuple[dict[str, str], Any]:
    secret = target.admin.read_namespaced_secret(f"bootstrap-token-{token_id}", "kube-system")
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}, secret


def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.25)


# -- bootstrap tokens -----------------------------------------------------------------------------------


def test_bootstrap_token_secret_is_what_kubeadm_makes(target: Target) -> None:
    before = time.time()
    token = target.client.create_bootstrap_token(provider_id="prov-1")
    target.tokens.append(token.token_id)
    assert TOKEN_SHAPE.match(token.token)
    data, secret = secret_data(target, token.token_id)
    assert secret.type == "bootstrap.kubernetes.io/token"
    assert secret.metadata.name == f"bootstrap-token-{token.token_id}"
    assert data["token-id"] == token.token_id
    assert data["token-secret"] == token.secret
    assert data["usage-bootstrap-authentication"] == "true"
    assert data["usage-bootstrap-signing"] == "true"
    assert data["auth-extra-groups"] == NODE_TOKEN_GROUP
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["expiration"])
    expires = datetime.fromisoformat(data["expiration"].replace("Z", "+00:00")).timestamp()
    assert before + 1800 - 5 <= expires <= time.time() + 1800 + 1  # default: 30 minutes
    assert expires == token.expires_at.timestamp()
    assert data["description"]
    assert secret.metadata.labels[LABEL_PROVIDER_ID] == "prov-1"


def test_bootstrap_token_repr_never_shows_the_secret(target: Target) -> None:
    token = target.client.create_bootstrap_token(ttl_seconds=900)
    target.tokens.append(token.token_id)
    for text in (repr(token), str(token), f"{token}", f"{token!r}", repr([token]), repr({"t": token})):
        assert token.secret not in text
        assert token.token_id in text
    listed = target.client.list_bootstrap_tokens()
    assert token.token_id in [t.token_id for t in listed]
    assert token.secret not in repr(listed)


@pytest.mark.parametrize("ttl", [899, 3601, 0, -1])
def test_bootstrap_token_ttl_is_bounded(target: Target, ttl: int) -> None:
    writes = sum(target.client.writes.values())
    with pytest.raises(ValueError, match="900 to 3600"):
        target.client.create_bootstrap_token(ttl_seconds=ttl)
    assert sum(target.client.writes.values()) == writes  # nothing sent


@pytest.mark.parametrize("ttl", [900, 3600])
def test_bootstrap_token_ttl_bounds_are_allowed(target: Target, ttl: int) -> None:
    token = target.client.create_bootstrap_token(ttl_seconds=ttl)
    target.tokens.append(token.token_id)
    assert abs(token.expires_at.timestamp() - time.time() - ttl) < 5


def test_bootstrap_token_id_collision_is_retried(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    first = target.client.create_bootstrap_token()
    target.tokens.append(first.token_id)
    fresh = kube._new_token_id_secret()
    ids = iter([(first.token_id, "a" * 16), fresh])
    monkeypatch.setattr(kube.tokens, "_new_token_id_secret", lambda: next(ids))
    creates = target.client.writes["create secrets"]
    second = target.client.create_bootstrap_token()
    target.tokens.append(second.token_id)
    assert second.token_id == fresh[0] and second.secret == fresh[1]
    assert target.client.writes["create secrets"] == creates + 2
    data, _ = secret_data(target, first.token_id)
    assert data["token-secret"] == first.secret  # the taken one was not touched


def test_bootstrap_token_for_a_hostile_provider_id(target: Target) -> None:
    hostile = "{{ lookup('pipe', 'id') }}\n$(reboot); DROP TABLE"
    token = target.client.create_bootstrap_token(provider_id=hostile)
    target.tokens.append(token.token_id)
    data, secret = secret_data(target, token.token_id)
    assert is_label_value(secret.metadata.labels[LABEL_PROVIDER_ID])
    assert "lookup" not in data["description"] or "{{" not in data["description"]
    listed = target.client.list_bootstrap_tokens(provider_id=hostile)
    assert [t.token_id for t in listed] == [token.token_id]


def test_ensure_bootstrap_token_under_a_chosen_id_is_idempotent(target: Target) -> None:
    token_id, secret = kube.new_bootstrap_token()
    target.tokens.append(token_id)
    expires_at = time.time() + 1800
    target.client.ensure_bootstrap_token(token_id, secret, expires_at, description="worldland provider p-1")
    creates = target.client.writes["create secrets"]
    target.client.ensure_bootstrap_token(token_id, secret, expires_at, description="worldland provider p-1")
    assert target.client.writes["create secrets"] == creates + 1  # tried, found the same token, fine
    data, secret_obj = secret_data(target, token_id)
    assert data["token-secret"] == secret and data["description"] == "worldland provider p-1"
    assert data["expiration"] == datetime.fromtimestamp(int(expires_at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert secret_obj.type == "bootstrap.kubernetes.io/token"
    assert target.client.bootstrap_token_secret(token_id) == secret
    # The same id with another secret is someone else's token: refused, the stored one untouched.
    _, other = kube.new_bootstrap_token()
    with pytest.raises(kube.KubeConflict) as err:
        target.client.ensure_bootstrap_token(token_id, other, expires_at)
    assert other not in all_text(err.value) and secret not in all_text(err.value)
    assert secret_data(target, token_id)[0]["token-secret"] == secret


@pytest.mark.parametrize("ahead", [-10, 0, 3661, 86400])
def test_ensure_bootstrap_token_refuses_long_or_past_expiry(target: Target, ahead: int) -> None:
    token_id, secret = kube.new_bootstrap_token()
    with pytest.raises(ValueError):
        target.client.ensure_bootstrap_token(token_id, secret, time.time() + ahead)
    with pytest.raises(ValueError):
        target.client.ensure_bootstrap_token("BAD", secret, time.time() + 900)


def test_bootstrap_token_secret_of_missing_and_expired_tokens(target: Target) -> None:
    missing, _ = kube.new_bootstrap_token()
    assert target.client.bootstrap_token_secret(missing) is None
    token_id, secret = kube.new_bootstrap_token()
    target.tokens.append(token_id)
    target.admin.create_namespaced_secret(
        "kube-system",
        {
            "metadata": {"name": f"bootstrap-token-{token_id}"},
            "type": "bootstrap.kubernetes.io/token",
            "stringData": {
                "token-id": token_id,
                "token-secret": secret,
                "expiration": "2000-01-01T00:00:00Z",
            },
        },
    )
    assert target.client.bootstrap_token_secret(token_id) is None


def test_satisfies_the_onboarding_cluster_protocol(target: Target) -> None:
    """The calls ``worldland.onboarding`` makes, in the shapes it makes them."""
    cluster = kube.KubeClient.from_kubeconfig(target.kubeconfig, join_endpoint="203.0.113.7:6443")
    try:
        token_id, secret = kube.new_bootstrap_token()
        target.tokens.append(token_id)
        cluster.ensure_bootstrap_token(
            token_id, secret, time.time() + 1800, description="worldland provider p"
        )
        assert cluster.bootstrap_token_secret(token_id) == secret
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", cluster.ca_cert_hash())
        assert cluster.join_endpoint() == ("203.0.113.7", 6443)
        node = target.node(ready=True, gpus="2")
        state = cluster.node_state(node)
        assert (state.exists, state.ready, state.gpus) == (True, True, 2)
        assert cluster.apply_labels(node, node_labels("p", ["NVIDIA A100-SXM4-80GB"], "joined")) is True
    finally:
        cluster.close()
    with kube.KubeClient.from_kubeconfig(target.kubeconfig) as plain:
        assert plain.join_endpoint() == (plain.api_endpoint().host, plain.api_endpoint().port)
    with pytest.raises(ValueError):
        kube.KubeClient.from_kubeconfig(target.kubeconfig, join_endpoint="no-port")


def test_delete_bootstrap_token(target: Target) -> None:
    token = target.client.create_bootstrap_token()
    target.tokens.append(token.token_id)
    assert target.client.delete_bootstrap_token(token.token_id) is True
    assert target.client.delete_bootstrap_token(token.token_id) is False
    assert token.token_id not in [t.token_id for t in target.client.list_bootstrap_tokens()]
    with pytest.raises(ValueError):
        target.client.delete_bootstrap_token("../etc")


def test_cluster_info_gets_signed_for_a_new_token(target: Target) -> None:
    # On a real cluster the bootstrap signer does this (a few seconds); it only signs for a Secret of
    # the right shape, so this checks our Secret against the real controller.
    token = target.client.create_bootstrap_token()
    target.tokens.append(token.token_id)

    def signed() -> bool:
        cm = target.admin.read_namespaced_config_map("cluster-info", "kube-public")
        return f"jws-kubeconfig-{token.token_id}" in (cm.data or {})

    assert eventually(signed)


def test_the_test_server_accepts_the_token_for_authentication(target: Target) -> None:
    server = target.need_server("it checks the token through the server's own authenticator")
    token = target.client.create_bootstrap_token()
    target.tokens.append(token.token_id)
    who = server.verify_bootstrap_token(token.token)
    assert who is not None and NODE_TOKEN_GROUP in who.groups


# -- CA hash and endpoint ----------------------------------------------------------------------------------


def test_ca_cert_hash_from_kubeconfig_and_cluster_info_agree(target: Target) -> None:
    from_kubeconfig = target.client.ca_cert_hash()
    from_cluster_info = target.client.ca_cert_hash(source="cluster-info")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", from_kubeconfig)
    assert from_kubeconfig == from_cluster_info
    if target.server is not None:
        assert from_kubeconfig == target.server.ca_cert_hash


def test_ca_cert_hash_is_of_the_subject_public_key_info(target: Target) -> None:
    # Independent computation: sha256 over the DER SubjectPublicKeyInfo, as kubeadm's pubkeypin does.
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    doc = yaml.safe_load(target.kubeconfig.read_text())
    context = next(c for c in doc["contexts"] if c["name"] == doc["current-context"])["context"]
    cluster = next(c for c in doc["clusters"] if c["name"] == context["cluster"])["cluster"]
    if "certificate-authority-data" in cluster:
        pem = base64.b64decode(cluster["certificate-authority-data"])
    else:
        pem = (target.kubeconfig.parent / cluster["certificate-authority"]).read_bytes()
    spki = (
        x509.load_pem_x509_certificate(pem)
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    assert target.client.ca_cert_hash() == "sha256:" + hashlib.sha256(spki).hexdigest()


def test_api_endpoint(target: Target) -> None:
    endpoint = target.client.api_endpoint()
    assert endpoint == kube.endpoint_from_url(target.client.host)
    assert endpoint.host in target.client.host and endpoint.port > 0
    info = target.client.join_info(source="cluster-info")
    assert info.endpoint.port > 0 and info.endpoint.host
    if target.server is not None:
        assert endpoint.host == "127.0.0.1" and endpoint.port == target.server.port


# -- node state ----------------------------------------------------------------------------------------------


def test_node_state_of_a_missing_node(target: Target) -> None:
    state = target.client.node_state(f"wl-contract-missing-{uuid.uuid4().hex[:8]}")
    assert state.exists is False and state.ready is False and state.gpu_allocatable == 0
    assert not state.schedulable_gpus


def test_node_state_ready_and_gpus(target: Target) -> None:
    ready = target.node({"a": "b"}, ready=True, gpus="4")
    not_ready = target.node(ready=False, gpus="2")
    no_gpus = target.node(ready=True)
    state = target.client.node_state(ready)
    assert state.exists and state.ready and state.gpu_allocatable == 4 and state.schedulable_gpus
    assert state.labels.get("a") == "b" and state.resource_version
    state = target.client.node_state(not_ready)
    assert state.exists and not state.ready and state.gpu_allocatable == 2 and not state.schedulable_gpus
    state = target.client.node_state(no_gpus)
    assert state.ready and state.gpu_allocatable == 0 and not state.schedulable_gpus


def test_list_nodes_by_label_selector(target: Target) -> None:
    run = uuid.uuid4().hex[:10]
    a = target.node({"wl-run": run, LABEL_GPU_MODEL: "RTX-4090"})
    b = target.node({"wl-run": run, LABEL_GPU_MODEL: "H100-80GB-HBM3"})
    c = target.node({"wl-run": run})
    assert {n.name for n in target.client.list_nodes({"wl-run": run})} == {a, b, c}
    assert [n.name for n in target.client.list_nodes({"wl-run": run, LABEL_GPU_MODEL: "RTX-4090"})] == [a]
    assert {n.name for n in target.client.list_nodes(f"wl-run={run},{LABEL_GPU_MODEL}")} == {a, b}
    assert {n.name for n in target.client.list_nodes(f"wl-run={run},!{LABEL_GPU_MODEL}")} == {c}
    found = target.client.list_nodes(f"wl-run={run},{LABEL_GPU_MODEL} in (RTX-4090,A100-SXM4-80GB)")
    assert [n.name for n in found] == [a]
    assert all(isinstance(n, NodeState) and n.exists for n in found)
    with pytest.raises(ValueError):
        target.client.list_nodes({"wl-run": "not valid!"})


def test_list_nodes_pages(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube.session, "LIST_PAGE_SIZE", 2)
    run = uuid.uuid4().hex[:10]
    made = {target.node({"wl-run": run}) for _ in range(5)}
    lists = target.client.reads["list nodes"]
    assert {n.name for n in target.client.list_nodes({"wl-run": run})} == made
    assert target.client.reads["list nodes"] - lists == 3


@pytest.mark.parametrize("threshold", [0, 100])
def test_node_states_batched(target: Target, monkeypatch: pytest.MonkeyPatch, threshold: int) -> None:
    monkeypatch.setattr(kube.nodes, "NAME_LOOKUP_THRESHOLD", threshold)  # 0: one list; 100: one GET each
    ready = target.node(ready=True, gpus="1")
    plain = target.node()
    missing = f"wl-contract-missing-{uuid.uuid4().hex[:8]}"
    states = target.client.node_states([ready, plain, missing, ready])
    assert list(states) == [ready, plain, missing]
    assert states[ready].schedulable_gpus and states[plain].exists and not states[plain].ready
    assert states[missing] == NodeState(name=missing, exists=False)


# -- labels ----------------------------------------------------------------------------------------------


def test_apply_labels_writes_only_on_change(target: Target) -> None:
    node = target.node({"keep": "me", "old": "x"})
    labels = node_labels("prov-7", ["NVIDIA GeForce RTX 4090"], "available")
    assert labels == {
        LABEL_RENTAL_TYPE: "gpu",
        LABEL_PROVIDER_ID: "prov-7",
        LABEL_GPU_MODEL: "RTX-4090",
        LABEL_RENTAL_STATUS: "available",
    }
    assert target.client.apply_labels(node, {**labels, "old": None}) is True
    assert target.labels_of(node) == {"keep": "me", **labels}
    # The same again: nothing is sent, on the client's count and on the server's.
    client_writes = sum(target.client.writes.values())
    server_writes = target.server_writes()
    for _ in range(3):
        assert target.client.apply_labels(node, {**labels, "old": None, "never-there": None}) is False
    assert sum(target.client.writes.values()) == client_writes
    assert target.server_writes() == server_writes
    # One value changes: one write, carrying only that label.
    assert target.client.apply_labels(node, {**labels, LABEL_RENTAL_STATUS: "offline"}) is True
    assert target.labels_of(node)[LABEL_RENTAL_STATUS] == "offline"
    assert sum(target.client.writes.values()) == client_writes + 1
    if target.server is not None:
        last = target.server.writes[-1]
        assert (last.method, last.resource, last.name) == ("PATCH", "nodes", node)


def test_apply_labels_with_known_current_labels_skips_the_read(target: Target) -> None:
    node = target.node({"a": "1"})
    state = target.client.node_state(node)
    reads = sum(target.client.reads.values())
    assert target.client.apply_labels(node, {"a": "1"}, current=state.labels) is False
    assert target.client.apply_labels(node, {"a": "2"}, current=state.labels) is True
    assert sum(target.client.reads.values()) == reads
    assert target.labels_of(node) == {"a": "2"}


def test_apply_labels_refuses_invalid_labels_without_sending(target: Target) -> None:
    node = target.node()
    writes = sum(target.client.writes.values())
    for bad in ({"ok": "not valid!"}, {"ok": "x" * 64}, {"bad key": "v"}, {"ok": 3}):
        with pytest.raises(ValueError):
            target.client.apply_labels(node, bad)  # type: ignore[arg-type]
    assert sum(target.client.writes.values()) == writes


def test_hostile_provider_values_become_valid_labels(target: Target) -> None:
    node = target.node()
    labels = node_labels("x" * 80 + "/../{{ evil }}", ["NVIDIA, GeForce RTX 4090 <script>"], "available")
    assert all(is_label_value(v) for v in labels.values())
    assert target.client.apply_labels(node, labels) is True
    assert {k: v for k, v in target.labels_of(node).items() if k in labels} == labels


def test_apply_labels_on_a_missing_node(target: Target) -> None:
    with pytest.raises(KubeNotFound) as err:
        target.client.apply_labels(f"wl-contract-missing-{uuid.uuid4().hex[:8]}", {"a": "b"})
    assert err.value.status == 404


# -- taints ----------------------------------------------------------------------------------------------


def test_ensure_taint_present_and_absent(target: Target) -> None:
    other = {"key": "example.com/other", "value": "x", "effect": "NoExecute"}
    node = target.node(taints=[other])
    assert target.client.ensure_taint(node, OFFLINE_TAINT_KEY) is True
    taints = target.taints_of(node)
    assert (OFFLINE_TAINT_KEY, "", "NoSchedule") in taints and (
        "example.com/other",
        "x",
        "NoExecute",
    ) in taints
    writes = sum(target.client.writes.values())
    assert target.client.ensure_taint(node, OFFLINE_TAINT_KEY) is False
    assert sum(target.client.writes.values()) == writes
    # A new value replaces the old one (same key and effect), other taints stay.
    assert target.client.ensure_taint(node, OFFLINE_TAINT_KEY, value="audit") is True
    assert (OFFLINE_TAINT_KEY, "audit", "NoSchedule") in target.taints_of(node)
    assert [t for t in target.taints_of(node) if t[0] == OFFLINE_TAINT_KEY] == [
        (OFFLINE_TAINT_KEY, "audit", "NoSchedule")
    ]
    assert target.client.ensure_taint(node, OFFLINE_TAINT_KEY, present=False) is True
    assert OFFLINE_TAINT_KEY not in [t[0] for t in target.taints_of(node)]
    assert ("example.com/other", "x", "NoExecute") in target.taints_of(node)
    writes = sum(target.client.writes.values())
    assert target.client.ensure_taint(node, OFFLINE_TAINT_KEY, present=False) is False
    assert sum(target.client.writes.values()) == writes
    state = target.client.node_state(node)
    assert Taint("example.com/other", "x", "NoExecute") in state.taints


def test_ensure_taint_retries_when_the_node_changes_underneath(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = target.node()
    original = target.client._read_node
    calls = {"n": 0}

    def read_then_race(name: str) -> dict[str, Any]:
        obj = original(name)
        calls["n"] += 1
        if calls["n"] == 1:  # another controller adds its taint between our read and our write
            target.admin.patch_node(
                name, {"spec": {"taints": [{"key": "example.com/racer", "effect": "NoSchedule"}]}}
            )
        return obj

    monkeypatch.setattr(target.client, "_read_node", read_then_race)
    assert target.client.ensure_taint(node, OFFLINE_TAINT_KEY) is True
    assert calls["n"] == 2
    keys = [t[0] for t in target.taints_of(node)]
    assert "example.com/racer" in keys and OFFLINE_TAINT_KEY in keys  # neither write was lost


def test_ensure_taint_validates_its_arguments(target: Target) -> None:
    node = target.node()
    for kwargs in (
        {"key": "bad key"},
        {"key": "k", "effect": "Sometimes"},
        {"key": "k", "value": "bad value!"},
    ):
        with pytest.raises(ValueError):
            target.client.ensure_taint(node, **kwargs)
    with pytest.raises(KubeNotFound):
        target.client.ensure_taint(f"wl-contract-missing-{uuid.uuid4().hex[:8]}", OFFLINE_TAINT_KEY)


# -- errors ----------------------------------------------------------------------------------------------


def all_text(err: BaseException) -> str:
    """Everything a log line could show of an exception: message, repr, args, traceback, chain."""
    parts = [str(err), repr(err), repr(err.args), "".join(traceback.format_exception(err))]
    assert err.__cause__ is None and err.__context__ is None
    return "\n".join(parts)


def test_errors_never_carry_a_token(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    server = target.need_server("it injects an error message that echoes credentials")
    token = target.client.create_bootstrap_token()
    target.tokens.append(token.token_id)
    echo = f"bad things: Authorization: Bearer {server.token} and {token.token} and {token.secret}"
    server.fail_next(500, echo)
    with pytest.raises(KubeUnavailable) as err:
        target.client.node_state("any")
    text = all_text(err.value)
    assert server.token not in text and token.token not in text and token.secret not in text
    assert err.value.status == 500 and "HTTP 500" in str(err.value)
    # A failing create: the new token's secret (plain or base64, as in an echoed body) is scrubbed too.
    fresh = kube._new_token_id_secret()
    monkeypatch.setattr(kube.tokens, "_new_token_id_secret", lambda: fresh)
    encoded = base64.b64encode(fresh[1].encode()).decode()
    server.fail_next(503, f"echo {fresh[0]}.{fresh[1]} / {fresh[1]} / {encoded}", methods={"POST"})
    with pytest.raises(KubeUnavailable) as err:
        target.client.create_bootstrap_token()
    text = all_text(err.value)
    assert fresh[1] not in text and encoded not in text


def test_wrong_credentials_are_a_kube_error_without_the_token(target: Target, tmp_path: Path) -> None:
    doc = yaml.safe_load(target.kubeconfig.read_text())
    bad_token = "wl-contract-wrong-" + uuid.uuid4().hex
    for user in doc["users"]:
        user["user"] = {"token": bad_token}
    bad = tmp_path / "bad.conf"
    # Relative CA paths in the original kubeconfig must still resolve.
    for cluster in doc["clusters"]:
        ca = cluster["cluster"].get("certificate-authority")
        if ca and not os.path.isabs(ca):
            cluster["cluster"]["certificate-authority"] = str(target.kubeconfig.parent / ca)
    bad.write_text(yaml.safe_dump(doc))
    with KubeClient.from_kubeconfig(bad) as client, pytest.raises(KubeError) as err:
        client.node_state("anything")
    assert err.value.status == 401
    assert not isinstance(err.value, KubeUnavailable)
    assert bad_token not in all_text(err.value)


def test_unreachable_api_is_kube_unavailable(tmp_path: Path, kube_server: KubeApiServer) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nothing listens there
    path = kube_server.write_kubeconfig(tmp_path / "closed.conf")
    path.write_text(path.read_text().replace(f":{kube_server.port}", f":{port}"))
    started = time.monotonic()
    with KubeClient.from_kubeconfig(path, timeout=(2, 2)) as client, pytest.raises(KubeUnavailable) as err:
        client.create_bootstrap_token()
    assert time.monotonic() - started < 20
    assert kube_server.token not in all_text(err.value)
    assert "unreachable" in str(err.value)


def test_api_outage_is_kube_unavailable(target: Target) -> None:
    server = target.need_server("it simulates the outage")
    node = target.node()
    with server.outage("refuse"), pytest.raises(KubeUnavailable):
        target.client.apply_labels(node, {"a": "b"})
    with server.outage(503), pytest.raises(KubeUnavailable) as err:
        target.client.ensure_taint(node, OFFLINE_TAINT_KEY)
    assert err.value.status == 503
    assert target.client.apply_labels(node, {"a": "b"}) is True  # and it works again after


def test_bad_kubeconfig_is_a_kube_error(tmp_path: Path) -> None:
    with pytest.raises(KubeError):
        KubeClient.from_kubeconfig(tmp_path / "nope.conf")
    (tmp_path / "junk.conf").write_text("{not: [valid")
    with pytest.raises(KubeError):
        KubeClient.from_kubeconfig(tmp_path / "junk.conf")


def test_connect_prefers_the_explicit_and_worldland_kubeconfig(
    kube_server: KubeApiServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing.conf"))
    monkeypatch.setenv(kube.KUBECONFIG_ENV, str(kube_server.kubeconfig_path))
    with KubeClient.connect() as client:
        assert client.api_endpoint().port == kube_server.port
    monkeypatch.delenv(kube.KUBECONFIG_ENV)
    with pytest.raises(KubeError):
        KubeClient.connect()  # falls to $KUBECONFIG, which does not exist
    with KubeClient.connect(kube_server.kubeconfig_path) as client:
        assert client.node_state("x").exists is False


def test_bootstrap_token_value_type() -> None:
    token = BootstrapToken("abcdef", "0123456789abcdef", datetime(2030, 1, 1, tzinfo=UTC))
    assert token.token == "abcdef.0123456789abcdef"
    assert "0123456789abcdef" not in repr(token) and "0123456789abcdef" not in str(token)
    assert str(token) == "bootstrap token abcdef (expires 2030-01-01T00:00:00Z)"


@pytest.mark.parametrize("secret", ["zxttpoiqcquyagdq", "0123456789012345", "a1b2c3d4e5f6g7h8"])
def test_error_scrubbing_catches_any_token_secret_shape(secret: str) -> None:
    client = KubeClient(k8s.ApiClient(k8s.Configuration(host="https://127.0.0.1:1")))
    for text in (f"x {secret} y", f'"{secret}"', f"abcdef.{secret}", f"key:{secret}", f"Bearer {secret}x"):
        assert secret not in client._redact(text)
    assert (
        client._redact("nodes wl-contract-0123456789ab not found")
        == "nodes wl-contract-0123456789ab not found"
    )


def _replace(path: Path, text: str) -> None:
    """As the kubelet rotates a projected token: a new file swapped in (a new inode)."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(text)
    fresh.replace(path)


def test_in_cluster_reads_the_service_account_and_follows_its_rotated_token(
    kube_server: KubeApiServer, tmp_path: Path
) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "ca.crt").write_bytes(kube_server.ca_pem)
    (account / "token").write_text(kube_server.token + "\n")
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(kube_server.port)}
    with KubeClient.open(IN_CLUSTER, account_dir=account, environ=environ) as client:
        assert client.node_state("x").exists is False
        _replace(account / "token", "not-the-token-any-more")
        with pytest.raises(KubeError) as err:
            client.node_state("x")
        assert err.value.status == 401 and "not-the-token-any-more" not in str(err.value)
        _replace(account / "token", kube_server.token)
        assert client.node_state("x").exists is False
    with pytest.raises(KubeError, match="not running in a cluster"):
        KubeClient.open(IN_CLUSTER, account_dir=account, environ={})
