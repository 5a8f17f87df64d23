"""``deploy/kubernetes``'s ServiceAccounts and RBAC on the real kube-apiserver v1.32.13 of ../shared/kube
(``--authorization-mode=Node,RBAC``): the project runs with one account's token alone (a kubeconfig with no
client certificate, ``testkit/realkube_rbac.py``) and everything it does works, while calls outside the
rules are refused with 403.

- ``worldland`` (the controller): the real ``worldland listen`` approves providers and issues their join
  tokens, moves them to Joined and Available and labels their nodes; ``worldland reject`` revokes a token,
  ``worldland approve`` issues a new one; NVIDIA's device-plugin DaemonSet is applied, re-applied unchanged,
  dry-run and deleted; offboarding cordons, drains (Eviction API) and deletes a node and revokes its token.
- ``worldland-audit``: ``worldland audit`` taints a silent provider's node and removes the taint when it is
  back, and can do nothing else.
Nodes and pods are made with the admin's credentials (no kubelet runs). The Deployment, CronJob and
ConfigMap are checked by the API server (server-side dry run, strict field validation), never run."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from testkit import realkube_rbac
from testkit.agent import Agent
from testkit.factories import registration, registration_dict
from testkit.fleet import put_in
from testkit.realkube import RealControlPlane
from testkit.realkube_fixtures import record_kube_target
from worldland.control.onboarding import Onboarding
from worldland.domain.device_plugin import DEVICE_PLUGIN_NAME, DEVICE_PLUGIN_NAMESPACE, device_plugin_manifest
from worldland.domain.join import IN_CLUSTER
from worldland.domain.lifecycle import Status
from worldland.domain.names import (
    LABEL_PROVIDER_ID,
    LABEL_RENTAL_STATUS,
    OFFLINE_TAINT_KEY,
    label_value,
)
from worldland.domain.policy import ApprovalPolicy
from worldland.kube import KubeClient, KubeError
from worldland.protocol.messages import Heartbeat
from worldland.protocol.streams import StreamNames
from worldland.state.connection import connect
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys

WORLDLAND = Path(sys.executable).parent / "worldland"
pytestmark = pytest.mark.timeout(300)


# -- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture
def admin(real_kube: RealControlPlane, request: pytest.FixtureRequest) -> Iterator[k8s.CoreV1Api]:
    record_kube_target(request, "real-cluster", real_kube.description + " (RBAC: service account tokens)")
    with real_kube.api_client() as api:
        yield k8s.CoreV1Api(api)


@pytest.fixture(scope="module")
def accounts(real_kube: RealControlPlane, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A token-only kubeconfig for each ServiceAccount of deploy/kubernetes/rbac.yaml."""
    where = tmp_path_factory.mktemp("rbac")
    return {
        account: realkube_rbac.service_account_kubeconfig(
            real_kube, where / f"{account}.conf", account=account
        )
        for account in (realkube_rbac.CONTROLLER_ACCOUNT, realkube_rbac.AUDIT_ACCOUNT)
    }


@pytest.fixture
def controller(accounts: dict[str, Path]) -> Iterator[KubeClient]:
    with KubeClient.from_kubeconfig(accounts[realkube_rbac.CONTROLLER_ACCOUNT]) as client:
        yield client


@pytest.fixture
def nodes(admin: k8s.CoreV1Api) -> Iterator[list[str]]:
    """Names of Nodes the test made (deleted at the end)."""
    made: list[str] = []
    yield made
    for name in made:
        try:
            admin.delete_node(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


def make_node(admin: k8s.CoreV1Api, nodes: list[str], name: str, *, gpus: int = 0, pid: str = "") -> None:
    labels = {LABEL_PROVIDER_ID: label_value(pid)} if pid else {}
    admin.create_node({"metadata": {"name": name, "labels": labels}})
    nodes.append(name)
    if gpus:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "stand-in"}
        ready |= {"lastHeartbeatTime": now, "lastTransitionTime": now}
        resources = {"nvidia.com/gpu": str(gpus), "cpu": "8", "memory": "32Gi", "pods": "110"}
        status = {"conditions": [ready], "allocatable": resources, "capacity": resources}
        admin.patch_node_status(name, {"status": status})


def taints(admin: k8s.CoreV1Api, name: str) -> set[tuple[str, str]]:
    return {(t.key, t.effect) for t in admin.read_node(name).spec.taints or []}


def token_secret(admin: k8s.CoreV1Api, token_id: str) -> dict[str, str] | None:
    try:
        secret = admin.read_namespaced_secret(f"bootstrap-token-{token_id}", "kube-system")
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def wait_for(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def env_for(redis_url: str, keys: Keys, kubeconfig: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORLDLAND_") and k != "KUBECONFIG"}
    env |= {"WORLDLAND_REDIS_URL": redis_url, "WORLDLAND_KEY_PREFIX": keys.prefix}
    if kubeconfig is not None:
        env["WORLDLAND_KUBECONFIG"] = str(kubeconfig)
    return env


def worldland(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(WORLDLAND), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


# -- the controller's account --------------------------------------------------------------------------


def test_the_listener_approve_and_reject_work_with_the_service_account_token_alone(
    tmp_path, redis_url, keys, real_kube, admin, accounts, nodes
) -> None:
    """The real listener process (auto policy) issues tokens and brings a node to Available, labelled;
    `worldland reject` revokes a token and `worldland approve` issues another: with the account's token."""
    kubeconfig = accounts[realkube_rbac.CONTROLLER_ACCOUNT]
    assert "client-certificate" not in kubeconfig.read_text() and "token:" in kubeconfig.read_text()
    names = StreamNames(namespace=f"r{uuid.uuid4().hex[:6]}:")
    policy = tmp_path / "policy.yml"
    policy.write_text("mode: auto\nmin_gpus: 1\n")
    env = env_for(redis_url, keys, kubeconfig)
    log = (tmp_path / "listener.log").open("w")
    listener = subprocess.Popen(
        [str(WORLDLAND), "listen", "--stream-namespace", names.namespace, "--policy", str(policy),
         "--block-ms", "100", "--reconcile-interval", "0.5"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        fleet = Fleet.open(connect(redis_url), keys)
        agent = Agent(connect(redis_url), names)
        revoked, joining = f"p-rbac-{uuid.uuid4().hex[:6]}", f"p-rbac-{uuid.uuid4().hex[:6]}"
        answers = {}
        for pid in (revoked, joining):
            agent.register(registration_dict(pid, gpus=2))
            answers[pid] = wait_for(lambda pid=pid: agent.await_answer(pid), f"the answer to {pid}")
        for pid, answer in answers.items():
            assert answer["status"] == "approved" and answer["ca_hash"] == real_kube.ca_cert_hash, answer
            token_id, secret = answer["join_token"].split(".")
            stored = token_secret(admin, token_id)
            assert stored is not None and stored["token-secret"] == secret, pid
            assert fleet.store.require(pid).token_id == token_id

        # the node appears (as a kubelet would register it), Ready with the registered GPUs
        node = answers[joining]["node_name"]
        make_node(admin, nodes, node, gpus=2)
        wait_for(lambda: fleet.store.require(joining).status is Status.AVAILABLE, "Available")
        labels = wait_for(
            lambda: (got := admin.read_node(node).metadata.labels or {}).get(LABEL_RENTAL_STATUS) and got,
            "the node's labels",
        )
        assert (
            labels[LABEL_PROVIDER_ID] == label_value(joining) and labels[LABEL_RENTAL_STATUS] == "available"
        )
        assert labels["worldland.io/gpu-model"] == "RTX-4090" and labels["worldland.io/rental-type"] == "gpu"

        token_id = answers[revoked]["join_token"].split(".")[0]
        run = worldland(
            env, "reject", revoked, "--reason", "revoked in a test", "--kubeconfig", str(kubeconfig)
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert (
            fleet.store.require(revoked).status is Status.REJECTED and token_secret(admin, token_id) is None
        )
        run = worldland(env, "approve", revoked, "--kubeconfig", str(kubeconfig))
        assert run.returncode == 0, run.stdout + run.stderr
        record = fleet.store.require(revoked)
        assert record.status is Status.APPROVED and record.token_id not in ("", token_id)
        assert token_secret(admin, record.token_id) is not None
    finally:
        listener.terminate()
        code = listener.wait(timeout=30)
        log.close()
    text = (tmp_path / "listener.log").read_text()
    assert code == 0, text
    assert "HTTP 403" not in text and "Forbidden" not in text, text


def test_the_device_plugin_daemonset_with_the_service_account_token_alone(admin, controller) -> None:
    apps = k8s.AppsV1Api(admin.api_client)
    manifest = device_plugin_manifest()
    try:
        assert controller.apply_daemon_set(manifest, dry_run=True) is True
        assert controller.read_daemon_set(DEVICE_PLUGIN_NAMESPACE, DEVICE_PLUGIN_NAME) is None  # a dry run
        assert controller.apply_daemon_set(manifest) is True  # created, through server-side apply
        assert controller.apply_daemon_set(manifest) is False and not controller.apply_daemon_set(
            manifest, dry_run=True
        )
        made = apps.read_namespaced_daemon_set(DEVICE_PLUGIN_NAME, DEVICE_PLUGIN_NAMESPACE)
        assert made.spec.template.spec.node_selector == {"worldland.io/rental-type": "gpu"}
        assert controller.delete_daemon_set(DEVICE_PLUGIN_NAMESPACE, DEVICE_PLUGIN_NAME) is True
        assert controller.delete_daemon_set(DEVICE_PLUGIN_NAMESPACE, DEVICE_PLUGIN_NAME) is False
    finally:
        try:
            apps.delete_namespaced_daemon_set(DEVICE_PLUGIN_NAME, DEVICE_PLUGIN_NAMESPACE)
        except ApiException as exc:
            if exc.status != 404:
                raise


def test_offboarding_with_the_service_account_token_alone(redis_url, keys, admin, controller, nodes) -> None:
    fleet = Fleet.open(connect(redis_url), keys)
    pid = f"p-rbac-{uuid.uuid4().hex[:6]}"
    fleet.register(registration(pid, gpus=2))
    put_in(fleet.store, pid, Status.AVAILABLE)
    node = fleet.store.require(pid).node_name
    token = controller.create_bootstrap_token(provider_id=pid, ttl_seconds=900)
    fleet.store.record_token(pid, token.token_id, token.expires_at.timestamp())
    make_node(admin, nodes, node, pid=pid)
    namespace = f"rbac-{uuid.uuid4().hex[:6]}"
    admin.create_namespace({"metadata": {"name": namespace}})
    try:
        admin.create_namespaced_service_account(namespace, {"metadata": {"name": "default"}})
        pod = {"name": "main", "image": "registry.invalid/pause:3.10"}
        spec = {"nodeName": node, "terminationGracePeriodSeconds": 0, "containers": [pod]}
        admin.create_namespaced_pod(namespace, {"metadata": {"name": "rental"}, "spec": spec})

        onboarding = Onboarding(
            fleet=fleet,
            streams=StreamNames(f"r{uuid.uuid4().hex[:6]}:"),
            policy=ApprovalPolicy(),
            cluster=controller,
        )
        report = onboarding.offboard(pid, reason="returned to its owner", drain_timeout_s=10)
        assert report.errors == [] and report.complete, report
        assert report.cordoned and report.node_deleted and report.evicted == [f"{namespace}/rental"]
        assert report.tokens_revoked == [token.token_id] and token_secret(admin, token.token_id) is None
        with pytest.raises(ApiException) as gone:
            admin.read_node(node)
        assert gone.value.status == 404
        assert fleet.store.require(pid).status is Status.REMOVED
    finally:
        admin.delete_namespace(namespace)


# -- the audit's account -----------------------------------------------------------------------------------


def test_the_audit_taints_and_untaints_with_its_own_token_alone(
    redis_url, keys, admin, accounts, nodes
) -> None:
    kubeconfig = accounts[realkube_rbac.AUDIT_ACCOUNT]
    fleet = Fleet.open(connect(redis_url), keys)
    pid = f"p-rbac-{uuid.uuid4().hex[:6]}"
    fleet.register(registration(pid, gpus=2))
    put_in(fleet.store, pid, Status.AVAILABLE)
    node = fleet.store.require(pid).node_name
    make_node(admin, nodes, node, gpus=2, pid=pid)
    fleet.heartbeats.record(Heartbeat(provider_id=pid, status="available"), time.time() - 60)
    env = env_for(redis_url, keys, kubeconfig)

    # its beat is older than its approval (just now): --grace 0 lets the audit judge it at once
    run = worldland(env, "audit", "--stale-after", "5", "--grace", "0", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["newly_offline"] == [pid] and pid in report["synced"] and report["errors"] == []
    assert (OFFLINE_TAINT_KEY, "NoSchedule") in taints(admin, node)
    assert admin.read_node(node).metadata.labels[LABEL_RENTAL_STATUS] == "offline"

    fleet.heartbeats.record(Heartbeat(provider_id=pid, status="available"), time.time())  # it is back
    run = worldland(env, "audit", "--stale-after", "5", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    assert pid in json.loads(run.stdout)["synced"]
    assert (OFFLINE_TAINT_KEY, "NoSchedule") not in taints(admin, node)
    assert admin.read_node(node).metadata.labels[LABEL_RENTAL_STATUS] == "available"
    assert fleet.store.require(pid).status is Status.AVAILABLE


# -- what the accounts may not do ------------------------------------------------------------------------

DRY = {"dry_run": "All"}  # a call that RBAC allowed by mistake would still change nothing


def another_daemon_set(core: k8s.CoreV1Api, apps: k8s.AppsV1Api) -> Any:
    metadata = {"name": "rbac-intruder", "namespace": "kube-system"}
    body = {**device_plugin_manifest(), "metadata": metadata}
    return apps.patch_namespaced_daemon_set(
        "rbac-intruder", "kube-system", body, field_manager="worldland", force=True,
        _content_type="application/apply-patch+yaml", **DRY,
    )  # fmt: skip


# (account, what, the call, made with the official client's CoreV1Api and AppsV1Api)
OUTSIDE: list[tuple[str, str, Callable[[k8s.CoreV1Api, k8s.AppsV1Api], Any]]] = [
    ("worldland", "list Secrets in default", lambda core, _: core.list_namespaced_secret("default")),
    ("worldland", "delete a namespace", lambda core, _: core.delete_namespace("worldland", **DRY)),
    (
        "worldland",
        "read kube-system's kubeadm-config",
        lambda core, _: core.read_namespaced_config_map("kubeadm-config", "kube-system"),
    ),
    ("worldland", "create a Node", lambda core, _: core.create_node({"metadata": {"name": "x"}}, **DRY)),
    ("worldland", "read a pod", lambda core, _: core.read_namespaced_pod("kube-apiserver", "kube-system")),
    ("worldland", "apply another DaemonSet in kube-system", another_daemon_set),
    (
        "worldland",
        "create a Secret in worldland",
        lambda core, _: core.create_namespaced_secret("worldland", {"metadata": {"name": "x"}}, **DRY),
    ),
    (
        "worldland-audit",
        "list Secrets in kube-system",
        lambda core, _: core.list_namespaced_secret("kube-system"),
    ),
    ("worldland-audit", "delete a Node", lambda core, _: core.delete_node("rbac-intruder", **DRY)),
    ("worldland-audit", "list pods", lambda core, _: core.list_pod_for_all_namespaces()),
]


@pytest.mark.parametrize(("account", "what", "call"), OUTSIDE, ids=[f"{a}: {w}" for a, w, _ in OUTSIDE])
def test_calls_outside_the_rules_are_refused_with_403(admin, accounts, account, what, call) -> None:
    api = k8s_config.new_client_from_config(config_file=str(accounts[account]), persist_config=False)
    with api, pytest.raises(ApiException) as refused:
        call(k8s.CoreV1Api(api), k8s.AppsV1Api(api))
    assert refused.value.status == 403, what
    assert f"system:serviceaccount:worldland:{account}" in refused.value.body


def test_the_audit_account_cannot_issue_a_join_token(accounts) -> None:
    audit = KubeClient.from_kubeconfig(accounts[realkube_rbac.AUDIT_ACCOUNT])
    with audit, pytest.raises(KubeError) as refused:
        audit.create_bootstrap_token(provider_id="p-intruder", ttl_seconds=900)
    assert refused.value.status == 403


# -- the in-cluster objects ------------------------------------------------------------------------------


def test_the_pods_in_cluster_account_works_and_follows_a_rotated_token(tmp_path, real_kube, accounts) -> None:
    """The Deployment says ``WORLDLAND_KUBECONFIG=in-cluster``: the pod's mounted token and CA, the API at
    ``KUBERNETES_SERVICE_HOST``/``_PORT``. Here the files hold a TokenRequest token of the listener's
    account and the cluster CA; the token file swapped for another (as the kubelet rotates it) is read
    again before the next request."""
    deployment = next(o for o in realkube_rbac.manifests() if o["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "WORLDLAND_KUBECONFIG", "value": IN_CLUSTER} in container["env"]
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "ca.crt").write_bytes(real_kube.ca_pem)

    def mount_token(text: str) -> None:
        fresh = account / "token.new"
        fresh.write_text(text)
        fresh.replace(account / "token")

    mount_token(realkube_rbac.service_account_token(real_kube, realkube_rbac.CONTROLLER_ACCOUNT))
    server = urlsplit(real_kube.server_url)
    environ = {"KUBERNETES_SERVICE_HOST": str(server.hostname), "KUBERNETES_SERVICE_PORT": str(server.port)}
    with KubeClient.open(IN_CLUSTER, account_dir=account, environ=environ) as client:
        assert client.ca_cert_hash() == real_kube.ca_cert_hash  # the mounted CA is the one kubeadm pins
        token = client.create_bootstrap_token(provider_id="p-pod", ttl_seconds=900)
        assert client.bootstrap_token_secret(token.token_id) == token.secret
        mount_token("expired-or-revoked")
        with pytest.raises(KubeError) as refused:
            client.bootstrap_token_secret(token.token_id)
        assert refused.value.status == 401
        mount_token(realkube_rbac.service_account_token(real_kube, realkube_rbac.CONTROLLER_ACCOUNT))
        assert client.delete_bootstrap_token(token.token_id)


def test_the_api_server_accepts_the_deployment_cronjob_and_configmap(real_kube, admin, accounts) -> None:
    others = [o for o in realkube_rbac.manifests() if o["kind"] not in realkube_rbac.RBAC_KINDS]
    assert {o["kind"] for o in others} == {"ConfigMap", "Deployment", "CronJob"}
    # a dry run with strict field validation: a misspelt or misplaced field is refused
    answered = realkube_rbac.apply_manifests(admin.api_client, others, dry_run=True)
    by_kind = {a["kind"]: a for a in answered}
    assert by_kind["Deployment"]["spec"]["template"]["spec"]["serviceAccountName"] == "worldland"
    assert by_kind["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"] == (
        "worldland-audit"
    )
    with pytest.raises(ApiException) as absent:  # a dry run: nothing stored
        k8s.AppsV1Api(admin.api_client).read_namespaced_deployment("worldland-listener", "worldland")
    assert absent.value.status == 404
