"""Benchmarks of the domain core on one private redis-server, reported as ratios within one run.

    python -m bench core [--providers 100000] [--seconds 3]

- allocate+release pairs/s through the ledger (one client, and several client processes);
- heartbeat records/s through the core vs a bare redis-py pipeline writing the same keys;
- listing providers by status (store only, and with heartbeats and capacity as the CLI shows them).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import time
from collections.abc import Callable
from typing import Any

import redis

from testkit.factories import heartbeat_dict, registration_dict
from testkit.redis_server import RedisServer
from worldland.domain.lifecycle import Status
from worldland.domain.registration import parse_registration
from worldland.protocol.messages import Heartbeat
from worldland.state.connection import connect
from worldland.state.fleet import Fleet
from worldland.state.heartbeats import RECORD_BATCH, HeartbeatIndex
from worldland.state.keys import Keys
from worldland.state.ledger import Allocation, CapacityLedger, JobRequest
from worldland.state.providers import ProviderStore

AGENT_REGISTRATION = registration_dict("bench", gpu_name="NVIDIA A100-SXM4-80GB", gpus=8)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _seed_chunk(url: str, prefix: str, ids: list[str]) -> None:
    fleet = Fleet.open(connect(url), Keys(prefix))
    for pid in ids:
        spec = {**AGENT_REGISTRATION["spec"], "hostname": f"rig-{pid}"}
        message = {**AGENT_REGISTRATION, "provider_id": pid, "spec": spec}
        fleet.register(parse_registration(json.dumps(message)))
        for step in (Status.APPROVED, Status.JOINED, Status.AVAILABLE):
            fleet.store.transition(pid, step)


def seed_providers(url: str, keys: Keys, count: int, processes: int = 2) -> list[str]:
    """Register ``count`` Available providers through the core (parse, register, transitions)."""
    ids = [f"prov-{i:06d}" for i in range(count)]
    chunks = [ids[w::processes] for w in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.starmap(_seed_chunk, [(url, keys.prefix, chunk) for chunk in chunks])
    return ids


def _pairs_worker(
    url: str,
    prefix: str,
    provider_ids: list[str],
    seconds: float,
    worker: int,
    start_at: float = 0.0,
    batch: int = 0,
) -> int:
    """Allocate+release pairs for ``seconds`` from wall-clock ``start_at`` (so workers overlap fully).

    ``batch`` 0: one allocate and one release call per pair; else ``batch`` jobs per
    ``allocate_many``/``release_many`` call.
    """
    ledger = CapacityLedger(connect(url), Keys(prefix))
    done = 0
    time.sleep(max(0.0, start_at - time.time()))
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if batch:
            jobs = [
                JobRequest(
                    f"w{worker}-{done + i}",
                    provider_ids[(done + i) % len(provider_ids)],
                    "A100-SXM4-80GB",
                    1,
                    2,
                    1024,
                )
                for i in range(batch)
            ]
            taken = ledger.allocate_many(jobs)
            assert all(isinstance(t, Allocation) for t in taken), taken[:3]
            assert all(ledger.release_many([j.job_id for j in jobs]))
            done += batch
            continue
        for i in range(100):  # bounded inner loop; the deadline bounds the whole
            pid = provider_ids[(done + i) % len(provider_ids)]
            job = f"w{worker}-{done + i}"
            ledger.allocate(job, pid, "A100-SXM4-80GB", 1, 2, 1024)
            ledger.release(job)
        done += 100
    return done


def bench_capacity(url: str, keys: Keys, provider_ids: list[str], seconds: float, processes: int) -> dict:
    one = _pairs_worker(url, keys.prefix, provider_ids, seconds, 0) / seconds
    batched = _pairs_worker(url, keys.prefix, provider_ids, seconds, 0, batch=200) / seconds
    start_at = time.time() + 3.0  # after every worker has imported and connected
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        counts = pool.starmap(
            _pairs_worker,
            [(url, keys.prefix, provider_ids, seconds, w + 1, start_at) for w in range(processes)],
        )
    return {
        "pairs_per_s_one_client": one,
        "pairs_per_s_batched": batched,
        "pairs_per_s_concurrent": sum(counts) / seconds,
        "processes": processes,
    }


def _bare_heartbeat_pipeline(client: redis.Redis, keys: Keys, beats: list[Heartbeat], now: float) -> None:
    """The floor: the same keys and values written with plain commands; no checks, no recovery."""
    for start in range(0, len(beats), RECORD_BATCH):
        pipe = client.pipeline(transaction=False)
        for beat in beats[start : start + RECORD_BATCH]:
            pipe.hset(
                keys.heartbeat(beat.provider_id),
                mapping={
                    "received_at": repr(now),
                    "active_jobs": beat.active_jobs,
                    "beat": beat.model_dump_json(exclude={"provider_id"}),
                },
            )
            pipe.zadd(keys.heartbeat_index, {beat.provider_id: now})
        pipe.execute()


def bench_heartbeats(url: str, keys: Keys, provider_ids: list[str], rounds: int) -> dict:
    client = connect(url)
    index = HeartbeatIndex(client, keys)
    beats = [Heartbeat.model_validate_json(json.dumps(heartbeat_dict(pid))) for pid in provider_ids]
    core_best = bare_best = float("inf")
    for r in range(rounds):  # interleaved so both see the same server state
        t_core, outcomes = timed(lambda r=r: index.record_many(beats, now=1e9 + 2 * r))
        assert all(o.accepted for o in outcomes)
        t_bare, _ = timed(lambda r=r: _bare_heartbeat_pipeline(client, keys, beats, 1e9 + 2 * r + 1))
        core_best, bare_best = min(core_best, t_core), min(bare_best, t_bare)
    core = len(beats) / core_best
    bare = len(beats) / bare_best
    return {"beats": len(beats), "core_per_s": core, "bare_pipeline_per_s": bare, "ratio": core / bare}


def bench_listing(url: str, keys: Keys, count: int) -> dict:
    client = connect(url)
    store = ProviderStore(client, keys)
    fleet = Fleet.open(client, keys)
    t_list, records = timed(lambda: store.list([Status.AVAILABLE]))
    t_describe, described = timed(lambda: fleet.provider_views([Status.AVAILABLE]))
    assert len(records) == len(described) == count
    return {"providers": count, "store_list_s": t_list, "fleet_describe_s": t_describe}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench core", description=__doc__.splitlines()[0])
    parser.add_argument("--providers", type=int, default=100_000, help="fleet size (heartbeats, listing)")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each throughput loop")
    parser.add_argument("--processes", type=int, default=4, help="client processes for concurrent allocation")
    parser.add_argument("--rounds", type=int, default=3, help="heartbeat rounds (best of)")
    args = parser.parse_args(argv)

    with RedisServer() as server:
        keys = Keys("bench:")
        print(
            f"# core benchmark: {platform.node()}, {multiprocessing.cpu_count()} cores, "
            f"redis-server on 127.0.0.1:{server.port}, redis-py {redis.__version__}"
        )
        seed_s, ids = timed(lambda: seed_providers(server.url, keys, args.providers))
        print(f"seeded {len(ids)} providers through Fleet.register + transitions in {seed_s:.1f} s")

        cap = bench_capacity(server.url, keys, ids[:100], args.seconds, args.processes)
        print(
            f"capacity: allocate+release pairs/s: {cap['pairs_per_s_one_client']:,.0f} one call each, "
            f"{cap['pairs_per_s_concurrent']:,.0f} from {cap['processes']} client processes, "
            f"{cap['pairs_per_s_batched']:,.0f} batched 200 per round trip (goal >= 5,000)"
        )

        hb = bench_heartbeats(server.url, keys, ids, args.rounds)
        print(
            f"heartbeats: core {hb['core_per_s']:,.0f}/s vs bare pipeline "
            f"{hb['bare_pipeline_per_s']:,.0f}/s "
            f"over {hb['beats']:,} beats: ratio {hb['ratio']:.2f} (goal >= 0.50)"
        )

        ls = bench_listing(server.url, keys, len(ids))
        print(
            f"listing {ls['providers']:,} providers by status: store {ls['store_list_s']:.2f} s, "
            f"with heartbeats and capacity {ls['fleet_describe_s']:.2f} s"
        )
        print(json.dumps({"capacity": cap, "heartbeats": hb, "listing": ls}))


if __name__ == "__main__":
    main()
