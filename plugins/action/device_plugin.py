"""The ``worldland.provider.device_plugin`` action: NVIDIA's device plugin DaemonSet on the GPU nodes,
applied (or deleted) through the Kubernetes API from the controller (documentation in
plugins/modules/device_plugin.py; the manifest is ``worldland.domain.device_plugin``)."""

from __future__ import annotations

import os
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

try:
    from worldland.domain.device_plugin import (
        DEVICE_PLUGIN_CONTAINER,
        DEVICE_PLUGIN_NAME,
        DEVICE_PLUGIN_NAMESPACE,
        DEVICE_PLUGIN_VERSION,
        device_plugin_manifest,
    )
except ImportError as _error:  # reported when run, so ansible-doc still works without it
    IMPORT_ERROR: ImportError | None = _error
else:
    IMPORT_ERROR = None

ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    "version": {"type": "str"},
    "image": {"type": "str"},
    "kubeconfig": {"type": "path"},
}


def _image_of(obj: dict[str, Any] | None) -> str | None:
    """The device plugin container's image in a DaemonSet as the API has it."""
    if obj is None:
        return None
    containers = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    for container in containers:
        if container.get("name") == DEVICE_PLUGIN_CONTAINER:
            image = container.get("image")
            return image if isinstance(image, str) else None
    return None


class ActionModule(ActionBase):  # type: ignore[misc]  # ansible-core is untyped: its base class is Any
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        if IMPORT_ERROR is not None:
            raise AnsibleActionFail(f"device_plugin needs the worldland Python package: {IMPORT_ERROR}")
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        kubeconfig = args.get("kubeconfig") or os.environ.get("WORLDLAND_KUBECONFIG")
        if not kubeconfig:
            raise AnsibleActionFail("device_plugin: kubeconfig (or WORLDLAND_KUBECONFIG) is required")
        check = bool(self._play_context.check_mode)
        present = args["state"] == "present"
        version = args["version"] or DEVICE_PLUGIN_VERSION
        manifest: dict[str, Any] | None = None
        if present:
            try:
                manifest = device_plugin_manifest(version, args["image"])
            except ValueError as exc:
                raise AnsibleActionFail(f"device_plugin: {exc}") from None
        from worldland.kube import KubeClient, KubeError

        try:
            cluster = KubeClient.from_kubeconfig(kubeconfig)
        except (KubeError, ValueError) as exc:
            raise AnsibleActionFail(f"device_plugin: Kubernetes: {exc}") from None
        try:
            before = cluster.read_daemon_set(DEVICE_PLUGIN_NAMESPACE, DEVICE_PLUGIN_NAME)
            if manifest is not None:
                changed = cluster.apply_daemon_set(manifest, dry_run=check)
            else:
                changed = cluster.delete_daemon_set(
                    DEVICE_PLUGIN_NAMESPACE, DEVICE_PLUGIN_NAME, dry_run=check
                )
        except (KubeError, ValueError) as exc:
            raise AnsibleActionFail(f"device_plugin: {exc}") from None
        finally:
            cluster.close()
        where = f"{DEVICE_PLUGIN_NAMESPACE}/{DEVICE_PLUGIN_NAME}"
        if not changed:
            msg = f"{where} is {'up to date' if present else 'absent'}"
        elif not present:
            msg = f"{where} {'would be' if check else 'was'} deleted"
        else:
            msg = f"{where} {'would be' if check else 'was'} {'updated' if before else 'created'}"
        result.update(
            changed=changed,
            name=DEVICE_PLUGIN_NAME,
            namespace=DEVICE_PLUGIN_NAMESPACE,
            state=args["state"],
            previous_image=_image_of(before),
            msg=msg,
        )
        if manifest is not None:
            result.update(image=_image_of(manifest), version=version)
        return result
