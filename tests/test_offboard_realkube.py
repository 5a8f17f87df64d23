"""Offboarding against the real kube-apiserver v1.32.13 of ../shared/kube (``real_kube``): ``KubeClient``'s
cordon, drain (Eviction API: DaemonSet and mirror pods skipped, a disruption budget respected, bounded) and
node deletion, then the ``worldland.provider.provider_offboard`` action in a real ``ansible-playbook`` run
with real Redis. A Node created through the API and pods bound to it stand for a joined host: no kubelet
runs, so a pod with a termination grace period stays terminating (as on a host whose kubelet is gone)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from testkit.commands import run_local_play, worldland_env
from testkit.factories import registration
from testkit.fleet import put_in
from testkit.realkube import RealControlPlane
from testkit.realkube_fixtures import record_kube_target
from worldland.domain.lifecycle import Status
from worldland.domain.names import LABEL_PROVIDER_ID, label_value
from worldland.kube import KubeClient
from worldland.state.connection import connect
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys


@pytest.fixture
def core(real_kube: RealControlPlane, request: pytest.FixtureRequest) -> Iterator[k8s.CoreV1Api]:
    record_kube_target(request, "real-cluster", real_kube.description)
    with real_kube.api_client() as api:
        yield k8s.CoreV1Api(api)


@pytest.fixture
def kube(real_kube: RealControlPlane) -> Iterator[KubeClient]:
    with KubeClient.from_kubeconfig(real_kube.kubeconfig) as client:
        yield client


@pytest.fixture
def namespace(core: k8s.CoreV1Api) -> Iterator[str]:
    """A namespace of the test's own, with the service account pods need (no controller makes it here)."""
    name = f"offboard-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_service_account(name, {"metadata": {"name": "default"}})
    yield name
    for pod in core.list_namespaced_pod(name).items:
        delete_pod_now(core, name, pod.metadata.name)
    core.delete_namespace(name)


def delete_pod_now(core: k8s.CoreV1Api, namespace: str, name: str) -> None:
    try:
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    except ApiException as exc:
        if exc.status != 404:
            raise


def make_node(core: k8s.CoreV1Api, name: str, labels: dict[str, str] | None = None) -> None:
    core.create_node({"metadata": {"name": name, "labels": labels or {}}})


def delete_node_if_there(core: k8s.CoreV1Api, name: str) -> None:
    try:
        core.delete_node(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


def make_pod(
    core: k8s.CoreV1Api,
    namespace: str,
    name: str,
    node: str,
    *,
    grace: int = 0,
    labels: dict[str, str] | None = None,
    owner: str | None = None,
    mirror: bool = False,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": labels or {}}
    if owner:  # no garbage collector runs here: the owner need not exist
        metadata["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": owner,
                "name": f"{name}-owner",
                "uid": str(uuid.uuid4()),
                "controller": True,
            }
        ]
    if mirror:
        metadata["annotations"] = {"kubernetes.io/config.mirror": uuid.uuid4().hex}
    body = {
        "metadata": metadata,
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": grace,
            "containers": [{"name": "main", "image": "registry.invalid/pause:3.10"}],
        },
    }
    return core.create_namespaced_pod(namespace, body).to_dict()


def pod_names(core: k8s.CoreV1Api, node: str) -> set[str]:
    pods = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
    return {f"{p.metadata.namespace}/{p.metadata.name}" for p in pods}


def test_cordon_drain_and_delete_a_node(core, kube, namespace) -> None:
    node = f"offboard-node-{uuid.uuid4().hex[:6]}"
    make_node(core, node)
    try:
        ns = namespace
        make_pod(core, ns, "job-fast", node)  # grace 0: gone at once
        make_pod(core, ns, "job-slow", node, grace=300)  # no kubelet: stays terminating
        make_pod(core, ns, "job-guarded", node, labels={"app": "guarded"})
        make_pod(core, ns, "agent", node, owner="DaemonSet")
        make_pod(core, ns, "static", node, mirror=True)
        make_pod(core, ns, "elsewhere", f"{node}-other")
        # a Pending pod is evicted whatever its budget says: this one runs, as its kubelet would report
        running = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        core.patch_namespaced_pod_status("job-guarded", ns, {"status": running})
        policy = k8s.PolicyV1Api(core.api_client)
        guard = {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}
        policy.create_namespaced_pod_disruption_budget(ns, {"metadata": {"name": "guard"}, "spec": guard})

        assert {str(p) for p in kube.list_pods_on_node(node)} == {
            f"{ns}/job-fast", f"{ns}/job-slow", f"{ns}/job-guarded", f"{ns}/agent", f"{ns}/static"
        }  # fmt: skip
        assert kube.cordon(node) is True and kube.cordon(node) is False
        assert core.read_node(node).spec.unschedulable is True and kube.node_state(node).unschedulable

        started = time.monotonic()
        result = kube.evict_pods(node, timeout_s=3, poll_s=0.2)
        took = time.monotonic() - started
        assert 3 <= took < 15, took  # bounded: it gave up on what stays
        assert sorted(result.evicted) == [f"{ns}/job-fast", f"{ns}/job-slow"]
        assert sorted(result.skipped) == [f"{ns}/agent", f"{ns}/static"]
        assert set(result.left) == {f"{ns}/job-guarded", f"{ns}/job-slow"} and not result.drained
        assert result.left[f"{ns}/job-slow"] == "evicted, still terminating"
        assert "disruption budget" in result.left[f"{ns}/job-guarded"]
        assert pod_names(core, node) == {f"{ns}/job-slow", f"{ns}/job-guarded", f"{ns}/agent", f"{ns}/static"}
        assert core.read_namespaced_pod("job-slow", ns).metadata.deletion_timestamp is not None

        delete_pod_now(core, ns, "job-slow")
        policy.delete_namespaced_pod_disruption_budget("guard", ns)
        result = kube.evict_pods(node, timeout_s=10, poll_s=0.2)
        assert result.drained and result.evicted == [f"{ns}/job-guarded"] and result.left == {}
        assert pod_names(core, node) == {f"{ns}/agent", f"{ns}/static"}
        assert kube.evict_pod(ns, "job-guarded") is False  # gone

        assert kube.delete_node(node) is True and kube.delete_node(node) is False
        assert not kube.node_state(node).exists
    finally:
        delete_node_if_there(core, node)


def test_uncordon_and_a_missing_node(core, kube) -> None:
    from worldland.kube import KubeNotFound

    node = f"offboard-node-{uuid.uuid4().hex[:6]}"
    make_node(core, node)
    try:
        assert kube.cordon(node) and kube.cordon(node, unschedulable=False)
        assert (
            core.read_node(node).spec.unschedulable is None
        )  # the field is gone, as kubectl uncordon leaves it
        assert kube.cordon(node, unschedulable=False) is False
    finally:
        delete_node_if_there(core, node)
    with pytest.raises(KubeNotFound):
        kube.cordon(node)
    assert kube.evict_pods(node, timeout_s=0).drained  # no node, no pods: nothing to do


# -- the action ------------------------------------------------------------------------------------------

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Offboard
      worldland.provider.provider_offboard:
        provider_id: "{{ pid }}"
        reason: "{{ reason }}"
        drain_timeout: 5
        force: "{{ force | bool }}"
      register: offboarded
      ignore_errors: true
    - ansible.builtin.copy:
        content: "{{ offboarded | to_json }}"
        dest: "{{ out }}"
        mode: "0600"
"""


def play(tmp_path: Path, redis_url: str, keys: Keys, kubeconfig: Path, pid: str, force: bool = False):
    env = worldland_env(redis_url=redis_url, key_prefix=keys.prefix, kubeconfig=kubeconfig)
    extra = {"pid": pid, "reason": "returned to its owner", "force": force}
    run, result = run_local_play(tmp_path, PLAYBOOK, extra, env)
    assert run.returncode == 0, run.stdout + run.stderr
    return result


def test_the_action_offboards_a_provider_and_a_second_run_changes_nothing(
    tmp_path, redis_url, keys, real_kube, core, kube, namespace
) -> None:
    fleet = Fleet.open(connect(redis_url), keys)
    pid = f"p-offboard-{uuid.uuid4().hex[:6]}"
    fleet.register(registration(pid, gpus=2))
    put_in(fleet.store, pid, Status.AVAILABLE)
    node = fleet.store.require(pid).node_name
    token = kube.create_bootstrap_token(provider_id=pid, ttl_seconds=900)
    fleet.store.record_token(pid, token.token_id, token.expires_at.timestamp())
    make_node(core, node, {LABEL_PROVIDER_ID: label_value(pid)})
    try:
        make_pod(core, namespace, "rental", node)
        fleet.ledger.allocate("job-held", pid, "RTX-4090", 1, 2, 1024)

        refused = play(tmp_path, redis_url, keys, real_kube.kubeconfig, pid)
        assert refused["failed"] is True and "running job(s) hold its resources" in refused["msg"]
        assert fleet.store.require(pid).status is Status.AVAILABLE and core.read_node(node)

        result = play(tmp_path, redis_url, keys, real_kube.kubeconfig, pid, force=True)
        assert result.get("failed") is not True, result
        assert result["changed"] is True and result["complete"] is True
        assert (result["previous_status"], result["status"]) == ("available", "removed")
        assert result["cordoned"] and result["node_deleted"] and result["evicted"] == [f"{namespace}/rental"]
        assert result["tokens_revoked"] == [token.token_id]
        assert result["held_by_jobs"] and any("still held (forced)" in w for w in result.get("warnings", []))
        with pytest.raises(ApiException) as gone:
            core.read_node(node)
        assert gone.value.status == 404
        with pytest.raises(ApiException) as gone:
            core.read_namespaced_secret(f"bootstrap-token-{token.token_id}", "kube-system")
        assert gone.value.status == 404
        record = fleet.store.require(pid)
        assert (record.status, record.status_reason, record.token_id) == (
            Status.REMOVED,
            "returned to its owner",
            "",
        )
        capacity = fleet.ledger.get(pid)
        assert (
            capacity.gpu("RTX-4090").total == 1 == capacity.gpu("RTX-4090").in_use
        )  # the job's, nothing more

        fleet.ledger.release("job-held")
        again = play(tmp_path, redis_url, keys, real_kube.kubeconfig, pid)
        assert again["changed"] is True and again["capacity_released"] and fleet.ledger.get(pid).empty
        assert not (again["cordoned"] or again["node_deleted"] or again["tokens_revoked"])
        last = play(tmp_path, redis_url, keys, real_kube.kubeconfig, pid)
        assert last["changed"] is False and last["complete"] is True
    finally:
        delete_node_if_there(core, node)
