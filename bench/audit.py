"""Benchmark of the heartbeat audit on a private redis-server: its cost must follow the stale
providers, not the fleet (DESIGN.md: 100,000 providers with 100 stale <= 2x 1,000 with 100 stale).

    python -m bench audit [--small 1000] [--large 100000] [--stale 100] [--rounds 5]

Both fleets live in one redis-server (two key prefixes) and are measured in the same run. Seeding
goes straight to the keys the core writes (names from ``worldland.keys.Keys``), pipelined: the
provider hash, its status index, the heartbeat index and the heartbeat hash, for Available
providers approved long ago (so the grace set is empty, as in a steady fleet). Registering 100,000
providers through ``Fleet.register`` and the transitions takes about 3 minutes on the 2-core VM; the
audit reads only these keys, so the shortcut measures the same thing.

Each round times three passes (best of ``--rounds`` reported): one that marks the stale providers
Offline, a steady one that finds nothing new (the stale ones already Offline), and one that
recovers them after they beat again. Once without Kubernetes (state changes; node writes left
pending) and once with the Kubernetes API test server, where each stale provider has a node that
the pass labels and taints (and untaints on recovery).
"""

from __future__ import annotations

import argparse
import json
import time

import redis

from bench.servers import private_servers
from worldland.control.audit import Audit, AuditSettings
from worldland.control.onboarding import Onboarding
from worldland.domain.lifecycle import Status
from worldland.domain.policy import ApprovalPolicy
from worldland.kube import KubeClient
from worldland.protocol.streams import StreamNames
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys

BEAT = json.dumps({"status": "available", "gpu_usage": [12.5] * 8, "cpu_usage": 7.25, "active_jobs": 1})
CHUNK = 5000


def node_name(i: int) -> str:
    return f"rig-{i:06d}"


def seed(client: redis.Redis, keys: Keys, count: int, stale: int, now: float) -> list[str]:
    """``count`` Available providers; the first ``stale`` last beat 300 s ago, the rest just now."""
    ids = [f"prov-{i:06d}" for i in range(count)]
    for start in range(0, count, CHUNK):
        pipe = client.pipeline(transaction=False)
        chunk = ids[start : start + CHUNK]
        for offset, pid in enumerate(chunk):
            i = start + offset
            beat_at = now - 300 if i < stale else now - (i % 30)
            pipe.hset(
                keys.provider(pid),
                mapping={
                    "provider_id": pid,
                    "wallet_addr": "0x" + f"{i:040x}",
                    "node_name": node_name(i),
                    "status": Status.AVAILABLE.value,
                    "gpu_models": '["A100-SXM4-80GB"]',
                    "created_at": repr(now - 86400),
                    "approved_at": repr(now - 86000),
                    "status_changed_at": repr(now - 85000),
                },
            )
            pipe.hset(
                keys.heartbeat(pid), mapping={"received_at": repr(beat_at), "active_jobs": 1, "beat": BEAT}
            )
            pipe.zadd(keys.heartbeat_index, {pid: beat_at})
        pipe.sadd(keys.status_index(Status.AVAILABLE), *chunk)
        pipe.execute()
    return ids


def set_beats(client: redis.Redis, keys: Keys, provider_ids: list[str], at: float) -> None:
    pipe = client.pipeline(transaction=False)
    for pid in provider_ids:
        pipe.zadd(keys.heartbeat_index, {pid: at})
        pipe.hset(keys.heartbeat(pid), "received_at", repr(at))
    pipe.execute()


def make_audit(client: redis.Redis, keys: Keys, now: float, cluster: KubeClient | None) -> Audit:
    def clock() -> float:
        return now

    onboarding = Onboarding(
        fleet=Fleet.open(client, keys, clock),
        streams=StreamNames(),
        policy=ApprovalPolicy(),
        cluster=cluster,
        clock=clock,
    )
    return Audit(onboarding, AuditSettings(), clock)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def timed_passes(
    client: redis.Redis, keys: Keys, stale_ids: list[str], now: float, rounds: int, cluster=None
) -> dict:
    """Per round: the stale providers' beats go 300 s old and a pass marks them Offline (and with a
    cluster labels and taints their nodes); a steady pass finds nothing new; they beat again and a
    pass recovers them (untainting their nodes). Best of ``rounds`` for each."""
    best = {"mark_offline_s": float("inf"), "steady_s": float("inf"), "recover_s": float("inf")}
    checked = 0
    for _ in range(rounds):
        set_beats(client, keys, stale_ids, now - 300)
        seconds, report = timed(make_audit(client, keys, now, cluster).run)
        assert report.ok, report.errors
        assert sorted(report.newly_offline) == stale_ids, len(report.newly_offline)
        if cluster is not None:
            assert sorted(report.synced) == stale_ids, len(report.synced)
        best["mark_offline_s"] = min(best["mark_offline_s"], seconds)
        checked = report.checked

        seconds, steady = timed(make_audit(client, keys, now, cluster).run)
        assert steady.ok and not steady.newly_offline and not steady.synced, steady.errors
        best["steady_s"] = min(best["steady_s"], seconds)

        set_beats(client, keys, stale_ids, now + 10)
        seconds, back = timed(make_audit(client, keys, now + 20, cluster).run)
        assert back.ok and sorted(back.recovered) == stale_ids, (len(back.recovered), back.errors)
        best["recover_s"] = min(best["recover_s"], seconds)
    return {**best, "checked": checked}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench audit", description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000, help="the small fleet")
    parser.add_argument("--large", type=int, default=100_000, help="the large fleet")
    parser.add_argument("--stale", type=int, default=100, help="stale providers in each fleet")
    parser.add_argument("--rounds", type=int, default=5, help="passes per measurement (best of)")
    args = parser.parse_args(argv)
    now = time.time()
    with private_servers("audit") as servers:
        client, cluster = servers.client, servers.cluster
        fleets = {}
        for label, size in (("small", args.small), ("large", args.large)):
            keys = Keys(f"bench-audit-{label}:")
            start = time.perf_counter()
            ids = seed(client, keys, size, args.stale, now)
            print(f"seeded {size:,} providers ({args.stale} stale) in {time.perf_counter() - start:.1f} s")
            fleets[label] = (keys, ids[: args.stale], size)
        # Nodes for the stale providers only (the same names in both fleets: the test server is shared).
        api = cluster._core  # bench setup through the same client
        for i in range(args.stale):
            api.create_node({"metadata": {"name": node_name(i)}})

        results: dict[str, dict] = {}
        for label, (keys, stale_ids, size) in fleets.items():
            plain = timed_passes(client, keys, stale_ids, now, args.rounds)
            with_kube = timed_passes(client, keys, stale_ids, now, args.rounds, cluster)
            results[label] = {"providers": size, "stale": len(stale_ids), "no_kube": plain, "kube": with_kube}
        small, large = results["small"], results["large"]
        for mode, title in (("no_kube", "without Kubernetes"), ("kube", "with node labels+taints")):
            ratios = {m: large[mode][m] / small[mode][m] for m in ("mark_offline_s", "steady_s", "recover_s")}
            results[f"ratio_{mode}"] = ratios
            print(
                f"audit {title}: {small['providers']:,} providers / {small['stale']} stale vs "
                f"{large['providers']:,} / {large['stale']}: mark offline "
                f"{1000 * small[mode]['mark_offline_s']:.1f} vs "
                f"{1000 * large[mode]['mark_offline_s']:.1f} ms "
                f"(ratio {ratios['mark_offline_s']:.2f}, goal <= 2); steady pass "
                f"{1000 * small[mode]['steady_s']:.1f} vs {1000 * large[mode]['steady_s']:.1f} ms "
                f"(ratio {ratios['steady_s']:.2f}); recovery {1000 * small[mode]['recover_s']:.1f} vs "
                f"{1000 * large[mode]['recover_s']:.1f} ms (ratio {ratios['recover_s']:.2f})"
            )
        print(json.dumps(results))


if __name__ == "__main__":
    main()
