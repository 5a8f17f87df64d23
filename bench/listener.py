"""Benchmarks of the registration listener on a private redis-server (and the Kubernetes API test
server), ratios within one run.

    python -m bench listener [--registrations 2000] [--heartbeats 200000]

- registrations/s: auto approval with join tokens through the Kubernetes API, and manual approval
  (no Kubernetes in the loop);
- heartbeats/s through one listener (read from the stream, parse, record, ack) vs a bare redis-py
  pipeline writing the same keys, and the Kubernetes writes per 1,000 steady-state heartbeats.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

import redis

from bench.servers import private_servers
from testkit.factories import heartbeat_dict, registration_dict
from testkit.kube_server.server import KubeApiServer
from worldland.control.listener import Listener, ListenerSettings
from worldland.control.onboarding import Onboarding
from worldland.domain.lifecycle import Status
from worldland.domain.policy import ApprovalMode, ApprovalPolicy
from worldland.kube import KubeClient
from worldland.protocol.messages import Heartbeat
from worldland.protocol.streams import StreamNames
from worldland.state.fleet import Fleet
from worldland.state.heartbeats import RECORD_BATCH
from worldland.state.keys import Keys


def listener_for(
    client: redis.Redis, keys: Keys, policy: ApprovalPolicy, cluster: KubeClient | None
) -> Listener:
    names = StreamNames(namespace=f"b{uuid.uuid4().hex[:6]}:")
    onboarding = Onboarding(fleet=Fleet.open(client, keys), streams=names, policy=policy, cluster=cluster)
    settings = ListenerSettings(
        consumer="bench", batch=1000, block_ms=10, reconcile_every_s=1e9, claim_every_s=1e9
    )
    return Listener(onboarding, settings)


def drain(listener: Listener, expected: int) -> float:
    """Seconds for the listener to handle ``expected`` entries (bounded by a 10-minute deadline)."""
    start = time.perf_counter()
    handled = 0
    deadline = start + 600
    while handled < expected and time.perf_counter() < deadline:
        handled += listener.run_once()
    if handled < expected:
        raise RuntimeError(f"only {handled} of {expected} entries handled in 10 minutes")
    return time.perf_counter() - start


def publish(client: redis.Redis, stream: str, payloads: list[str]) -> None:
    for start in range(0, len(payloads), 1000):
        pipe = client.pipeline(transaction=False)
        for data in payloads[start : start + 1000]:
            pipe.xadd(stream, {"data": data, "timestamp": "2026-11-26T09:15:02Z"})
        pipe.execute()


def bench_registrations(client: redis.Redis, cluster: KubeClient, count: int) -> dict:
    results = {}
    for label, policy, kube in (
        ("auto_with_tokens", ApprovalPolicy(mode=ApprovalMode.AUTO), cluster),
        ("manual_no_kubernetes", ApprovalPolicy(mode=ApprovalMode.MANUAL), None),
    ):
        keys = Keys(f"bench-{label}:")
        listener = listener_for(client, keys, policy, kube)
        listener.consumer.ensure_groups()
        payloads = [json.dumps(registration_dict(f"{label}-{i:06d}")) for i in range(count)]
        publish(client, listener.onboarding.streams.registration, payloads)
        seconds = drain(listener, count)
        expected = Status.APPROVED if kube else Status.PENDING
        assert listener.fleet.store.counts()[expected.value] == count
        results[label] = count / seconds
    return results


def bench_heartbeats(
    client: redis.Redis, server: KubeApiServer, cluster: KubeClient, count: int, fleet: int
) -> dict:
    keys = Keys("bench-hb:")
    listener = listener_for(client, keys, ApprovalPolicy(), cluster)
    listener.consumer.ensure_groups()
    ids = [f"hb-{i:06d}" for i in range(fleet)]
    pipe = client.pipeline(transaction=False)
    for pid in ids:  # the heartbeat path reads only the status: seed just that
        pipe.hset(keys.provider(pid), mapping={"provider_id": pid, "status": "available"})
    pipe.execute()
    payloads = [json.dumps(heartbeat_dict(ids[i % fleet])) for i in range(count)]
    publish(client, listener.onboarding.streams.heartbeat, payloads)
    writes_before = len(server.writes_after(0))
    listener_s = drain(listener, count)
    kube_writes = len(server.writes_after(0)) - writes_before
    recorded = listener.metrics.registry.get_sample_value(
        "worldland_heartbeats_total", {"outcome": "recorded"}
    )
    assert recorded == count, recorded

    # The floor: the same keys and values, written from already-parsed beats by a bare pipeline.
    beats = [Heartbeat.model_validate_json(p) for p in payloads]
    start = time.perf_counter()
    for first in range(0, len(beats), RECORD_BATCH):
        pipe = client.pipeline(transaction=False)
        for beat in beats[first : first + RECORD_BATCH]:
            now = repr(time.time())
            pipe.hset(
                keys.heartbeat(beat.provider_id),
                mapping={
                    "received_at": now,
                    "active_jobs": beat.active_jobs,
                    "beat": beat.model_dump_json(exclude={"provider_id"}),
                },
            )
            pipe.zadd(keys.heartbeat_index, {beat.provider_id: now})
        pipe.execute()
    bare_s = time.perf_counter() - start
    listener_rate, bare_rate = count / listener_s, count / bare_s
    return {
        "beats": count,
        "listener_per_s": listener_rate,
        "bare_pipeline_per_s": bare_rate,
        "ratio": listener_rate / bare_rate,
        "kube_writes_per_1000": 1000 * kube_writes / count,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench listener", description=__doc__.splitlines()[0])
    parser.add_argument("--registrations", type=int, default=2000)
    parser.add_argument("--heartbeats", type=int, default=200_000)
    parser.add_argument("--fleet", type=int, default=20_000, help="distinct providers sending the heartbeats")
    args = parser.parse_args(argv)
    with private_servers("listener") as servers:
        client, cluster, kube_server = servers.client, servers.cluster, servers.kube_server
        reg = bench_registrations(client, cluster, args.registrations)
        print(
            f"registrations/s: {reg['auto_with_tokens']:,.0f} auto-approved with a join token each "
            f"(Kubernetes in the loop), {reg['manual_no_kubernetes']:,.0f} held for manual approval "
            "(no Kubernetes)"
        )
        hb = bench_heartbeats(client, kube_server, cluster, args.heartbeats, args.fleet)
        print(
            f"heartbeats through one listener: {hb['listener_per_s']:,.0f}/s vs bare pipeline "
            f"{hb['bare_pipeline_per_s']:,.0f}/s: ratio {hb['ratio']:.2f} (goals >= 20,000/s, >= 0.50); "
            f"Kubernetes writes per 1,000 steady-state beats: {hb['kube_writes_per_1000']:g} (goal 0)"
        )
        print(json.dumps({"registrations_per_s": reg, "heartbeats": hb}))


if __name__ == "__main__":
    main()
