"""Wire messages (DESIGN.md, "Wire protocol") as pydantic models, and their parsing.

Both shapes of a registration are accepted: the seed document's (``memory`` per GPU, one entry
standing for all GPUs of a model, ``gpu_price_per_hour``) and the deployed Go agent's (``memory_mb``
and device details per GPU, per-model capacity maps). Unknown fields are ignored. Everything a
provider sends is hostile: every failure names the field and the reason, and parsing never lets an
exception other than ``MessageError`` escape.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Annotated, Any, Self, TypeVar

from Crypto.Hash import keccak
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from worldland.protocol.ids import check_provider_id
from worldland.protocol.status import Status, wire_status

MAX_MESSAGE_BYTES = 64 * 1024
MAX_GPUS = 64
MAX_CPU_CORES = 4096
MAX_CPU_THREADS = 2 * MAX_CPU_CORES
MAX_MEMORY_MB = 64 * 1024 * 1024  # 64 TiB in MiB
MAX_GPU_MEMORY_MB = 1024 * 1024  # 1 TiB in MiB
MAX_DISK_GB = 1024 * 1024  # 1 PiB in GB
MAX_PRICE_PER_HOUR = 1_000_000.0
MAX_ACTIVE_JOBS = 100_000
MAX_USAGE = 1_000_000.0  # usage figures are informational; multi-core CPU percentages exceed 100

_HEX_ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}\Z")
_HOST_LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")

ALLOW_PRIVATE_IPS = "allow_private_ips"  # validation context key, set from the approval policy

Count = Annotated[int, Field(ge=0)]
Price = Annotated[float, Field(ge=0, le=MAX_PRICE_PER_HOUR)]
ShortText = Annotated[str, Field(max_length=128)]


class MessageError(ValueError):
    """A message was refused. ``field`` is a dotted path (``spec.gpus[0].memory_mb``)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class WireModel(BaseModel):
    # strict: no silent coercion of "32" or true into numbers; JSON strings still parse as datetimes.
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False, populate_by_name=True)


def eip55_checksum(address: str) -> str:
    """The EIP-55 mixed-case form of a ``0x`` + 40 hex digit address."""
    lower = address[2:].lower()
    digest = keccak.new(digest_bits=256, data=lower.encode("ascii")).hexdigest()
    return "0x" + "".join(
        c.upper() if int(d, 16) >= 8 else c for c, d in zip(lower, digest[:40], strict=True)
    )


def check_wallet_address(value: str) -> str:
    if not _HEX_ADDRESS_RE.match(value):
        hint = " (it looks like a documentation placeholder)" if "..." in value else ""
        raise ValueError(f"must be 0x followed by 40 hexadecimal digits{hint}")
    body = value[2:]
    if body != body.lower() and body != body.upper() and eip55_checksum(value) != value:
        raise ValueError("mixed-case address fails its EIP-55 checksum")
    return value


def check_hostname(value: str) -> str:
    """RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens."""
    if not value or len(value) > 253:
        raise ValueError("must be 1 to 253 characters")
    for label in value.removesuffix(".").split("."):  # one root dot at most
        if not _HOST_LABEL_RE.match(label):
            raise ValueError(
                "must be an RFC 1123 host name: labels of 1-63 letters, digits and inner hyphens"
            )
    return value


def _refuse_scope_id(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    # ipaddress accepts any text after "%" as an IPv6 zone ("2606:4700::1%{{ lookup(...) }}").
    if getattr(address, "scope_id", None) is not None:
        raise ValueError("must not carry an IPv6 zone (%...)")


def check_public_ip(value: str, allow_private: bool) -> str:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("is not a valid IPv4 or IPv6 address") from None
    _refuse_scope_id(address)
    never = ("is_unspecified", "is_loopback", "is_multicast", "is_link_local", "is_reserved")
    for attribute in never:
        if getattr(address, attribute):
            kind = attribute.removeprefix("is_").replace("_", "-")
            raise ValueError(f"{address} is a {kind} address, not reachable as a provider")
    if not address.is_global and not allow_private:
        raise ValueError(f"{address} is not a public address and the policy does not allow private ranges")
    return str(address)


# Kubernetes', Debian's and Go's names (what node labels and package repositories use); the kernel's
# ``uname -m`` spellings map to them.
ARCHITECTURES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "x64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armhf": "arm",
    "arm": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def normalise_architecture(value: str) -> str:
    """``x86_64`` and Go's ``amd64`` are one architecture: ``amd64`` (likewise ``aarch64``/``arm64``)."""
    name = ARCHITECTURES.get(value.strip().lower())
    if name is None:
        raise ValueError(
            f"{value!r:.40} is not a known CPU architecture ({', '.join(sorted(set(ARCHITECTURES)))})"
        )
    return name


ProviderId = Annotated[str, AfterValidator(check_provider_id)]
WalletAddress = Annotated[str, AfterValidator(check_wallet_address)]


class GpuInfo(WireModel):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    memory_mb: Annotated[int, Field(ge=0, le=MAX_GPU_MEMORY_MB)] | None = Field(
        default=None, validation_alias=AliasChoices("memory_mb", "memory")
    )
    index: Annotated[int, Field(ge=0, lt=MAX_GPUS)] | None = None
    uuid: Annotated[str, Field(max_length=64)] | None = None
    driver_ver: Annotated[str, Field(max_length=32)] | None = None
    cuda_version: Annotated[str, Field(max_length=32)] | None = None
    pci_bus_id: Annotated[str, Field(max_length=32)] | None = None

    @field_validator("name")
    @classmethod
    def _name_has_text(cls, value: str) -> str:
        if not value.strip() or not value.isprintable():
            raise ValueError("must be printable text")
        return value


class ProviderSpec(WireModel):
    hostname: Annotated[str, Field(max_length=253)]
    public_ip: Annotated[str, Field(max_length=64)]
    private_ip: Annotated[str, Field(max_length=64)] | None = None
    os: ShortText | None = None
    kernel_ver: ShortText | None = None
    architecture: Annotated[str, Field(max_length=32)] | None = None
    cpu_model: ShortText | None = None
    cpu_cores: Annotated[int, Field(ge=0, le=MAX_CPU_CORES)]
    cpu_threads: Annotated[int, Field(ge=0, le=MAX_CPU_THREADS)] | None = None
    total_memory_mb: Annotated[int, Field(ge=0, le=MAX_MEMORY_MB)]
    # total_gpus is declared before gpus so the gpus validator can compare the two.
    total_gpus: Annotated[int, Field(ge=0, le=MAX_GPUS)] | None = None
    gpus: Annotated[list[GpuInfo], Field(max_length=MAX_GPUS)] = []
    total_disk_gb: Annotated[int, Field(ge=0, le=MAX_DISK_GB)] | None = None
    available_disk_gb: Annotated[int, Field(ge=0, le=MAX_DISK_GB)] | None = None

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        return check_hostname(value)

    @field_validator("gpus", mode="before")
    @classmethod
    def _null_is_no_gpus(cls, value: Any) -> Any:
        # The Go agent encodes an empty slice as null on every CPU-only or driverless host.
        return [] if value is None else value

    @field_validator("architecture")
    @classmethod
    def _architecture(cls, value: str | None) -> str | None:
        return None if value in (None, "") else normalise_architecture(value)

    @field_validator("public_ip")
    @classmethod
    def _public_ip(cls, value: str, info: ValidationInfo) -> str:
        allow_private = bool((info.context or {}).get(ALLOW_PRIVATE_IPS, False))
        return check_public_ip(value, allow_private)

    @field_validator("private_ip")
    @classmethod
    def _private_ip(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("is not a valid IPv4 or IPv6 address") from None
        _refuse_scope_id(address)
        return str(address)

    @field_validator("gpus")
    @classmethod
    def _gpus_match_total(cls, gpus: list[GpuInfo], info: ValidationInfo) -> list[GpuInfo]:
        total = info.data.get("total_gpus")
        if total is None or len(gpus) == total:
            return gpus
        if len(gpus) == 1 and total > 0:  # one entry standing for all GPUs of one model (the seed's shape)
            return gpus
        raise ValueError(
            f"has {len(gpus)} entries but total_gpus is {total}: give one entry per GPU "
            f"or a single entry standing for all {total}"
        )

    @model_validator(mode="after")
    def _defaults_and_consistency(self) -> Self:
        if self.total_gpus is None:
            self.total_gpus = len(self.gpus)
        elif self.total_gpus > 0 and not self.gpus:
            raise ValueError(f"gpus: is empty but total_gpus is {self.total_gpus}")
        if (
            self.total_disk_gb is not None
            and self.available_disk_gb is not None
            and self.available_disk_gb > self.total_disk_gb
        ):
            raise ValueError(
                f"available_disk_gb: {self.available_disk_gb} exceeds total_disk_gb {self.total_disk_gb}"
            )
        return self


ModelCounts = Annotated[dict[Annotated[str, Field(max_length=128)], Count], Field(max_length=MAX_GPUS)]
ModelPrices = Annotated[dict[Annotated[str, Field(max_length=128)], Price], Field(max_length=MAX_GPUS)]


class MiningConfig(WireModel):
    """The SDK's ``mining_config``: which GPUs mine while not rented (other fields are ignored)."""

    enabled: bool | None = None
    gpus: ModelCounts | None = Field(default=None, validation_alias=AliasChoices("mining_gpus", "gpus"))


class CapacityOffer(WireModel):
    """What a provider offers for rental. Every field is optional; maps are keyed by raw GPU names.

    The Go SDK reports host totals in ``total_cpu_cores``/``total_memory_mb``, the part it shares in
    ``cpu_cores``/``available_cpu_cores``/``memory_mb``/``available_memory_mb``, its GPUs per model in
    ``total_gpus`` and, with the mining GPUs taken out, in ``available_gpus``; ``mining_config`` may
    name the mining GPUs per model. The ledger offers the shared part and starts with that mining.
    """

    gpu_count: Annotated[int, Field(ge=0, le=MAX_GPUS)] | None = None
    cpu_cores: Annotated[int, Field(ge=0, le=MAX_CPU_CORES)] | None = None
    memory_mb: Annotated[int, Field(ge=0, le=MAX_MEMORY_MB)] | None = None
    gpu_price_per_hour: Price | None = None
    total_gpus: ModelCounts | None = None
    total_cpu_cores: Annotated[int, Field(ge=0, le=MAX_CPU_CORES)] | None = None
    total_memory_mb: Annotated[int, Field(ge=0, le=MAX_MEMORY_MB)] | None = None
    available_gpus: ModelCounts | None = None
    available_cpu_cores: Annotated[int, Field(ge=0, le=MAX_CPU_CORES)] | None = None
    available_memory_mb: Annotated[int, Field(ge=0, le=MAX_MEMORY_MB)] | None = None
    gpu_prices_per_hour: ModelPrices | None = None
    cpu_price_per_hour: Price | None = None
    available_from: datetime | None = None
    available_until: datetime | None = None
    mining_config: MiningConfig | None = None

    @field_validator("total_gpus", "available_gpus")
    @classmethod
    def _per_model_bounded(cls, counts: dict[str, int] | None) -> dict[str, int] | None:
        if counts is not None and sum(counts.values()) > MAX_GPUS:
            raise ValueError(f"adds up to {sum(counts.values())} GPUs; at most {MAX_GPUS}")
        return counts


class RegistrationRequest(WireModel):
    provider_id: ProviderId
    wallet_addr: WalletAddress
    spec: ProviderSpec
    capacity: CapacityOffer = CapacityOffer()
    agent_version: Annotated[str, Field(max_length=32)] | None = None
    timestamp: datetime | None = None


class Heartbeat(WireModel):
    provider_id: ProviderId
    node_name: Annotated[str, Field(max_length=253)] | None = None
    # What the agent says about itself: information only, never the lifecycle's truth.
    status: Annotated[str, Field(max_length=32)] | None = None
    gpu_usage: Annotated[list[Annotated[float, Field(ge=0, le=MAX_USAGE)]], Field(max_length=MAX_GPUS)] = []
    cpu_usage: Annotated[float, Field(ge=0, le=MAX_USAGE)] | None = None
    memory_usage: Annotated[float, Field(ge=0, le=MAX_USAGE)] | None = None
    active_jobs: Annotated[int, Field(ge=0, le=MAX_ACTIVE_JOBS)] = 0
    # Per-GPU memory in use (MiB), sent by this project's agent; the Go agent leaves it out.
    # (None when absent: a list default would be copied on every parse, on the hottest path there is.)
    gpu_memory_used_mb: (
        Annotated[list[Annotated[int, Field(ge=0, le=MAX_GPU_MEMORY_MB)]], Field(max_length=MAX_GPUS)] | None
    ) = None
    timestamp: datetime | None = None


class CapacityUpdate(WireModel):
    """A ``provider:capacity`` message: ``{"provider_id", "capacity": {...}}`` or the offer's fields flat."""

    provider_id: ProviderId
    capacity: CapacityOffer
    timestamp: datetime | None = None

    @model_validator(mode="before")
    @classmethod
    def _accept_flat(cls, data: Any) -> Any:
        if isinstance(data, dict) and "capacity" not in data:
            flat = {k: v for k, v in data.items() if k not in ("provider_id", "timestamp")}
            return {
                "provider_id": data.get("provider_id"),
                "timestamp": data.get("timestamp"),
                "capacity": flat,
            }
        return data


UNKNOWN_PROVIDER = "unknown_provider"  # RegistrationResponse.code: the listener does not know this id
# RegistrationResponse.code: an operator offboarded the provider (its status goes on the wire as rejected)
PROVIDER_REMOVED = "removed"


class RegistrationResponse(WireModel):
    success: bool
    status: Status
    message: Annotated[str, Field(max_length=1024)]
    # The token travels to the provider only; repr=False keeps it out of logs and tracebacks.
    join_token: str | None = Field(default=None, repr=False)
    join_command: str | None = Field(default=None, repr=False)
    master_ip: str | None = None
    master_port: int | None = None
    ca_hash: str | None = None
    node_name: str | None = None
    labels: dict[str, str] | None = None
    # Why, for machines: "unknown_provider" when a heartbeat came from an id the listener does not know
    # (the agent registers again). The Go agent ignores fields it does not know.
    code: Annotated[str, Field(max_length=64)] | None = None

    @field_serializer("status")
    def _status_on_the_wire(self, status: Status) -> str:
        # The Go agent knows the seven statuses of DESIGN.md only: "removed" is told as "rejected".
        return wire_status(status)

    def to_wire(self) -> str:
        return self.model_dump_json(exclude_none=True)


M = TypeVar("M", bound=BaseModel)

_FRIENDLY_ERRORS = {
    "missing": "is required",
    "json_invalid": "is not valid JSON",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "list_type": "must be a JSON array",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "finite_number": "must be a finite number",
}


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "message"


def to_message_error(error: ValidationError) -> MessageError:
    first = error.errors(include_url=False, include_input=False)[0]
    loc = tuple(first["loc"])
    reason = _FRIENDLY_ERRORS.get(first["type"]) or first["msg"].removeprefix("Value error, ")
    # A model-level check names its own field as "field: reason"; fold it into the path.
    head, sep, tail = reason.partition(": ")
    if sep and re.fullmatch(r"[a-z_.]+", head):
        if "." in head:
            loc = ()
        loc = (*loc, *head.split("."))
        reason = tail
    if first["type"] == "json_invalid":
        loc = ()
    if len(error.errors()) > 1:
        reason += f" (and {len(error.errors()) - 1} more problem(s))"
    return MessageError(_field_path(loc), reason)


def parse_message(model: type[M], raw: bytes | str, *, allow_private_ips: bool = False) -> M:
    """Parse and validate one wire message; raise ``MessageError`` naming the field and the reason."""
    if not isinstance(raw, str | bytes | bytearray):
        raise MessageError("message", f"must be bytes or text, not {type(raw).__name__}")
    size = len(raw)
    if isinstance(raw, str) and size * 4 > MAX_MESSAGE_BYTES:  # short text cannot exceed it: skip encoding
        size = len(raw.encode("utf-8", "surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        raise MessageError("message", f"is {size} bytes; at most {MAX_MESSAGE_BYTES} are accepted")
    if isinstance(raw, bytes | bytearray):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MessageError("message", f"is not valid UTF-8 (byte {exc.start})") from None
    try:
        return model.model_validate_json(raw, context={ALLOW_PRIVATE_IPS: allow_private_ips})
    except ValidationError as exc:
        raise to_message_error(exc) from None
    except (ValueError, TypeError, RecursionError) as exc:  # defensive: nothing else may escape
        raise MessageError("message", f"could not be parsed ({type(exc).__name__})") from None


def parse_registration_request(raw: bytes | str, *, allow_private_ips: bool = False) -> RegistrationRequest:
    """The shape only; ``worldland.domain.registration.parse_registration`` adds the meaning."""
    return parse_message(RegistrationRequest, raw, allow_private_ips=allow_private_ips)


def parse_heartbeat(raw: bytes | str) -> Heartbeat:
    return parse_message(Heartbeat, raw)


def parse_capacity_update(raw: bytes | str) -> CapacityUpdate:
    return parse_message(CapacityUpdate, raw)
