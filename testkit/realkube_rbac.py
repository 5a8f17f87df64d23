"""The ServiceAccounts and RBAC of ``deploy/kubernetes`` on a real control plane, and kubeconfigs that hold
one account's token alone (no client certificate): what a test uses to run the project as it runs in a
cluster with RBAC on.

    kubeconfig = service_account_kubeconfig(real_kube, tmp_path / "worldland.conf")
    audit = service_account_kubeconfig(real_kube, tmp_path / "audit.conf", account=AUDIT_ACCOUNT)

``apply_manifests`` applies objects with server-side apply (field manager ``realkube-rbac``, strict field
validation), so applying again is harmless; ``dry_run=True`` has the API server check an object without
storing it (how the test checks the Deployment, CronJob and ConfigMap, which are never run here). Tokens
come from the TokenRequest API (``serviceaccounts/token``), bound to nothing, expiring after
``expiration_s``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

from testkit import realkube_pki
from testkit.kube_server.certs import b64
from testkit.realkube import REPO, RealControlPlane

DEPLOY_DIR = REPO / "deploy" / "kubernetes"
NAMESPACE = "worldland"
CONTROLLER_ACCOUNT = "worldland"  # the listener, approve/reject, onboard.yml and offboard.yml
AUDIT_ACCOUNT = "worldland-audit"  # worldland audit: nodes only
RBAC_KINDS = frozenset(
    {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
)
FIELD_MANAGER = "realkube-rbac"
APPLY_PATCH = "application/apply-patch+yaml"

# kind -> (API class, patch method, namespaced) for what deploy/kubernetes holds
_PATCH: dict[str, tuple[type, str, bool]] = {
    "Namespace": (k8s.CoreV1Api, "patch_namespace", False),
    "ServiceAccount": (k8s.CoreV1Api, "patch_namespaced_service_account", True),
    "ConfigMap": (k8s.CoreV1Api, "patch_namespaced_config_map", True),
    "Role": (k8s.RbacAuthorizationV1Api, "patch_namespaced_role", True),
    "RoleBinding": (k8s.RbacAuthorizationV1Api, "patch_namespaced_role_binding", True),
    "ClusterRole": (k8s.RbacAuthorizationV1Api, "patch_cluster_role", False),
    "ClusterRoleBinding": (k8s.RbacAuthorizationV1Api, "patch_cluster_role_binding", False),
    "Deployment": (k8s.AppsV1Api, "patch_namespaced_deployment", True),
    "CronJob": (k8s.BatchV1Api, "patch_namespaced_cron_job", True),
}


def manifests(directory: Path = DEPLOY_DIR) -> list[dict[str, Any]]:
    """Every object of the kustomization in ``directory``, in its ``resources`` order."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    out: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        out += [doc for doc in yaml.safe_load_all((directory / name).read_text()) if doc]
    return out


def rbac_objects(directory: Path = DEPLOY_DIR) -> list[dict[str, Any]]:
    """The namespace, ServiceAccounts, Roles, ClusterRoles and their bindings: nothing that runs."""
    return [obj for obj in manifests(directory) if obj["kind"] in RBAC_KINDS]


def apply_manifests(
    api_client: k8s.ApiClient, objects: Iterable[Mapping[str, Any]], *, dry_run: bool = False
) -> list[dict[str, Any]]:
    """Server-side apply each object (forced, strict field validation); the objects as the API answered.
    An object the API refuses raises ``ApiException``; a kind not listed in ``_PATCH``, ``ValueError``."""
    answered = []
    for obj in objects:
        try:
            api_class, method, namespaced = _PATCH[obj["kind"]]
        except KeyError:
            raise ValueError(f"no API known for kind {obj.get('kind')!r}") from None
        metadata = obj["metadata"]
        where = (metadata["name"], metadata["namespace"]) if namespaced else (metadata["name"],)
        extra = {"dry_run": "All"} if dry_run else {}
        response = getattr(api_class(api_client), method)(
            *where,
            dict(obj),
            field_manager=FIELD_MANAGER,
            force=True,
            field_validation="Strict",
            _content_type=APPLY_PATCH,
            _preload_content=False,
            **extra,
        )
        answered.append(json.loads(response.data))
    return answered


def apply_rbac(cluster: RealControlPlane, directory: Path = DEPLOY_DIR) -> list[dict[str, Any]]:
    """``rbac_objects`` applied with the admin's credentials."""
    with cluster.api_client() as api:
        return apply_manifests(api, rbac_objects(directory))


def service_account_token(
    cluster: RealControlPlane,
    account: str = CONTROLLER_ACCOUNT,
    *,
    namespace: str = NAMESPACE,
    expiration_s: int = 3600,
) -> str:
    """A token for the account from the TokenRequest API (what the kubelet mounts in a pod)."""
    request = k8s.AuthenticationV1TokenRequest(
        spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_s)  # []: the API's own
    )
    with cluster.api_client() as api:
        answer = k8s.CoreV1Api(api).create_namespaced_service_account_token(account, namespace, request)
    if answer.status is None or not answer.status.token:
        raise RuntimeError(f"TokenRequest for {namespace}/{account} returned no token")
    return answer.status.token


def token_kubeconfig(path: str | os.PathLike[str], server: str, ca_pem: bytes, token: str) -> Path:
    """A kubeconfig (mode 0600) whose only credential is the bearer ``token``; the CA verifies the server."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "realkube", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}
        ],
        "users": [{"name": "service-account", "user": {"token": token}}],
        "contexts": [{"name": "realkube", "context": {"cluster": "realkube", "user": "service-account"}}],
        "current-context": "realkube",
    }
    return realkube_pki.write_private(Path(path), yaml.safe_dump(doc, sort_keys=False))


def service_account_kubeconfig(
    cluster: RealControlPlane,
    path: str | os.PathLike[str],
    *,
    account: str = CONTROLLER_ACCOUNT,
    address: str = "127.0.0.1",
    expiration_s: int = 3600,
) -> Path:
    """Apply ``deploy/kubernetes``'s RBAC (idempotent), mint a token for ``account`` (``worldland`` or
    ``worldland-audit``, namespace ``worldland``) and write a kubeconfig holding that token alone, for the
    API at ``address`` (127.0.0.1 or one of the cluster's extra addresses)."""
    apply_rbac(cluster)
    token = service_account_token(cluster, account, expiration_s=expiration_s)
    return token_kubeconfig(path, cluster.url_for(address), cluster.ca_pem, token)
