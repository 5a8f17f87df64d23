"""The one Kubernetes adapter, on the official client. ``KubeClient`` is the facade the rest uses.

Split by concern:

- ``session``: ``KubeSession`` (construction from a kubeconfig, in-cluster or ``connect()``; one
  API call; paging), the errors (``KubeError``, ``KubeUnavailable``, ``KubeNotFound``,
  ``KubeConflict``) and the redaction of credentials and tokens from their messages.
- ``tokens``: bootstrap (join) tokens.
- ``cluster``: the CA hash and the API endpoint ``kubeadm join`` needs.
- ``nodes``: node state, labels and taints; cordoning and deleting a node.
- ``pods``: the pods on a node, evicting them, draining the node (bounded).
- ``daemonsets``: applying and deleting a DaemonSet (NVIDIA's device plugin), server-side apply.
- ``client``: ``KubeClient``, all of them in one object.

Nothing outside this package imports ``kubernetes``. May import ``worldland.protocol`` and
``worldland.domain`` only, of the project.
"""

from __future__ import annotations

from worldland.domain.names import (
    LABEL_GPU_MODEL,
    LABEL_PROVIDER_ID,
    LABEL_RENTAL_STATUS,
    LABEL_RENTAL_TYPE,
    RENTAL_TYPE_GPU,
)
from worldland.kube import cluster, daemonsets, nodes, pods, session, tokens
from worldland.kube.client import KubeClient
from worldland.kube.cluster import (
    ApiEndpoint,
    ClusterInfo,
    JoinInfo,
    ca_cert_hash_from_pem,
    endpoint_from_url,
    parse_endpoint,
)
from worldland.kube.daemonsets import APPLY_PATCH, FIELD_MANAGER, DaemonSets
from worldland.kube.nodes import (
    GPU_RESOURCE,
    NAME_LOOKUP_THRESHOLD,
    OFFLINE_TAINT_KEY,
    TAINT_EFFECTS,
    Nodes,
    NodeState,
    Taint,
    node_state_from_object,
)
from worldland.kube.pods import DrainResult, PodRef, Pods
from worldland.kube.session import (
    KUBECONFIG_ENV,
    LIST_PAGE_SIZE,
    KubeConflict,
    KubeError,
    KubeNotFound,
    KubeSession,
    KubeUnavailable,
)
from worldland.kube.tokens import (
    DEFAULT_TOKEN_TTL_S,
    MAX_TOKEN_TTL_S,
    MIN_TOKEN_TTL_S,
    NODE_TOKEN_GROUP,
    BootstrapToken,
    BootstrapTokenInfo,
    BootstrapTokens,
    new_bootstrap_token,
)
from worldland.kube.tokens import _new_token_id_secret as _new_token_id_secret

__all__ = [
    "APPLY_PATCH",
    "DEFAULT_TOKEN_TTL_S",
    "FIELD_MANAGER",
    "GPU_RESOURCE",
    "KUBECONFIG_ENV",
    "LABEL_GPU_MODEL",
    "LABEL_PROVIDER_ID",
    "LABEL_RENTAL_STATUS",
    "LABEL_RENTAL_TYPE",
    "LIST_PAGE_SIZE",
    "MAX_TOKEN_TTL_S",
    "MIN_TOKEN_TTL_S",
    "NAME_LOOKUP_THRESHOLD",
    "NODE_TOKEN_GROUP",
    "OFFLINE_TAINT_KEY",
    "RENTAL_TYPE_GPU",
    "TAINT_EFFECTS",
    "ApiEndpoint",
    "BootstrapToken",
    "BootstrapTokenInfo",
    "BootstrapTokens",
    "ClusterInfo",
    "DaemonSets",
    "DrainResult",
    "JoinInfo",
    "KubeClient",
    "KubeConflict",
    "KubeError",
    "KubeNotFound",
    "KubeSession",
    "KubeUnavailable",
    "NodeState",
    "Nodes",
    "PodRef",
    "Pods",
    "Taint",
    "ca_cert_hash_from_pem",
    "cluster",
    "daemonsets",
    "endpoint_from_url",
    "new_bootstrap_token",
    "node_state_from_object",
    "nodes",
    "parse_endpoint",
    "pods",
    "session",
    "tokens",
]
