"""The capacity ledger: what each provider offers, what rental jobs hold, and what mines.

Per provider and per canonical GPU model ``total = available + in_use + mining`` always holds; CPU
cores and memory (MiB) keep ``total = available + in_use``. Every change is one Lua script, so it is
atomic in Redis and concurrent allocators can never oversubscribe (DESIGN.md, "Capacity").

Layout (names from ``worldland.keys.Keys``; all values are integers):

- ``keys.capacity(provider_id)``, a hash: ``gpu:<model>:total``, ``gpu:<model>:available``,
  ``gpu:<model>:in_use``, ``gpu:<model>:mining`` per canonical model, and ``cpu:total``,
  ``cpu:available``, ``cpu:in_use``, ``mem:total``, ``mem:available``, ``mem:in_use``.
- ``keys.job(job_id)``, a hash: ``provider``, ``model`` (empty when the job takes no GPU), ``gpus``,
  ``from_mining`` (how many of its GPUs were taken from mining), ``cpu``, ``memory_mb``.
- ``keys.provider_jobs(provider_id)``, a set: the ids of the jobs holding that provider's resources.

Allocation also reads the ``status`` field of ``keys.provider(provider_id)``: only a provider in
status ``available`` takes jobs. Every script receives all the keys it touches in ``KEYS``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

import redis

from worldland.domain.lifecycle import Status
from worldland.domain.names import UnknownGpuModel, canonical_gpu_model
from worldland.protocol.ids import ID_RULE, JOB_ID_RE, PROVIDER_ID_RE
from worldland.protocol.messages import MAX_CPU_CORES, MAX_GPUS, MAX_MEMORY_MB
from worldland.state.keys import Keys
from worldland.state.scripts import script

_T = TypeVar("_T")

MAX_MODEL_NAME = 128
BATCH = 500  # jobs per script call: each call holds Redis for a few milliseconds at most
WITHDRAW_ATTEMPTS = 3  # CapacityLedger.withdraw reads again when a job changed the ledger meanwhile


class CapacityError(ValueError):
    """A capacity change was refused; nothing was written. The message names the resource and why."""


# --------------------------------------------------------------------------------------------------
# Snapshots


@dataclass(frozen=True, slots=True)
class GpuCapacity:
    """One GPU model of one provider: ``total = available + in_use + mining``."""

    total: int = 0
    available: int = 0
    in_use: int = 0
    mining: int = 0

    def to_dict(self) -> dict[str, int]:
        # Spelled out: dataclasses.asdict deep-copies and dominated listing 10,000 providers.
        return {
            "total": self.total,
            "available": self.available,
            "in_use": self.in_use,
            "mining": self.mining,
        }


@dataclass(frozen=True, slots=True)
class PoolCapacity:
    """CPU cores or memory (MiB) of one provider: ``total = available + in_use``."""

    total: int = 0
    available: int = 0
    in_use: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"total": self.total, "available": self.available, "in_use": self.in_use}


@dataclass(frozen=True, slots=True)
class Capacity:
    """A snapshot of one provider's ledger. ``cpu`` counts cores, ``memory`` counts MiB."""

    provider_id: str
    gpus: dict[str, GpuCapacity] = field(default_factory=dict)
    cpu: PoolCapacity = PoolCapacity()
    memory: PoolCapacity = PoolCapacity()

    def gpu(self, model: str) -> GpuCapacity:
        """The ledger of one GPU model (any spelling; zeros when not offered)."""
        return self.gpus.get(canonical_gpu_model(model), GpuCapacity())

    @property
    def empty(self) -> bool:
        """True when the provider has no ledger (or offers nothing)."""
        return not self.gpus and self.cpu == PoolCapacity() and self.memory == PoolCapacity()

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider_id": self.provider_id,
            "gpus": {model: gpu.to_dict() for model, gpu in sorted(self.gpus.items())},
            "cpu": self.cpu.to_dict(),
            "memory": self.memory.to_dict(),
        }

    @classmethod
    def from_hash(cls, provider_id: str, raw: Mapping[Any, Any]) -> Capacity:
        """Build a snapshot from the ledger hash as ``HGETALL`` returns it (str or bytes)."""
        gpu_fields: dict[str, dict[str, int]] = {}
        pools: dict[str, dict[str, int]] = {"cpu": {}, "mem": {}}
        for name, value in raw.items():
            # A decoding client gives str: skip _text (listing 10,000 ledgers comes here 200,000 times).
            if type(name) is not str:
                name = _text(name)
            value = int(value) if type(value) is str else int(_text(value))
            kind, _, rest = name.partition(":")
            if kind == "gpu":
                model, _, part = rest.rpartition(":")
                if model and part in GpuCapacity.__dataclass_fields__:
                    gpu_fields.setdefault(model, {})[part] = value
            elif kind in pools and rest in PoolCapacity.__dataclass_fields__:
                pools[kind][rest] = value
        return cls(
            provider_id=provider_id,
            gpus={model: GpuCapacity(**parts) for model, parts in sorted(gpu_fields.items())},
            cpu=PoolCapacity(**pools["cpu"]),
            memory=PoolCapacity(**pools["mem"]),
        )


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What a job asks of one provider (``model`` None only for a job without GPUs)."""

    job_id: str
    provider_id: str
    model: str | None
    gpus: int
    cpu_cores: int = 0
    memory_mb: int = 0


@dataclass(frozen=True, slots=True)
class Allocation:
    """What one job took: ``from_mining`` of its ``gpus`` were taken away from mining."""

    job_id: str
    provider_id: str
    model: str | None
    gpus: int
    from_mining: int
    cpu_cores: int
    memory_mb: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def same_request(self, other: Allocation) -> bool:
        """True when both ask the same provider for the same resources (``from_mining`` aside)."""
        return (self.provider_id, self.model, self.gpus, self.cpu_cores, self.memory_mb) == (
            other.provider_id,
            other.model,
            other.gpus,
            other.cpu_cores,
            other.memory_mb,
        )

    def summary(self) -> str:
        parts = []
        if self.gpus:
            parts.append(f"{self.gpus} {self.model} GPU(s)")
        parts.append(f"{self.cpu_cores} CPU core(s)")
        parts.append(f"{self.memory_mb} MiB memory")
        return f"{', '.join(parts)} on provider {self.provider_id}"


# --------------------------------------------------------------------------------------------------
# Lua scripts, in lua/*.lua (each file says its KEYS, ARGV and reply). They return {"ok", ...} or
# {"err", message}: refusals are values, not Redis errors. ``lua/ledger_functions.lua`` is shared with
# the registration script (providers.py), so a registration writes its record and ledger together.

_SET_TOTALS = script("ledger_functions", "ledger_set_totals")
_ALLOCATE_MANY = script("ledger_allocate_many")
_RELEASE_MANY = script("ledger_release_many")
_SET_MINING = script("ledger_set_mining")


# --------------------------------------------------------------------------------------------------
# Argument checks (before anything reaches Redis)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes | bytearray) else str(value)


def _check_count(name: str, value: object, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise CapacityError(f"{name}: must be an integer, got {type(value).__name__}")
    if not 0 <= value <= maximum:
        raise CapacityError(f"{name}: must be from 0 to {maximum}, got {value}")
    return value


def _check_provider_id(value: object) -> str:
    if not isinstance(value, str) or not PROVIDER_ID_RE.match(value):
        raise CapacityError(f"provider_id: {ID_RULE}, got {value!r:.80}")
    return value


def _check_job_id(value: object) -> str:
    if not isinstance(value, str) or not JOB_ID_RE.match(value):
        raise CapacityError(f"job_id: {ID_RULE}, got {value!r:.80}")
    return value


def _check_model(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_MODEL_NAME:
        raise CapacityError(
            f"{name}: must be a GPU model name of 1 to {MAX_MODEL_NAME} characters, got {value!r:.80}"
        )
    try:
        return canonical_gpu_model(value)
    except UnknownGpuModel as exc:
        raise CapacityError(f"{name}: {exc}") from None


def _check_gpu_totals(gpus: object, what: str = "gpus") -> dict[str, int]:
    if not isinstance(gpus, Mapping):
        raise CapacityError(f"{what}: must be a mapping of GPU model to count, got {type(gpus).__name__}")
    totals: dict[str, int] = {}
    for name, count in gpus.items():
        model = _check_model(what, name)
        totals[model] = totals.get(model, 0) + _check_count(f"{what}[{name!r}]", count, MAX_GPUS)
    if sum(totals.values()) > MAX_GPUS:
        raise CapacityError(f"{what}: adds up to {sum(totals.values())} GPUs; at most {MAX_GPUS}")
    return totals


def ledger_args(
    gpus: Mapping[str, int], cpu_cores: int, memory_mb: int, mining: Mapping[str, int] | None = None
) -> list[Any]:
    """The checked arguments of ``ledger_plan`` (lua/ledger_functions.lua); ``CapacityError`` if invalid."""
    totals = _check_gpu_totals(gpus)
    declared = _check_gpu_totals(mining or {}, "mining")
    for model, count in declared.items():
        if count > totals.get(model, 0):
            raise CapacityError(f"mining[{model!r}]: {count} exceeds the {totals.get(model, 0)} offered")
    args: list[Any] = [
        _check_count("cpu_cores", cpu_cores, MAX_CPU_CORES),
        _check_count("memory_mb", memory_mb, MAX_MEMORY_MB),
    ]
    for model, count in totals.items():
        args += [model, count, declared.get(model, -1)]
    return args


def _withdrawn(capacity: Capacity) -> bool:
    """True when a provider offers nothing beyond what its jobs hold (``CapacityLedger.withdraw``)."""
    pools = (capacity.cpu, capacity.memory)
    return all(g.total == g.in_use for g in capacity.gpus.values()) and all(
        p.total == p.in_use for p in pools
    )


def _chunks(items: list[_T], size: int) -> list[list[_T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _split_replies(flat: list[Any]) -> list[list[Any]]:
    """A batch script's flat reply (length, then that many values, per item) as one list per item."""
    replies, i = [], 0
    while i < len(flat):
        length = int(flat[i])
        replies.append(flat[i + 1 : i + 1 + length])
        i += 1 + length
    return replies


def _allocation(job_id: str, reply: list[Any]) -> Allocation:
    """An Allocation from a script's ``provider, model, gpus, from_mining, cpu, memory`` reply."""
    provider, model, gpus, from_mining, cpu, memory = (_text(v) for v in reply)
    return Allocation(job_id, provider, model or None, int(gpus), int(from_mining), int(cpu), int(memory))


# --------------------------------------------------------------------------------------------------
# The ledger


class CapacityLedger:
    """The capacity ledger of all providers in one Redis (one ``Keys`` prefix).

    Thread safety: a ledger may be shared between threads as far as its redis client allows (redis-py
    clients are thread safe); atomicity comes from Redis, never from Python-side locks.
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._set_totals = client.register_script(_SET_TOTALS)
        self._allocate_many = client.register_script(_ALLOCATE_MANY)
        self._release_many = client.register_script(_RELEASE_MANY)
        self._set_mining = client.register_script(_SET_MINING)

    # -- writes ----------------------------------------------------------------------------------

    def set_totals(
        self,
        provider_id: str,
        gpus: Mapping[str, int],
        cpu_cores: int,
        memory_mb: int,
        mining: Mapping[str, int] | None = None,
    ) -> Capacity:
        """Set or replace what a provider offers; returns the new snapshot.

        GPU model names are canonicalised (two spellings of one model add up). Growing a total adds
        to ``available``; shrinking takes from ``available`` first, then from ``mining``; a total
        below what jobs hold is refused (``CapacityError``, nothing written). Models left out (or
        given as 0) with nothing in use disappear from the ledger. ``mining`` (per model) sets how
        many GPUs mine, out of those that no job holds; models it leaves out keep their mining.
        """
        provider_id = _check_provider_id(provider_id)
        args = [provider_id, *ledger_args(gpus, cpu_cores, memory_mb, mining)]
        self._run(self._set_totals, [self.keys.capacity(provider_id)], args)
        return self.get(provider_id)

    def allocate(
        self,
        job_id: str,
        provider_id: str,
        model: str | None,
        gpus: int,
        cpu_cores: int,
        memory_mb: int,
    ) -> Allocation:
        """Take a job's GPUs, CPU cores and memory from one provider, all or nothing.

        Only a provider in status ``available`` takes jobs. Available GPUs are taken first, then
        mining ones (mining yields to rental); the allocation records how many came from mining.
        Allocating a job id again with the identical request returns the original allocation; with a
        different request it is refused. ``model`` may be None only when ``gpus`` is 0.
        """
        result = self.allocate_many([JobRequest(job_id, provider_id, model, gpus, cpu_cores, memory_mb)])[0]
        if isinstance(result, CapacityError):
            raise result
        return result

    def allocate_many(self, requests: Sequence[JobRequest]) -> list[Allocation | CapacityError]:
        """Allocate many jobs in one call; each job is still all-or-nothing and atomic, in order.

        Returns, in order, the allocation or the ``CapacityError`` that refused it.
        """
        results: dict[int, Allocation | CapacityError] = {}  # by position: each gets one or the other
        checked: list[tuple[int, Allocation]] = []
        for position, request in enumerate(requests):
            try:
                checked.append((position, self._checked(request)))
            except CapacityError as exc:
                results[position] = exc
        for chunk in _chunks(checked, BATCH):
            args: list[Any] = [
                self.keys.capacity(""),
                self.keys.provider(""),
                self.keys.job(""),
                self.keys.provider_jobs(""),
                Status.AVAILABLE.value,
            ]
            for _position, job in chunk:
                args += (job.job_id, job.provider_id, job.model or "", job.gpus, job.cpu_cores, job.memory_mb)
            replies = _split_replies(self._allocate_many(keys=[], args=args))
            for (position, job), reply in zip(chunk, replies, strict=True):
                try:
                    results[position] = self._allocate_result(job, reply)
                except CapacityError as exc:
                    results[position] = exc
        return [results[position] for position in range(len(requests))]

    @staticmethod
    def _checked(request: JobRequest) -> Allocation:
        """A request's arguments checked and normalised (as an Allocation taking nothing from mining)."""
        job_id = _check_job_id(request.job_id)
        provider_id = _check_provider_id(request.provider_id)
        gpus = _check_count("gpus", request.gpus, MAX_GPUS)
        cpu_cores = _check_count("cpu_cores", request.cpu_cores, MAX_CPU_CORES)
        memory_mb = _check_count("memory_mb", request.memory_mb, MAX_MEMORY_MB)
        model = request.model
        if model is None:
            if gpus:
                raise CapacityError(f"model: is required when gpus is {gpus}")
        else:
            model = _check_model("model", model)
        return Allocation(job_id, provider_id, model, gpus, 0, cpu_cores, memory_mb)

    @staticmethod
    def _allocate_result(request: Allocation, reply: list[Any]) -> Allocation:
        outcome = _text(reply[0])
        if outcome == "err":
            raise CapacityError(_text(reply[1]))
        if outcome == "existing":
            held = _allocation(request.job_id, reply[1:])
            if held.same_request(request):
                return held
            raise CapacityError(
                f"job_id: job {request.job_id} already holds {held.summary()}; a different request "
                f"({request.summary()}) cannot reuse its id"
            )
        return replace(request, from_mining=int(_text(reply[1])))

    def release(self, job_id: str) -> Allocation | None:
        """Give a job's resources back (its GPUs become available); None when it holds nothing.

        Idempotent: releasing an unknown or already released job changes nothing.
        """
        return self.release_many([job_id])[0]

    def release_many(self, job_ids: Sequence[str]) -> list[Allocation | None]:
        """Release many jobs in one call; as ``release`` for each, in order."""
        checked = [_check_job_id(job_id) for job_id in job_ids]
        results: list[Allocation | None] = []
        for chunk in _chunks(checked, BATCH):
            args = [self.keys.job(""), self.keys.capacity(""), self.keys.provider_jobs(""), *chunk]
            for job_id, reply in zip(
                chunk, _split_replies(self._release_many(keys=[], args=args)), strict=True
            ):
                results.append(_allocation(job_id, reply[1:]) if _text(reply[0]) == "released" else None)
        return results

    def withdraw(self, provider_id: str) -> tuple[Capacity, Capacity]:
        """Take back everything a provider offers except what running jobs hold (an offboarded provider):
        each GPU total, the CPU cores and the memory set to what is in use, so nothing is available or
        mining and the jobs keep what they hold until they are released. Returns the snapshots before
        and after; writes nothing when there is nothing to take back (idempotent).

        A job released meanwhile leaves its share available: a second call takes that back too. A
        total below what jobs hold is never written (the script checks it atomically).
        """
        provider_id = _check_provider_id(provider_id)
        last: CapacityError | None = None
        for _ in range(WITHDRAW_ATTEMPTS):
            before = self.get(provider_id)
            if _withdrawn(before):
                return before, before
            gpus = {model: gpu.in_use for model, gpu in before.gpus.items()}
            try:
                self.set_totals(provider_id, gpus, before.cpu.in_use, before.memory.in_use, mining={})
            except CapacityError as exc:  # a job was allocated between the read and the write: read again
                last = exc
                continue
            return before, self.get(provider_id)
        assert last is not None
        raise last

    def set_mining(self, provider_id: str, model: str, count: int) -> Capacity:
        """Set how many GPUs of a model mine; returns the new snapshot.

        Raising it takes idle (available) GPUs only, never GPUs in use by jobs; lowering it returns
        mining GPUs to available.
        """
        provider_id = _check_provider_id(provider_id)
        model = _check_model("model", model)
        count = _check_count("count", count, MAX_GPUS)
        self._run(self._set_mining, [self.keys.capacity(provider_id)], [provider_id, model, count])
        return self.get(provider_id)

    # -- reads -----------------------------------------------------------------------------------

    def get(self, provider_id: str) -> Capacity:
        """A snapshot of one provider's ledger (all zeros when it has none)."""
        provider_id = _check_provider_id(provider_id)
        return Capacity.from_hash(provider_id, self.client.hgetall(self.keys.capacity(provider_id)))

    def get_many(self, provider_ids: Iterable[str]) -> dict[str, Capacity]:
        """Snapshots of many providers in one pipeline round trip, keyed by provider id."""
        ids = [_check_provider_id(pid) for pid in provider_ids]
        pipe = self.client.pipeline(transaction=False)
        for pid in ids:
            pipe.hgetall(self.keys.capacity(pid))
        return {pid: Capacity.from_hash(pid, raw) for pid, raw in zip(ids, pipe.execute(), strict=True)}

    def get_job(self, job_id: str) -> Allocation | None:
        """What a job holds, or None when it holds nothing."""
        job_id = _check_job_id(job_id)
        raw = self.client.hgetall(self.keys.job(job_id))
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        names = ("provider", "model", "gpus", "from_mining", "cpu", "memory_mb")
        return _allocation(
            job_id, [fields.get(name, "" if name in ("provider", "model") else "0") for name in names]
        )

    def jobs(self, provider_id: str) -> list[Allocation]:
        """The jobs holding a provider's resources, sorted by job id (one pipeline round trip)."""
        provider_id = _check_provider_id(provider_id)
        job_ids = sorted(_text(j) for j in self.client.smembers(self.keys.provider_jobs(provider_id)))
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self.keys.job(job_id), "provider", "model", "gpus", "from_mining", "cpu", "memory_mb")
        held = []
        for job_id, values in zip(job_ids, pipe.execute(), strict=True):
            if values[0] is not None:
                held.append(_allocation(job_id, [v if v is not None else "0" for v in values]))
        return held

    # -- plumbing --------------------------------------------------------------------------------

    @staticmethod
    def _run(script: Any, keys: list[str], args: list[Any]) -> list[Any]:
        reply: list[Any] = script(keys=keys, args=args)
        if _text(reply[0]) == "err":
            raise CapacityError(_text(reply[1]))
        return reply
