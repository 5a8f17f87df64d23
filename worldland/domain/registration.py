"""What a registration means: its GPUs per canonical model, and the offer that goes into the capacity
ledger, within the registered hardware (DESIGN.md, "Capacity"). Pure: no I/O.

``worldland.protocol`` checks a message's shape; ``parse_registration`` here adds its meaning and
refuses, naming the field, what the shape alone allows: a GPU whose name names no model, an offer of
more GPUs than the hardware has, more mining than is offered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from worldland.domain.names import UnknownGpuModel, canonical_gpu_model
from worldland.protocol.messages import (
    ALLOW_PRIVATE_IPS,
    CapacityOffer,
    MessageError,
    ProviderSpec,
    RegistrationRequest,
    parse_registration_request,
)

ANY_MODEL = "*"  # the key of the seed's one price for every GPU (``gpu_price_per_hour``)


class LedgerTotals(NamedTuple):
    """What the capacity ledger offers of one provider."""

    gpus: dict[str, int]  # per canonical model
    cpu_cores: int
    memory_mb: int
    mining: dict[str, int] | None = None  # GPUs that mine, per canonical model; None: not declared


def per_model(counts: Mapping[str, int]) -> dict[str, int]:
    """A map keyed by raw GPU names, keyed by canonical model (two spellings of one model add up)."""
    merged: dict[str, int] = {}
    for name, count in counts.items():
        model = canonical_gpu_model(name)
        merged[model] = merged.get(model, 0) + count
    return merged


def gpu_counts(spec: ProviderSpec) -> dict[str, int]:
    """The hardware's GPUs per canonical model (one entry may stand for all GPUs: the seed's shape)."""
    if len(spec.gpus) == 1:
        return {canonical_gpu_model(spec.gpus[0].name): spec.total_gpus or 0}
    counts: dict[str, int] = {}
    for gpu in spec.gpus:
        model = canonical_gpu_model(gpu.name)
        counts[model] = counts.get(model, 0) + 1
    return counts


def gpu_prices(offer: CapacityOffer) -> dict[str, float]:
    """Prices per GPU hour by canonical model; the seed's one price under ``ANY_MODEL``."""
    prices = {canonical_gpu_model(name): price for name, price in (offer.gpu_prices_per_hour or {}).items()}
    if offer.gpu_price_per_hour is not None:
        prices.setdefault(ANY_MODEL, offer.gpu_price_per_hour)
    return prices


def shared_cpu_cores(offer: CapacityOffer) -> int | None:
    """The CPU cores the provider shares (the SDK's ``total_cpu_cores`` is the host's: last resort)."""
    for value in (offer.cpu_cores, offer.available_cpu_cores, offer.total_cpu_cores):
        if value is not None:
            return value
    return None


def shared_memory_mb(offer: CapacityOffer) -> int | None:
    for value in (offer.memory_mb, offer.available_memory_mb, offer.total_memory_mb):
        if value is not None:
            return value
    return None


def declared_mining(offer: CapacityOffer, gpus: Mapping[str, int]) -> dict[str, int] | None:
    """Mining GPUs per canonical model as declared, or None when the offer does not say.

    ``mining_config``'s map wins; else what ``available_gpus`` leaves out of the offered GPUs.
    Raises ``ValueError`` ("field: reason").
    """
    config = offer.mining_config
    if config is not None and config.enabled is False:
        return dict.fromkeys(gpus, 0)
    if config is not None and config.gpus is not None:
        declared = per_model(config.gpus)
        where = "capacity.mining_config.mining_gpus"
    elif offer.available_gpus is not None:
        available = per_model(offer.available_gpus)
        for model, count in available.items():
            if count > gpus.get(model, 0):
                raise ValueError(
                    f"capacity.available_gpus: {count} {model} available but {gpus.get(model, 0)} offered"
                )
        declared = {model: total - available.get(model, 0) for model, total in gpus.items()}
        where = "capacity.available_gpus"
    else:
        return None
    for model, count in declared.items():
        if count > gpus.get(model, 0):
            raise ValueError(f"{where}: {count} {model} mining but {gpus.get(model, 0)} offered")
    return {model: declared.get(model, 0) for model in gpus}


def offer_within(spec: ProviderSpec, offer: CapacityOffer) -> LedgerTotals:
    """What goes into the capacity ledger: the offer, within the registered hardware.

    GPUs per canonical model default to the hardware's; cores and memory are capped by it. An offer
    of more GPUs of a model than the hardware has is refused (``ValueError``, "field: reason").
    """
    have = gpu_counts(spec)
    gpus = have if offer.total_gpus is None else per_model(offer.total_gpus)
    for model, count in gpus.items():
        if count > have.get(model, 0):
            listed = have.get(model, 0)
            raise ValueError(f"capacity.total_gpus: offers {count} {model} but spec lists {listed}")
    cores, memory = shared_cpu_cores(offer), shared_memory_mb(offer)
    return LedgerTotals(
        gpus,
        spec.cpu_cores if cores is None else min(cores, spec.cpu_cores),
        spec.total_memory_mb if memory is None else min(memory, spec.total_memory_mb),
        declared_mining(offer, gpus),
    )


def check_offer_names(offer: CapacityOffer, where: str = "capacity") -> None:
    """Every GPU name the offer's maps are keyed by names a model (``MessageError`` naming the map)."""
    maps = {
        "total_gpus": offer.total_gpus,
        "available_gpus": offer.available_gpus,
        "gpu_prices_per_hour": offer.gpu_prices_per_hour,
        "mining_config.mining_gpus": offer.mining_config.gpus if offer.mining_config else None,
    }
    for field, by_name in maps.items():
        for name in by_name or {}:
            try:
                canonical_gpu_model(name)
            except UnknownGpuModel as exc:
                raise MessageError(f"{where}.{field}", str(exc)) from None


def checked_offer(spec: ProviderSpec, offer: CapacityOffer, where: str = "capacity") -> LedgerTotals:
    """``offer_within`` with every refusal a ``MessageError`` naming the field."""
    check_offer_names(offer, where)
    try:
        return offer_within(spec, offer)
    except ValueError as exc:
        field, _, reason = str(exc).partition(": ")
        raise MessageError(field.replace("capacity", where, 1), reason) from None


@dataclass(frozen=True, slots=True)
class Registration:
    """A valid registration and what it means; computed once, when it was checked."""

    request: RegistrationRequest
    hardware: dict[str, int]  # the machine's GPUs per canonical model
    totals: LedgerTotals  # what the ledger offers

    @property
    def provider_id(self) -> str:
        return self.request.provider_id

    @property
    def wallet_addr(self) -> str:
        return self.request.wallet_addr

    @property
    def spec(self) -> ProviderSpec:
        return self.request.spec

    @property
    def capacity(self) -> CapacityOffer:
        return self.request.capacity

    @property
    def gpu_models(self) -> list[str]:
        return sorted(self.hardware)

    def offered_gpus(self) -> dict[str, int]:
        """GPUs per canonical model that go into the capacity ledger."""
        return self.totals.gpus

    def gpu_prices(self) -> dict[str, float]:
        return gpu_prices(self.request.capacity)

    def to_json(self) -> str:
        """The registration as stored (``registration_from_json`` reads it back)."""
        return self.request.model_dump_json(exclude_none=True)


def check_registration(request: RegistrationRequest) -> Registration:
    """The meaning of a well-shaped request, or ``MessageError`` naming the field and the reason."""
    for i, gpu in enumerate(request.spec.gpus):
        try:
            canonical_gpu_model(gpu.name)
        except UnknownGpuModel as exc:
            raise MessageError(f"spec.gpus[{i}].name", str(exc)) from None
    totals = checked_offer(request.spec, request.capacity)
    return Registration(request, gpu_counts(request.spec), totals)


def parse_registration(raw: bytes | str, *, allow_private_ips: bool = False) -> Registration:
    """Parse, validate and give meaning to one registration message (``MessageError`` when refused)."""
    return check_registration(parse_registration_request(raw, allow_private_ips=allow_private_ips))


def registration_from_json(stored: str) -> Registration:
    """A registration as ``Registration.to_json`` stored it (its addresses were checked when it came)."""
    request = RegistrationRequest.model_validate_json(stored, context={ALLOW_PRIVATE_IPS: True})
    return check_registration(request)
