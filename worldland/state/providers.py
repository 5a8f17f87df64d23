"""Providers in Redis: records, status indexes, node-name claims and atomic, checked transitions.

A provider is a hash at ``Keys.provider(id)``; each status has a set of ids (``Keys.status_index``)
so listing by status never scans the keyspace; a node name is claimed with ``Keys.node_claim`` so
two providers never share one. Every write that reads a state first runs as one Lua script, so
concurrent writers (several listeners, an audit, an operator) cannot interleave.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from worldland.domain.lifecycle import LIVE_STATES, Status, TransitionError, check_transition
from worldland.domain.names import node_name as make_node_name
from worldland.domain.registration import Registration, registration_from_json
from worldland.state import decoded
from worldland.state.keys import Keys
from worldland.state.ledger import CapacityError, ledger_args
from worldland.state.scripts import script

Clock = Callable[[], float]
OnInvalid = Callable[[str, Exception], None]  # (provider id, why its record does not decode)
LIST_CHUNK = 2000  # providers fetched per pipeline when listing
NODE_NAME_ATTEMPTS = 4
STATUS_ORDER: tuple[Status, ...] = tuple(Status)  # as the Lua header's STATUS_ORDER: transition_keys()


class StoreError(ValueError):
    """A store operation was refused; nothing was written."""


class UnknownProvider(StoreError):
    def __init__(self, provider_id: str) -> None:
        self.provider_id = provider_id
        super().__init__(f"provider {provider_id!r} is not registered")


class WalletMismatch(StoreError):
    def __init__(self, provider_id: str) -> None:
        self.provider_id = provider_id
        super().__init__(
            f"provider {provider_id!r} is bound to another wallet; a provider id keeps its first wallet"
        )


class StatusConflict(StoreError):
    """Compare-and-set failed: the provider was not in the state the caller expected."""

    def __init__(self, provider_id: str, expected: str, actual: str) -> None:
        self.provider_id, self.expected, self.actual = provider_id, expected, actual
        super().__init__(f"provider {provider_id!r} is {actual}, not {expected}")


# Lua in lua/*.lua (each file says its KEYS, ARGV and reply), under the header that
# worldland.state.scripts generates from the lifecycle (transition table, status order, node states).
_TRANSITION_SCRIPT = script("transition_functions", "provider_transition")
_REGISTER_SCRIPT = script("ledger_functions", "provider_register")
_SET_IF_EXISTS_SCRIPT = script("provider_set_if_exists")


OPERATOR = "operator"  # ProviderRecord.rejected_by when an operator rejected


def same_wallet(a: str, b: str) -> bool:
    """Wallet addresses compare without case (EIP-55 mixed case is only a checksum)."""
    return a.lower() == b.lower()


def approved_registration(record: ProviderRecord) -> Registration:
    """The registration a provider was approved with, as stored."""
    return registration_from_json(record.registration_json)


def _flatten(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


def iso_time(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def _float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


@dataclass(slots=True)
class ProviderRecord:
    provider_id: str
    status: Status
    wallet_addr: str
    node_name: str
    hostname: str = ""
    public_ip: str = ""
    gpu_models: list[str] = field(default_factory=list)
    # Kept as stored and decoded on use: listing many providers rarely needs it.
    registration_json: str = "{}"
    previous_status: Status | None = None
    created_at: float | None = None
    updated_at: float | None = None
    status_changed_at: float | None = None
    approved_at: float | None = None
    status_reason: str = ""
    last_error: str = ""
    # The join token's public id and expiry; the secret lives only in the cluster's Secret.
    token_id: str = ""
    token_expires_at: float | None = None
    # "operator" when an operator rejected (or revoked) the provider: it then stays rejected until an
    # operator acts; a provider the policy rejected may register again, corrected.
    rejected_by: str = ""
    # A registration change that waits for an operator's approval (JSON), "" when none does.
    pending_registration: str = ""

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> ProviderRecord:
        previous = data.get("previous_status")
        return cls(
            provider_id=data["provider_id"],
            status=Status(data["status"]),
            wallet_addr=data["wallet_addr"],
            node_name=data["node_name"],
            hostname=data.get("hostname", ""),
            public_ip=data.get("public_ip", ""),
            gpu_models=json.loads(data.get("gpu_models") or "[]"),
            registration_json=data.get("registration") or "{}",
            previous_status=Status(previous) if previous else None,
            created_at=_float(data.get("created_at")),
            updated_at=_float(data.get("updated_at")),
            status_changed_at=_float(data.get("status_changed_at")),
            approved_at=_float(data.get("approved_at")),
            status_reason=data.get("status_reason", ""),
            last_error=data.get("last_error", ""),
            token_id=data.get("token_id", ""),
            token_expires_at=_float(data.get("token_expires_at")),
            rejected_by=data.get("rejected_by", ""),
            pending_registration=data.get("pending_registration", ""),
        )

    @property
    def registration(self) -> dict[str, Any]:
        registration: dict[str, Any] = json.loads(self.registration_json)
        return registration

    @property
    def gpu_count(self) -> int:
        """The GPUs the machine registered (all of them: a device plugin exposes every one)."""
        spec = self.spec
        total = spec.get("total_gpus")
        return int(total) if isinstance(total, int) else len(spec.get("gpus") or [])

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.registration.get("spec", {})
        return spec

    def to_dict(self, include_spec: bool = True) -> dict[str, Any]:
        """Plain data for JSON output; ``include_spec`` False skips decoding the registration."""
        data: dict[str, Any] = {
            "provider_id": self.provider_id,
            "status": self.status.value,
            "previous_status": self.previous_status.value if self.previous_status else None,
            "wallet_addr": self.wallet_addr,
            "node_name": self.node_name,
            "hostname": self.hostname,
            "public_ip": self.public_ip,
            "gpu_models": self.gpu_models,
            "created_at": iso_time(self.created_at),
            "updated_at": iso_time(self.updated_at),
            "status_changed_at": iso_time(self.status_changed_at),
            "approved_at": iso_time(self.approved_at),
            "status_reason": self.status_reason or None,
            "last_error": self.last_error or None,
            "token_expires_at": iso_time(self.token_expires_at),
            "rejected_by": self.rejected_by or None,
            "change_awaiting_approval": bool(self.pending_registration),
        }
        if include_spec:
            data["spec"] = self.spec
        return data


@dataclass(frozen=True, slots=True)
class UpsertResult:
    record: ProviderRecord
    created: bool


@dataclass(frozen=True, slots=True)
class TransitionResult:
    provider_id: str
    previous: Status
    current: Status
    changed: bool  # False when the provider already was in the target state


class ProviderStore:
    """Provider records. The client must decode responses (``worldland.config.connect`` makes one)."""

    def __init__(self, client: redis.Redis, keys: Keys | None = None, clock: Clock = time.time) -> None:
        self.client = client
        self.keys = keys or Keys()
        self.clock = clock
        self._register = client.register_script(_REGISTER_SCRIPT)
        self._transition = client.register_script(_TRANSITION_SCRIPT)
        self._set_if_exists = client.register_script(_SET_IF_EXISTS_SCRIPT)

    def status_index_keys(self) -> list[str]:
        return [self.keys.status_index(s) for s in STATUS_ORDER]

    def transition_keys(self) -> list[str]:
        """The keys ``lua/transition_functions.lua`` expects from its ``first_index``, in its order."""
        return [*self.status_index_keys(), self.keys.node_sync, self.keys.awaiting_first_beat]

    # -- writes -----------------------------------------------------------------------------------

    def upsert_registration(self, request: Registration) -> UpsertResult:
        """Create the provider (Pending) or update its registration details, and set its capacity
        ledger to what it offers: all checks first, then both writes in one script, or nothing.

        Idempotent by provider_id; the status is never changed here; a provider id stays bound to its
        first wallet (``WalletMismatch``); a ledger below what jobs hold raises ``CapacityError``.
        """
        pid = request.provider_id
        totals = request.totals
        fields = {
            "hostname": request.spec.hostname,
            "public_ip": request.spec.public_ip,
            "gpu_models": json.dumps(request.gpu_models),
            "registration": request.to_json(),
            "pending_registration": "",  # a registration accepted now supersedes a waiting change
        }
        tail = [len(fields), *_flatten(fields), *ledger_args(*totals)]
        now = repr(self.clock())
        for attempt in range(NODE_NAME_ATTEMPTS):
            candidate = make_node_name(request.spec.hostname, pid, attempt)
            keys = [
                self.keys.provider(pid),
                self.keys.node_claim(candidate),
                self.keys.status_index(Status.PENDING),
                self.keys.capacity(pid),
            ]
            outcome, _status, detail = self._run(
                self._register, keys, [pid, request.wallet_addr, candidate, now, *tail]
            )
            if outcome == "wallet_mismatch":
                raise WalletMismatch(pid)
            if outcome == "capacity":
                raise CapacityError(detail)
            if outcome in ("created", "updated"):
                return UpsertResult(self.require(pid), created=outcome == "created")
        raise StoreError(f"provider {pid!r}: no free node name after {NODE_NAME_ATTEMPTS} attempts")

    def transition(
        self,
        provider_id: str,
        target: Status,
        *,
        reason: str = "",
        expected: Status | None = None,
    ) -> TransitionResult:
        """Move a provider to ``target`` if the lifecycle allows it, atomically.

        ``expected`` makes it a compare-and-set. Moving to the state it already has is a no-op.
        """
        target = Status(target)
        outcome, current, previous = self._run(
            self._transition,
            [self.keys.provider(provider_id), *self.transition_keys()],
            [provider_id, target.value, repr(self.clock()), reason, expected.value if expected else ""],
        )
        if outcome == "unknown":
            raise UnknownProvider(provider_id)
        if outcome == "conflict":
            raise StatusConflict(provider_id, str(expected), current)
        if outcome in ("illegal", "illegal_recovery"):
            # The script applied the lifecycle's table; the lifecycle says why in its own words.
            check_transition(provider_id, Status(current), target, Status(previous) if previous else None)
            raise TransitionError(provider_id, current, target.value, "refused by the store")
        return TransitionResult(provider_id, Status(current), target, changed=outcome == "ok")

    def recover(self, provider_id: str) -> TransitionResult:
        """Offline -> the live state held before Offline."""
        record = self.require(provider_id)
        if record.status is not Status.OFFLINE or record.previous_status not in LIVE_STATES:
            raise TransitionError(
                provider_id, record.status, "its previous state", "only an offline provider recovers"
            )
        return self.transition(provider_id, record.previous_status, expected=Status.OFFLINE)

    def record_token(self, provider_id: str, token_id: str, expires_at: float) -> None:
        """Remember which join token a provider was given (its id and expiry, never its secret)."""
        self._set_fields(provider_id, {"token_id": token_id, "token_expires_at": repr(expires_at)})

    def forget_token(self, provider_id: str) -> None:
        """The provider holds no join token any more (it was revoked)."""
        self._set_fields(provider_id, {"token_id": "", "token_expires_at": ""})

    def mark_rejected_by_operator(self, provider_id: str) -> None:
        self._set_fields(provider_id, {"rejected_by": OPERATOR})

    def hold_change(self, provider_id: str, request: Registration) -> None:
        """Keep a registration change until an operator approves it; record and ledger stay as approved."""
        self._set_fields(provider_id, {"pending_registration": request.to_json()})

    def drop_held_change(self, provider_id: str) -> None:
        """Forget a registration change that waits for approval (the provider was offboarded)."""
        self._set_fields(provider_id, {"pending_registration": ""})

    def set_error(self, provider_id: str, message: str) -> None:
        """Record (or with ``""`` clear) the last operational error on the provider, e.g. token issuing."""
        self._set_fields(provider_id, {"last_error": message})

    def _set_fields(self, provider_id: str, fields: dict[str, str]) -> None:
        # HSET only if the record exists: never resurrect a half record of a deleted provider.
        written = self._set_if_exists(keys=[self.keys.provider(provider_id)], args=[*_flatten(fields)])
        if not written:
            raise UnknownProvider(provider_id)

    # -- reads ------------------------------------------------------------------------------------

    def get(self, provider_id: str) -> ProviderRecord | None:
        data = decoded.hgetall(self.client, self.keys.provider(provider_id))
        return ProviderRecord.from_hash(data) if data else None

    def require(self, provider_id: str) -> ProviderRecord:
        record = self.get(provider_id)
        if record is None:
            raise UnknownProvider(provider_id)
        return record

    def ids(self, statuses: Iterable[Status] | None = None) -> list[str]:
        """Provider ids in the given statuses (all statuses when None), sorted; one round trip."""
        wanted = list(statuses) if statuses is not None else list(STATUS_ORDER)
        members = decoded.sunion(self.client, [self.keys.status_index(Status(s)) for s in wanted])
        return sorted(members)

    def get_many(self, provider_ids: list[str], on_invalid: OnInvalid | None = None) -> list[ProviderRecord]:
        """Records for the ids, in order, skipping ids that vanished; LIST_CHUNK per round trip.

        A record that does not decode raises, unless ``on_invalid(provider_id, error)`` is given:
        then it is reported there and skipped, and the others are still returned.
        """
        records: list[ProviderRecord] = []
        for start in range(0, len(provider_ids), LIST_CHUNK):
            chunk = provider_ids[start : start + LIST_CHUNK]
            pipe = self.client.pipeline(transaction=False)
            for pid in chunk:
                pipe.hgetall(self.keys.provider(pid))
            replies = pipe.execute()
            if on_invalid is None:
                records.extend(ProviderRecord.from_hash(data) for data in replies if data)
                continue
            for pid, data in zip(chunk, replies, strict=True):
                if not data:
                    continue
                try:
                    records.append(ProviderRecord.from_hash(data))
                except (KeyError, TypeError, ValueError) as exc:  # JSONDecodeError is a ValueError
                    on_invalid(pid, exc)
        return records

    def list(
        self, statuses: Iterable[Status] | None = None, on_invalid: OnInvalid | None = None
    ) -> list[ProviderRecord]:
        return self.get_many(self.ids(statuses), on_invalid)

    def counts(self) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        for status in STATUS_ORDER:
            pipe.scard(self.keys.status_index(status))
        return {s.value: n for s, n in zip(STATUS_ORDER, pipe.execute(), strict=True)}

    # -- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _run(script: Any, keys: builtins.list[str], args: builtins.list[str]) -> tuple[str, str, str]:
        # builtins.list: in this class ``list`` is the method above.
        outcome, current, extra = script(keys=keys, args=args)
        return outcome, current, extra
