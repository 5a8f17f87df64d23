"""``KubeClient``: the facade over the Kubernetes adapter's parts, what the rest of ``worldland/`` uses.

Its operations live by concern in ``session`` (construction, one API call, errors, redaction),
``tokens`` (bootstrap tokens), ``cluster`` (CA hash and endpoint), ``nodes`` (node state,
labels, taints, cordon, delete), ``pods`` (the pods on a node, eviction, draining) and ``daemonsets``
(the device plugin's DaemonSet); this module only puts them together.

May import ``worldland.protocol`` and ``worldland.domain`` only, of the project.
"""

from __future__ import annotations

from worldland.kube.cluster import ClusterInfo
from worldland.kube.daemonsets import DaemonSets
from worldland.kube.nodes import Nodes
from worldland.kube.pods import Pods
from worldland.kube.tokens import BootstrapTokens

__all__ = ["KubeClient"]


class KubeClient(BootstrapTokens, ClusterInfo, Nodes, Pods, DaemonSets):
    """The project's Kubernetes operations over one ``kubernetes.client.ApiClient``. Thread-safe.

    Build it with ``KubeClient.connect()`` (explicit kubeconfig, ``$WORLDLAND_KUBECONFIG``,
    ``$KUBECONFIG`` or ``~/.kube/config``, else in-cluster), ``from_kubeconfig(path)`` or
    ``in_cluster()``. ``writes`` counts the write requests this client sent, by ``"VERB resource"``.
    """
