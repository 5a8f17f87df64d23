"""The Kubernetes API test server itself: the API shapes and semantics the project's tests rely on.

Everything here talks HTTPS to 127.0.0.1 (or 127.0.0.2, also loopback) only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from testkit.kube_server import KubeApiServer, detached_jws
from testkit.kube_server.fixtures import KubeApi
from testkit.kube_server.validation import SelectorError, parse_selector, selector_matches

REPO = Path(__file__).resolve().parent.parent
ADMIN = object()  # "use the admin token"
_contexts: dict[bytes, ssl.SSLContext] = {}


def request(
    server: KubeApiServer,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: Any = ADMIN,
    content_type: str = "application/json",
    address: str | None = None,
    accept: str = "application/json",
) -> tuple[int, Any]:
    context = _contexts.get(server.ca_pem)
    if context is None:
        context = _contexts[server.ca_pem] = ssl.create_default_context(cadata=server.ca_pem.decode())
    conn = http.client.HTTPSConnection(address or server.bind, server.port, context=context, timeout=10)
    headers = {"Accept": accept}
    if token is ADMIN:
        headers["Authorization"] = f"Bearer {server.token}"
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = content_type
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw.decode()


def make_node(api: KubeApi, labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    name = api.unique("node")
    code, obj = request(
        api.server, "POST", "/api/v1/nodes", {"metadata": {"name": name, "labels": labels or {}}, **extra}
    )
    assert code == 201, obj
    return obj


def assert_status(body: Any, code: int, reason: str) -> None:
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["code"] == code
    assert body["reason"] == reason
    assert isinstance(body["message"], str) and body["message"]


# -- discovery and authentication ------------------------------------------------------------------------


def test_discovery_endpoints(kube_api: KubeApi) -> None:
    server = kube_api.server
    code, version = request(server, "GET", "/version")
    assert code == 200 and version["major"] == "1" and version["gitVersion"].startswith("v1.")
    code, apis = request(server, "GET", "/api")
    assert code == 200 and apis["kind"] == "APIVersions" and apis["versions"] == ["v1"]
    code, groups = request(server, "GET", "/apis")
    assert code == 200 and groups["kind"] == "APIGroupList"
    code, resources = request(server, "GET", "/api/v1")
    assert code == 200 and resources["groupVersion"] == "v1"
    by_name = {r["name"]: r for r in resources["resources"]}
    assert by_name["nodes"]["namespaced"] is False and "patch" in by_name["nodes"]["verbs"]
    assert by_name["secrets"]["namespaced"] is True and by_name["secrets"]["kind"] == "Secret"
    assert by_name["configmaps"]["kind"] == "ConfigMap"
    assert by_name["nodes/status"]["verbs"] == ["get", "patch", "update"]


def test_wrong_token_is_401_and_anonymous_is_403(kube_api: KubeApi) -> None:
    server = kube_api.server
    code, body = request(server, "GET", "/api/v1/nodes", token="not-the-token")
    assert code == 401
    assert_status(body, 401, "Unauthorized")
    code, body = request(server, "GET", "/api/v1/nodes", token=None)
    assert code == 403
    assert_status(body, 403, "Forbidden")
    assert 'User "system:anonymous" cannot list resource "nodes"' in body["message"]
    # What a kubeadm cluster lets anyone read: the version and cluster-info (for join discovery).
    assert request(server, "GET", "/version", token=None)[0] == 200
    code, info = request(server, "GET", "/api/v1/namespaces/kube-public/configmaps/cluster-info", token=None)
    assert code == 200 and "kubeconfig" in info["data"]
    assert request(server, "GET", "/api/v1/namespaces/kube-system/secrets", token=None)[0] == 403


def test_official_client_uses_the_kubeconfig_unchanged(kube_api: KubeApi) -> None:
    api_client = k8s_config.new_client_from_config(config_file=str(kube_api.kubeconfig), persist_config=False)
    core = k8s.CoreV1Api(api_client)
    name = kube_api.unique("node")
    created = core.create_node(k8s.V1Node(metadata=k8s.V1ObjectMeta(name=name, labels={"t": "typed"})))
    assert created.metadata.name == name and created.metadata.resource_version
    listed = core.list_node(label_selector="t=typed")
    assert name in [n.metadata.name for n in listed.items]
    with pytest.raises(ApiException) as err:
        core.read_node(kube_api.unique("missing"))
    assert err.value.status == 404
    core.delete_node(name)
    api_client.close()


# -- Secrets and ConfigMaps ------------------------------------------------------------------------------


def test_string_data_becomes_base64_data_and_type_is_kept(kube_api: KubeApi) -> None:
    server = kube_api.server
    name = kube_api.unique("secret")
    body = {
        "metadata": {"name": name},
        "type": "bootstrap.kubernetes.io/token",
        "stringData": {"token-id": "abcdef", "note": "héllo"},
        "data": {"raw": base64.b64encode(b"\x00\x01").decode()},
    }
    code, created = request(server, "POST", "/api/v1/namespaces/kube-system/secrets", body)
    assert code == 201, created
    assert "stringData" not in created
    assert created["type"] == "bootstrap.kubernetes.io/token"
    assert base64.b64decode(created["data"]["token-id"]) == b"abcdef"
    assert base64.b64decode(created["data"]["note"]).decode() == "héllo"
    assert base64.b64decode(created["data"]["raw"]) == b"\x00\x01"
    assert created["metadata"]["namespace"] == "kube-system"
    # The type cannot change on update; a Secret without type is Opaque.
    changed = {**created, "type": "Opaque"}
    code, err = request(server, "PUT", f"/api/v1/namespaces/kube-system/secrets/{name}", changed)
    assert code == 422
    assert_status(err, 422, "Invalid")
    assert err["details"]["causes"][0]["field"] == "type"
    other = kube_api.unique("secret")
    code, plain = request(server, "POST", "/api/v1/namespaces/default/secrets", {"metadata": {"name": other}})
    assert code == 201 and plain["type"] == "Opaque"
    # stringData sent in a patch is converted too.
    code, patched = request(
        server,
        "PATCH",
        f"/api/v1/namespaces/kube-system/secrets/{name}",
        {"stringData": {"extra": "x"}},
        content_type="application/merge-patch+json",
    )
    assert code == 200 and patched["data"]["extra"] == base64.b64encode(b"x").decode()
    assert "stringData" not in patched


def test_create_in_a_missing_namespace_is_404(kube_api: KubeApi) -> None:
    code, body = request(
        kube_api.server, "POST", "/api/v1/namespaces/nowhere/secrets", {"metadata": {"name": "x"}}
    )
    assert code == 404
    assert_status(body, 404, "NotFound")
    assert body["details"] == {"name": "nowhere", "kind": "namespaces"}


def test_cluster_info_is_kubeadm_shaped_with_the_real_ca(kube_api: KubeApi) -> None:
    server = kube_api.server
    code, info = request(server, "GET", "/api/v1/namespaces/kube-public/configmaps/cluster-info")
    assert code == 200 and info["kind"] == "ConfigMap"
    doc = yaml.safe_load(info["data"]["kubeconfig"])
    assert doc["kind"] == "Config" and doc["users"] is None and doc["clusters"][0]["name"] == ""
    cluster = doc["clusters"][0]["cluster"]
    assert cluster["server"] == server.url_for(server.advertise_address)
    ca_pem = base64.b64decode(cluster["certificate-authority-data"])
    assert ca_pem == server.ca_pem
    # The CA really signs the serving certificate: a client trusting only it connects.
    context = ssl.create_default_context(cadata=ca_pem.decode())
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() is not None


def test_cluster_info_is_signed_for_valid_bootstrap_tokens(kube_api: KubeApi) -> None:
    server = kube_api.server
    token_id = os.urandom(3).hex()
    expired_id = os.urandom(3).hex()
    for tid, expiration in ((token_id, "2999-01-01T00:00:00Z"), (expired_id, "2000-01-01T00:00:00Z")):
        code, _ = request(
            server,
            "POST",
            "/api/v1/namespaces/kube-system/secrets",
            {
                "metadata": {"name": f"bootstrap-token-{tid}"},
                "type": "bootstrap.kubernetes.io/token",
                "stringData": {
                    "token-id": tid,
                    "token-secret": "0123456789abcdef",
                    "expiration": expiration,
                    "usage-bootstrap-signing": "true",
                    "usage-bootstrap-authentication": "true",
                },
            },
        )
        assert code == 201
    code, info = request(server, "GET", "/api/v1/namespaces/kube-public/configmaps/cluster-info", token=None)
    assert f"jws-kubeconfig-{expired_id}" not in info["data"]
    jws = info["data"][f"jws-kubeconfig-{token_id}"]
    header, payload, signature = jws.split(".")
    assert payload == ""  # detached
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"alg": "HS256", "kid": token_id}
    content = base64.urlsafe_b64encode(info["data"]["kubeconfig"].encode()).rstrip(b"=").decode()
    expected = hmac.new(b"0123456789abcdef", f"{header}.{content}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "==") == expected
    assert jws == detached_jws(info["data"]["kubeconfig"], token_id, "0123456789abcdef")


def test_bootstrap_token_authenticates_with_node_rights_only(kube_api: KubeApi) -> None:
    server = kube_api.server
    tid = os.urandom(3).hex()
    token = f"{tid}.0123456789abcdef"
    secret = {
        "metadata": {"name": f"bootstrap-token-{tid}"},
        "type": "bootstrap.kubernetes.io/token",
        "stringData": {
            "token-id": tid,
            "token-secret": "0123456789abcdef",
            "expiration": "2999-01-01T00:00:00Z",
            "usage-bootstrap-authentication": "true",
            "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token",
        },
    }
    assert request(server, "POST", "/api/v1/namespaces/kube-system/secrets", secret)[0] == 201
    who = server.verify_bootstrap_token(token)
    assert who is not None and who.user == f"system:bootstrap:{tid}"
    assert "system:bootstrappers:kubeadm:default-node-token" in who.groups
    assert server.verify_bootstrap_token(f"{tid}.0123456789abcdee") is None
    name = kube_api.unique("node")
    assert request(server, "POST", "/api/v1/nodes", {"metadata": {"name": name}}, token=token)[0] == 201
    code, body = request(server, "GET", "/api/v1/namespaces/kube-system/secrets", token=token)
    assert code == 403 and f"system:bootstrap:{tid}" in body["message"]
    assert request(server, "GET", "/api/v1/nodes", token=f"{tid}.0123456789abcdee")[0] == 401
    # Expired: no longer authenticates.
    server.mutate(
        "secrets",
        f"bootstrap-token-{tid}",
        lambda o: o["data"].update(expiration=base64.b64encode(b"2000-01-01T00:00:00Z").decode()),
        namespace="kube-system",
    )
    assert request(server, "GET", f"/api/v1/nodes/{name}", token=token)[0] == 401


# -- errors ------------------------------------------------------------------------------------------------


def test_not_found_is_a_status(kube_api: KubeApi) -> None:
    name = kube_api.unique("missing")
    for method, body in (
        ("GET", None),
        ("PUT", {"metadata": {"name": name}}),
        ("PATCH", {}),
        ("DELETE", None),
    ):
        code, err = request(
            kube_api.server,
            method,
            f"/api/v1/nodes/{name}",
            body,
            content_type="application/merge-patch+json",
        )
        assert code == 404, method
        assert_status(err, 404, "NotFound")
        assert err["message"] == f'nodes "{name}" not found'
        assert err["details"] == {"name": name, "kind": "nodes"}
    code, err = request(kube_api.server, "GET", "/api/v1/widgets")
    assert code == 404 and err["kind"] == "Status"


def test_already_exists_is_409(kube_api: KubeApi) -> None:
    node = make_node(kube_api)
    name = node["metadata"]["name"]
    code, err = request(kube_api.server, "POST", "/api/v1/nodes", {"metadata": {"name": name}})
    assert code == 409
    assert_status(err, 409, "AlreadyExists")
    assert err["details"] == {"name": name, "kind": "nodes"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"metadata": {"name": "Upper_Case"}}, "metadata.name"),
        ({"metadata": {"name": "x" * 254}}, "metadata.name"),
        ({"metadata": {"name": "ok-name", "labels": {"a": "has space"}}}, "metadata.labels"),
        ({"metadata": {"name": "ok-name", "labels": {"a": "x" * 64}}}, "metadata.labels"),
        ({"metadata": {"name": "ok-name", "labels": {"bad key!": "v"}}}, "metadata.labels"),
        ({"metadata": {"name": "ok-name", "labels": {"-a/b": "v"}}}, "metadata.labels"),
        (
            {"metadata": {"name": "ok-name"}, "spec": {"taints": [{"key": "k", "effect": "Sometimes"}]}},
            "spec.taints[0].effect",
        ),
        (
            {"metadata": {"name": "ok-name"}, "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}] * 2}},
            "spec.taints[1]",
        ),
        ({"metadata": {}}, "metadata.name"),
    ],
)
def test_invalid_objects_are_422_with_causes(kube_api: KubeApi, body: dict, field: str) -> None:
    code, err = request(kube_api.server, "POST", "/api/v1/nodes", body)
    assert code == 422, err
    assert_status(err, 422, "Invalid")
    assert err["details"]["kind"] == "Node"
    assert field in [c["field"] for c in err["details"]["causes"]]
    assert "is invalid" in err["message"]


def test_invalid_label_in_a_patch_is_422_and_nothing_changes(kube_api: KubeApi) -> None:
    node = make_node(kube_api, {"keep": "me"})
    name = node["metadata"]["name"]
    code, err = request(
        kube_api.server,
        "PATCH",
        f"/api/v1/nodes/{name}",
        {"metadata": {"labels": {"keep": "not ok!"}}},
        content_type="application/merge-patch+json",
    )
    assert code == 422 and err["reason"] == "Invalid"
    assert kube_api.server.get_object("nodes", name)["metadata"] == node["metadata"]


def test_resource_version_is_global_and_stale_writes_conflict(kube_api: KubeApi) -> None:
    server = kube_api.server
    a = make_node(kube_api)
    b = make_node(kube_api)
    assert int(b["metadata"]["resourceVersion"]) > int(a["metadata"]["resourceVersion"])
    name = a["metadata"]["name"]
    stale = a["metadata"]["resourceVersion"]
    code, updated = request(
        server, "PUT", f"/api/v1/nodes/{name}", {**a, "metadata": {**a["metadata"], "labels": {"x": "1"}}}
    )
    assert code == 200
    fresh = updated["metadata"]["resourceVersion"]
    assert int(fresh) > int(b["metadata"]["resourceVersion"])
    # PUT with the old resourceVersion: 409 Conflict, in Status shape.
    code, err = request(
        server, "PUT", f"/api/v1/nodes/{name}", {**a, "metadata": {**a["metadata"], "labels": {"x": "2"}}}
    )
    assert code == 409
    assert_status(err, 409, "Conflict")
    assert "the object has been modified" in err["message"]
    assert err["details"] == {"name": name, "kind": "nodes"}
    # A patch carrying a resourceVersion is a precondition too.
    for ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
        patch = {"metadata": {"resourceVersion": stale, "labels": {"x": "3"}}}
        code, err = request(server, "PATCH", f"/api/v1/nodes/{name}", patch, content_type=ctype)
        assert code == 409 and err["reason"] == "Conflict"
    patch = {"metadata": {"resourceVersion": fresh, "labels": {"x": "3"}}}
    code, ok = request(
        server, "PATCH", f"/api/v1/nodes/{name}", patch, content_type="application/merge-patch+json"
    )
    assert code == 200 and ok["metadata"]["labels"] == {"x": "3"}
    # PUT without a resourceVersion is unconditional (nodes allow that).
    body = {"metadata": {"name": name, "labels": {"x": "4"}}}
    assert request(server, "PUT", f"/api/v1/nodes/{name}", body)[0] == 200
    # DELETE with a stale precondition conflicts.
    code, err = request(
        server, "DELETE", f"/api/v1/nodes/{name}", {"preconditions": {"resourceVersion": stale}}
    )
    assert code == 409


def test_a_write_that_changes_nothing_keeps_the_resource_version(kube_api: KubeApi) -> None:
    node = make_node(kube_api, {"a": "b"})
    name = node["metadata"]["name"]
    code, same = request(
        kube_api.server,
        "PATCH",
        f"/api/v1/nodes/{name}",
        {"metadata": {"labels": {"a": "b"}}},
        content_type="application/merge-patch+json",
    )
    assert code == 200 and same["metadata"]["resourceVersion"] == node["metadata"]["resourceVersion"]
    # ...but it is still a write request, and is counted as one.
    assert kube_api.write_counts() == {"nodes": 2}


# -- selectors and lists -----------------------------------------------------------------------------------


def test_label_selectors(kube_api: KubeApi) -> None:
    run = kube_api.unique("run")
    gpu = make_node(kube_api, {"run": run, "model": "RTX-4090", "tier": "a"})["metadata"]["name"]
    h100 = make_node(kube_api, {"run": run, "model": "H100-80GB-HBM3"})["metadata"]["name"]
    plain = make_node(kube_api, {"run": run})["metadata"]["name"]

    def names(selector: str) -> set[str]:
        code, body = request(
            kube_api.server, "GET", "/api/v1/nodes?labelSelector=" + selector.replace(" ", "%20")
        )
        assert code == 200, body
        assert body["kind"] == "NodeList" and body["metadata"]["resourceVersion"]
        return {item["metadata"]["name"] for item in body["items"]}

    assert names(f"run={run},model=RTX-4090") == {gpu}
    assert names(f"run=={run},model!=RTX-4090") == {h100, plain}
    assert names(f"run={run},model") == {gpu, h100}
    assert names(f"run={run},!model") == {plain}
    assert names(f"run={run},model in (RTX-4090,H100-80GB-HBM3)") == {gpu, h100}
    assert names(f"run={run},model notin (RTX-4090)") == {h100, plain}
    assert names(f"run={run},tier,model=RTX-4090") == {gpu}
    code, err = request(kube_api.server, "GET", "/api/v1/nodes?labelSelector=a%20in%20(")
    assert code == 400 and err["reason"] == "BadRequest"


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("a=b", {"a": "b"}, True),
        ("a=b", {}, False),
        ("a!=b", {}, True),
        ("a notin (b)", {}, True),
        ("a in (b, c)", {"a": "c"}, True),
        ("a>3", {"a": "4"}, True),
        ("a<3", {"a": "x"}, False),
        ("!a", {"a": ""}, False),
        ("a=", {"a": ""}, True),
        ("worldland.io/gpu-model=RTX-4090", {"worldland.io/gpu-model": "RTX-4090"}, True),
    ],
)
def test_selector_semantics(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert selector_matches(parse_selector(selector), labels) is expected


@pytest.mark.parametrize(
    "selector", ["a in b", "a=b,", "a=(b)", "bad key=x", "a=" + "v" * 64, "a in ()", "a>x"]
)
def test_bad_selectors(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse_selector(selector)


def test_list_pages_with_limit_and_continue(kube_api: KubeApi) -> None:
    run = kube_api.unique("run")
    made = {make_node(kube_api, {"run": run})["metadata"]["name"] for _ in range(5)}
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        path = f"/api/v1/nodes?labelSelector=run%3D{run}&limit=2" + (f"&continue={token}" if token else "")
        code, body = request(kube_api.server, "GET", path)
        assert code == 200
        seen += [i["metadata"]["name"] for i in body["items"]]
        pages += 1
        token = body["metadata"].get("continue")
        if not token:
            break
    assert sorted(seen) == sorted(made) and pages == 3


def test_field_selector_on_secret_type(kube_api: KubeApi) -> None:
    name = kube_api.unique("typed")
    body = {"metadata": {"name": name}, "type": "example.com/special"}
    assert request(kube_api.server, "POST", "/api/v1/namespaces/default/secrets", body)[0] == 201
    code, listed = request(
        kube_api.server, "GET", "/api/v1/namespaces/default/secrets?fieldSelector=type%3Dexample.com/special"
    )
    assert code == 200 and [i["metadata"]["name"] for i in listed["items"]] == [name]


# -- patch semantics ------------------------------------------------------------------------------------


def patch(api: KubeApi, name: str, body: Any, ctype: str, sub: str = "") -> tuple[int, Any]:
    return request(api.server, "PATCH", f"/api/v1/nodes/{name}{sub}", body, content_type=ctype)


MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSONPATCH = "application/json-patch+json"


@pytest.mark.parametrize("ctype", [MERGE, STRATEGIC])
def test_label_patch_null_deletes(kube_api: KubeApi, ctype: str) -> None:
    name = make_node(kube_api, {"a": "1", "b": "2"})["metadata"]["name"]
    code, node = patch(kube_api, name, {"metadata": {"labels": {"a": None, "c": "3"}}}, ctype)
    assert code == 200 and node["metadata"]["labels"] == {"b": "2", "c": "3"}


@pytest.mark.parametrize("ctype", [MERGE, STRATEGIC])
def test_taints_list_is_replaced_whole_by_both_merge_patches(kube_api: KubeApi, ctype: str) -> None:
    # NodeSpec.taints has no patchMergeKey (+listType=atomic): strategic merge replaces it, as merge does.
    taints = [{"key": "a", "effect": "NoSchedule"}, {"key": "b", "value": "x", "effect": "NoExecute"}]
    name = make_node(kube_api, spec={"taints": taints})["metadata"]["name"]
    code, node = patch(kube_api, name, {"spec": {"taints": [{"key": "c", "effect": "NoSchedule"}]}}, ctype)
    assert code == 200 and node["spec"]["taints"] == [{"key": "c", "effect": "NoSchedule"}]
    code, node = patch(kube_api, name, {"spec": {"taints": None}}, ctype)
    assert code == 200 and "taints" not in node["spec"]


def test_strategic_merge_merges_conditions_by_type(kube_api: KubeApi) -> None:
    status = {
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "KubeletNotReady"},
            {"type": "MemoryPressure", "status": "False"},
        ]
    }
    name = make_node(kube_api, status=status)["metadata"]["name"]
    body = {
        "status": {
            "$setElementOrder/conditions": [{"type": "MemoryPressure"}, {"type": "Ready"}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        }
    }
    code, node = patch(kube_api, name, body, STRATEGIC, "/status")
    assert code == 200
    assert node["status"]["conditions"] == [
        {"type": "MemoryPressure", "status": "False"},
        {"type": "Ready", "status": "True", "reason": "KubeletReady"},
    ]
    # A merge patch replaces the list instead.
    code, node = patch(
        kube_api, name, {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, MERGE, "/status"
    )
    assert node["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    # $patch: delete removes one element by its merge key.
    code, node = patch(
        kube_api,
        name,
        {"status": {"conditions": [{"type": "Ready", "$patch": "delete"}]}},
        STRATEGIC,
        "/status",
    )
    assert code == 200 and node["status"]["conditions"] == []


def test_json_patch(kube_api: KubeApi) -> None:
    name = make_node(kube_api, {"a": "1"})["metadata"]["name"]
    ops = [
        {"op": "test", "path": "/metadata/labels/a", "value": "1"},
        {"op": "add", "path": "/metadata/labels/worldland.io~1gpu-model", "value": "RTX-4090"},
        {"op": "remove", "path": "/metadata/labels/a"},
    ]
    code, node = patch(kube_api, name, ops, JSONPATCH)
    assert code == 200 and node["metadata"]["labels"] == {"worldland.io/gpu-model": "RTX-4090"}
    code, err = patch(kube_api, name, [{"op": "test", "path": "/metadata/labels/a", "value": "1"}], JSONPATCH)
    assert code == 422 and err["kind"] == "Status"
    code, err = patch(kube_api, name, {"not": "a list"}, JSONPATCH)
    assert code == 422


def test_unsupported_patch_types_are_415(kube_api: KubeApi) -> None:
    name = make_node(kube_api)["metadata"]["name"]
    code, err = patch(kube_api, name, {}, "application/apply-patch+yaml")
    assert code == 415 and err["reason"] == "UnsupportedMediaType"
    code, err = patch(kube_api, name, {}, "text/plain")
    assert code == 415


def test_status_subresource(kube_api: KubeApi) -> None:
    server = kube_api.server
    node = make_node(kube_api, {"a": "1"})
    name = node["metadata"]["name"]
    status = {"conditions": [{"type": "Ready", "status": "True"}], "allocatable": {"nvidia.com/gpu": "4"}}
    code, updated = patch(
        kube_api, name, {"status": status, "metadata": {"labels": {"a": "2"}}}, MERGE, "/status"
    )
    assert code == 200
    assert updated["status"] == status
    assert updated["metadata"]["labels"] == {"a": "1"}  # /status changes only status
    code, got = request(server, "GET", f"/api/v1/nodes/{name}/status")
    assert code == 200 and got["status"] == status
    # The main resource ignores status.
    code, main = patch(kube_api, name, {"status": {"allocatable": {"nvidia.com/gpu": "0"}}}, MERGE)
    assert code == 200 and main["status"] == status
    # PUT on /status with a stale resourceVersion conflicts; with the current one it works.
    stale = {**got, "status": {"conditions": []}}
    stale["metadata"] = {**got["metadata"], "resourceVersion": node["metadata"]["resourceVersion"]}
    assert request(server, "PUT", f"/api/v1/nodes/{name}/status", stale)[0] == 409
    fresh = {**got, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    code, replaced = request(server, "PUT", f"/api/v1/nodes/{name}/status", fresh)
    assert code == 200 and replaced["status"] == {"conditions": [{"type": "Ready", "status": "False"}]}


# -- writes are counted ----------------------------------------------------------------------------------


def test_writes_are_counted_per_resource(kube_api: KubeApi) -> None:
    server = kube_api.server
    name = make_node(kube_api)["metadata"]["name"]
    patch(kube_api, name, {"metadata": {"labels": {"a": "b"}}}, MERGE)
    patch(kube_api, name, {"status": {"capacity": {"cpu": "1"}}}, MERGE, "/status")
    request(server, "GET", f"/api/v1/nodes/{name}")
    request(
        server, "POST", "/api/v1/namespaces/default/secrets", {"metadata": {"name": kube_api.unique("s")}}
    )
    request(server, "DELETE", f"/api/v1/nodes/{name}")
    request(server, "PATCH", f"/api/v1/nodes/{name}", {}, content_type=MERGE)  # 404, still a write request
    request(server, "POST", "/api/v1/nodes", {"metadata": {"name": "x"}}, token="wrong")  # 401, counted
    assert kube_api.write_counts() == {"nodes": 5, "nodes/status": 1, "secrets": 1}
    codes = [w.code for w in kube_api.writes()]
    assert codes == [201, 200, 200, 201, 200, 404, 401]
    # The same, over HTTP, for a server in another process.
    code, body = request(server, "GET", "/_test/writes")
    assert code == 200 and body["total"] >= 7
    assert request(server, "GET", "/_test/writes", token=None)[0] == 403


# -- robustness ---------------------------------------------------------------------------------------------


def test_concurrent_read_modify_write_loses_nothing(kube_api: KubeApi) -> None:
    server = kube_api.server
    name = make_node(kube_api)["metadata"]["name"]
    errors: list[str] = []

    def add_taints(worker: int) -> None:
        for n in range(5):
            while True:
                _, node = request(server, "GET", f"/api/v1/nodes/{name}")
                taints = [
                    *node.get("spec", {}).get("taints", []),
                    {"key": f"w{worker}-{n}", "effect": "NoSchedule"},
                ]
                body = {
                    "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
                    "spec": {"taints": taints},
                }
                code, _ = patch(kube_api, name, body, MERGE)
                if code == 200:
                    break
                if code != 409:
                    errors.append(str(code))
                    return

    threads = [threading.Thread(target=add_taints, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    final = server.get_object("nodes", name)
    assert len(final["spec"]["taints"]) == 30


def test_outage_modes(kube_api: KubeApi) -> None:
    server = kube_api.server
    with server.outage(503):
        code, body = request(server, "GET", "/api/v1/nodes")
        assert code == 503 and body["reason"] == "ServiceUnavailable"
    with (
        server.outage("refuse"),
        pytest.raises((ConnectionError, http.client.HTTPException, ssl.SSLError, OSError)),
    ):
        request(server, "GET", "/api/v1/nodes")
    server.fail_next(500, "boom", methods={"PATCH"})
    assert request(server, "GET", "/api/v1/nodes")[0] == 200
    code, body = request(server, "PATCH", "/api/v1/nodes/x", {}, content_type=MERGE)
    assert code == 500 and body["message"] == "boom"


def test_extra_listener_address(tmp_path: Path) -> None:
    # 127.0.0.2 is loopback too (all of 127/8 is on lo): a stand-in for a lab bridge address.
    with KubeApiServer(workdir=tmp_path, extra_ips=["127.0.0.2"]) as server:
        code, _ = request(server, "GET", "/api/v1/nodes", address="127.0.0.2")
        assert code == 200
        code, info = request(server, "GET", "/api/v1/namespaces/kube-public/configmaps/cluster-info")
        assert f"https://127.0.0.2:{server.port}" in info["data"]["kubeconfig"]
        other = server.write_kubeconfig(tmp_path / "lab.conf", address="127.0.0.2")
        core = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=str(other), persist_config=False))
        assert core.list_node().items == []


# -- kubectl and the command line ----------------------------------------------------------------------


def test_kubectl_works_against_it(kube_api: KubeApi) -> None:
    run = kube_api.unique("run")
    name = make_node(kube_api, {"a": "b", "run": run})["metadata"]["name"]
    make_node(kube_api, {"a": "c", "run": run})
    listed = json.loads(kube_api.kubectl("get", "nodes", "-l", f"a=b,run={run}", "-o", "json").stdout)
    assert [i["metadata"]["name"] for i in listed["items"]] == [name]
    assert "labeled" in kube_api.kubectl("label", "node", name, "worldland.io/rental-status=available").stdout
    assert (
        kube_api.server.get_object("nodes", name)["metadata"]["labels"]["worldland.io/rental-status"]
        == "available"
    )
    kube_api.kubectl("label", "node", name, "a-")
    assert "a" not in kube_api.server.get_object("nodes", name)["metadata"]["labels"]
    kube_api.kubectl("taint", "node", name, "worldland.io/offline=true:NoSchedule")
    assert kube_api.server.get_object("nodes", name)["spec"]["taints"] == [
        {"effect": "NoSchedule", "key": "worldland.io/offline", "value": "true"}
    ]
    table = kube_api.kubectl("get", "nodes", "-l", f"run={run}").stdout
    assert table.split()[:5] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"] and name in table
    secret = kube_api.unique("secret")
    request(
        kube_api.server,
        "POST",
        "/api/v1/namespaces/kube-system/secrets",
        {"metadata": {"name": secret}, "stringData": {"k": "v"}},
    )
    secrets_table = kube_api.kubectl("get", "secret", "-n", "kube-system").stdout
    assert secret in secrets_table and "Opaque" in secrets_table
    got = json.loads(kube_api.kubectl("get", "secret", "-n", "kube-system", secret, "-o", "json").stdout)
    assert base64.b64decode(got["data"]["k"]) == b"v"
    missing = kube_api.kubectl("get", "node", kube_api.unique("missing"), check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr


def test_kubectl_is_refused_with_a_wrong_token(kube_api: KubeApi, tmp_path: Path) -> None:
    bad = kube_api.server.write_kubeconfig(tmp_path / "bad.conf", token="wrong-token")
    result = KubeApi(kube_api.server, bad, 0, kube_api.cache_dir).kubectl("get", "nodes", check=False)
    assert result.returncode != 0 and "Unauthorized" in result.stderr


def test_command_line_server(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "admin.conf"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "testkit.kube_server",
            "--kubeconfig",
            str(kubeconfig),
            "--workdir",
            str(tmp_path),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        info = json.loads(line)
        assert info["kubeconfig"] == str(kubeconfig) and info["ca_cert_hash"].startswith("sha256:")
        core = k8s.CoreV1Api(
            k8s_config.new_client_from_config(config_file=str(kubeconfig), persist_config=False)
        )
        core.create_node({"metadata": {"name": "from-cli"}})
        assert [n.metadata.name for n in core.list_node().items] == ["from-cli"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
