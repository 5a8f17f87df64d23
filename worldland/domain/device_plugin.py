"""NVIDIA's device plugin as the cluster runs it: the DaemonSet manifest, at a pinned version. Pure: no I/O.

The plugin advertises each node's GPUs as the extended resource ``nvidia.com/gpu``; a provider becomes
Available only once its node has as many allocatable as it registered. The manifest follows the shape of
NVIDIA's published static manifest (``deployments/static/nvidia-device-plugin.yml`` of
``NVIDIA/k8s-device-plugin``): namespace ``kube-system``, name ``nvidia-device-plugin-daemonset``,
``priorityClassName: system-node-critical``, a toleration for ``nvidia.com/gpu``, the kubelet's
``/var/lib/kubelet/device-plugins`` mounted from the host, all capabilities dropped, no privilege
escalation, ``FAIL_ON_INIT_ERROR=false``. Two things are this project's:

- ``nodeSelector: worldland.io/rental-type: gpu``: it runs on the GPU provider nodes only (the label
  the domain gives them, ``names.node_labels``);
- a toleration for the offline taint (``worldland.io/offline:NoSchedule``), so that a plugin pod
  restarted or upgraded while its provider is marked Offline still comes back and keeps serving.

Labelled ``app.kubernetes.io/managed-by: worldland``. The selector (immutable once created) is NVIDIA's
``name: nvidia-device-plugin-ds``, so the DaemonSet can take over one applied from NVIDIA's manifest.
"""

from __future__ import annotations

import re
from typing import Any

from worldland.domain.names import (
    GPU_RESOURCE,
    LABEL_RENTAL_TYPE,
    OFFLINE_TAINT_EFFECT,
    OFFLINE_TAINT_KEY,
    RENTAL_TYPE_GPU,
    is_label_value,
)

__all__ = [
    "DEVICE_PLUGIN_CONTAINER",
    "DEVICE_PLUGIN_IMAGE_REPOSITORY",
    "DEVICE_PLUGIN_NAME",
    "DEVICE_PLUGIN_NAMESPACE",
    "DEVICE_PLUGIN_POD_LABEL",
    "DEVICE_PLUGIN_VERSION",
    "KUBELET_DEVICE_PLUGINS_DIR",
    "LABEL_MANAGED_BY",
    "MANAGED_BY",
    "device_plugin_image",
    "device_plugin_manifest",
]

DEVICE_PLUGIN_VERSION = "v0.17.0"
DEVICE_PLUGIN_IMAGE_REPOSITORY = "nvcr.io/nvidia/k8s-device-plugin"
DEVICE_PLUGIN_NAMESPACE = "kube-system"
DEVICE_PLUGIN_NAME = "nvidia-device-plugin-daemonset"
DEVICE_PLUGIN_CONTAINER = "nvidia-device-plugin-ctr"
DEVICE_PLUGIN_POD_LABEL = {"name": "nvidia-device-plugin-ds"}  # NVIDIA's selector: immutable once created
KUBELET_DEVICE_PLUGINS_DIR = "/var/lib/kubelet/device-plugins"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "worldland"

# An image tag (the OCI distribution grammar); it is also a label value here, so at most 63 characters.
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
# An image reference: no whitespace or control characters, a repository part before any tag or digest.
_IMAGE_RE = re.compile(r"^[a-z0-9][A-Za-z0-9._/:@+-]{0,511}\Z")


def device_plugin_image(version: str = DEVICE_PLUGIN_VERSION) -> str:
    """NVIDIA's image for ``version``: ``nvcr.io/nvidia/k8s-device-plugin:<version>``."""
    return f"{DEVICE_PLUGIN_IMAGE_REPOSITORY}:{_checked_version(version)}"


def _checked_version(version: str) -> str:
    if not (isinstance(version, str) and _TAG_RE.match(version) and is_label_value(version)):
        raise ValueError(f"not a device plugin version (an image tag such as v0.17.0): {version!r}")
    return version


def device_plugin_manifest(version: str = DEVICE_PLUGIN_VERSION, image: str | None = None) -> dict[str, Any]:
    """The DaemonSet of NVIDIA's device plugin ``version`` (``image`` overrides NVIDIA's image of it, for
    a mirror). A new dict each call. Raises ``ValueError`` for a version or image of the wrong form."""
    version = _checked_version(version)
    if image is None:
        image = device_plugin_image(version)
    elif not (isinstance(image, str) and _IMAGE_RE.match(image)):
        raise ValueError(f"not an image reference: {image!r}")
    labels = {
        "app.kubernetes.io/name": "nvidia-device-plugin",
        "app.kubernetes.io/version": version,
        LABEL_MANAGED_BY: MANAGED_BY,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": DEVICE_PLUGIN_NAME, "namespace": DEVICE_PLUGIN_NAMESPACE, "labels": labels},
        "spec": {
            "selector": {"matchLabels": dict(DEVICE_PLUGIN_POD_LABEL)},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": {**DEVICE_PLUGIN_POD_LABEL, LABEL_MANAGED_BY: MANAGED_BY}},
                "spec": {
                    "nodeSelector": {LABEL_RENTAL_TYPE: RENTAL_TYPE_GPU},
                    "tolerations": [
                        {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
                        {"key": OFFLINE_TAINT_KEY, "operator": "Exists", "effect": OFFLINE_TAINT_EFFECT},
                    ],
                    # A critical add-on: see Kubernetes' "Guaranteed Scheduling For Critical Add-On Pods".
                    "priorityClassName": "system-node-critical",
                    "containers": [
                        {
                            "name": DEVICE_PLUGIN_CONTAINER,
                            "image": image,
                            "env": [{"name": "FAIL_ON_INIT_ERROR", "value": "false"}],
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "device-plugin", "mountPath": KUBELET_DEVICE_PLUGINS_DIR}
                            ],
                        }
                    ],
                    "volumes": [{"name": "device-plugin", "hostPath": {"path": KUBELET_DEVICE_PLUGINS_DIR}}],
                },
            },
        },
    }
