"""The ``worldland.provider.provider_error`` action: ``Onboarding.record_onboarding_error`` on the controller
(documentation in plugins/modules/provider_error.py)."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleActionFail
from ansible_collections.worldland.provider.plugins.plugin_utils.action import ControllerAction, ImportGuard

IMPORTS = ImportGuard()  # reported when run, so ansible-doc still works without the worldland package
with IMPORTS:
    from worldland.state.providers import UnknownProvider

ARGS = {"provider_id", "message", "redis_url", "key_prefix"}


class ActionModule(ControllerAction):
    NAME = "provider_error"
    imports = IMPORTS

    def act(self, result: dict[str, Any]) -> dict[str, Any]:
        args = self._task.args
        unknown = self.unknown_args(ARGS)
        if (
            unknown
            or not isinstance(args.get("provider_id"), str)
            or not isinstance(args.get("message"), str)
        ):
            raise AnsibleActionFail(
                f"provider_error: provider_id and message (strings) are required; unknown: {unknown}"
            )
        with self.onboarding(args, with_cluster=False) as onboarding:
            try:
                stored = onboarding.record_onboarding_error(args["provider_id"], args["message"])
            except (UnknownProvider, ValueError) as exc:
                raise AnsibleActionFail(f"provider_error: {exc}") from None
        result.update(changed=True, last_error=stored)
        return result
