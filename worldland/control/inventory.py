"""Providers as Ansible inventory: the host names, groups and host vars the inventory plugin adapts.

The plugin (``plugins/inventory/worldland.py``) only adds Ansible's conventions (options, cache,
unsafe marking, constructed groups); what a provider looks like in the inventory is decided here,
from the core's listing (``ProviderStore.list``, ``CapacityLedger.get_many``,
``HeartbeatIndex.last_beat_times``): a few pipelined round trips for the whole fleet, none per host.

Every value here may come from a provider and is hostile: the plugin marks all of it unsafe.
Never a token: host vars are built field by field from the record, never by copying it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from worldland.domain.lifecycle import CLOSED_STATES, Status
from worldland.domain.names import gpu_model_group, node_labels
from worldland.protocol.ids import PROVIDER_ID_RE
from worldland.state.fleet import Fleet
from worldland.state.ledger import Capacity
from worldland.state.providers import STATUS_ORDER, ProviderRecord, iso_time

# What the inventory lists unless told otherwise: every provider except those out of the fleet (rejected,
# removed: an offboarded machine is no longer ours to run plays on; list ``removed`` to finish an
# interrupted offboard.yml).
DEFAULT_STATUSES: tuple[Status, ...] = tuple(s for s in STATUS_ORDER if s not in CLOSED_STATES)

OnInvalid = Callable[[str, Exception], None]


class InvalidRecord(ValueError):
    """A stored provider record that cannot be described (it is skipped, with a warning)."""


@dataclass(frozen=True, slots=True)
class InventoryHost:
    """One provider as an inventory host: its name (the node name), its groups and its host vars."""

    name: str
    groups: tuple[str, ...]
    variables: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (what the plugin caches)."""
        return {"name": self.name, "groups": list(self.groups), "vars": self.variables}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InventoryHost:
        name, groups, variables = data["name"], data["groups"], data["vars"]
        if not isinstance(name, str) or not isinstance(groups, list) or not isinstance(variables, dict):
            raise InvalidRecord("not an inventory host entry")
        return cls(name, tuple(str(g) for g in groups), variables)


def status_group(status: Status | str) -> str:
    """The inventory group of a status (``approved``: the group ``onboard.yml`` targets)."""
    return Status(status).value


def host_from_record(
    record: ProviderRecord, capacity: Capacity | None, last_beat: float | None
) -> InventoryHost:
    """The inventory host of one provider; raises ``InvalidRecord`` when the stored data is unusable."""
    models = record.gpu_models
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise InvalidRecord("gpu_models is not a list of names")
    if not record.node_name:
        raise InvalidRecord("it has no node name")
    try:
        registration = record.registration
    except ValueError as exc:
        raise InvalidRecord(f"its registration is not JSON: {exc}") from None
    spec = registration.get("spec") if isinstance(registration, dict) else None
    if not isinstance(spec, dict):
        raise InvalidRecord("its registration has no spec")
    status = record.status.value
    variables = {
        "ansible_host": record.public_ip,
        "worldland_provider_id": record.provider_id,
        "worldland_status": status,
        "worldland_wallet_addr": record.wallet_addr,
        "worldland_node_name": record.node_name,
        "worldland_gpu_models": models,
        "worldland_spec": spec,
        "worldland_capacity": capacity.to_dict() if capacity is not None else None,
        "worldland_labels": node_labels(record.provider_id, models, status),
        "worldland_last_heartbeat": iso_time(last_beat),
    }
    groups = (status_group(record.status), *(gpu_model_group(m) for m in models))
    return InventoryHost(record.node_name, groups, variables)


def inventory_hosts(
    fleet: Fleet, statuses: Iterable[Status | str] | None = None, on_invalid: OnInvalid | None = None
) -> list[InventoryHost]:
    """The providers in ``statuses`` (default ``DEFAULT_STATUSES``) as inventory hosts, by provider id.

    Round trips: one for the ids, one per ``LIST_CHUNK`` records, one for the capacity ledgers and one
    for the heartbeat times, whatever the fleet size. A record that does not decode is passed to
    ``on_invalid(provider_id, error)`` and skipped (it raises when ``on_invalid`` is None).
    """

    def invalid(provider_id: str, error: Exception) -> None:
        if on_invalid is None:
            raise error
        on_invalid(provider_id, error)

    wanted = [Status(s) for s in (DEFAULT_STATUSES if statuses is None else statuses)]
    records = []
    for record in fleet.store.list(wanted, on_invalid=invalid):
        if PROVIDER_ID_RE.match(record.provider_id):
            records.append(record)
        else:
            invalid(record.provider_id, InvalidRecord("its provider id is not valid"))
    ids = [r.provider_id for r in records]
    capacities = fleet.ledger.get_many(ids)
    beats = fleet.heartbeats.last_beat_times(ids)
    hosts = []
    owners: dict[str, str] = {}
    for record in records:
        pid = record.provider_id
        try:
            host = host_from_record(record, capacities.get(pid), beats.get(pid))
            if owners.setdefault(host.name, pid) != pid:  # node names are claimed uniquely by the core
                raise InvalidRecord(f"its node name {host.name!r} belongs to provider {owners[host.name]!r}")
        except InvalidRecord as exc:
            invalid(pid, exc)
            continue
        hosts.append(host)
    return hosts
