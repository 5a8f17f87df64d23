"""The ``worldland.provider.provider_node`` action: ``Onboarding.advance_provider`` on the controller
(documentation in plugins/modules/provider_node.py)."""

from __future__ import annotations

import os
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

try:
    from ansible_collections.worldland.provider.plugins.plugin_utils.fleet import open_fleet

    from worldland.control.onboarding import JoinUnavailable, Onboarding
    from worldland.domain.lifecycle import Status
    from worldland.domain.policy import ApprovalPolicy
    from worldland.protocol.streams import StreamNames
except ImportError as _error:  # reported when run, so ansible-doc still works without it
    IMPORT_ERROR: ImportError | None = _error
else:
    IMPORT_ERROR = None

ARGS = {"provider_id", "require_available", "redis_url", "key_prefix", "kubeconfig"}


class ActionModule(ActionBase):  # type: ignore[misc]  # ansible-core is untyped: its base class is Any
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        if IMPORT_ERROR is not None:
            raise AnsibleActionFail(f"provider_node needs the worldland Python package: {IMPORT_ERROR}")
        if self._play_context.check_mode:
            result.update(skipped=True, msg="check mode: provider_node writes state and does not simulate it")
            return result
        args = self._task.args
        unknown = sorted(set(args) - ARGS)
        if unknown or not isinstance(args.get("provider_id"), str):
            raise AnsibleActionFail(f"provider_node: provider_id (a string) is required; unknown: {unknown}")
        url = args.get("redis_url") or os.environ.get("WORLDLAND_REDIS_URL") or "redis://127.0.0.1:6379/0"
        prefix = args.get("key_prefix") or os.environ.get("WORLDLAND_KEY_PREFIX") or "worldland:"
        kubeconfig = args.get("kubeconfig") or os.environ.get("WORLDLAND_KUBECONFIG")
        if not kubeconfig:
            raise AnsibleActionFail("provider_node: kubeconfig (or WORLDLAND_KUBECONFIG) is required")
        from worldland.kube import KubeClient, KubeError

        try:
            cluster = KubeClient.from_kubeconfig(kubeconfig)
        except (KubeError, ValueError) as exc:
            raise AnsibleActionFail(f"provider_node: Kubernetes: {exc}") from None
        try:
            with open_fleet(url, prefix, 5.0, "provider_node") as fleet:
                onboarding = Onboarding(
                    fleet=fleet, streams=StreamNames(), policy=ApprovalPolicy(), cluster=cluster
                )
                try:
                    advanced = onboarding.advance_provider(args["provider_id"])
                except (JoinUnavailable, KubeError, ValueError) as exc:
                    raise AnsibleActionFail(f"provider_node: {exc}") from None
        finally:
            cluster.close()
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
