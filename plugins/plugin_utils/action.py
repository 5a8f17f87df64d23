"""What the controller-side actions (``provider_node``, ``provider_error``, ``provider_offboard``,
``device_plugin``) share: their guarded imports, the check-mode skip, the unknown-argument check, the
Redis and Kubernetes settings from the task's arguments or the environment, and the ``Onboarding`` over them.

Imports only ansible-core, so an action can import it before (and outside) its guarded imports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

if TYPE_CHECKING:
    from worldland.control.onboarding import Onboarding
    from worldland.kube import KubeClient

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_KEY_PREFIX = "worldland:"


class ImportGuard:
    """``with guard:`` around a plugin's imports of the worldland package: an ``ImportError`` in the block
    is kept in ``error`` (and the rest of the block skipped) instead of failing the import of the plugin,
    so that ansible-doc still works without the package; the action reports it when run."""

    def __init__(self) -> None:
        self.error: ImportError | None = None

    def __enter__(self) -> ImportGuard:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> bool:
        if isinstance(value, ImportError):
            self.error = value
            return True
        return False


def redis_settings(args: Mapping[str, Any]) -> tuple[str, str]:
    """The Redis URL and key prefix: the task's ``redis_url``/``key_prefix``, else ``WORLDLAND_REDIS_URL``/
    ``WORLDLAND_KEY_PREFIX``, else the defaults."""
    url = args.get("redis_url") or os.environ.get("WORLDLAND_REDIS_URL") or DEFAULT_REDIS_URL
    prefix = args.get("key_prefix") or os.environ.get("WORLDLAND_KEY_PREFIX") or DEFAULT_KEY_PREFIX
    return url, prefix


def kubeconfig_setting(args: Mapping[str, Any], who: str) -> str:
    """The task's ``kubeconfig``, else ``WORLDLAND_KUBECONFIG`` (a file, or ``in-cluster``: the pod's
    service account); without either the task fails."""
    kubeconfig: str | None = args.get("kubeconfig") or os.environ.get("WORLDLAND_KUBECONFIG")
    if not kubeconfig:
        raise AnsibleActionFail(f"{who}: kubeconfig (or WORLDLAND_KUBECONFIG) is required")
    return kubeconfig


class ControllerAction(ActionBase):  # type: ignore[misc]  # ansible-core is untyped: its base class is Any
    """An action that runs on the controller only (no connection to the host, no files sent).

    ``run`` fails when ``imports`` kept an ``ImportError``, skips the task in check mode unless
    ``SUPPORTS_CHECK_MODE``, then returns ``act(result)``.
    """

    TRANSFERS_FILES = False
    _requires_connection = False

    NAME = ""  # the action's short name, at the head of its messages
    SUPPORTS_CHECK_MODE = False  # False: it writes state and is skipped in check mode
    imports = ImportGuard()  # the guard around the action's imports of the worldland package

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        if self.imports.error is not None:
            raise AnsibleActionFail(f"{self.NAME} needs the worldland Python package: {self.imports.error}")
        if not self.SUPPORTS_CHECK_MODE and self._play_context.check_mode:
            result.update(skipped=True, msg=f"check mode: {self.NAME} writes state and does not simulate it")
            return result
        return self.act(result)

    def act(self, result: dict[str, Any]) -> dict[str, Any]:
        """The action itself, on ``result`` as ``ActionBase.run`` made it."""
        raise NotImplementedError

    def unknown_args(self, allowed: set[str]) -> list[str]:
        """The task's arguments that are not in ``allowed``, sorted."""
        return sorted(set(self._task.args) - allowed)

    def onboarding(
        self, args: Mapping[str, Any], *, with_cluster: bool = True
    ) -> AbstractContextManager[Onboarding]:
        """``open_onboarding`` over the Redis in ``args`` (or the environment) and, ``with_cluster``, the
        Kubernetes client of ``kubeconfig(args)``."""
        try:
            from ansible_collections.worldland.provider.plugins.plugin_utils.onboarding import open_onboarding
        except ImportError as exc:
            raise AnsibleActionFail(f"{self.NAME} needs the worldland Python package: {exc}") from None
        url, prefix = redis_settings(args)
        return open_onboarding(
            self.NAME,
            AnsibleActionFail,
            kubeconfig=self.kubeconfig(args) if with_cluster else None,
            redis_url=url,
            key_prefix=prefix,
            timeout=5.0,
        )

    def kubeconfig(self, args: Mapping[str, Any]) -> str:
        """``kubeconfig_setting`` of ``args`` for this action."""
        return kubeconfig_setting(args, self.NAME)

    def open_cluster(self, kubeconfig: str) -> KubeClient:
        """The Kubernetes client of ``kubeconfig``; one that does not load fails the task."""
        from worldland.kube import KubeClient, KubeError

        try:
            return KubeClient.open(kubeconfig)
        except (KubeError, ValueError) as exc:
            raise AnsibleActionFail(f"{self.NAME}: Kubernetes: {exc}") from None
