"""The floor of the inventory benchmark: the same hosts, groups and vars from a JSON file.

It does only what ansible-core needs done (``add_group``, ``add_host``, ``set_variable``), so the
time ``ansible-inventory`` takes with it is what ansible-core itself costs for that inventory. The
file is ``{"groups": [...], "hosts": [{"name", "groups", "vars"}, ...]}``, written by
``bench/inventory.py`` from the same data the worldland plugin lists, and must end in ``.baseline.json``.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: worldland_baseline
short_description: Benchmark floor for the worldland inventory plugin
description:
  - Reads hosts, groups and host vars from a JSON file and only adds them to the inventory.
options: {}
"""

import json  # noqa: E402 - DOCUMENTATION first, as Ansible plugins do

from ansible.plugins.inventory import BaseInventoryPlugin  # noqa: E402


class InventoryModule(BaseInventoryPlugin):
    NAME = "worldland_baseline"

    def verify_file(self, path):
        return super().verify_file(path) and str(path).endswith(".baseline.json")

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        known = set()
        for group in data["groups"]:
            known.add(inventory.add_group(group))
        for host in data["hosts"]:
            name = host["name"]
            for group in host["groups"]:
                if group not in known:
                    inventory.add_group(group)
                    known.add(group)
                inventory.add_host(name, group=group)
            for key, value in host["vars"].items():
                inventory.set_variable(name, key, value)
