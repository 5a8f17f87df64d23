"""The ``worldland.provider.provider_offboard`` action: ``Onboarding.offboard`` on the controller
(documentation in plugins/modules/provider_offboard.py)."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleActionFail
from ansible_collections.worldland.provider.plugins.plugin_utils.action import ControllerAction, ImportGuard

IMPORTS = ImportGuard()  # reported when run, so ansible-doc still works without the worldland package
with IMPORTS:
    from worldland.control.offboarding import DEFAULT_DRAIN_TIMEOUT_S, DEFAULT_REASON, OffboardRefused
    from worldland.domain.lifecycle import TransitionError
    from worldland.state.providers import StoreError

NAME = "provider_offboard"


class ActionModule(ControllerAction):
    NAME = NAME
    imports = IMPORTS

    def act(self, result: dict[str, Any]) -> dict[str, Any]:
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
        with self.onboarding(args) as onboarding:
            from worldland.kube import KubeError  # loaded by then: the cluster is open

            try:
                report = onboarding.offboard(
                    args["provider_id"],
                    reason=args["reason"],
                    drain_timeout_s=args["drain_timeout"],
                    force=args["force"],
                )
            except (OffboardRefused, StoreError, TransitionError, KubeError, ValueError) as exc:
                raise AnsibleActionFail(f"{NAME}: {exc}") from None
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
