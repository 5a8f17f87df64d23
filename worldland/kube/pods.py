"""Pods on a node, and draining it: ``PodRef``, ``DrainResult`` and ``Pods``.

Rules kept here:

- A node is drained through the Eviction API (``policy/v1``), as ``kubectl drain`` does, so the API server
  applies each pod's PodDisruptionBudget: a refusal (429) is retried until the time is up, then reported.
  Every eviction names the pod's uid as a precondition, so a new pod of the same name is never evicted
  in its place.
- DaemonSet pods (their DaemonSet would put them back at once, and tolerates ``unschedulable``) and mirror
  pods (the kubelet's static pods: the API cannot delete them) are left alone, and reported as skipped.
- Draining is bounded: it ends when no other pod is left on the node or when ``timeout_s`` has passed,
  whichever comes first, and reports the pods still there and why (evicted and still terminating, a
  disruption budget, ...). A pod whose kubelet is gone stays terminating until the node is deleted.

May import ``worldland.protocol`` and ``worldland.domain`` only, of the project.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from worldland.kube.session import KubeConflict, KubeError, KubeNotFound, KubeSession

__all__ = [
    "DRAIN_POLL_S",
    "MIRROR_POD_ANNOTATION",
    "DrainResult",
    "PodRef",
    "Pods",
    "pod_ref_from_object",
]

MIRROR_POD_ANNOTATION = "kubernetes.io/config.mirror"
DRAIN_POLL_S = 1.0  # seconds between looks at the pods left on a node being drained


@dataclass(frozen=True)
class PodRef:
    """What draining needs of a pod: where it is, whose it is, and whether it is already going."""

    namespace: str
    name: str
    uid: str = ""
    controller_kind: str = ""  # its controlling owner's kind ("ReplicaSet", "DaemonSet", ...); "" if none
    mirror: bool = False
    terminating: bool = False  # its deletion has begun (deletionTimestamp set)
    phase: str = ""

    @property
    def daemon_set(self) -> bool:
        return self.controller_kind == "DaemonSet"

    @property
    def skipped_by_drain(self) -> bool:
        """DaemonSet and mirror pods stay (as ``kubectl drain --ignore-daemonsets`` leaves them)."""
        return self.daemon_set or self.mirror

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class DrainResult:
    """What ``evict_pods`` did: pods are named ``namespace/name``."""

    evicted: list[str] = field(default_factory=list)  # evictions the API accepted
    skipped: list[str] = field(default_factory=list)  # DaemonSet and mirror pods, left alone
    left: dict[str, str] = field(default_factory=dict)  # still on the node when it ended, and why

    @property
    def drained(self) -> bool:
        """True when no pod but the skipped ones is left on the node."""
        return not self.left


def pod_ref_from_object(obj: Mapping[str, Any]) -> PodRef:
    """A ``PodRef`` from a Pod as the API serves it (JSON)."""
    meta = obj.get("metadata") or {}
    owners = meta.get("ownerReferences") or []
    controller = next((o for o in owners if o.get("controller")), None)
    return PodRef(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        controller_kind=(controller or {}).get("kind", ""),
        mirror=MIRROR_POD_ANNOTATION in (meta.get("annotations") or {}),
        terminating=meta.get("deletionTimestamp") is not None,
        phase=(obj.get("status") or {}).get("phase", ""),
    )


class Pods(KubeSession):
    """List the pods on a node and evict them (``policy/v1`` Eviction), one ``_call`` per request."""

    def list_pods_on_node(self, node_name: str) -> list[PodRef]:
        """Every pod bound to the node, in all namespaces (paged; a field selector, no full list)."""
        return [
            pod_ref_from_object(item)
            for item in self._list(
                f"list pods on node {node_name}",
                "pods",
                self._core.list_pod_for_all_namespaces,
                field_selector=f"spec.nodeName={node_name}",
            )
        ]

    def evict_pod(
        self, namespace: str, name: str, *, uid: str = "", grace_period_s: int | None = None
    ) -> bool:
        """Ask the API to evict one pod (its disruption budget applies); False when the pod is gone (or,
        with ``uid``, is another pod now). A budget that forbids it raises ``KubeUnavailable`` with status
        429 (retry later); ``grace_period_s`` None is the pod's own termination grace period."""
        options: dict[str, Any] = {}
        if uid:
            options["preconditions"] = {"uid": uid}
        if grace_period_s is not None:
            options["gracePeriodSeconds"] = grace_period_s
        body: dict[str, Any] = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
        }
        if options:
            body["deleteOptions"] = options
        try:
            self._call(
                f"evict pod {namespace}/{name}",
                "create",
                "pods/eviction",
                self._core.create_namespaced_pod_eviction,
                name,
                namespace,
                body,
            )
        except (KubeNotFound, KubeConflict):  # gone, or its uid precondition failed: another pod now
            return False
        return True

    def evict_pods(
        self,
        node_name: str,
        *,
        timeout_s: float,
        poll_s: float = DRAIN_POLL_S,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> DrainResult:
        """Drain the node: evict every pod on it but DaemonSet and mirror pods, and wait, at most
        ``timeout_s`` (0: evict once, do not wait), until they are gone. Pods refused by a disruption
        budget are asked again each ``poll_s``. Returns what was evicted, skipped and left (with why).
        Cordon the node first, or its pods' controllers may place new ones on it. An API failure other
        than a budget's refusal raises ``KubeError``."""
        deadline = monotonic() + max(0.0, timeout_s)
        evicted: dict[str, None] = {}
        refused: dict[str, str] = {}
        attempted = False
        while True:
            pods = self.list_pods_on_node(node_name)
            skipped = [str(p) for p in pods if p.skipped_by_drain]
            remaining = [p for p in pods if not p.skipped_by_drain]
            if not remaining or (attempted and monotonic() >= deadline):
                break
            for pod in remaining:
                if pod.terminating:
                    continue  # evicted (by us or anyone): waiting for it to go
                key = str(pod)
                try:
                    if self.evict_pod(pod.namespace, pod.name, uid=pod.uid):
                        evicted[key] = None
                    refused.pop(key, None)
                except KubeError as exc:
                    if exc.status != 429:
                        raise
                    refused[key] = f"eviction refused (disruption budget): {exc}"
            attempted = True
            sleep(max(0.0, min(poll_s, deadline - monotonic())))
        left = {
            str(p): refused.get(str(p))
            or ("evicted, still terminating" if p.terminating else f"not evicted (phase {p.phase or '?'})")
            for p in remaining
        }
        return DrainResult(evicted=list(evicted), skipped=skipped, left=left)
