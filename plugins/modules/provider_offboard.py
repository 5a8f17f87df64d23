"""Documentation of the ``worldland.provider.provider_offboard`` action (it runs on the controller)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: provider_offboard
author: WorldLand provider onboarding
version_added: "0.1.0"
short_description: Take a provider out of the fleet on the control-plane side (node, token, capacity, status)
description:
  - Runs on the controller (an action plugin), never on the provider host; C(playbooks/offboard.yml) runs it
    before it resets the host.
  - Refuses (and writes nothing) a provider that was never approved (pending, rejected), and one whose
    resources running jobs hold in the capacity ledger, unless O(force).
  - Marks the provider C(removed) with O(reason) first (so nothing allocates to it or issues it a token
    meanwhile) and tells its agent (on the wire as C(rejected) with C(code=removed)); then cordons its node,
    drains it through the Eviction API (DaemonSet and mirror pods left alone; disruption budgets respected)
    for at most O(drain_timeout) seconds, and deletes the Node, pods still there or not (they are reported);
    revokes its join tokens (deleted now, or queued for the listener's reconcile when Kubernetes fails); and
    takes its capacity back from the ledger, never below what running jobs hold.
  - Each step finds its own work done on a second run, which reports C(changed=false). A step that failed is
    recorded as the provider's last error and fails the task; running it again finishes the job.
  - The removed provider starts over only by registering again (Pending). The inventory does not list
    removed providers unless its C(statuses) include C(removed).
extends_documentation_fragment:
  - worldland.provider.provider_action
  - worldland.provider.connection
  - worldland.provider.connection.kubeconfig
options:
  reason:
    description: Why, as the provider's status reason and in the answer its agent gets.
    type: str
    default: offboarded by an operator
  drain_timeout:
    description: Seconds to wait for the node's pods to go after their eviction (0 evicts and does not wait).
    type: float
    default: 120
  force:
    description:
      - Offboard even while running jobs hold the provider's resources. Their pods are evicted with the rest;
        what they hold stays in the capacity ledger until they are released (a later offboard takes it back).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Take the provider out of the fleet (node, token, capacity, status)
  worldland.provider.provider_offboard:
    provider_id: "{{ worldland_provider_id }}"
    reason: hardware returned to its owner
    drain_timeout: 300
  delegate_to: localhost
"""

RETURN = r"""
status:
  description: The provider's status afterwards (C(removed)).
  type: str
  returned: always
previous_status:
  description: Its status before.
  type: str
  returned: always
complete:
  description: Whether everything is done (no step failed, no token left queued).
  type: bool
  returned: always
cordoned:
  description: Whether the node was cordoned now.
  type: bool
  returned: always
evicted:
  description: The pods (C(namespace/name)) whose eviction the API accepted.
  type: list
  elements: str
  returned: always
skipped:
  description: DaemonSet and mirror pods, left alone.
  type: list
  elements: str
  returned: always
left:
  description: Pods still on the node when the drain ended, and why (each is also a warning).
  type: dict
  returned: always
node_deleted:
  description: Whether the Node object was deleted now.
  type: bool
  returned: always
tokens_revoked:
  description: Ids of the join tokens whose Secret was deleted now.
  type: list
  elements: str
  returned: always
tokens_queued:
  description: Ids of join tokens left for the listener's next reconcile (Kubernetes failed).
  type: list
  elements: str
  returned: always
capacity_released:
  description: Whether capacity was taken back from the ledger now.
  type: bool
  returned: always
capacity:
  description: The provider's capacity ledger afterwards (what jobs still hold, else empty).
  type: dict
  returned: always
held_by_jobs:
  description: The jobs still holding resources (only when forced), each also a warning.
  type: list
  elements: str
  returned: always
errors:
  description: The steps that failed (the task fails when there are any).
  type: list
  elements: str
  returned: always
"""
