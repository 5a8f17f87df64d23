"""Nodes: their state, labels and taints, cordoning and deleting them (``NodeState``, ``Taint``, label
checks and ``Nodes``).

Rules kept here:

- Writes happen only on change: ``apply_labels`` compares with the node's current labels and
  sends nothing when they already match; ``ensure_taint`` reads, changes the taint list, and
  writes with the node's ``resourceVersion`` as a precondition (other controllers write taints
  too), retrying on 409.
- A label (or taint) key or value is checked before anything is sent: an invalid one raises
  ``ValueError`` and no request goes out.
- A node's GPUs are its allocatable ``nvidia.com/gpu``; it has schedulable GPUs when it is Ready
  with more than zero of them.

May import ``worldland.protocol`` and ``worldland.domain`` only, of the project.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from worldland.domain.names import GPU_RESOURCE, OFFLINE_TAINT_KEY, is_label_value
from worldland.kube.session import KubeConflict, KubeNotFound, KubeSession

__all__ = [
    "GPU_RESOURCE",
    "MERGE_PATCH",
    "NAME_LOOKUP_THRESHOLD",
    "OFFLINE_TAINT_KEY",
    "TAINT_EFFECTS",
    "NodeState",
    "Nodes",
    "Taint",
    "is_label_key",
    "label_selector",
    "node_state_from_object",
]

# -- constants -------------------------------------------------------------------------------------------


TAINT_EFFECTS = frozenset({"NoSchedule", "PreferNoSchedule", "NoExecute"})

MERGE_PATCH = "application/merge-patch+json"
NAME_LOOKUP_THRESHOLD = 16  # node_states(): up to this many names are fetched one by one, else listed

_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

# Quantity suffixes (Kubernetes' decimal and binary SI) and the factor each stands for.
_QUANTITY_SCALE: dict[str, int | Decimal] = {
    "": 1,
    "m": Decimal("0.001"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


# -- values --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"

    def as_dict(self) -> dict[str, str]:
        out = {"key": self.key, "effect": self.effect}
        if self.value:
            out["value"] = self.value
        return out


@dataclass(frozen=True)
class NodeState:
    """What the project reads of a Node. ``exists`` False means there is no such node (all else empty)."""

    name: str
    exists: bool
    ready: bool = False
    gpu_allocatable: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    unschedulable: bool = False
    resource_version: str | None = None

    @property
    def gpus(self) -> int:
        """Allocatable ``nvidia.com/gpu`` (the name ``worldland.control.onboarding`` reads)."""
        return self.gpu_allocatable

    @property
    def schedulable_gpus(self) -> bool:
        """Ready with allocatable ``nvidia.com/gpu`` > 0: the condition for Joined -> Available."""
        return self.exists and self.ready and self.gpu_allocatable > 0


# -- pure helpers ----------------------------------------------------------------------------------------


def is_label_key(key: str) -> bool:
    """A valid label (or taint) key: ``[prefix/]name``, prefix a DNS subdomain <= 253, name <= 63."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_QUALIFIED_NAME.fullmatch(name))


def label_selector(labels: Mapping[str, str] | str | None) -> str | None:
    """``{"a": "b", "c": "d"}`` -> ``"a=b,c=d"``; a string passes through (Kubernetes' syntax)."""
    if labels is None or isinstance(labels, str):
        return labels or None
    for key, value in labels.items():
        _check_label(key, value)
    return ",".join(f"{k}={v}" for k, v in labels.items()) or None


def _check_label(key: str, value: str | None) -> None:
    if not is_label_key(key):
        raise ValueError(f"not a valid label key: {key!r}")
    if value is not None and not (isinstance(value, str) and is_label_value(value)):
        raise ValueError(
            f"not a valid label value for {key}: {value!r} (use worldland.domain.names.label_value)"
        )


def _quantity_int(text: Any) -> int:
    """An extended-resource quantity ("4", "4k"...) as a whole number; 0 when absent or malformed."""
    if text is None:
        return 0
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kMGTPE]i?|m)?\s*", str(text))
    if not match:
        return 0
    try:
        number = Decimal(match.group(1))
    except InvalidOperation:
        return 0
    suffix = match.group(2) or ""
    scale = _QUANTITY_SCALE[suffix]
    return int(number * scale)


def node_state_from_object(obj: Mapping[str, Any]) -> NodeState:
    """A ``NodeState`` from a Node as the API serves it (JSON)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    taints = tuple(
        Taint(t.get("key", ""), t.get("value", "") or "", t.get("effect", ""))
        for t in spec.get("taints") or []
    )
    return NodeState(
        name=meta.get("name", ""),
        exists=True,
        ready=ready,
        gpu_allocatable=_quantity_int((status.get("allocatable") or {}).get(GPU_RESOURCE)),
        labels=dict(meta.get("labels") or {}),
        taints=taints,
        unschedulable=bool(spec.get("unschedulable")),
        resource_version=meta.get("resourceVersion"),
    )


# -- the operations --------------------------------------------------------------------------------------


class Nodes(KubeSession):
    """Read nodes (one, many, by label selector), write their labels, taints and schedulability (only on
    change), and delete them."""

    # -- reading ------------------------------------------------------------------------------------------

    def _read_node(self, name: str) -> dict[str, Any]:
        return cast(
            "dict[str, Any]", self._call(f"read node {name}", "get", "nodes", self._core.read_node, name)
        )

    def node_state(self, name: str) -> NodeState:
        """The node's state; ``exists=False`` when there is no such node."""
        try:
            return node_state_from_object(self._read_node(name))
        except KubeNotFound:
            return NodeState(name=name, exists=False)

    def list_nodes(self, selector: Mapping[str, str] | str | None = None) -> list[NodeState]:
        """All nodes matching a label selector (a mapping of equalities, or Kubernetes' syntax), paged."""
        return [
            node_state_from_object(item)
            for item in self._list(
                "list nodes", "nodes", self._core.list_node, label_selector=label_selector(selector)
            )
        ]

    def node_states(self, names: Iterable[str]) -> dict[str, NodeState]:
        """States for many node names at once: a few GETs, or one paged list when there are many."""
        wanted = list(dict.fromkeys(names))
        if len(wanted) <= NAME_LOOKUP_THRESHOLD:
            return {name: self.node_state(name) for name in wanted}
        found = {state.name: state for state in self.list_nodes()}
        return {name: found.get(name) or NodeState(name=name, exists=False) for name in wanted}

    # -- writing ------------------------------------------------------------------------------------------

    def _patch_node(self, name: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        return cast(
            "dict[str, Any]",
            self._call(
                f"{what} on node {name}",
                "patch",
                "nodes",
                self._core.patch_node,
                name,
                body,
                _content_type=MERGE_PATCH,
            ),
        )

    def apply_labels(
        self, node_name: str, labels: Mapping[str, str | None], *, current: Mapping[str, str] | None = None
    ) -> bool:
        """Make the node's labels match ``labels`` (``None`` removes a label); others are left alone.

        Writes only the labels whose value changes, and nothing at all when none does; returns
        whether it wrote. ``current`` (the node's labels as the caller just listed them) saves the
        read. Raises ``KubeNotFound`` when the node does not exist, ``ValueError`` for an invalid
        key or value (nothing is sent).
        """
        for key, value in labels.items():
            _check_label(key, value)
        if current is None:
            current = node_state_from_object(self._read_node(node_name)).labels
        change = {
            k: v for k, v in labels.items() if current.get(k) != v and not (v is None and k not in current)
        }
        if not change:
            return False
        self._patch_node(node_name, {"metadata": {"labels": change}}, "label")
        return True

    def cordon(self, node_name: str, *, unschedulable: bool = True) -> bool:
        """Mark the node unschedulable (``kubectl cordon``; with ``unschedulable=False``, uncordon): new
        pods are not placed on it, those running stay. Writes only on change; returns whether it wrote.
        Raises ``KubeNotFound`` when the node does not exist."""
        state = node_state_from_object(self._read_node(node_name))
        if state.unschedulable == unschedulable:
            return False
        # merge patch: null removes the field, as kubectl uncordon leaves it
        self._patch_node(node_name, {"spec": {"unschedulable": True if unschedulable else None}}, "cordon")
        return True

    def delete_node(self, node_name: str) -> bool:
        """Delete the Node object; False when it was already gone. The kubelet, if it still runs, would
        register it again: reset the host (``kubeadm reset``) after this."""
        try:
            self._call(f"delete node {node_name}", "delete", "nodes", self._core.delete_node, node_name)
        except KubeNotFound:
            return False
        return True

    def ensure_taint(
        self,
        node_name: str,
        key: str,
        *,
        value: str = "",
        effect: str = "NoSchedule",
        present: bool = True,
    ) -> bool:
        """Make the taint ``key=value:effect`` present (or, with ``present=False``, the taint with this
        key and effect absent). Other taints are kept. Writes only on change, with the node's
        resourceVersion as a precondition, retrying on conflict; returns whether it wrote."""
        if not is_label_key(key):
            raise ValueError(f"not a valid taint key: {key!r}")
        if value and not is_label_value(value):
            raise ValueError(f"not a valid taint value: {value!r}")
        if effect not in TAINT_EFFECTS:
            raise ValueError(f"taint effect must be one of {sorted(TAINT_EFFECTS)}, not {effect!r}")
        last: KubeConflict | None = None
        for _ in range(self._conflict_retries):
            obj = self._read_node(node_name)
            taints = list((obj.get("spec") or {}).get("taints") or [])
            same = [t for t in taints if t.get("key") == key and t.get("effect") == effect]
            others = [t for t in taints if not (t.get("key") == key and t.get("effect") == effect)]
            if present:
                if len(same) == 1 and (same[0].get("value") or "") == value:
                    return False
                new = [*others, Taint(key, value, effect).as_dict()]
            else:
                if not same:
                    return False
                new = others
            body = {
                "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                "spec": {"taints": new or None},
            }
            try:
                self._patch_node(node_name, body, "taint")
            except KubeConflict as exc:
                last = exc
                continue
            return True
        assert last is not None
        raise last
