"""Documentation fragment of the controller-side actions that write a provider's state (``provider_node``,
``provider_error``, ``provider_offboard``): the ``provider_id`` option and check mode (not supported)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  provider_id:
    description: The provider's id (for example the inventory's C(worldland_provider_id)).
    type: str
    required: true
attributes:
  check_mode:
    support: none
    description: Not supported; in check mode the action is skipped.
"""
