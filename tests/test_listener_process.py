"""The installed ``worldland listen`` as a process: crash and restart, Redis restarts, signals, metrics."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
import uuid
from collections import Counter

import pytest
import redis

from testkit.factories import registration, registration_dict
from testkit.listener import ListenerProcess
from testkit.redis_server import RedisServer, free_port
from worldland.domain.lifecycle import Status
from worldland.kube import KubeClient
from worldland.protocol.streams import DEFAULT_GROUP, StreamNames
from worldland.state.connection import connect
from worldland.state.fleet import Fleet


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def names() -> StreamNames:
    return StreamNames(namespace=f"p{uuid.uuid4().hex[:6]}:")


@pytest.fixture
def processes():
    started: list[ListenerProcess] = []
    yield started
    for proc in started:
        proc.kill()


def publish_registrations(client: redis.Redis, names: StreamNames, ids: list[str]) -> None:
    for start in range(0, len(ids), 500):
        pipe = client.pipeline(transaction=False)
        for pid in ids[start : start + 500]:
            message = registration_dict(pid, hostname=f"rig-{pid}")
            pipe.xadd(names.registration, {"data": json.dumps(message), "timestamp": "2026-11-26T09:15:02Z"})
        pipe.execute()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_kill_9_mid_batch_loses_nothing_and_leaves_one_valid_token_each(
    redis_url, keys, names, kube_api, tmp_path, processes
):
    """10,000 registrations, auto approval with real join tokens; the listener is killed -9 while it
    works through them and started again: every provider is stored once, with one valid token."""
    count = 10_000
    policy = tmp_path / "policy.yml"
    policy.write_text("mode: auto\nmin_gpus: 1\n")
    client = connect(redis_url)
    ids = [f"crash-{uuid.uuid4().hex[:6]}-{i:05d}" for i in range(count)]
    publish_registrations(client, names, ids)
    extra = [
        "--policy",
        str(policy),
        "--kubeconfig",
        str(kube_api.kubeconfig),
        "--claim-idle-ms",
        "1000",
        "--claim-interval",
        "1",
        "--reconcile-interval",
        "3600",
        "--batch",
        "200",
    ]
    first = ListenerProcess(redis_url, keys, names, tmp_path, *extra).start()
    processes.append(first)
    fleet = Fleet.open(client, keys)
    wait_for(lambda: fleet.store.counts()["approved"] >= 300, timeout=300, what="the first approvals")
    first.kill()  # SIGKILL: no cleanup, entries left pending
    killed_at = fleet.store.counts()["approved"]
    assert killed_at < count, "the listener finished before it could be killed; raise the count"
    second = ListenerProcess(redis_url, keys, names, tmp_path, *extra).start()
    processes.append(second)
    wait_for(lambda: fleet.store.counts()["approved"] == count, timeout=900, what="all approvals")
    wait_for(
        lambda: client.xpending(names.registration, DEFAULT_GROUP)["pending"] == 0,
        timeout=60,
        what="an empty pending list",
    )
    assert second.stop() == 0

    records = fleet.store.list()
    assert sorted(r.provider_id for r in records) == sorted(ids)  # each exactly once
    assert all(r.status is Status.APPROVED and r.token_id and not r.last_error for r in records)
    cluster = KubeClient.from_kubeconfig(kube_api.kubeconfig)
    tokens = [t for t in cluster.list_bootstrap_tokens() if t.provider_label in set(ids)]
    per_provider = Counter(t.provider_label for t in tokens)
    assert set(per_provider) == set(ids)
    assert max(per_provider.values()) == 1, "a provider was left with two tokens"
    recorded = {r.provider_id: r.token_id for r in records}
    assert all(recorded[t.provider_label] == t.token_id for t in tokens)


def test_redis_restart_while_heartbeats_flow(keys, names, tmp_path, processes):
    with RedisServer(persist=True) as server:
        client = connect(server.url)
        fleet = Fleet.open(client, keys)
        ids = [f"hb-{i}" for i in range(20)]
        for pid in ids:
            fleet.register(registration(pid))
            for step in (Status.APPROVED, Status.JOINED, Status.AVAILABLE):
                fleet.store.transition(pid, step)
        listener = ListenerProcess(server.url, keys, names, tmp_path).start()
        processes.append(listener)
        stop = threading.Event()
        sent = Counter()

        def publish() -> None:
            publisher = redis.Redis(port=server.port, socket_timeout=1, socket_connect_timeout=1)
            for _ in range(2000):  # bounded: at most 2000 rounds of 20 beats
                if stop.is_set():
                    return
                try:
                    for pid in ids:
                        publisher.xadd(
                            names.heartbeat,
                            {
                                "data": json.dumps({"provider_id": pid, "active_jobs": 0}),
                                "timestamp": "2026-11-26T09:15:02Z",
                            },
                        )
                    sent["ok"] += 1
                except redis.RedisError:
                    sent["failed"] += 1
                time.sleep(0.05)

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        beats = fleet.heartbeats.last_beat_times
        wait_for(lambda: None not in beats(ids).values(), 30, what="first beats")
        server.restart()
        restarted_at = time.time()
        wait_for(
            lambda: all((t or 0) > restarted_at for t in beats(ids).values()),
            timeout=60,
            what="beats recorded after the restart",
        )
        stop.set()
        thread.join(timeout=10)
        assert listener.process.poll() is None, "the listener died"
        assert listener.stop() == 0
        messages = [line.get("message") for line in listener.log_lines()]
        assert "redis unavailable; retrying" in messages
        assert messages.count("listening") == 1  # one process throughout: no crash loop


def test_sigterm_finishes_and_exits_zero_and_metrics_are_served(redis_url, keys, names, tmp_path, processes):
    port = free_port()
    listener = ListenerProcess(redis_url, keys, names, tmp_path, "--metrics-port", str(port)).start()
    processes.append(listener)
    client = connect(redis_url)
    publish_registrations(client, names, ["sig-1", "sig-2"])
    fleet = Fleet.open(client, keys)
    wait_for(lambda: fleet.store.counts()["pending"] == 2, 30, what="registrations")

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()

    wait_for(lambda: 'worldland_registrations_total{outcome="pending"} 2.0' in scrape(), 30, what="metrics")
    text = scrape()
    for name in (
        "worldland_heartbeats_total",
        "worldland_dead_letters_total",
        "worldland_pending_entries",
        "worldland_batch_seconds_bucket",
        "worldland_stale_providers",
    ):
        assert name in text
    assert listener.stop(signal.SIGTERM) == 0
    assert listener.log_lines()[-1]["message"] == "listener stopped"


def test_two_listeners_in_one_group_share_the_work_without_double_effects(
    redis_url, keys, names, kube_api, tmp_path, processes
):
    policy = tmp_path / "policy.yml"
    policy.write_text("mode: auto\n")
    client = connect(redis_url)
    ids = [f"pair-{uuid.uuid4().hex[:6]}-{i:03d}" for i in range(300)]
    extra = ["--policy", str(policy), "--kubeconfig", str(kube_api.kubeconfig), "--batch", "20"]
    for n in range(2):
        processes.append(
            ListenerProcess(redis_url, keys, names, tmp_path, "--consumer", f"c{n}", *extra).start()
        )
    publish_registrations(client, names, ids)
    fleet = Fleet.open(client, keys)
    wait_for(lambda: fleet.store.counts()["approved"] == len(ids), 300, what="all approvals")

    # Approved comes before the token: a token whose issue failed (recorded) is retried by a reconcile
    # pass, so the work is done when every provider holds a token and no error.
    def tokens_missing() -> dict[str, str]:
        return {
            r.provider_id: r.last_error for r in fleet.store.get_many(ids) if not r.token_id or r.last_error
        }

    try:
        wait_for(lambda: not tokens_missing(), 120, what="every join token issued")
    except AssertionError:
        raise AssertionError(f"join tokens missing: {tokens_missing()}") from None
    for proc in processes:
        assert proc.stop() == 0
    consumers = {c["name"]: c for c in client.xinfo_consumers(names.registration, DEFAULT_GROUP)}
    assert set(consumers) == {"c0", "c1"}
    handled = [sum(line.get("message") == "registration" for line in proc.log_lines()) for proc in processes]
    failures = [line for proc in processes for line in proc.log_lines() if line.get("level") == "warning"]
    print("token failures retried:", failures)
    assert all(n > 0 for n in handled), f"one listener did all the work: {handled}"
    cluster = KubeClient.from_kubeconfig(kube_api.kubeconfig)
    per_provider = Counter(
        t.provider_label for t in cluster.list_bootstrap_tokens() if t.provider_label in set(ids)
    )
    assert set(per_provider) == set(ids) and max(per_provider.values()) == 1
    answers = [len(client.xrange(names.response(pid))) for pid in ids]
    assert answers == [1] * len(ids)
    assert sum(handled) == len(ids)  # each registration handled once, by one of the two
