"""The ``worldland.provider.join_params`` lookup: a provider's join at play time, from the control plane."""

from __future__ import annotations

DOCUMENTATION = r"""
name: join_params
author: WorldLand provider onboarding
version_added: "0.1.0"
short_description: An Approved provider's kubeadm join parameters, read at play time
description:
  - For each provider id, the join a C(kubeadm join) needs, each value checked against its exact form -
    the endpoint, a bootstrap token, the cluster CA's hash and the node name from the provider record.
  - The token is the one recorded for the provider (its secret read from its
    C(kube-system/bootstrap-token-<id>) Secret) while it has more than 5 minutes left, else a fresh one
    issued at once (kubeadm hangs on an expired token). Never from inventory variables, facts or a cache.
  - A provider that is not Approved, or a cluster that fails, is an error (the reason is recorded on the
    provider and shown by C(worldland show)).
  - "Tasks that use the result must set C(no_log: true), since it holds a join token."
extends_documentation_fragment:
  - worldland.provider.connection.lookup
options:
  _terms:
    description: Provider ids.
    required: true
    type: list
    elements: str
  kubeconfig:
    description: Kubeconfig of the cluster the providers join.
  join_endpoint:
    description: HOST:PORT the providers join (default the kubeconfig's server).
    type: str
  token_ttl:
    description: Lifetime of a fresh join token, in seconds (900 to 3600).
    type: int
    default: 1800
"""

EXAMPLES = r"""
- name: Join the cluster
  vars:
    join: "{{ lookup('worldland.provider.join_params', worldland_provider_id) }}"
  ansible.builtin.command:
    argv: [kubeadm, join, "{{ join.endpoint }}", --token, "{{ join.token }}",
           --discovery-token-ca-cert-hash, "{{ join.ca_hash }}", --node-name, "{{ join.node_name }}"]
  no_log: true
"""

RETURN = r"""
_raw:
  description: One mapping per provider id.
  type: list
  elements: dict
  contains:
    host: {description: The API server's address providers join, type: str}
    port: {description: Its port, type: int}
    endpoint: {description: "C(host:port), IPv6 in brackets", type: str}
    token: {description: "The bootstrap token C([a-z0-9]{6}.[a-z0-9]{16}); secret", type: str}
    ca_hash: {description: "C(sha256:) of the cluster CA's SubjectPublicKeyInfo", type: str}
    node_name: {description: The provider's Kubernetes node name, type: str}
"""

from typing import Any  # noqa: E402 - DOCUMENTATION first, as Ansible plugins do

from ansible.errors import AnsibleLookupError  # noqa: E402
from ansible.plugins.lookup import LookupBase  # noqa: E402
from ansible.utils.unsafe_proxy import wrap_var  # noqa: E402

try:
    from ansible_collections.worldland.provider.plugins.plugin_utils.onboarding import open_onboarding

    from worldland.control.onboarding import JoinUnavailable
except ImportError as _error:  # reported by run(), so ansible-doc still works without it
    IMPORT_ERROR: ImportError | None = _error
else:
    IMPORT_ERROR = None


class LookupModule(LookupBase):  # type: ignore[misc]  # ansible-core is untyped: its base class is Any
    def run(self, terms: list[Any], variables: dict[str, Any] | None = None, **kwargs: Any) -> list[Any]:
        if IMPORT_ERROR is not None:
            raise AnsibleLookupError(f"join_params needs the worldland Python package: {IMPORT_ERROR}")
        self.set_options(var_options=variables, direct=kwargs)
        results = []
        with open_onboarding(
            "join_params",
            AnsibleLookupError,
            kubeconfig=self.get_option("kubeconfig"),
            join_endpoint=self.get_option("join_endpoint"),
            redis_url=self.get_option("redis_url"),
            key_prefix=self.get_option("key_prefix"),
            timeout=float(self.get_option("timeout")),
            token_ttl_s=int(self.get_option("token_ttl")),
        ) as onboarding:
            for term in terms:
                provider_id = str(term)
                try:
                    values = onboarding.join_values(provider_id)
                except (JoinUnavailable, ValueError) as exc:
                    raise AnsibleLookupError(f"join_params: {provider_id}: {exc}") from None
                results.append(
                    wrap_var(
                        {
                            "host": values.host,
                            "port": values.port,
                            "endpoint": values.endpoint,
                            "token": values.token,
                            "ca_hash": values.ca_hash,
                            "node_name": values.node_name,
                        }
                    )
                )
        return results
