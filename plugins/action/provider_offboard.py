"""The ``worldland.provider.provider_offboard`` action: ``Onboarding.offboard`` on the controller
(documentation in plugins/modules/provider_offboard.py)."""

from __future__ import annotations

import os
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

try:
    from ansible_collections.worldland.provider.plugins.plugin_utils.fleet import open_fleet

    from worldland.control.offboarding import DEFAULT_DRAIN_TIMEOUT_S, DEFAULT_REASON, OffboardRefused
    from worldland.control.onboarding import Onboarding
    from worldland.domain.lifecycle import TransitionError
    from worldland.domain.policy import ApprovalPolicy
    from worldland.protocol.streams import StreamNames
    from worldland.state.providers import StoreError
except ImportError as _error:  # reported when run, so ansible-doc still works without it
    IMPORT_ERROR: ImportError | None = _error
else:
    IMPORT_ERROR = None

NAME = "provider_offboard"


class ActionModule(ActionBase):  # type: ignore[misc]  # ansible-core is untyped: its base class is Any
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        if IMPORT_ERROR is not None:
            raise AnsibleActionFail(f"{NAME} needs the worldland Python package: {IMPORT_ERROR}")
        if self._play_context.check_mode:
            result.update(skipped=True, msg=f"check mode: {NAME} writes state and does not simulate it")
            return result
        _, args = self.validate_argument_spec(
            argument_spec={
                "provider_id": {"type": "str", "required": True},
                "reason": {"type": "str", "default": DEFAULT_REASON},
                "drain_timeout": {"type": "float", "default": DEFAULT_DRAIN_TIMEOUT_S},
                "force": {"type": "bool", "default": False},
                "redis_url": {"type": "str"},
                "key_prefix": {"type": "str"},
                "kubeconfig": {"type": "path"},
            }
        )
        url = args["redis_url"] or os.environ.get("WORLDLAND_REDIS_URL") or "redis://127.0.0.1:6379/0"
        prefix = args["key_prefix"] or os.environ.get("WORLDLAND_KEY_PREFIX") or "worldland:"
        kubeconfig = args["kubeconfig"] or os.environ.get("WORLDLAND_KUBECONFIG")
        if not kubeconfig:
            raise AnsibleActionFail(f"{NAME}: kubeconfig (or WORLDLAND_KUBECONFIG) is required")
        from worldland.kube import KubeClient, KubeError

        try:
            cluster = KubeClient.from_kubeconfig(kubeconfig)
        except (KubeError, ValueError) as exc:
            raise AnsibleActionFail(f"{NAME}: Kubernetes: {exc}") from None
        try:
            with open_fleet(url, prefix, 5.0, NAME) as fleet:
                onboarding = Onboarding(
                    fleet=fleet, streams=StreamNames(), policy=ApprovalPolicy(), cluster=cluster
                )
                try:
                    report = onboarding.offboard(
                        args["provider_id"],
                        reason=args["reason"],
                        drain_timeout_s=args["drain_timeout"],
                        force=args["force"],
                    )
                except (OffboardRefused, StoreError, TransitionError, KubeError, ValueError) as exc:
                    raise AnsibleActionFail(f"{NAME}: {exc}") from None
        finally:
            cluster.close()
        result.update(report.to_dict())
        node = report.node_name
        warnings = [f"pod {pod} was still on node {node}: {why}" for pod, why in report.left.items()]
        warnings += [f"still held (forced): {job}" for job in report.held_by_jobs]
        if warnings:
            result["warnings"] = warnings
        if report.errors:
            result.update(
                failed=True,
                msg=f"{args['provider_id']} is removed, but offboarding is not complete (run it again): "
                + "; ".join(report.errors),
            )
        return result
