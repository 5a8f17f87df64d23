"""Providers in Redis: records, status indexes, node-name claims and atomic, checked transitions.

A provider is a hash at ``Keys.provider(id)``; each status has a set of ids (``Keys.status_index``)
so listing by status never scans the keyspace; a node name is claimed with ``Keys.node_claim`` so
two providers never share one. Every write that reads a state first runs as one Lua script, so
concurrent writers (several listeners, an audit, an operator) cannot interleave.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from worldland.capacity import LUA_LEDGER_FUNCTIONS, CapacityError, ledger_args
from worldland.keys import Keys
from worldland.lifecycle import LIVE_STATES, TRANSITIONS, Status, TransitionError
from worldland.models import ALLOW_PRIVATE_IPS, RegistrationRequest
from worldland.names import node_name as make_node_name

Clock = Callable[[], float]
OnInvalid = Callable[[str, Exception], None]  # (provider id, why its record does not decode)
LIST_CHUNK = 2000  # providers fetched per pipeline when listing
NODE_NAME_ATTEMPTS = 4
STATUS_ORDER: tuple[Status, ...] = tuple(Status)
# States in which a provider's node may carry our labels/taint: a transition from or to one of them
# marks the node for the audit's label/taint sync (``Keys.node_sync``).
NODE_SYNC_STATES: tuple[Status, ...] = (Status.JOINED, Status.AVAILABLE, Status.OFFLINE)


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


def _lua_transition_table() -> str:
    rows = []
    for source, targets in TRANSITIONS.items():
        inner = ", ".join(f"{t.value}=true" for t in sorted(targets))
        rows.append(f"{source.value}={{{inner}}}")
    return "{" + ", ".join(rows) + "}"


# Shared by every script that changes a status: one Lua home for the transition rule, generated
# from lifecycle.TRANSITIONS. ``ProviderStore.transition_keys()`` are passed as KEYS[first_index..+7]:
# the six status indexes in STATUS_ORDER, then ``Keys.node_sync`` and ``Keys.awaiting_first_beat``.
# Besides the status, a transition records ``approved_at`` and enters the grace-period set on
# Pending -> Approved, and marks the node for a label/taint sync when a node state is involved.
# Returns {'ok'|'noop'|'illegal'|'illegal_recovery', current, previous}.
LUA_TRANSITION_PRELUDE = f"""
local ALLOWED = {_lua_transition_table()}
local ORDER = {{{", ".join(repr(s.value) for s in STATUS_ORDER)}}}
local NODE_SYNC = {{{", ".join(f"{s.value}=true" for s in NODE_SYNC_STATES)}}}
local function index_key(first_index, status)
  for i, name in ipairs(ORDER) do
    if name == status then return KEYS[first_index + i - 1] end
  end
end
local function transition(provider_key, provider_id, first_index, current, target, now, reason)
  if current == target then return {{'noop', current, ''}} end
  local previous = redis.call('HGET', provider_key, 'previous_status') or ''
  if not ALLOWED[current][target] then return {{'illegal', current, previous}} end
  if current == 'offline' and target ~= previous then return {{'illegal_recovery', current, previous}} end
  if current == 'rejected' then redis.call('HDEL', provider_key, 'rejected_by') end
  if target == 'offline' then
    redis.call('HSET', provider_key, 'previous_status', current)
  elseif current == 'offline' then
    redis.call('HDEL', provider_key, 'previous_status')
  end
  if target == 'approved' and current == 'pending' then
    redis.call('HSET', provider_key, 'approved_at', now)
    redis.call('ZADD', KEYS[first_index + 7], now, provider_id)
  end
  redis.call('HSET', provider_key, 'status', target, 'status_changed_at', now, 'status_reason', reason)
  redis.call('SREM', index_key(first_index, current), provider_id)
  redis.call('SADD', index_key(first_index, target), provider_id)
  if NODE_SYNC[current] or NODE_SYNC[target] then
    redis.call('ZINCRBY', KEYS[first_index + 6], 1, provider_id)
  end
  return {{'ok', current, previous}}
end
"""

# KEYS: provider, transition keys (8). ARGV: id, target, now, reason, expected current ('' = any).
_TRANSITION_SCRIPT = (
    LUA_TRANSITION_PRELUDE
    + """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {'unknown', '', ''} end
if ARGV[5] ~= '' and ARGV[5] ~= current then return {'conflict', current, ''} end
return transition(KEYS[1], ARGV[1], 2, current, ARGV[2], ARGV[3], ARGV[4])
"""
)

# A registration: every check first (wallet, node name, capacity ledger), then the record and the
# ledger written together, so a refused registration writes nothing.
# KEYS: provider, node claim, pending index, capacity ledger.
# ARGV: id, wallet, node name, now, n, then n field/value pairs describing the registration, then
# the ledger arguments (capacity.ledger_args). Returns {outcome, status, detail}.
_REGISTER_SCRIPT = (
    LUA_LEDGER_FUNCTIONS
    + """
local n = tonumber(ARGV[5])
local last_field = 5 + 2 * n
local status = redis.call('HGET', KEYS[1], 'status')
if status then
  if string.lower(redis.call('HGET', KEYS[1], 'wallet_addr')) ~= string.lower(ARGV[2]) then
    return {'wallet_mismatch', status, ''}
  end
else
  local owner = redis.call('GET', KEYS[2])
  if owner and owner ~= ARGV[1] then return {'node_taken', '', ''} end
end
local plan = ledger_plan(KEYS[4], ARGV, last_field + 1)
if #plan.errors > 0 then
  return {'capacity', status or '', 'provider ' .. ARGV[1] .. ': ' .. table.concat(plan.errors, '; ')}
end
if not status then
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[1], 'provider_id', ARGV[1], 'wallet_addr', ARGV[2], 'node_name', ARGV[3],
    'status', 'pending', 'created_at', ARGV[4], 'status_changed_at', ARGV[4])
  redis.call('SADD', KEYS[3], ARGV[1])
end
for i = 6, last_field, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[4])
ledger_apply(plan)
if status then return {'updated', status, ''} end
return {'created', 'pending', ARGV[3]}
"""
)

_SET_IF_EXISTS_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


OPERATOR = "operator"  # ProviderRecord.rejected_by when an operator rejected


def same_wallet(a: str, b: str) -> bool:
    """Wallet addresses compare without case (EIP-55 mixed case is only a checksum)."""
    return a.lower() == b.lower()


def approved_registration(record: ProviderRecord) -> RegistrationRequest:
    """The registration a provider was approved with, as stored."""
    return RegistrationRequest.model_validate_json(
        record.registration_json, context={ALLOW_PRIVATE_IPS: True}
    )


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
        return json.loads(self.registration_json)

    @property
    def spec(self) -> dict[str, Any]:
        return self.registration.get("spec", {})

    def to_dict(self, include_spec: bool = True) -> dict[str, Any]:
        """Plain data for JSON output; ``include_spec`` False skips decoding the registration."""
        data = {
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
        """The keys ``LUA_TRANSITION_PRELUDE`` expects from its ``first_index``, in its order."""
        return [*self.status_index_keys(), self.keys.node_sync, self.keys.awaiting_first_beat]

    # -- writes -----------------------------------------------------------------------------------

    def upsert_registration(self, request: RegistrationRequest) -> UpsertResult:
        """Create the provider (Pending) or update its registration details, and set its capacity
        ledger to what it offers: all checks first, then both writes in one script, or nothing.

        Idempotent by provider_id; the status is never changed here; a provider id stays bound to its
        first wallet (``WalletMismatch``); a ledger below what jobs hold raises ``CapacityError``.
        """
        pid = request.provider_id
        totals = request.ledger_totals()
        fields = {
            "hostname": request.spec.hostname,
            "public_ip": request.spec.public_ip,
            "gpu_models": json.dumps(sorted(request.spec.gpu_counts())),
            "registration": request.model_dump_json(exclude_none=True),
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
            allowed = ", ".join(sorted(TRANSITIONS[Status(current)]))
            why = (
                f"an offline provider returns to its previous state ({previous or 'unknown'})"
                if outcome == "illegal_recovery"
                else f"{current} may only go to {allowed}"
            )
            raise TransitionError(provider_id, current, target.value, why)
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

    def hold_change(self, provider_id: str, request: RegistrationRequest) -> None:
        """Keep a registration change until an operator approves it; record and ledger stay as approved."""
        self._set_fields(provider_id, {"pending_registration": request.model_dump_json(exclude_none=True)})

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
        data = self.client.hgetall(self.keys.provider(provider_id))
        return ProviderRecord.from_hash(data) if data else None

    def require(self, provider_id: str) -> ProviderRecord:
        record = self.get(provider_id)
        if record is None:
            raise UnknownProvider(provider_id)
        return record

    def ids(self, statuses: Iterable[Status] | None = None) -> list[str]:
        """Provider ids in the given statuses (all statuses when None), sorted; one round trip."""
        wanted = list(statuses) if statuses is not None else list(STATUS_ORDER)
        members = self.client.sunion([self.keys.status_index(Status(s)) for s in wanted])
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
    def _run(script: Any, keys: list[str], args: list[str]) -> tuple[str, str, str]:
        outcome, current, extra = script(keys=keys, args=args)
        return outcome, current, extra
