"""Documentation of the ``worldland.provider.provider_node`` action (it runs on the controller)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: provider_node
author: WorldLand provider onboarding
version_added: "0.1.0"
short_description: Record a joined provider's state and bring its node's labels and taint in line
description:
  - Runs on the controller (an action plugin), never on the provider host.
  - After a provider's C(kubeadm join), moves it Approved -> Joined, and Joined -> Available when its node is
    Ready with as many C(nvidia.com/gpu) allocatable as the machine registered GPUs; applies the node's labels
    and offline taint through the Kubernetes API by the one rule the listener and the audit use, writing only
    what differs.
  - The same step as the listener's reconcile pass, for one provider, at once.
extends_documentation_fragment:
  - worldland.provider.provider_action
  - worldland.provider.connection
  - worldland.provider.connection.kubeconfig
options:
  require_available:
    description: Fail unless the provider ends Available (a hard check, with the reason when it is not).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Record the join and label the node
  worldland.provider.provider_node:
    provider_id: "{{ worldland_provider_id }}"
    require_available: true
  delegate_to: localhost
"""

RETURN = r"""
status:
  description: The provider's status afterwards.
  type: str
  returned: always
previous_status:
  description: Its status before.
  type: str
  returned: always
node_written:
  description: Whether the node's labels or taint were written.
  type: bool
  returned: always
waiting:
  description: Why a Joined provider is not Available yet (node not Ready, fewer GPUs allocatable).
  type: str
  returned: when the provider stays Joined
"""
