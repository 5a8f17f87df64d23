"""DaemonSets (``apps/v1``): reading, applying and deleting one, as the device plugin needs (``DaemonSets``).

Rules kept here:

- A manifest is applied with server-side apply (``PATCH``, ``application/apply-patch+yaml``, field
  manager ``worldland``, ``force``): the API server merges it and takes the fields back from whoever
  changed them; fields this manager applied before and the manifest no longer has are removed.
- "Changed" means the object changed: it did not exist, or its labels, annotations, spec or the fields
  this manager owns differ before and after (an unchanged ``resourceVersion`` short-cuts the
  comparison). A status write by the DaemonSet controller in between is not a change of ours.
- ``dry_run=True`` asks the API server the same question without writing (``dryRun=All``): the answer
  is what a real apply would report.
- A manifest of the wrong kind, or without a name and namespace, raises ``ValueError`` before any
  request goes out.

May import ``worldland.protocol`` and ``worldland.domain`` only, of the project.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from kubernetes import client as k8s

from worldland.kube.session import KubeNotFound, KubeSession

__all__ = ["APPLY_PATCH", "FIELD_MANAGER", "DaemonSets"]

APPLY_PATCH = "application/apply-patch+yaml"  # the body is JSON, which is YAML
FIELD_MANAGER = "worldland"


def _meta_name(manifest: Mapping[str, Any]) -> tuple[str, str]:
    if manifest.get("apiVersion") != "apps/v1" or manifest.get("kind") != "DaemonSet":
        raise ValueError(
            f"not an apps/v1 DaemonSet manifest: {manifest.get('apiVersion')!r} {manifest.get('kind')!r}"
        )
    metadata = manifest.get("metadata") or {}
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not (isinstance(namespace, str) and namespace and isinstance(name, str) and name):
        raise ValueError("a DaemonSet manifest needs metadata.name and metadata.namespace")
    return namespace, name


def _content(obj: Mapping[str, Any]) -> tuple[Any, ...]:
    """What an apply can change: labels, annotations, spec, and the fields this manager owns."""
    metadata = obj.get("metadata") or {}
    owned = [
        entry.get("fieldsV1")
        for entry in metadata.get("managedFields") or []
        if entry.get("manager") == FIELD_MANAGER and entry.get("operation") == "Apply"
    ]
    return (metadata.get("labels") or {}, metadata.get("annotations") or {}, obj.get("spec"), owned)


class DaemonSets(KubeSession):
    """DaemonSets through ``AppsV1Api``, with the session's conventions (one ``_call`` per request)."""

    @property
    def _apps(self) -> k8s.AppsV1Api:
        return k8s.AppsV1Api(self._api_client)

    def read_daemon_set(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The DaemonSet as the API has it (its JSON), or ``None`` when there is none."""
        try:
            obj = self._call(
                f"read daemonset {namespace}/{name}",
                "get",
                "daemonsets",
                self._apps.read_namespaced_daemon_set,
                name,
                namespace,
            )
        except KubeNotFound:
            return None
        return cast("dict[str, Any]", obj)

    def apply_daemon_set(self, manifest: Mapping[str, Any], *, dry_run: bool = False) -> bool:
        """Server-side apply ``manifest`` (an ``apps/v1`` DaemonSet with name and namespace); returns
        whether the object changed. With ``dry_run``, nothing is written and the answer is whether it
        would change."""
        namespace, name = _meta_name(manifest)
        before = self.read_daemon_set(namespace, name)
        extra = {"dry_run": "All"} if dry_run else {}
        after = self._call(
            f"apply daemonset {namespace}/{name}" + (" (dry run)" if dry_run else ""),
            "dry-run patch" if dry_run else "patch",
            "daemonsets",
            self._apps.patch_namespaced_daemon_set,
            name,
            namespace,
            dict(manifest),
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY_PATCH,
            **extra,
        )
        if before is None:
            return True
        if not dry_run and (after.get("metadata") or {}).get("resourceVersion") == before["metadata"].get(
            "resourceVersion"
        ):
            return False
        return _content(before) != _content(after)

    def delete_daemon_set(self, namespace: str, name: str, *, dry_run: bool = False) -> bool:
        """Delete the DaemonSet (its pods go with it, in the background); returns whether there was one.
        With ``dry_run``, nothing is deleted and the answer is whether there is one to delete."""
        if dry_run:
            return self.read_daemon_set(namespace, name) is not None
        try:
            self._call(
                f"delete daemonset {namespace}/{name}",
                "delete",
                "daemonsets",
                self._apps.delete_namespaced_daemon_set,
                name,
                namespace,
                propagation_policy="Background",
            )
        except KubeNotFound:
            return False
        return True
