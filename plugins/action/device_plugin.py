"""The ``worldland.provider.device_plugin`` action: NVIDIA's device plugin DaemonSet on the GPU nodes,
applied (or deleted) through the Kubernetes API from the controller (documentation in
plugins/modules/device_plugin.py; the manifest is ``worldland.domain.device_plugin``)."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleActionFail
from ansible_collections.worldland.provider.plugins.plugin_utils.action import ControllerAction, ImportGuard

IMPORTS = ImportGuard()  # reported when run, so ansible-doc still works without the worldland package
with IMPORTS:
    from worldland.domain.device_plugin import (
        DEVICE_PLUGIN_CONTAINER,
        DEVICE_PLUGIN_NAME,
        DEVICE_PLUGIN_NAMESPACE,
        DEVICE_PLUGIN_VERSION,
        device_plugin_manifest,
    )

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


class ActionModule(ControllerAction):
    NAME = "device_plugin"
    SUPPORTS_CHECK_MODE = True
    imports = IMPORTS

    def act(self, result: dict[str, Any]) -> dict[str, Any]:
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        kubeconfig = self.kubeconfig(args)
        check = bool(self._play_context.check_mode)
        present = args["state"] == "present"
        version = args["version"] or DEVICE_PLUGIN_VERSION
        manifest: dict[str, Any] | None = None
        if present:
            try:
                manifest = device_plugin_manifest(version, args["image"])
            except ValueError as exc:
                raise AnsibleActionFail(f"device_plugin: {exc}") from None
        cluster = self.open_cluster(kubeconfig)
        from worldland.kube import KubeError

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
