"""What ``kubeadm init`` leaves in the cluster for ``kubeadm join``, created through the official client.

- ``kube-public/cluster-info`` (the CA and the API endpoint) readable by ``system:anonymous``: discovery
  reads it before it has any credentials, and checks the bootstrap signer's JWS and the CA hash on it;
- the bootstrap-token bindings: ``system:node-bootstrapper`` (CSR create) and auto-approval of node
  client CSRs for ``system:bootstrappers:kubeadm:default-node-token``, of renewals for ``system:nodes``;
- ``kube-system/kubeadm-config`` (ClusterConfiguration v1beta4) and ``kube-system/kubelet-config``
  (KubeletConfiguration), with the Roles that let joining nodes read them, and ``kubeadm:get-nodes``.

The names and rules are kubeadm's (``cmd/kubeadm/app/phases/bootstraptoken``, ``uploadconfig``,
``kubelet``); ``reference/setup-kubeadm-objects.sh`` and ``reference/join/setup-join-objects.sh`` in
``../shared/kube`` are the record of the same objects working with a real ``kubeadm join``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from testkit.kube_server.certs import cluster_info_kubeconfig

NODE_TOKEN_GROUP = "system:bootstrappers:kubeadm:default-node-token"
NODES_GROUP = "system:nodes"
SERVICE_SUBNET = "10.96.0.0/16"
POD_SUBNET = "10.244.0.0/16"
CLUSTER_DNS = "10.96.0.10"

# kube-system/kubelet-config as kubeadm uploads it; what a lab host needs (cgroupfs: no systemd there,
# a cgroupRoot the lab creates and removes) is the default, ``RealControlPlane(kubelet_config=...)``
# overrides keys.
KUBELET_CONFIGURATION: dict[str, Any] = {
    "apiVersion": "kubelet.config.k8s.io/v1beta1",
    "kind": "KubeletConfiguration",
    "authentication": {
        "anonymous": {"enabled": False},
        "webhook": {"enabled": True, "cacheTTL": "0s"},
        "x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"},
    },
    "authorization": {"mode": "Webhook"},
    "cgroupDriver": "cgroupfs",
    "cgroupRoot": "/rk-lab",
    "clusterDNS": [CLUSTER_DNS],
    "clusterDomain": "cluster.local",
    "healthzBindAddress": "127.0.0.1",
    "healthzPort": 10248,
    "rotateCertificates": True,
    "staticPodPath": "/etc/kubernetes/manifests",
    "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
    "failSwapOn": False,
    "resolvConf": "/etc/resolv.conf",
}

RBAC = "rbac.authorization.k8s.io"


def _group(name: str) -> dict[str, str]:
    return {"apiGroup": RBAC, "kind": "Group", "name": name}


def _role(name: str, namespace: str, resource: str, object_name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "rules": [
            {"apiGroups": [""], "resources": [resource], "resourceNames": [object_name], "verbs": ["get"]}
        ],
    }


def _binding(
    name: str, role_kind: str, role: str, subjects: list[dict[str, str]], namespace: str | None = None
) -> dict[str, Any]:
    metadata: dict[str, str] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "metadata": metadata,
        "roleRef": {"apiGroup": RBAC, "kind": role_kind, "name": role},
        "subjects": subjects,
    }


def _yaml(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def _configmap(name: str, namespace: str, data: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace}, "data": data}


def cluster_info(server: str, ca_pem: bytes) -> dict[str, Any]:
    return _configmap("cluster-info", "kube-public", {"kubeconfig": cluster_info_kubeconfig(server, ca_pem)})


def kubeadm_objects(
    *,
    server: str,
    ca_pem: bytes,
    version: str,
    kubelet_config: Mapping[str, Any] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """(kind, body) for every object, in creation order. ``server``: ``https://host:port`` for joins."""
    endpoint = server.removeprefix("https://")
    cluster_configuration = {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "ClusterConfiguration",
        "clusterName": "realkube",
        "kubernetesVersion": version,
        "controlPlaneEndpoint": endpoint,
        "certificatesDir": "/etc/kubernetes/pki",
        "imageRepository": "registry.k8s.io",
        "networking": {
            "dnsDomain": "cluster.local",
            "serviceSubnet": SERVICE_SUBNET,
            "podSubnet": POD_SUBNET,
        },
    }
    kubelet = copy.deepcopy(KUBELET_CONFIGURATION)
    kubelet.update(copy.deepcopy(dict(kubelet_config or {})))
    anonymous = {"apiGroup": RBAC, "kind": "User", "name": "system:anonymous"}
    joining = [_group(NODE_TOKEN_GROUP), _group(NODES_GROUP)]
    return [
        # bootstrap-token phase (setup-kubeadm-objects.sh)
        ("ConfigMap", cluster_info(server, ca_pem)),
        ("Role", _role("kubeadm:bootstrap-signer-clusterinfo", "kube-public", "configmaps", "cluster-info")),
        (
            "RoleBinding",
            _binding(
                "kubeadm:bootstrap-signer-clusterinfo",
                "Role",
                "kubeadm:bootstrap-signer-clusterinfo",
                [anonymous],
                "kube-public",
            ),
        ),
        (
            "ClusterRoleBinding",
            _binding(
                "kubeadm:kubelet-bootstrap",
                "ClusterRole",
                "system:node-bootstrapper",
                [_group(NODE_TOKEN_GROUP)],
            ),
        ),
        (
            "ClusterRoleBinding",
            _binding(
                "kubeadm:node-autoapprove-bootstrap",
                "ClusterRole",
                "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
                [_group(NODE_TOKEN_GROUP)],
            ),
        ),
        # upload-config and kubelet phases (setup-join-objects.sh)
        (
            "ConfigMap",
            _configmap(
                "kubeadm-config", "kube-system", {"ClusterConfiguration": _yaml(cluster_configuration)}
            ),
        ),
        ("ConfigMap", _configmap("kubelet-config", "kube-system", {"kubelet": _yaml(kubelet)})),
        ("Role", _role("kubeadm:nodes-kubeadm-config", "kube-system", "configmaps", "kubeadm-config")),
        (
            "RoleBinding",
            _binding(
                "kubeadm:nodes-kubeadm-config", "Role", "kubeadm:nodes-kubeadm-config", joining, "kube-system"
            ),
        ),
        ("Role", _role("kubeadm:kubelet-config", "kube-system", "configmaps", "kubelet-config")),
        (
            "RoleBinding",
            _binding("kubeadm:kubelet-config", "Role", "kubeadm:kubelet-config", joining, "kube-system"),
        ),
        (
            "ClusterRole",
            {
                "metadata": {"name": "kubeadm:get-nodes"},
                "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}],
            },
        ),
        (
            "ClusterRoleBinding",
            _binding("kubeadm:get-nodes", "ClusterRole", "kubeadm:get-nodes", [_group(NODE_TOKEN_GROUP)]),
        ),
        (
            "ClusterRoleBinding",
            _binding(
                "kubeadm:node-autoapprove-certificate-rotation",
                "ClusterRole",
                "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
                [_group(NODES_GROUP)],
            ),
        ),
    ]


def apply(api_client: k8s.ApiClient, kind: str, body: dict[str, Any]) -> None:
    """Create, or replace what is there (so a second call is a no-op in effect)."""
    core = k8s.CoreV1Api(api_client)
    rbac = k8s.RbacAuthorizationV1Api(api_client)
    name = body["metadata"]["name"]
    namespace = body["metadata"].get("namespace")
    calls: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
        "ConfigMap": (core.create_namespaced_config_map, core.replace_namespaced_config_map),
        "Role": (rbac.create_namespaced_role, rbac.replace_namespaced_role),
        "RoleBinding": (rbac.create_namespaced_role_binding, rbac.replace_namespaced_role_binding),
        "ClusterRole": (rbac.create_cluster_role, rbac.replace_cluster_role),
        "ClusterRoleBinding": (rbac.create_cluster_role_binding, rbac.replace_cluster_role_binding),
    }
    create, replace = calls[kind]
    args: tuple[str, ...] = (namespace,) if namespace else ()
    try:
        create(*args, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        replace(name, *args, body)
