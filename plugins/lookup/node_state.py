"""The ``worldland.provider.node_state`` lookup: what the cluster knows of a provider's node."""

from __future__ import annotations

DOCUMENTATION = r"""
name: node_state
author: WorldLand provider onboarding
version_added: "0.1.0"
short_description: A provider's Kubernetes node as the cluster sees it, read at play time
description:
  - For each provider id, its node (by the node name in the provider record) read from the Kubernetes API -
    whether it exists, is Ready, how many C(nvidia.com/gpu) it has allocatable, and its labels.
  - Issues nothing and writes nothing (unlike M(worldland.provider.provider_node) and the C(join_params)
    lookup).
extends_documentation_fragment:
  - worldland.provider.connection.lookup
options:
  _terms:
    description: Provider ids.
    required: true
    type: list
    elements: str
"""

EXAMPLES = r"""
- name: Skip hosts whose node exists
  ansible.builtin.debug:
    msg: "{{ lookup('worldland.provider.node_state', worldland_provider_id).exists }}"
"""

RETURN = r"""
_raw:
  description: One mapping per provider id.
  type: list
  elements: dict
  contains:
    name: {description: The node name from the provider record, type: str}
    exists: {description: Whether the cluster has that node, type: bool}
    ready: {description: Whether its Ready condition is True, type: bool}
    gpu_allocatable: {description: "Its allocatable C(nvidia.com/gpu)", type: int}
    labels: {description: Its labels, type: dict}
"""

from typing import Any  # noqa: E402 - DOCUMENTATION first, as Ansible plugins do

from ansible.errors import AnsibleLookupError  # noqa: E402
from ansible.plugins.lookup import LookupBase  # noqa: E402
from ansible.utils.unsafe_proxy import wrap_var  # noqa: E402

try:
    from ansible_collections.worldland.provider.plugins.plugin_utils.onboarding import open_onboarding

    from worldland.control.onboarding import JoinUnavailable
    from worldland.kube import KubeError
    from worldland.state.providers import UnknownProvider
except ImportError as _error:  # reported by run(), so ansible-doc still works without it
    IMPORT_ERROR: ImportError | None = _error
else:
    IMPORT_ERROR = None


class LookupModule(LookupBase):  # type: ignore[misc]  # ansible-core is untyped: its base class is Any
    def run(self, terms: list[Any], variables: dict[str, Any] | None = None, **kwargs: Any) -> list[Any]:
        if IMPORT_ERROR is not None:
            raise AnsibleLookupError(f"node_state needs the worldland Python package: {IMPORT_ERROR}")
        self.set_options(var_options=variables, direct=kwargs)
        ids = [str(term) for term in terms]
        with open_onboarding(
            "node_state",
            AnsibleLookupError,
            kubeconfig=self.get_option("kubeconfig"),
            redis_url=self.get_option("redis_url"),
            key_prefix=self.get_option("key_prefix"),
            timeout=float(self.get_option("timeout")),
        ) as onboarding:
            try:
                nodes = onboarding.provider_nodes(ids)
            except UnknownProvider as exc:
                raise AnsibleLookupError(
                    f"node_state: {exc.provider_id}: no such provider, or no node name"
                ) from None
            except (JoinUnavailable, KubeError) as exc:
                raise AnsibleLookupError(f"node_state: Kubernetes: {exc}") from None
        return [
            wrap_var(
                {
                    "name": node.name,
                    "exists": node.exists,
                    "ready": node.ready,
                    "gpu_allocatable": node.gpu_allocatable,
                    "labels": dict(node.labels),
                }
            )
            for node in (nodes[provider_id] for provider_id in ids)
        ]
