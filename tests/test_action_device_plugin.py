"""NVIDIA's device plugin DaemonSet: the manifest (``worldland.domain.device_plugin``), applying and deleting
it (``KubeClient.apply_daemon_set`` / ``delete_daemon_set``), and the ``worldland.provider.device_plugin``
action in real ``ansible-playbook`` runs.

The Kubernetes tests run against the real kube-apiserver v1.32.13 from ``../shared/kube`` (``real_kube``)
only, and are skipped with its reason where it is absent: the project's Kubernetes API test server
(``testkit/kube_server``) serves no ``apps/v1``. That control plane runs no DaemonSet controller, so no
plugin pods are started: what is checked is the object the API server keeps.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from testkit.commands import run_local_play, worldland_env
from testkit.realkube import RealControlPlane
from testkit.realkube_fixtures import record_kube_target
from worldland.domain.device_plugin import (
    DEVICE_PLUGIN_NAME,
    DEVICE_PLUGIN_NAMESPACE,
    DEVICE_PLUGIN_VERSION,
    device_plugin_image,
    device_plugin_manifest,
)
from worldland.domain.names import (
    GPU_RESOURCE,
    OFFLINE_TAINT_EFFECT,
    OFFLINE_TAINT_KEY,
    desired_node,
    node_labels,
)
from worldland.kube import FIELD_MANAGER, KubeClient

PINNED_IMAGE = "nvcr.io/nvidia/k8s-device-plugin:v0.17.0"


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return spec


def tolerates(tolerations: list[dict[str, Any]], taint: dict[str, str]) -> bool:
    """Kubernetes' rule (``Toleration.ToleratesTaint``): same key (or an empty key with Exists), Exists or
    an equal value, and the same effect or none."""
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint["effect"]:
            continue
        if t.get("key") and t["key"] != taint["key"]:
            continue
        if not t.get("key") and t.get("operator") != "Exists":
            continue
        operator = t.get("operator") or "Equal"
        if operator == "Exists" or (operator == "Equal" and t.get("value", "") == taint.get("value", "")):
            return True
    return False


# -- the manifest (pure) --------------------------------------------------------------------------------


def test_the_manifest_is_nvidias_daemon_set_at_the_pinned_version():
    m = device_plugin_manifest()
    assert DEVICE_PLUGIN_VERSION == "v0.17.0"
    assert (m["apiVersion"], m["kind"]) == ("apps/v1", "DaemonSet")
    assert (m["metadata"]["namespace"], m["metadata"]["name"]) == (
        "kube-system",
        "nvidia-device-plugin-daemonset",
    )
    spec = pod_spec(m)
    [container] = spec["containers"]
    assert container["image"] == PINNED_IMAGE == device_plugin_image()
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"name": "FAIL_ON_INIT_ERROR", "value": "false"} in container["env"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    [mount] = container["volumeMounts"]
    [volume] = spec["volumes"]
    assert mount == {"name": volume["name"], "mountPath": "/var/lib/kubelet/device-plugins"}
    assert volume["hostPath"] == {"path": "/var/lib/kubelet/device-plugins"}
    # The selector selects the pods' own labels (the API server refuses a DaemonSet where it does not).
    selector = m["spec"]["selector"]["matchLabels"]
    assert selector == {"name": "nvidia-device-plugin-ds"}
    assert selector.items() <= m["spec"]["template"]["metadata"]["labels"].items()
    assert m["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "worldland"
    assert m["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "worldland"
    assert m["metadata"]["labels"]["app.kubernetes.io/version"] == "v0.17.0"


def test_it_runs_only_on_the_nodes_the_domain_labels_as_gpu_providers():
    selector = pod_spec(device_plugin_manifest())["nodeSelector"]
    assert selector == {"worldland.io/rental-type": "gpu"}
    # The labels a provider's node gets, by the domain's one rule, satisfy it.
    labels = node_labels("p-1", ["NVIDIA GeForce RTX 4090"], "joined")
    assert selector.items() <= labels.items()


def test_it_tolerates_the_gpu_taint_and_the_offline_taint_the_domain_puts_on_nodes():
    tolerations = pod_spec(device_plugin_manifest())["tolerations"]
    assert tolerates(tolerations, {"key": GPU_RESOURCE, "effect": "NoSchedule"})
    # The taint an Offline provider's node carries (desired_node says so; the key is the domain's).
    assert desired_node("p-1", ["RTX 4090"], "offline", last_beat=None, active_jobs=None).offline_taint
    assert tolerates(tolerations, {"key": OFFLINE_TAINT_KEY, "value": "", "effect": OFFLINE_TAINT_EFFECT})
    assert tolerates(tolerations, {"key": "worldland.io/offline", "effect": "NoSchedule"})
    # Not a blanket toleration: an unrelated taint still keeps it off a node.
    assert not tolerates(tolerations, {"key": "example.com/maintenance", "effect": "NoSchedule"})
    assert not tolerates(tolerations, {"key": OFFLINE_TAINT_KEY, "effect": "NoExecute"})


def test_version_and_image_are_parameters():
    newer = device_plugin_manifest("v0.17.1")
    assert pod_spec(newer)["containers"][0]["image"] == "nvcr.io/nvidia/k8s-device-plugin:v0.17.1"
    assert newer["metadata"]["labels"]["app.kubernetes.io/version"] == "v0.17.1"
    mirrored = device_plugin_manifest(image="mirror.example/nvidia/k8s-device-plugin:v0.17.0")
    assert pod_spec(mirrored)["containers"][0]["image"] == "mirror.example/nvidia/k8s-device-plugin:v0.17.0"
    assert mirrored["metadata"]["labels"]["app.kubernetes.io/version"] == "v0.17.0"
    # Only the image changes with the version: the rest is the same DaemonSet.
    pod_spec(newer)["containers"][0]["image"] = PINNED_IMAGE
    newer["metadata"]["labels"]["app.kubernetes.io/version"] = "v0.17.0"
    assert newer == device_plugin_manifest()


def test_a_new_dict_each_call():
    first = device_plugin_manifest()
    pod_spec(first)["tolerations"].clear()
    first["spec"]["selector"]["matchLabels"]["name"] = "changed"
    second = device_plugin_manifest()
    assert len(pod_spec(second)["tolerations"]) == 2
    assert second["spec"]["selector"]["matchLabels"] == {"name": "nvidia-device-plugin-ds"}


@pytest.mark.parametrize("version", ["", "0.17.0 ", "v0.17.0;rm", "-v1", "v" * 64, "v0.17.0\n"])
def test_a_version_that_is_no_tag_is_refused(version):
    with pytest.raises(ValueError, match="device plugin version"):
        device_plugin_manifest(version)


@pytest.mark.parametrize("image", ["", "nvcr.io/x y:v1", "Upper/case:v1", "nvcr.io/x:v1\n"])
def test_an_image_that_is_no_reference_is_refused(image):
    with pytest.raises(ValueError, match="image reference"):
        device_plugin_manifest(image=image)


def test_the_documented_default_version_is_the_pinned_one():
    from plugins.modules import device_plugin as docs

    options = yaml.safe_load(docs.DOCUMENTATION)["options"]
    assert options["version"]["default"] == DEVICE_PLUGIN_VERSION
    assert options["state"] == {**options["state"], "choices": ["present", "absent"], "default": "present"}


# -- against the real kube-apiserver --------------------------------------------------------------------


@pytest.fixture
def cluster(request: pytest.FixtureRequest, real_kube: RealControlPlane) -> Iterator[KubeClient]:
    record_kube_target(request, "real-cluster", real_kube.description)
    with KubeClient.from_kubeconfig(real_kube.kubeconfig) as client:
        yield client


@pytest.fixture
def apps(real_kube: RealControlPlane) -> Iterator[k8s.AppsV1Api]:
    """The official client, to read back what the API server keeps (independently of KubeClient)."""
    api_client = real_kube.api_client()
    try:
        yield k8s.AppsV1Api(api_client)
    finally:
        api_client.close()


def delete_if_there(apps: k8s.AppsV1Api, namespace: str, name: str) -> None:
    try:
        apps.delete_namespaced_daemon_set(name, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture
def unique(apps: k8s.AppsV1Api) -> Iterator[str]:
    """A DaemonSet name of its own (in kube-system), deleted afterwards."""
    name = f"wl-test-dp-{uuid.uuid4().hex[:8]}"
    yield name
    delete_if_there(apps, DEVICE_PLUGIN_NAMESPACE, name)


def named(name: str, version: str = DEVICE_PLUGIN_VERSION) -> dict[str, Any]:
    manifest = device_plugin_manifest(version)
    manifest["metadata"]["name"] = name
    return manifest


def test_apply_creates_then_reports_no_change_then_updates_the_image(cluster, apps, unique):
    assert cluster.apply_daemon_set(named(unique)) is True
    created = apps.read_namespaced_daemon_set(unique, DEVICE_PLUGIN_NAMESPACE)
    assert created.spec.template.spec.node_selector == {"worldland.io/rental-type": "gpu"}
    assert created.spec.template.spec.containers[0].image == PINNED_IMAGE
    assert {(t.key, t.operator, t.effect) for t in created.spec.template.spec.tolerations} == {
        ("nvidia.com/gpu", "Exists", "NoSchedule"),
        ("worldland.io/offline", "Exists", "NoSchedule"),
    }
    assert created.spec.template.spec.priority_class_name == "system-node-critical"
    assert created.metadata.labels["app.kubernetes.io/managed-by"] == "worldland"
    assert [(f.manager, f.operation) for f in created.metadata.managed_fields] == [(FIELD_MANAGER, "Apply")]

    assert cluster.apply_daemon_set(named(unique)) is False
    again = apps.read_namespaced_daemon_set(unique, DEVICE_PLUGIN_NAMESPACE)
    assert again.metadata.resource_version == created.metadata.resource_version  # nothing was written

    writes = sum(cluster.writes.values())
    assert cluster.apply_daemon_set(named(unique, "v0.17.1"), dry_run=True) is True
    assert sum(cluster.writes.values()) == writes  # a dry run is no write
    still = apps.read_namespaced_daemon_set(unique, DEVICE_PLUGIN_NAMESPACE)
    assert still.spec.template.spec.containers[0].image == PINNED_IMAGE
    assert still.metadata.resource_version == created.metadata.resource_version
    assert cluster.apply_daemon_set(named(unique), dry_run=True) is False

    assert cluster.apply_daemon_set(named(unique, "v0.17.1")) is True
    updated = apps.read_namespaced_daemon_set(unique, DEVICE_PLUGIN_NAMESPACE)
    assert updated.spec.template.spec.containers[0].image == "nvcr.io/nvidia/k8s-device-plugin:v0.17.1"
    assert updated.metadata.labels["app.kubernetes.io/version"] == "v0.17.1"
    assert updated.metadata.generation == created.metadata.generation + 1
    assert cluster.apply_daemon_set(named(unique, "v0.17.1")) is False


def test_apply_takes_back_a_field_another_writer_changed(cluster, apps, unique):
    assert cluster.apply_daemon_set(named(unique)) is True
    apps.patch_namespaced_daemon_set(
        unique,
        DEVICE_PLUGIN_NAMESPACE,
        {
            "spec": {
                "template": {"spec": {"containers": [{"name": "nvidia-device-plugin-ctr", "image": "x:v9"}]}}
            }
        },
        field_manager="someone-else",
    )
    assert cluster.apply_daemon_set(named(unique)) is True
    back = apps.read_namespaced_daemon_set(unique, DEVICE_PLUGIN_NAMESPACE)
    assert back.spec.template.spec.containers[0].image == PINNED_IMAGE


def test_a_status_write_in_between_is_not_a_change(cluster, apps, unique, monkeypatch):
    assert cluster.apply_daemon_set(named(unique)) is True
    # The DaemonSet controller writes status between apply's read and its PATCH: the read is stale.
    stale = cluster.read_daemon_set(DEVICE_PLUGIN_NAMESPACE, unique)
    status = {
        "currentNumberScheduled": 3,
        "desiredNumberScheduled": 3,
        "numberMisscheduled": 0,
        "numberReady": 2,
    }
    apps.patch_namespaced_daemon_set_status(unique, DEVICE_PLUGIN_NAMESPACE, {"status": status})
    moved = apps.read_namespaced_daemon_set(unique, DEVICE_PLUGIN_NAMESPACE)
    assert moved.metadata.resource_version != stale["metadata"]["resourceVersion"]  # the object did move
    monkeypatch.setattr(cluster, "read_daemon_set", lambda namespace, name: stale)
    assert cluster.apply_daemon_set(named(unique)) is False
    # ... while a real change made in between is still one.
    assert cluster.apply_daemon_set(named(unique, "v0.17.1")) is True


def test_delete_removes_it_and_says_whether_there_was_one(cluster, apps, unique):
    assert cluster.apply_daemon_set(named(unique)) is True
    assert cluster.delete_daemon_set(DEVICE_PLUGIN_NAMESPACE, unique, dry_run=True) is True
    assert cluster.read_daemon_set(DEVICE_PLUGIN_NAMESPACE, unique) is not None
    assert cluster.delete_daemon_set(DEVICE_PLUGIN_NAMESPACE, unique) is True
    assert cluster.read_daemon_set(DEVICE_PLUGIN_NAMESPACE, unique) is None
    with pytest.raises(ApiException) as gone:
        apps.read_namespaced_daemon_set(unique, DEVICE_PLUGIN_NAMESPACE)
    assert gone.value.status == 404
    assert cluster.delete_daemon_set(DEVICE_PLUGIN_NAMESPACE, unique) is False
    assert cluster.delete_daemon_set(DEVICE_PLUGIN_NAMESPACE, unique, dry_run=True) is False


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.update(kind="Deployment"),
        lambda m: m.update(apiVersion="extensions/v1beta1"),
        lambda m: m["metadata"].pop("namespace"),
        lambda m: m["metadata"].update(name=""),
    ],
)
def test_a_manifest_of_the_wrong_shape_sends_nothing(cluster, change):
    manifest = device_plugin_manifest()
    change(manifest)
    with pytest.raises(ValueError):
        cluster.apply_daemon_set(manifest)
    assert sum(cluster.writes.values()) + sum(cluster.reads.values()) == 0


# -- the action, in real ansible-playbook runs -----------------------------------------------------------

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Apply the NVIDIA device plugin DaemonSet
      worldland.provider.device_plugin: "{{ dp_args }}"
      register: applied
    - ansible.builtin.copy:
        content: "{{ applied | to_json }}"
        dest: "{{ out }}"
        mode: "0600"
      changed_when: false
      check_mode: false
"""
RECAP = re.compile(r"^localhost\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=0\s+failed=(\d+)", re.M)


@pytest.fixture
def fixed_name(
    request: pytest.FixtureRequest, real_kube: RealControlPlane, apps
) -> Iterator[RealControlPlane]:
    """The action applies the one fixed name: none before the test, none left after it."""
    record_kube_target(request, "real-cluster", real_kube.description)
    delete_if_there(apps, DEVICE_PLUGIN_NAMESPACE, DEVICE_PLUGIN_NAME)
    yield real_kube
    delete_if_there(apps, DEVICE_PLUGIN_NAMESPACE, DEVICE_PLUGIN_NAME)


def play(tmp_path: Path, kubeconfig: Path, *, check: bool = False, **dp_args: Any):
    """One ``ansible-playbook`` run; returns the process, the task's result and the recap's counts."""
    env = worldland_env(kubeconfig=kubeconfig)
    run, result = run_local_play(
        tmp_path, PLAYBOOK, {"dp_args": dp_args}, env, *(["--check"] if check else [])
    )
    recap = RECAP.search(run.stdout)
    counts = {"ok": int(recap[1]), "changed": int(recap[2]), "failed": int(recap[3])} if recap else None
    return run, result, counts


def test_the_action_applies_once_then_changes_nothing(tmp_path, fixed_name, apps):
    run, result, counts = play(tmp_path, fixed_name.kubeconfig, state="present")
    assert run.returncode == 0, run.stdout + run.stderr
    assert counts == {"ok": 2, "changed": 1, "failed": 0}
    assert result["changed"] is True
    assert (result["namespace"], result["name"]) == ("kube-system", "nvidia-device-plugin-daemonset")
    assert (result["image"], result["version"], result["previous_image"]) == (PINNED_IMAGE, "v0.17.0", None)
    ds = apps.read_namespaced_daemon_set(DEVICE_PLUGIN_NAME, DEVICE_PLUGIN_NAMESPACE)
    assert ds.spec.template.spec.containers[0].image == PINNED_IMAGE
    assert ds.spec.template.spec.node_selector == {"worldland.io/rental-type": "gpu"}

    run, result, counts = play(tmp_path, fixed_name.kubeconfig, state="present")
    assert run.returncode == 0, run.stdout + run.stderr
    assert counts == {"ok": 2, "changed": 0, "failed": 0}
    assert result["changed"] is False and result["previous_image"] == PINNED_IMAGE
    again = apps.read_namespaced_daemon_set(DEVICE_PLUGIN_NAME, DEVICE_PLUGIN_NAMESPACE)
    assert again.metadata.resource_version == ds.metadata.resource_version


def test_check_mode_says_what_would_change_and_writes_nothing(tmp_path, fixed_name, apps):
    run, result, counts = play(tmp_path, fixed_name.kubeconfig, check=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert result["changed"] is True and "would be created" in result["msg"]
    with pytest.raises(ApiException) as absent:
        apps.read_namespaced_daemon_set(DEVICE_PLUGIN_NAME, DEVICE_PLUGIN_NAMESPACE)
    assert absent.value.status == 404

    run, result, _ = play(tmp_path, fixed_name.kubeconfig)
    assert run.returncode == 0 and result["changed"] is True, run.stdout + run.stderr
    rv = apps.read_namespaced_daemon_set(
        DEVICE_PLUGIN_NAME, DEVICE_PLUGIN_NAMESPACE
    ).metadata.resource_version

    run, result, counts = play(tmp_path, fixed_name.kubeconfig, check=True, version="v0.17.1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert counts == {"ok": 2, "changed": 1, "failed": 0}
    assert result["changed"] is True and "would be updated" in result["msg"]
    assert result["image"] == "nvcr.io/nvidia/k8s-device-plugin:v0.17.1"
    ds = apps.read_namespaced_daemon_set(DEVICE_PLUGIN_NAME, DEVICE_PLUGIN_NAMESPACE)
    assert ds.spec.template.spec.containers[0].image == PINNED_IMAGE and ds.metadata.resource_version == rv

    run, result, counts = play(tmp_path, fixed_name.kubeconfig, check=True, state="absent")
    assert run.returncode == 0 and result["changed"] is True and "would be deleted" in result["msg"]
    assert (
        apps.read_namespaced_daemon_set(DEVICE_PLUGIN_NAME, DEVICE_PLUGIN_NAMESPACE).metadata.resource_version
        == rv
    )


def test_the_action_updates_the_version_and_deletes_on_absent(tmp_path, fixed_name, apps):
    run, result, _ = play(tmp_path, fixed_name.kubeconfig)
    assert run.returncode == 0 and result["changed"] is True, run.stdout + run.stderr
    run, result, counts = play(tmp_path, fixed_name.kubeconfig, version="v0.17.1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert counts == {"ok": 2, "changed": 1, "failed": 0}
    assert (result["previous_image"], result["image"]) == (
        PINNED_IMAGE,
        "nvcr.io/nvidia/k8s-device-plugin:v0.17.1",
    )
    ds = apps.read_namespaced_daemon_set(DEVICE_PLUGIN_NAME, DEVICE_PLUGIN_NAMESPACE)
    assert ds.spec.template.spec.containers[0].image == "nvcr.io/nvidia/k8s-device-plugin:v0.17.1"

    run, result, counts = play(tmp_path, fixed_name.kubeconfig, state="absent")
    assert run.returncode == 0, run.stdout + run.stderr
    assert counts == {"ok": 2, "changed": 1, "failed": 0} and result["changed"] is True
    with pytest.raises(ApiException) as gone:
        apps.read_namespaced_daemon_set(DEVICE_PLUGIN_NAME, DEVICE_PLUGIN_NAMESPACE)
    assert gone.value.status == 404
    run, result, counts = play(tmp_path, fixed_name.kubeconfig, state="absent")
    assert run.returncode == 0 and counts == {"ok": 2, "changed": 0, "failed": 0}, run.stdout + run.stderr


def test_the_action_fails_clearly(tmp_path, fixed_name):
    run, _, _ = play(tmp_path, fixed_name.kubeconfig, version="v0.17.0;rm -rf")
    assert run.returncode != 0 and "not a device plugin version" in run.stdout
    run, _, _ = play(tmp_path, fixed_name.kubeconfig, state="gone")
    assert run.returncode != 0 and "value of state must be one of: present, absent" in run.stdout
    run, _, _ = play(tmp_path, tmp_path / "no-such-kubeconfig")
    assert run.returncode != 0 and "device_plugin: Kubernetes: cannot load kubeconfig" in run.stdout
