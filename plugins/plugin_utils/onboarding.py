"""The ``Onboarding`` a controller-side plugin works through: the Kubernetes client of a kubeconfig and the
fleet of a Redis, opened for a ``with`` block and closed after it, every failure one Ansible error of the
plugin's own kind that names the plugin."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ansible.errors import AnsibleError

if TYPE_CHECKING:
    from worldland.control.onboarding import Onboarding


@contextmanager
def open_onboarding(
    who: str,
    error: type[AnsibleError],
    *,
    kubeconfig: str | None,
    redis_url: str,
    key_prefix: str,
    timeout: float,
    join_endpoint: str | None = None,
    token_ttl_s: int | None = None,
) -> Iterator[Onboarding]:
    """``Onboarding`` over the fleet at ``redis_url``/``key_prefix`` and, with a ``kubeconfig``, its cluster
    (opened first, closed after the block). A missing worldland package or a kubeconfig that does not load
    or settings ``Onboarding`` refuses raise ``error("<who>: ...")``; Redis failures are ``open_fleet``'s."""
    try:
        from ansible_collections.worldland.provider.plugins.plugin_utils.fleet import open_fleet

        from worldland.control.onboarding import Onboarding
        from worldland.domain.join import DEFAULT_TOKEN_TTL_S
        from worldland.domain.policy import ApprovalPolicy
        from worldland.kube import KubeClient, KubeError
        from worldland.protocol.streams import StreamNames
    except ImportError as exc:
        raise error(f"{who} needs the worldland Python package: {exc}") from None
    cluster = None
    if kubeconfig is not None:
        try:
            cluster = KubeClient.open(kubeconfig, join_endpoint=join_endpoint)
        except (KubeError, ValueError) as exc:
            raise error(f"{who}: Kubernetes: {exc}") from None
    try:
        with open_fleet(redis_url, key_prefix, timeout, who) as fleet:
            try:
                onboarding = Onboarding(
                    fleet=fleet,
                    streams=StreamNames(),
                    policy=ApprovalPolicy(),
                    cluster=cluster,
                    token_ttl_s=DEFAULT_TOKEN_TTL_S if token_ttl_s is None else token_ttl_s,
                )
            except ValueError as exc:
                raise error(f"{who}: {exc}") from None
            yield onboarding
    finally:
        if cluster is not None:
            cluster.close()
