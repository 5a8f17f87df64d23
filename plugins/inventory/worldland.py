# Copyright: WorldLand provider onboarding maintainers
# Apache License 2.0 (see galaxy.yml)
"""Ansible inventory plugin: the WorldLand providers in Redis as hosts, groups and host vars.

A thin adapter: what a provider looks like in the inventory is decided by ``worldland.inventory``
(the domain core); this file adds Ansible's conventions only: options, the inventory cache,
constructed groups/vars, and marking every provider-supplied value unsafe.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: worldland
short_description: WorldLand GPU providers registered in Redis
version_added: 0.1.0
author:
  - WorldLand provider onboarding maintainers
description:
  - Lists the GPU providers that the WorldLand registration listener keeps in Redis as inventory
    hosts, one per provider, named after the provider's Kubernetes node name.
  - Groups, one per provider status (C(pending), C(approved), C(joined), C(available), C(offline),
    C(rejected) and C(removed) when listed) and one per canonical GPU model (C(gpu_RTX_4090) for C(RTX-4090)).
  - "Host vars: C(ansible_host) (the provider's public IP), C(worldland_provider_id),
    C(worldland_status), C(worldland_wallet_addr), C(worldland_node_name), C(worldland_gpu_models)
    (canonical names), C(worldland_spec) (the hardware spec the provider registered),
    C(worldland_capacity) (the capacity ledger: GPUs per model, CPU cores, memory),
    C(worldland_labels) (the Kubernetes node labels of the provider) and
    C(worldland_last_heartbeat) (RFC 3339, or null when it never beat). Never a join token."
  - "Everything a provider sends is attacker-controlled. Every value is marked unsafe, so Jinja2 in,
    say, a GPU name is printed as text and never rendered. C(ansible-inventory --list) shows such
    strings as C({\"__ansible_unsafe\": ...}) objects."
  - Providers are read in a few pipelined round trips whatever their number (no round trip per host).
    A provider record that does not decode is skipped with a warning naming it.
  - The configuration file name must end in C(worldland.yml) or C(worldland.yaml).
  - Needs the C(worldland) Python package (and C(redis)) in the Python that runs Ansible.
extends_documentation_fragment:
  - ansible.builtin.constructed
  - ansible.builtin.inventory_cache
options:
  plugin:
    description: The name of this plugin; the token that marks the file as its configuration.
    required: true
    type: str
    choices: ['worldland.provider.worldland']
  redis_url:
    description:
      - The Redis that holds the providers.
      - C(redis://), C(rediss://), C(unix://) or C(redis+sentinel://host:port[,host:port]/service[/db]).
      - Passwords in it are never shown in messages.
    type: str
    default: redis://127.0.0.1:6379/0
    env:
      - name: WORLDLAND_REDIS_URL
  key_prefix:
    description: The prefix of every key of this WorldLand deployment in Redis.
    type: str
    default: 'worldland:'
    env:
      - name: WORLDLAND_KEY_PREFIX
  statuses:
    description:
      - The provider statuses to list; one group is made for each, even when empty.
      - Rejected and removed (offboarded) providers are out of the fleet and not listed by default; list
        C(removed) to run C(offboard.yml) again on a host whose offboarding was interrupted.
    type: list
    elements: str
    choices: [pending, approved, joined, available, offline, rejected, removed]
    default: [pending, approved, joined, available, offline]
  timeout:
    description: Seconds to wait for Redis (connect and each reply).
    type: float
    default: 5.0
"""

EXAMPLES = r"""
# inventory/worldland.yml: every provider except the rejected and removed ones, Redis from WORLDLAND_REDIS_URL
plugin: worldland.provider.worldland

# Only providers waiting for onboarding, from a given Redis and deployment
plugin: worldland.provider.worldland
redis_url: redis://redis.internal:6379/0
key_prefix: 'worldland:'
statuses: [approved]

# Constructed groups and vars, and a cached inventory
plugin: worldland.provider.worldland
strict: true
compose:
  gpu_count: worldland_capacity.gpus.values() | map(attribute='total') | sum
keyed_groups:
  - key: worldland_spec.architecture
    prefix: arch
groups:
  big_rigs: gpu_count | int >= 8
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/worldland-inventory
cache_timeout: 300
"""

from collections.abc import Iterable  # noqa: E402 - DOCUMENTATION first, as Ansible plugins do
from typing import Any  # noqa: E402

from ansible.errors import AnsibleError, AnsibleParserError  # noqa: E402
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable  # noqa: E402

try:
    from ansible_collections.worldland.provider.plugins.plugin_utils.fleet import open_fleet
    from ansible_collections.worldland.provider.plugins.plugin_utils.unsafe import unsafe

    from worldland.control.inventory import InvalidRecord, InventoryHost, inventory_hosts, status_group
    from worldland.domain.lifecycle import Status
    from worldland.state.connection import redacted
except ImportError as _error:  # reported by parse(), so ansible-doc still works without it
    IMPORT_ERROR: ImportError | None = _error
else:
    IMPORT_ERROR = None

CONFIG_SUFFIXES = ("worldland.yml", "worldland.yaml")
CACHE_FORMAT = 1


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):  # type: ignore[misc]  # ansible-core is untyped: its bases are Any
    NAME = "worldland.provider.worldland"

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and str(path).endswith(CONFIG_SUFFIXES)

    def parse(self, inventory: Any, loader: Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        if IMPORT_ERROR is not None:
            raise AnsibleParserError(
                f"the worldland inventory plugin needs the worldland Python package: {IMPORT_ERROR}"
            )
        self._read_config(path)
        url, prefix = self.get_option("redis_url"), self.get_option("key_prefix")
        statuses = self._statuses()
        source = {"redis_url": redacted(url), "key_prefix": prefix, "statuses": [s.value for s in statuses]}

        # The inventory cache pattern: read the entry unless told to refresh (--flush-cache gives
        # cache=False); write it only when it was missing, stale or refreshed, so a cached entry is
        # never rewritten (that would restart its timeout).
        caching = bool(self.get_option("cache"))
        cache_key = self.get_cache_key(path)
        hosts = self._from_cache(cache_key, source) if caching and cache else None
        if hosts is None:
            hosts = self._fetch(url, prefix, statuses)
            if caching:
                self._cache[cache_key] = {
                    "format": CACHE_FORMAT,
                    "source": source,
                    "hosts": [host.to_dict() for host in hosts],
                }
        self._populate(hosts, statuses)

    # -- configuration -----------------------------------------------------------------------------

    def _read_config(self, path: str) -> None:
        try:
            self._read_config_data(path)
        except AnsibleParserError:
            raise
        except AnsibleError as exc:  # a bad option value: one parser error naming the file
            raise AnsibleParserError(f"{path}: {exc.message}") from None

    def _statuses(self) -> list[Status]:
        wanted = self.get_option("statuses") or []
        valid = [s.value for s in Status]
        unknown = [s for s in wanted if s not in valid]
        if unknown:
            raise AnsibleParserError(f"statuses: unknown {unknown}; choose from {valid}")
        return [Status(s) for s in dict.fromkeys(wanted)]

    # -- reading ---------------------------------------------------------------------------------

    def _fetch(self, url: str, prefix: str, statuses: list[Status]) -> list[InventoryHost]:
        with open_fleet(url, prefix, float(self.get_option("timeout")), "worldland inventory") as fleet:
            return inventory_hosts(fleet, statuses, on_invalid=self._skip)

    def _skip(self, provider_id: str, error: Exception) -> None:
        why = f"field {error.args[0]!r} is missing" if isinstance(error, KeyError) else str(error)
        self.display.warning(
            f"worldland inventory: skipped provider {provider_id!r}: its record does not decode ({why})"
        )

    def _from_cache(self, cache_key: str, source: dict[str, Any]) -> list[InventoryHost] | None:
        """The cached hosts, or None when there is no usable entry for this configuration."""
        try:
            entry = self._cache[cache_key]
        except KeyError:
            return None
        try:
            if entry.get("format") != CACHE_FORMAT or entry.get("source") != source:
                return None
            return [InventoryHost.from_dict(item) for item in entry["hosts"]]
        except (AttributeError, KeyError, TypeError, InvalidRecord):
            self.display.warning(f"worldland inventory: ignoring an unreadable cache entry {cache_key!r}")
            return None

    # -- populating --------------------------------------------------------------------------------

    def _populate(self, hosts: Iterable[InventoryHost], statuses: list[Status]) -> None:
        inventory = self.inventory
        strict = self.get_option("strict")  # read once, the same for the three constructed helpers
        compose = self.get_option("compose")
        groups = self.get_option("groups")
        keyed_groups = self.get_option("keyed_groups")
        constructed = bool(compose or groups or keyed_groups)

        known = set()
        for status in statuses:  # each status group exists, so a play aimed at an empty one still runs
            known.add(inventory.add_group(status_group(status)))
        for host in hosts:
            name = host.name
            for group in host.groups:
                if group not in known:
                    inventory.add_group(group)
                    known.add(group)
                inventory.add_host(name, group=group)
            # Provider data is hostile: every string is marked unsafe before Ansible sees it.
            variables = unsafe(host.variables)
            for key, value in variables.items():
                inventory.set_variable(name, key, value)
            if constructed:
                self._set_composite_vars(compose, variables, name, strict=strict)
                self._add_host_to_composed_groups(groups, variables, name, strict=strict)
                self._add_host_to_keyed_groups(keyed_groups, variables, name, strict=strict)
