"""Documentation of the ``worldland.provider.provider_error`` action (it runs on the controller)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: provider_error
author: WorldLand provider onboarding
version_added: "0.1.0"
short_description: Record why onboarding a provider failed
description:
  - Runs on the controller (an action plugin), never on the provider host.
  - Stores the message as the provider's last error (one line, at most 512 characters), which
    C(worldland show) and C(worldland status) print; the provider keeps its state (an Approved provider stays
    Approved) and the next C(onboard.yml) run tries it again. A later successful join clears it.
extends_documentation_fragment:
  - worldland.provider.provider_action
  - worldland.provider.connection
options:
  message:
    description: What failed; an empty string clears the last error.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Record the failure on the provider
  worldland.provider.provider_error:
    provider_id: "{{ worldland_provider_id }}"
    message: "{{ ansible_failed_task.name }}: {{ ansible_failed_result.msg | default('failed') }}"
  delegate_to: localhost
"""

RETURN = r"""
last_error:
  description: The message as stored.
  type: str
  returned: success
"""
