"""The ``worldland.provider.provider_node`` action: ``Onboarding.advance_provider`` on the controller
(documentation in plugins/modules/provider_node.py)."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleActionFail
from ansible_collections.worldland.provider.plugins.plugin_utils.action import ControllerAction, ImportGuard

IMPORTS = ImportGuard()  # reported when run, so ansible-doc still works without the worldland package
with IMPORTS:
    from worldland.control.onboarding import JoinUnavailable
    from worldland.domain.lifecycle import Status

ARGS = {"provider_id", "require_available", "redis_url", "key_prefix", "kubeconfig"}


class ActionModule(ControllerAction):
    NAME = "provider_node"
    imports = IMPORTS

    def act(self, result: dict[str, Any]) -> dict[str, Any]:
        args = self._task.args
        unknown = self.unknown_args(ARGS)
        if unknown or not isinstance(args.get("provider_id"), str):
            raise AnsibleActionFail(f"provider_node: provider_id (a string) is required; unknown: {unknown}")
        with self.onboarding(args) as onboarding:
            from worldland.kube import KubeError  # loaded by then: the cluster is open

            try:
                advanced = onboarding.advance_provider(args["provider_id"])
            except (JoinUnavailable, KubeError, ValueError) as exc:
                raise AnsibleActionFail(f"provider_node: {exc}") from None
        result.update(
            changed=advanced.changed,
            status=advanced.after.value,
            previous_status=advanced.before.value,
            node_written=advanced.node_written,
        )
        if advanced.waiting:
            result["waiting"] = advanced.waiting
        if args.get("require_available") and advanced.after is not Status.AVAILABLE:
            result.update(failed=True, msg=f"{args['provider_id']} is {advanced.after}: {advanced.waiting}")
        return result
