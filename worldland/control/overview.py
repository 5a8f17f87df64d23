"""The fleet at a glance, as ``worldland status`` (and ``--watch``) shows it: how many providers are in
each state, per provider its state, node, GPUs per model, heartbeat age and last error, and the GPUs per
model summed over the providers listed. A few Redis round trips, whatever the fleet's size."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from worldland.domain.lifecycle import Status
from worldland.state.fleet import Fleet
from worldland.state.ledger import GpuCapacity


@dataclass(frozen=True, slots=True)
class ProviderLine:
    provider_id: str
    status: Status
    node_name: str
    public_ip: str
    last_heartbeat: float | None  # our receive time (epoch s); None: never beat
    gpus: dict[str, GpuCapacity]  # canonical model -> counts
    last_error: str

    def heartbeat_age_s(self, now: float) -> float | None:
        return age_s(self.last_heartbeat, now)


@dataclass(frozen=True, slots=True)
class FleetOverview:
    taken_at: float  # epoch s, the clock heartbeat ages are measured with
    counts: dict[Status, int]  # the whole fleet, every state, lifecycle order
    providers: list[ProviderLine]  # those asked for
    gpus: dict[str, GpuCapacity]  # per model, summed over ``providers``

    @property
    def with_errors(self) -> list[ProviderLine]:
        return [p for p in self.providers if p.last_error]


def age_s(then: float | None, now: float) -> float | None:
    """Seconds from ``then`` to ``now`` (never negative: clocks of two hosts may disagree a little)."""
    return None if then is None else max(0.0, now - then)


def seconds_since_iso(when: str | None, now: float) -> float | None:
    """Seconds from an RFC 3339 time as provider objects carry them (``last_heartbeat``, ...) to ``now``;
    negative for a time to come (``token_expires_at``)."""
    if not when:
        return None
    return now - datetime.fromisoformat(when).timestamp()


def gpu_totals(per_provider: Iterable[Mapping[str, GpuCapacity]]) -> dict[str, GpuCapacity]:
    """GPUs per model summed over providers (``total = available + in_use + mining`` holds for the sum)."""
    sums: dict[str, list[int]] = {}
    for gpus in per_provider:
        for model, counts in gpus.items():
            acc = sums.setdefault(model, [0, 0, 0, 0])
            acc[0] += counts.total
            acc[1] += counts.available
            acc[2] += counts.in_use
            acc[3] += counts.mining
    return {model: GpuCapacity(*acc) for model, acc in sorted(sums.items())}


def fleet_overview(fleet: Fleet, statuses: list[Status] | None = None) -> FleetOverview:
    """The overview now: state counts of the whole fleet, and the providers in ``statuses`` (all: None)."""
    counts = {Status(name): n for name, n in fleet.store.counts().items()}
    records = fleet.store.list(statuses)
    ids = [r.provider_id for r in records]
    beat_times = fleet.heartbeats.last_beat_times(ids) if ids else {}
    capacities = fleet.ledger.get_many(ids) if ids else {}
    now = fleet.store.clock()
    providers = []
    for record in records:
        beat = beat_times.get(record.provider_id)
        capacity = capacities.get(record.provider_id)
        providers.append(
            ProviderLine(
                provider_id=record.provider_id,
                status=record.status,
                node_name=record.node_name,
                public_ip=record.public_ip,
                last_heartbeat=beat,
                gpus=dict(capacity.gpus) if capacity else {},
                last_error=record.last_error,
            )
        )
    return FleetOverview(
        taken_at=now, counts=counts, providers=providers, gpus=gpu_totals(p.gpus for p in providers)
    )
