"""The capacity ledger against a real redis-server: unit cases, a stateful model check, concurrency."""

from __future__ import annotations

import json
import random
import threading
import uuid
from dataclasses import dataclass, field

import pytest
import redis
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from worldland.domain.lifecycle import Status
from worldland.domain.names import canonical_gpu_model
from worldland.state.keys import Keys
from worldland.state.ledger import (
    Allocation,
    Capacity,
    CapacityError,
    CapacityLedger,
    GpuCapacity,
    JobRequest,
    PoolCapacity,
)

P = "p1"
GPU = "RTX-4090"


def make_available(client: redis.Redis, keys: Keys, provider_id: str, status: str = "available") -> None:
    client.hset(keys.provider(provider_id), "status", status)


@pytest.fixture
def ledger(redis_client: redis.Redis, keys: Keys) -> CapacityLedger:
    return CapacityLedger(redis_client, keys)


@pytest.fixture
def provider(redis_client: redis.Redis, keys: Keys, ledger: CapacityLedger) -> str:
    """p1: available, 4 RTX-4090 + 2 A100-SXM4-80GB, 32 cores, 65536 MiB."""
    make_available(redis_client, keys, P)
    ledger.set_totals(P, {"NVIDIA GeForce RTX 4090": 4, "NVIDIA A100-SXM4-80GB": 2}, 32, 65536)
    return P


def assert_consistent(cap: Capacity) -> None:
    for model, gpu in cap.gpus.items():
        assert gpu.total == gpu.available + gpu.in_use + gpu.mining, (model, gpu)
        assert min(gpu.total, gpu.available, gpu.in_use, gpu.mining) >= 0, (model, gpu)
    for pool in (cap.cpu, cap.memory):
        assert pool.total == pool.available + pool.in_use, pool
        assert min(pool.total, pool.available, pool.in_use) >= 0, pool


# --------------------------------------------------------------------------------------------------
# Unit cases


def test_set_totals_canonicalises_and_snapshots(ledger: CapacityLedger, provider: str) -> None:
    cap = ledger.get(provider)
    assert cap.gpus == {
        "A100-SXM4-80GB": GpuCapacity(total=2, available=2),
        "RTX-4090": GpuCapacity(total=4, available=4),
    }
    assert cap.cpu == PoolCapacity(total=32, available=32)
    assert cap.memory == PoolCapacity(total=65536, available=65536)
    assert cap.gpu("NVIDIA GeForce RTX 4090") == cap.gpus[GPU]
    assert json.loads(json.dumps(cap.to_dict())) == {
        "provider_id": P,
        "gpus": {
            "A100-SXM4-80GB": {"total": 2, "available": 2, "in_use": 0, "mining": 0},
            "RTX-4090": {"total": 4, "available": 4, "in_use": 0, "mining": 0},
        },
        "cpu": {"total": 32, "available": 32, "in_use": 0},
        "memory": {"total": 65536, "available": 65536, "in_use": 0},
    }


def test_allocate_release_round_trip(ledger: CapacityLedger, provider: str, redis_client, keys) -> None:
    before = ledger.get(provider)
    alloc = ledger.allocate("job-1", provider, "NVIDIA GeForce RTX 4090", 2, 8, 16384)
    assert alloc == Allocation("job-1", P, GPU, 2, 0, 8, 16384)
    cap = ledger.get(provider)
    assert cap.gpus[GPU] == GpuCapacity(total=4, available=2, in_use=2, mining=0)
    assert cap.cpu == PoolCapacity(total=32, available=24, in_use=8)
    assert cap.memory == PoolCapacity(total=65536, available=49152, in_use=16384)
    assert ledger.get_job("job-1") == alloc
    assert ledger.jobs(provider) == [alloc]
    assert redis_client.hgetall(keys.job("job-1")) == {
        "provider": P,
        "model": GPU,
        "gpus": "2",
        "from_mining": "0",
        "cpu": "8",
        "memory_mb": "16384",
    }

    assert ledger.release("job-1") == alloc
    assert ledger.get(provider) == before
    assert ledger.get_job("job-1") is None
    assert ledger.jobs(provider) == []
    assert redis_client.smembers(keys.provider_jobs(provider)) == set()


def test_cpu_only_job(ledger: CapacityLedger, provider: str) -> None:
    alloc = ledger.allocate("cpu-job", provider, None, 0, 4, 1024)
    assert alloc.model is None and alloc.gpus == 0
    assert ledger.get_job("cpu-job") == alloc
    assert ledger.get(provider).cpu.in_use == 4
    assert ledger.release("cpu-job") == alloc
    assert ledger.get(provider).cpu.in_use == 0


def test_mining_yields_to_rental(ledger: CapacityLedger, provider: str) -> None:
    ledger.set_mining(provider, GPU, 3)
    assert ledger.get(provider).gpus[GPU] == GpuCapacity(total=4, available=1, in_use=0, mining=3)
    alloc = ledger.allocate("job-1", provider, GPU, 3, 1, 1)
    assert (alloc.gpus, alloc.from_mining) == (3, 2)
    assert ledger.get(provider).gpus[GPU] == GpuCapacity(total=4, available=0, in_use=3, mining=1)
    assert ledger.get_job("job-1").from_mining == 2
    # Released GPUs go back to available; mining may take them again explicitly.
    assert ledger.release("job-1") == alloc
    assert ledger.get(provider).gpus[GPU] == GpuCapacity(total=4, available=3, in_use=0, mining=1)


def test_refuses_when_gpus_short_naming_numbers(ledger: CapacityLedger, provider: str) -> None:
    ledger.set_totals(provider, {GPU: 2}, 32, 65536)
    ledger.set_mining(provider, GPU, 1)
    ledger.allocate("job-1", provider, GPU, 1, 1, 1)
    before = ledger.get(provider)
    with pytest.raises(CapacityError) as err:
        ledger.allocate("job-2", provider, GPU, 2, 1, 1)
    assert str(err.value) == (
        "provider p1 has 1 RTX-4090 GPU free for rental (0 available + 1 mining), job needs 2"
    )
    assert ledger.get(provider) == before
    assert ledger.get_job("job-2") is None


def test_refuses_unknown_model_cpu_and_memory_shortage_all_or_nothing(
    ledger: CapacityLedger, provider: str
) -> None:
    before = ledger.get(provider)
    with pytest.raises(CapacityError, match=r"has 0 H100 GPU free for rental \(0 available \+ 0 mining\)"):
        ledger.allocate("job-1", provider, "H100", 1, 1, 1)
    with pytest.raises(CapacityError) as err:
        ledger.allocate("job-1", provider, GPU, 1, 33, 70000)
    message = str(err.value)
    assert "has 32 CPU cores available, job needs 33" in message
    assert "has 65536 MiB memory available, job needs 70000 MiB" in message
    assert "GPU" not in message  # the GPUs were not short
    assert ledger.get(provider) == before
    assert ledger.jobs(provider) == []


@pytest.mark.parametrize("status", [s.value for s in Status if s is not Status.AVAILABLE])
def test_refuses_provider_not_available(
    ledger: CapacityLedger, provider: str, redis_client, keys, status: str
) -> None:
    make_available(redis_client, keys, provider, status)
    before = ledger.get(provider)
    with pytest.raises(CapacityError, match=rf"provider p1 is {status}, not available"):
        ledger.allocate("job-1", provider, GPU, 1, 1, 1)
    assert ledger.get(provider) == before
    assert not redis_client.exists(keys.job("job-1"))


def test_refuses_unregistered_provider(ledger: CapacityLedger, redis_client, keys) -> None:
    ledger.set_totals("ghost", {GPU: 1}, 1, 1)
    with pytest.raises(CapacityError, match="provider ghost is not registered"):
        ledger.allocate("job-1", "ghost", GPU, 1, 1, 1)
    assert not redis_client.exists(keys.job("job-1"))


def test_release_is_idempotent(ledger: CapacityLedger, provider: str) -> None:
    alloc = ledger.allocate("job-1", provider, GPU, 1, 2, 3)
    assert ledger.release("job-1") == alloc
    after = ledger.get(provider)
    assert ledger.release("job-1") is None
    assert ledger.release("never-allocated") is None
    assert ledger.get(provider) == after


def test_release_finds_the_owner_itself(ledger: CapacityLedger, provider: str, redis_client, keys) -> None:
    make_available(redis_client, keys, "p2")
    ledger.set_totals("p2", {GPU: 1}, 1, 1)
    alloc = ledger.allocate("job-1", provider, GPU, 1, 1, 1)
    other = ledger.allocate("job-2", "p2", GPU, 1, 1, 1)
    assert ledger.release_many(["job-2", "job-1"]) == [other, alloc]
    assert ledger.get("p2").gpus[GPU] == GpuCapacity(1, 1, 0, 0)
    assert ledger.get(provider).gpus[GPU] == GpuCapacity(4, 4, 0, 0)
    assert ledger.release("job-2") is None


def test_allocate_same_job_is_idempotent(ledger: CapacityLedger, provider: str, redis_client, keys) -> None:
    ledger.set_mining(provider, GPU, 4)
    first = ledger.allocate("job-1", provider, "NVIDIA GeForce RTX 4090", 2, 2, 512)
    assert first.from_mining == 2
    snapshot = ledger.get(provider)
    # A redelivered request (any spelling of the model) returns what was taken, takes nothing more.
    assert ledger.allocate("job-1", provider, GPU, 2, 2, 512) == first
    # ... even after the provider stopped being available.
    make_available(redis_client, keys, provider, "offline")
    assert ledger.allocate("job-1", provider, GPU, 2, 2, 512) == first
    make_available(redis_client, keys, provider)
    assert ledger.get(provider) == snapshot
    with pytest.raises(CapacityError, match=r"job_id: job job-1 already holds 2 RTX-4090 GPU\(s\)") as err:
        ledger.allocate("job-1", provider, GPU, 3, 2, 512)
    assert "3 RTX-4090 GPU(s)" in str(err.value)
    with pytest.raises(CapacityError, match="already holds"):
        ledger.allocate("job-1", "p2", GPU, 2, 2, 512)
    assert ledger.get(provider) == snapshot
    assert ledger.get_job("job-1") == first


def test_allocate_many_is_per_job_all_or_nothing(ledger: CapacityLedger, provider: str, redis_client, keys):
    make_available(redis_client, keys, "p-off", status="offline")
    results = ledger.allocate_many(
        [
            JobRequest("b1", provider, GPU, 3, 8, 1024),
            JobRequest("b2", provider, GPU, 2, 8, 1024),  # only 1 RTX-4090 left after b1
            JobRequest("b3", provider, "A100-SXM4-80GB", 2, 8, 1024),
            JobRequest("bad id!", provider, GPU, 1),
            JobRequest("b4", "p-off", GPU, 1),
            JobRequest("b1", provider, GPU, 3, 8, 1024),  # the same job again: the same allocation
        ]
    )
    assert isinstance(results[0], Allocation) and results[0].gpus == 3
    assert isinstance(results[1], CapacityError) and "job needs 2" in str(results[1])
    assert isinstance(results[2], Allocation) and results[2].model == "A100-SXM4-80GB"
    assert isinstance(results[3], CapacityError) and str(results[3]).startswith("job_id:")
    assert isinstance(results[4], CapacityError) and "offline" in str(results[4])
    assert results[5] == results[0]
    cap = ledger.get(provider)
    assert cap.gpus[GPU] == GpuCapacity(total=4, available=1, in_use=3)
    assert cap.cpu == PoolCapacity(total=32, available=16, in_use=16)
    released = ledger.release_many(["b1", "b2", "b3", "b1"])
    assert [r.job_id if r else None for r in released] == ["b1", None, "b3", None]
    assert released[0] == results[0] and released[2] == results[2]
    assert released[3] is None  # the second release of b1 in the same batch finds nothing
    assert ledger.get(provider).gpus[GPU] == GpuCapacity(total=4, available=4)
    assert ledger.get(provider).cpu == PoolCapacity(total=32, available=32)


def test_set_totals_below_in_use_refused_and_nothing_changes(ledger: CapacityLedger, provider: str) -> None:
    ledger.allocate("job-1", provider, GPU, 3, 8, 4096)
    ledger.allocate("job-2", provider, "A100-SXM4-80GB", 1, 0, 0)
    before = ledger.get(provider)
    with pytest.raises(CapacityError) as err:
        ledger.set_totals(provider, {GPU: 2, "A100-SXM4-80GB": 2}, 32, 65536)
    assert str(err.value) == "provider p1: cannot set the RTX-4090 GPU total to 2: 3 in use by jobs"
    assert ledger.get(provider) == before

    with pytest.raises(CapacityError) as err:
        ledger.set_totals(provider, {GPU: 3}, 4, 1024)  # drops A100 while one is in use; CPU and memory low
    message = str(err.value)
    assert "cannot set the A100-SXM4-80GB GPU total to 0: 1 in use by jobs" in message
    assert "cannot set the CPU core total to 4: 8 in use by jobs" in message
    assert "cannot set the memory total to 1024 MiB: 4096 MiB in use by jobs" in message
    assert ledger.get(provider) == before


def test_set_totals_shrinks_available_then_mining_and_drops_unused_models(
    ledger: CapacityLedger, provider: str
) -> None:
    ledger.set_totals(provider, {GPU: 8, "A100-SXM4-80GB": 2}, 32, 65536)
    ledger.allocate("job-1", provider, GPU, 2, 0, 0)
    ledger.set_mining(provider, GPU, 4)  # RTX-4090: 2 available, 2 in use, 4 mining
    cap = ledger.set_totals(provider, {GPU: 5}, 16, 32768)
    assert cap.gpus == {GPU: GpuCapacity(total=5, available=0, in_use=2, mining=3)}
    assert cap.cpu == PoolCapacity(total=16, available=16, in_use=0)
    cap = ledger.set_totals(provider, {GPU: 7, "H100": 0}, 16, 32768)  # growth goes to available
    assert cap.gpus == {GPU: GpuCapacity(total=7, available=2, in_use=2, mining=3)}
    assert_consistent(cap)


def test_set_mining(ledger: CapacityLedger, provider: str) -> None:
    ledger.allocate("job-1", provider, GPU, 3, 0, 0)
    before = ledger.get(provider)
    with pytest.raises(CapacityError) as err:
        ledger.set_mining(provider, GPU, 2)
    assert str(err.value) == (
        "provider p1 has 1 idle RTX-4090 GPU (4 total: 3 in use, 0 mining), cannot raise mining from 0 to 2"
    )
    assert ledger.get(provider) == before
    assert ledger.set_mining(provider, GPU, 1).gpus[GPU] == GpuCapacity(4, 0, 3, 1)
    ledger.release("job-1")
    assert ledger.set_mining(provider, GPU, 4).gpus[GPU] == GpuCapacity(4, 0, 0, 4)
    assert ledger.set_mining(provider, GPU, 1).gpus[GPU] == GpuCapacity(4, 3, 0, 1)
    with pytest.raises(CapacityError, match="provider p1 offers no H100 GPUs, cannot mine 1"):
        ledger.set_mining(provider, "H100", 1)
    ledger.set_mining(provider, "H100", 0)  # nothing to do
    assert "H100" not in ledger.get(provider).gpus


def test_get_many_and_unknown_providers(ledger: CapacityLedger, redis_client, keys, monkeypatch) -> None:
    for i in range(20):
        ledger.set_totals(f"p{i}", {GPU: i % 5}, i, i * 100)
    executes = []
    real_pipeline = redis_client.pipeline

    def counting_pipeline(*args, **kwargs):
        pipe = real_pipeline(*args, **kwargs)
        real_execute = pipe.execute
        pipe.execute = lambda *a, **k: executes.append(1) or real_execute(*a, **k)
        return pipe

    monkeypatch.setattr(redis_client, "pipeline", counting_pipeline)
    many = ledger.get_many([f"p{i}" for i in range(20)] + ["nobody"])
    assert len(executes) == 1
    assert list(many) == [f"p{i}" for i in range(20)] + ["nobody"]
    for i in range(20):
        assert many[f"p{i}"] == ledger.get(f"p{i}")
        assert many[f"p{i}"].cpu.total == i
    assert many["nobody"].empty and many["nobody"].to_dict()["gpus"] == {}


def test_works_with_a_bytes_client(redis_url: str, keys: Keys) -> None:
    client = redis.Redis.from_url(redis_url)  # decode_responses=False
    try:
        ledger = CapacityLedger(client, keys)
        make_available(client, keys, P)
        ledger.set_totals(P, {GPU: 2}, 4, 4)
        alloc = ledger.allocate("j", P, GPU, 1, 1, 1)
        assert ledger.allocate("j", P, GPU, 1, 1, 1) == alloc
        assert ledger.get(P).gpus[GPU] == GpuCapacity(2, 1, 1, 0)
        assert ledger.jobs(P) == [alloc]
        with pytest.raises(CapacityError, match="job needs 5"):
            ledger.allocate("k", P, GPU, 5, 1, 1)
        assert ledger.release("j") == alloc
    finally:
        client.close()


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda lg: lg.allocate("", P, GPU, 1, 1, 1), "job_id"),
        (lambda lg: lg.allocate("a" * 129, P, GPU, 1, 1, 1), "job_id"),
        (lambda lg: lg.allocate("job 1", P, GPU, 1, 1, 1), "job_id"),
        (lambda lg: lg.allocate(7, P, GPU, 1, 1, 1), "job_id"),
        (lambda lg: lg.allocate("j", "bad id", GPU, 1, 1, 1), "provider_id"),
        (lambda lg: lg.allocate("j", P, GPU, -1, 1, 1), "gpus"),
        (lambda lg: lg.allocate("j", P, GPU, 65, 1, 1), "gpus"),
        (lambda lg: lg.allocate("j", P, GPU, 1.0, 1, 1), "gpus"),
        (lambda lg: lg.allocate("j", P, GPU, True, 1, 1), "gpus"),
        (lambda lg: lg.allocate("j", P, GPU, 1, -1, 1), "cpu_cores"),
        (lambda lg: lg.allocate("j", P, GPU, 1, "4", 1), "cpu_cores"),
        (lambda lg: lg.allocate("j", P, GPU, 1, 1, -5), "memory_mb"),
        (lambda lg: lg.allocate("j", P, None, 1, 1, 1), "model"),
        (lambda lg: lg.allocate("j", P, " ", 1, 1, 1), "model"),
        (lambda lg: lg.allocate("j", P, "x" * 129, 1, 1, 1), "model"),
        (lambda lg: lg.set_totals(P, {GPU: -1}, 1, 1), "gpus['RTX-4090']"),
        (lambda lg: lg.set_totals(P, {GPU: 40, "H100": 40}, 1, 1), "gpus"),
        (lambda lg: lg.set_totals(P, [GPU], 1, 1), "gpus"),
        (lambda lg: lg.set_totals(P, {"": 1}, 1, 1), "gpus"),
        (lambda lg: lg.set_totals(P, {GPU: 1}, -1, 1), "cpu_cores"),
        (lambda lg: lg.set_totals(P, {GPU: 1}, 1, None), "memory_mb"),
        (lambda lg: lg.set_totals("", {GPU: 1}, 1, 1), "provider_id"),
        (lambda lg: lg.set_mining(P, GPU, -1), "count"),
        (lambda lg: lg.set_mining(P, "", 1), "model"),
        (lambda lg: lg.release("no/slash"), "job_id"),
        (lambda lg: lg.get("has space"), "provider_id"),
    ],
)
def test_argument_validation_names_the_argument(
    ledger: CapacityLedger, provider: str, call, argument: str
) -> None:
    before = ledger.get(provider)
    with pytest.raises(CapacityError) as err:
        call(ledger)
    assert str(err.value).startswith(f"{argument}: "), str(err.value)
    assert ledger.get(provider) == before
    assert ledger.jobs(provider) == []


# --------------------------------------------------------------------------------------------------
# Stateful property test: the ledger against a plain-Python reference model


@dataclass
class RefProvider:
    status: str = "pending"
    gpus: dict[str, list[int]] = field(default_factory=dict)  # model -> [total, available, in_use, mining]
    cpu: list[int] = field(default_factory=lambda: [0, 0, 0])  # total, available, in_use
    mem: list[int] = field(default_factory=lambda: [0, 0, 0])

    def snapshot(self, provider_id: str) -> Capacity:
        return Capacity(
            provider_id,
            {m: GpuCapacity(*v) for m, v in sorted(self.gpus.items())},
            PoolCapacity(*self.cpu),
            PoolCapacity(*self.mem),
        )


PROVIDERS = ["p0", "p1"]
MODEL_NAMES = [
    "NVIDIA GeForce RTX 4090",
    "RTX-4090",
    "NVIDIA A100-SXM4-80GB",
    "A100-SXM4-80GB",
    "NVIDIA H100 80GB HBM3",
]
JOB_IDS = [f"job-{i}" for i in range(8)]
STATUSES = [s.value for s in Status]


def test_ledger_matches_reference_model(redis_client: redis.Redis) -> None:
    class LedgerMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.keys = Keys(prefix=f"test-sm-{uuid.uuid4().hex[:8]}:")
            self.ledger = CapacityLedger(redis_client, self.keys)
            self.ref = {pid: RefProvider() for pid in PROVIDERS}
            self.jobs: dict[str, Allocation] = {}

        @initialize(
            totals=st.lists(
                st.tuples(
                    st.integers(2, 8),
                    st.integers(1, 6),
                    st.integers(8, 32),
                    st.integers(2, 8),
                    st.integers(1, 2),
                ),
                min_size=len(PROVIDERS),
                max_size=len(PROVIDERS),
            )
        )
        def start_available(self, totals: list[tuple[int, int, int, int, int]]) -> None:
            for pid, (rtx, a100, cpu, mem, mining) in zip(PROVIDERS, totals, strict=True):
                self.set_status(pid, "available")
                self.set_totals(pid, {"RTX-4090": rtx, "NVIDIA A100-SXM4-80GB": a100}, cpu, mem * 1024)
                self.set_mining(pid, "RTX-4090", mining)

        @rule(
            pid=st.sampled_from(PROVIDERS),
            gpus=st.dictionaries(st.sampled_from(MODEL_NAMES), st.integers(0, 8), max_size=3),
            cpu=st.integers(0, 32),
            mem=st.integers(0, 8).map(lambda n: n * 1024),
        )
        def set_totals(self, pid: str, gpus: dict[str, int], cpu: int, mem: int) -> None:
            ref = self.ref[pid]
            want: dict[str, int] = {}
            for name, count in gpus.items():
                want[canonical_gpu_model(name)] = want.get(canonical_gpu_model(name), 0) + count
            refused = (
                any(want.get(m, 0) < v[2] for m, v in ref.gpus.items())
                or cpu < ref.cpu[2]
                or mem < ref.mem[2]
            )
            if refused:
                event("set_totals refused")
                with pytest.raises(CapacityError, match="in use by jobs"):
                    self.ledger.set_totals(pid, gpus, cpu, mem)
                return
            self.ledger.set_totals(pid, gpus, cpu, mem)
            for model in set(want) | set(ref.gpus):
                new = want.get(model, 0)
                total, avail, used, mining = ref.gpus.get(model, [0, 0, 0, 0])
                if new == 0 and used == 0:
                    ref.gpus.pop(model, None)
                    continue
                if new >= total:
                    avail += new - total
                else:
                    take = min(avail, total - new)
                    avail -= take
                    mining -= total - new - take
                ref.gpus[model] = [new, avail, used, mining]
            ref.cpu = [cpu, cpu - ref.cpu[2], ref.cpu[2]]
            ref.mem = [mem, mem - ref.mem[2], ref.mem[2]]

        @rule(
            job_id=st.sampled_from(JOB_IDS),
            pid=st.sampled_from(PROVIDERS),
            name=st.sampled_from(MODEL_NAMES),
            gpus=st.integers(0, 3),
            cpu=st.integers(0, 6),
            mem=st.integers(0, 3).map(lambda n: n * 512),
        )
        def allocate(self, job_id: str, pid: str, name: str, gpus: int, cpu: int, mem: int) -> None:
            model = canonical_gpu_model(name)
            request = Allocation(job_id, pid, model, gpus, 0, cpu, mem)
            held = self.jobs.get(job_id)
            if held is not None:
                event("allocate again: same job")
                if held.same_request(request):
                    assert self.ledger.allocate(job_id, pid, name, gpus, cpu, mem) == held
                else:
                    with pytest.raises(CapacityError, match="already holds"):
                        self.ledger.allocate(job_id, pid, name, gpus, cpu, mem)
                return
            ref = self.ref[pid]
            if ref.status != "available":
                event("allocate refused: provider not available")
                with pytest.raises(CapacityError, match=f"is {ref.status}, not available"):
                    self.ledger.allocate(job_id, pid, name, gpus, cpu, mem)
                return
            g = ref.gpus.get(model, [0, 0, 0, 0])
            if gpus > g[1] + g[3] or cpu > ref.cpu[1] or mem > ref.mem[1]:
                event("allocate refused: short")
                with pytest.raises(CapacityError, match="job needs"):
                    self.ledger.allocate(job_id, pid, name, gpus, cpu, mem)
                return
            alloc = self.ledger.allocate(job_id, pid, name, gpus, cpu, mem)
            from_mining = max(0, gpus - g[1])
            event("allocated, some from mining" if from_mining else "allocated")
            assert alloc == Allocation(job_id, pid, model, gpus, from_mining, cpu, mem)
            if gpus:
                ref.gpus[model] = [g[0], g[1] - (gpus - from_mining), g[2] + gpus, g[3] - from_mining]
            ref.cpu = [ref.cpu[0], ref.cpu[1] - cpu, ref.cpu[2] + cpu]
            ref.mem = [ref.mem[0], ref.mem[1] - mem, ref.mem[2] + mem]
            self.jobs[job_id] = alloc

        @rule(job_id=st.sampled_from(JOB_IDS))
        def release(self, job_id: str) -> None:
            held = self.jobs.pop(job_id, None)
            assert self.ledger.release(job_id) == held
            if held is None:
                return
            event("released")
            ref = self.ref[held.provider_id]
            if held.gpus:
                g = ref.gpus[held.model]
                ref.gpus[held.model] = [g[0], g[1] + held.gpus, g[2] - held.gpus, g[3]]
            ref.cpu = [ref.cpu[0], ref.cpu[1] + held.cpu_cores, ref.cpu[2] - held.cpu_cores]
            ref.mem = [ref.mem[0], ref.mem[1] + held.memory_mb, ref.mem[2] - held.memory_mb]

        @precondition(lambda self: bool(self.jobs))
        @rule(data=st.data())
        def release_a_live_job(self, data: st.DataObject) -> None:
            self.release(data.draw(st.sampled_from(sorted(self.jobs))))

        @rule(pid=st.sampled_from(PROVIDERS), name=st.sampled_from(MODEL_NAMES), count=st.integers(0, 6))
        def set_mining(self, pid: str, name: str, count: int) -> None:
            model = canonical_gpu_model(name)
            g = self.ref[pid].gpus.get(model)
            if g is None:
                if count == 0:
                    self.ledger.set_mining(pid, name, count)
                else:
                    with pytest.raises(CapacityError, match="offers no"):
                        self.ledger.set_mining(pid, name, count)
                return
            if count - g[3] > g[1]:
                event("set_mining refused")
                with pytest.raises(CapacityError, match="idle"):
                    self.ledger.set_mining(pid, name, count)
                return
            self.ledger.set_mining(pid, name, count)
            event("set_mining")
            g[1] -= count - g[3]
            g[3] = count

        @rule(pid=st.sampled_from(PROVIDERS), status=st.sampled_from(["available", *STATUSES]))
        def set_status(self, pid: str, status: str) -> None:
            make_available(redis_client, self.keys, pid, status)
            self.ref[pid].status = status

        @invariant()
        def ledger_matches_reference_and_jobs(self) -> None:
            snapshots = self.ledger.get_many(PROVIDERS)
            for pid in PROVIDERS:
                cap = snapshots[pid]
                assert cap == self.ref[pid].snapshot(pid)
                assert_consistent(cap)
                live = self.ledger.jobs(pid)
                assert live == sorted(
                    (a for a in self.jobs.values() if a.provider_id == pid), key=lambda a: a.job_id
                )
                for model, gpu in cap.gpus.items():
                    assert gpu.in_use == sum(a.gpus for a in live if a.model == model)
                assert cap.cpu.in_use == sum(a.cpu_cores for a in live)
                assert cap.memory.in_use == sum(a.memory_mb for a in live)

    run_state_machine_as_test(
        LedgerMachine, settings=settings(max_examples=100, stateful_step_count=40, deadline=None)
    )


# --------------------------------------------------------------------------------------------------
# Concurrency: many clients against one provider


def _run_threads(count: int, target) -> list:
    results: list = [None] * count
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = target(i)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return results


def test_50_concurrent_allocators_never_oversubscribe(
    redis_url: str, redis_client: redis.Redis, keys: Keys
) -> None:
    ledger = CapacityLedger(redis_client, keys)
    make_available(redis_client, keys, P)
    ledger.set_totals(P, {GPU: 8}, 64, 262144)
    ledger.set_mining(P, GPU, 3)

    def allocate_one(i: int) -> Allocation | str:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            try:
                return CapacityLedger(client, keys).allocate(f"job-{i}", P, GPU, 1, 4, 1024)
            except CapacityError as exc:
                return str(exc)
        finally:
            client.close()

    results = _run_threads(50, allocate_one)
    won = [r for r in results if isinstance(r, Allocation)]
    lost = [r for r in results if isinstance(r, str)]
    assert len(won) == 8  # GPUs are the limit: 8 x 1 GPU, 8 x 4 of 64 cores
    assert len(lost) == 42 and all("job needs 1" in msg for msg in lost)
    assert sum(a.from_mining for a in won) == 3
    cap = ledger.get(P)
    assert cap.gpus[GPU] == GpuCapacity(total=8, available=0, in_use=8, mining=0)
    assert cap.cpu == PoolCapacity(total=64, available=32, in_use=32)
    assert cap.memory.in_use == 8 * 1024
    assert {a.job_id for a in ledger.jobs(P)} == {a.job_id for a in won}

    # CPU-bound round: 50 more allocators want 5 cores each of the 32 left; exactly 6 fit.
    def allocate_cpu(i: int) -> bool:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            CapacityLedger(client, keys).allocate(f"cpu-{i}", P, None, 0, 5, 0)
            return True
        except CapacityError:
            return False
        finally:
            client.close()

    assert sum(_run_threads(50, allocate_cpu)) == 6
    cap = ledger.get(P)
    assert cap.cpu == PoolCapacity(total=64, available=2, in_use=62)
    assert_consistent(cap)


def test_concurrent_churn_keeps_the_ledger_consistent(
    redis_url: str, redis_client: redis.Redis, keys: Keys
) -> None:
    ledger = CapacityLedger(redis_client, keys)
    make_available(redis_client, keys, P)
    ledger.set_totals(P, {GPU: 8, "A100": 4}, 64, 65536)
    ledger.set_mining(P, "A100", 2)
    initial_totals = {m: g.total for m, g in ledger.get(P).gpus.items()}
    stop = threading.Event()
    violations: list[str] = []

    def monitor() -> None:  # every snapshot (one HGETALL) must be consistent, mid-churn too
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        watcher = CapacityLedger(client, keys)
        while not stop.is_set():
            cap = watcher.get(P)
            try:
                assert_consistent(cap)
                assert {m: g.total for m, g in cap.gpus.items()} == initial_totals
            except AssertionError as exc:
                violations.append(str(exc))
        client.close()

    def churn(i: int) -> int:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        mine = CapacityLedger(client, keys)
        rng = random.Random(i)
        won = 0
        try:
            for n in range(20):
                job = f"w{i}-{n}"
                model = rng.choice([GPU, "A100"])
                try:
                    gpus, cores, memory = rng.randint(0, 3), rng.randint(0, 12), rng.randint(0, 8) * 1024
                    mine.allocate(job, P, model, gpus, cores, memory)
                    won += 1
                except CapacityError:
                    continue
                if rng.random() < 0.8:
                    mine.release(job)
        finally:
            client.close()
        return won

    watcher = threading.Thread(target=monitor)
    watcher.start()
    try:
        wins = _run_threads(50, churn)
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert not violations, violations[:3]
    assert sum(wins) > 0
    cap = ledger.get(P)
    assert_consistent(cap)
    live = ledger.jobs(P)
    for model, gpu in cap.gpus.items():
        assert gpu.in_use == sum(a.gpus for a in live if a.model == model)
    assert cap.cpu.in_use == sum(a.cpu_cores for a in live)
    assert cap.memory.in_use == sum(a.memory_mb for a in live)
    for alloc in live:
        assert ledger.release(alloc.job_id) == alloc
    cap = ledger.get(P)
    assert all(g.in_use == 0 for g in cap.gpus.values()) and cap.cpu.in_use == cap.memory.in_use == 0
    assert cap.cpu.available == 64 and cap.memory.available == 65536


# -- issue 9: declared mining ----------------------------------------------------------------------


def test_set_totals_starts_with_the_declared_mining_and_never_takes_gpus_jobs_hold(
    ledger: CapacityLedger, redis_client, keys
):
    capacity = ledger.set_totals("m", {"RTX-4090": 4}, 16, 65536, mining={"RTX-4090": 1})
    assert capacity.gpus["RTX-4090"] == GpuCapacity(total=4, available=3, in_use=0, mining=1)
    redis_client.hset(keys.provider("m"), mapping={"status": "available"})
    ledger.allocate("job-m", "m", "RTX-4090", 3, 1, 1)
    capacity = ledger.set_totals("m", {"RTX-4090": 4}, 16, 65536, mining={"RTX-4090": 4})
    assert capacity.gpus["RTX-4090"] == GpuCapacity(total=4, available=0, in_use=3, mining=1)
    capacity = ledger.set_totals("m", {"RTX-4090": 4}, 16, 65536)  # not declared: mining kept
    assert capacity.gpus["RTX-4090"].mining == 1
    with pytest.raises(CapacityError, match="mining"):
        ledger.set_totals("m", {"RTX-4090": 4}, 16, 65536, mining={"RTX-4090": 5})


@pytest.mark.parametrize("job_id", ["job-1\n", "job 1", "", "x" * 129, "job/1"])
def test_a_job_id_outside_the_one_id_pattern_is_refused(ledger: CapacityLedger, provider: str, job_id: str):
    # Before: capacity.py matched with "$", which lets "job-1\n" through; the id pattern now ends in \Z.
    with pytest.raises(CapacityError, match="job_id"):
        ledger.allocate(job_id, provider, "RTX-4090", 1, 1, 1)
