"""Documentation fragments: the options by which the plugins reach the deployment's Redis and Kubernetes.

- ``worldland.provider.connection``: ``redis_url`` and ``key_prefix`` of the controller-side actions (which
  read the environment themselves, so their defaults are named in the descriptions).
- ``worldland.provider.connection.kubeconfig``: their ``kubeconfig``.
- ``worldland.provider.connection.lookup``: ``redis_url``, ``key_prefix``, ``kubeconfig`` and ``timeout`` of
  the lookups, whose defaults and environment variables Ansible applies.
"""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  redis_url:
    description: Redis URL of the deployment (default C(WORLDLAND_REDIS_URL), else C(redis://127.0.0.1:6379/0)).
    type: str
  key_prefix:
    description: Prefix of the deployment's Redis keys (default C(WORLDLAND_KEY_PREFIX), else C(worldland:)).
    type: str
"""

    KUBECONFIG = r"""
options:
  kubeconfig:
    description: Kubeconfig of the cluster (default C(WORLDLAND_KUBECONFIG)).
    type: path
"""

    LOOKUP = r"""
options:
  redis_url:
    description: Redis URL of the deployment.
    type: str
    default: redis://127.0.0.1:6379/0
    env:
      - name: WORLDLAND_REDIS_URL
  key_prefix:
    description: Prefix of the deployment's Redis keys.
    type: str
    default: "worldland:"
    env:
      - name: WORLDLAND_KEY_PREFIX
  kubeconfig:
    description: Kubeconfig of the cluster.
    type: path
    required: true
    env:
      - name: WORLDLAND_KUBECONFIG
  timeout:
    description: Redis socket timeout in seconds.
    type: float
    default: 5.0
"""
