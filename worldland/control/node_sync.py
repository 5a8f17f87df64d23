"""The one writer of a provider node's labels and taint (``worldland.domain.names.desired_node`` decides
them); the listener's reconcile and the audit both write through here. Writes happen only on change."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from worldland.domain.names import OFFLINE_TAINT_EFFECT, OFFLINE_TAINT_KEY, DesiredNode

if TYPE_CHECKING:  # the Kubernetes client is imported only where a cluster is used
    from worldland.kube import NodeState


class NodeWriter(Protocol):
    """What writing a node needs from Kubernetes (``worldland.kube.KubeClient`` has it)."""

    def apply_labels(
        self, node_name: str, labels: Mapping[str, str | None], *, current: Mapping[str, str] | None = None
    ) -> bool: ...

    def ensure_taint(
        self, node_name: str, key: str, *, value: str = "", effect: str = "NoSchedule", present: bool = True
    ) -> bool: ...


def sync_node(writer: NodeWriter, node_name: str, desired: DesiredNode, state: NodeState) -> bool:
    """Bring an existing node in line with ``desired``; True when something was written."""
    wrote = writer.apply_labels(node_name, desired.labels, current=state.labels)
    ours = [t for t in state.taints if t.key == OFFLINE_TAINT_KEY and t.effect == OFFLINE_TAINT_EFFECT]
    tainted = len(ours) == 1 and not ours[0].value
    if tainted != desired.offline_taint or (not desired.offline_taint and ours):
        wrote = (
            writer.ensure_taint(
                node_name, OFFLINE_TAINT_KEY, effect=OFFLINE_TAINT_EFFECT, present=desired.offline_taint
            )
            or wrote
        )
    return wrote
