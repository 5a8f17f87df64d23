"""The ``worldland.provider.provider_error`` action: ``Onboarding.record_onboarding_error`` on the controller
(documentation in plugins/modules/provider_error.py)."""

from __future__ import annotations

import os
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

try:
    from ansible_collections.worldland.provider.plugins.plugin_utils.fleet import open_fleet

    from worldland.control.onboarding import Onboarding
    from worldland.domain.policy import ApprovalPolicy
    from worldland.protocol.streams import StreamNames
    from worldland.state.providers import UnknownProvider
except ImportError as _error:  # reported when run, so ansible-doc still works without it
    IMPORT_ERROR: ImportError | None = _error
else:
    IMPORT_ERROR = None

ARGS = {"provider_id", "message", "redis_url", "key_prefix"}


class ActionModule(ActionBase):  # type: ignore[misc]  # ansible-core is untyped: its base class is Any
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        if IMPORT_ERROR is not None:
            raise AnsibleActionFail(f"provider_error needs the worldland Python package: {IMPORT_ERROR}")
        if self._play_context.check_mode:
            result.update(
                skipped=True, msg="check mode: provider_error writes state and does not simulate it"
            )
            return result
        args = self._task.args
        unknown = sorted(set(args) - ARGS)
        if (
            unknown
            or not isinstance(args.get("provider_id"), str)
            or not isinstance(args.get("message"), str)
        ):
            raise AnsibleActionFail(
                f"provider_error: provider_id and message (strings) are required; unknown: {unknown}"
            )
        url = args.get("redis_url") or os.environ.get("WORLDLAND_REDIS_URL") or "redis://127.0.0.1:6379/0"
        prefix = args.get("key_prefix") or os.environ.get("WORLDLAND_KEY_PREFIX") or "worldland:"
        with open_fleet(url, prefix, 5.0, "provider_error") as fleet:
            onboarding = Onboarding(fleet=fleet, streams=StreamNames(), policy=ApprovalPolicy(), cluster=None)
            try:
                stored = onboarding.record_onboarding_error(args["provider_id"], args["message"])
            except (UnknownProvider, ValueError) as exc:
                raise AnsibleActionFail(f"provider_error: {exc}") from None
        result.update(changed=True, last_error=stored)
        return result
