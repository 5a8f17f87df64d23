"""The provider agent against a real listener on real Redis: the installed ``worldland-provider`` command
(its exit codes), its wire shape read by a Go-style reader, and ``run``'s heartbeats, re-registration
and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from testkit.agent import Agent
from testkit.listener import make_listener
from testkit.redis_server import RedisServer
from worldland.agent.config import AgentSettings
from worldland.agent.discovery import GpuDevice, GpuReport, HostFacts, discover
from worldland.agent.registration import Outcome, build_message, checked, register
from worldland.agent.runner import Runner
from worldland.agent.wire import AgentWire
from worldland.control.listener import Listener
from worldland.domain.lifecycle import Status
from worldland.domain.policy import ApprovalMode, ApprovalPolicy
from worldland.protocol.messages import RegistrationResponse, parse_message
from worldland.protocol.streams import StreamNames
from worldland.state.connection import connect
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys

PROVIDER = Path(sys.executable).parent / "worldland-provider"
WALLET = "0x71C7656EC7ab88b098defB751B7401B5f6d8976F"


def host_facts(gpus: int = 2) -> HostFacts:
    devices = tuple(
        GpuDevice(i, "NVIDIA GeForce RTX 4090", 24564, f"GPU-00000000-0000-0000-0000-00000000000{i}",
                  "550.54.15", "12.4", f"00000000:0{i}:00.0")
        for i in range(gpus)
    )  # fmt: skip
    return HostFacts(
        hostname="rig-test",
        public_ip="123.45.67.89",
        private_ip="10.0.0.5",
        os="Ubuntu 24.04.1 LTS",
        kernel_ver="6.8.0-45-generic",
        architecture="x86_64",
        cpu_model="AMD EPYC 7543 32-Core Processor",
        cpu_cores=32,
        cpu_threads=64,
        total_memory_mb=131072,
        total_disk_gb=1800,
        available_disk_gb=1500,
        gpus=GpuReport(devices, "nvml", None, False),
    )


@pytest.fixture
def names() -> StreamNames:
    return StreamNames(namespace=f"a{uuid.uuid4().hex[:6]}:")


@pytest.fixture
def fleet(redis_url: str, keys: Keys) -> Fleet:
    return Fleet.open(connect(redis_url), keys)


@pytest.fixture
def cluster(kube_api):
    from worldland.kube import KubeClient

    return KubeClient.from_kubeconfig(kube_api.kubeconfig)


class Running:
    """A listener looping in a thread (as the daemon does) until the test ends."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.thread = threading.Thread(target=listener.run, daemon=True)

    def __enter__(self) -> Listener:
        self.thread.start()
        return self.listener

    def __exit__(self, *exc: object) -> None:
        self.listener.stopping = True
        self.thread.join(timeout=10)


def provider_cli(
    config_dir: Path, redis_url: str, names: StreamNames, *args: str, pid: str, timeout: float = 60
):
    (config_dir / "provider.yml").write_text(f"provider_id: {pid}\nwallet_addr: '{WALLET}'\n")
    env = {**os.environ, "WORLDLAND_REDIS_URL": redis_url, "WORLDLAND_PUBLIC_IP": "123.45.67.89"}
    command = [
        str(PROVIDER),
        "--config",
        str(config_dir / "provider.yml"),
        "--stream-namespace",
        names.namespace,
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def test_register_pending_then_approved_with_a_token(tmp_path, redis_url, fleet, names, cluster, kube_api):
    pid = f"agent-{uuid.uuid4().hex[:8]}"
    listener = make_listener(
        fleet, names, ApprovalPolicy(mode=ApprovalMode.MANUAL, min_gpus=0, allow_private_ips=True), cluster
    )
    with Running(listener):
        first = provider_cli(tmp_path, redis_url, names, "register", "--timeout", "20", "--json", pid=pid)
        assert first.returncode == Outcome.PENDING, first.stderr
        assert json.loads(first.stdout)["status"] == "pending"
        assert listener.onboarding.approve(pid)  # what `worldland approve` does
        second = provider_cli(tmp_path, redis_url, names, "register", "--timeout", "20", "--json", pid=pid)
    assert second.returncode == Outcome.APPROVED, second.stderr
    answer = json.loads(second.stdout)
    assert answer["status"] == "approved"
    assert answer["join_token"] == "<hidden: --show-token>"  # never printed unless asked
    token_id = fleet.store.require(pid).token_id
    assert cluster.bootstrap_token_secret(token_id) is not None
    assert token_id not in second.stdout + second.stderr


def test_a_rejected_registration_exits_11_with_the_reason(tmp_path, redis_url, fleet, names):
    pid = f"agent-{uuid.uuid4().hex[:8]}"
    policy = ApprovalPolicy(mode=ApprovalMode.AUTO, min_gpus=4, allow_private_ips=True)
    with Running(make_listener(fleet, names, policy)):
        result = provider_cli(tmp_path, redis_url, names, "register", "--timeout", "20", pid=pid)
    assert result.returncode == Outcome.REJECTED
    assert "rejected: spec.gpus: offers 0 GPU(s); the policy requires at least 4" in result.stdout


def test_no_listener_is_a_timeout_and_no_redis_is_13(tmp_path, redis_url, names):
    pid = f"agent-{uuid.uuid4().hex[:8]}"
    result = provider_cli(tmp_path, redis_url, names, "register", "--timeout", "1", pid=pid)
    assert result.returncode == Outcome.TIMEOUT and "no answer within 1 s" in result.stderr
    dead = provider_cli(tmp_path, "redis://127.0.0.1:1/0", names, "register", "--timeout", "1", pid=pid)
    assert dead.returncode == Outcome.REDIS_UNREACHABLE
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in dead.stderr and "Traceback" not in dead.stderr


def test_a_bad_setting_is_one_line_and_exit_2(tmp_path, redis_url, names):
    (tmp_path / "provider.yml").write_text("heartbeat_interval: soon\nwallet_addr: '0x1234...abcd'\n")
    result = subprocess.run(
        [str(PROVIDER), "--config", str(tmp_path / "provider.yml"), "discover"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("worldland-provider: ") and ("heartbeat_interval" in line or "wallet_addr" in line)


def test_the_answer_written_before_the_agent_waits_is_still_received(fleet, names):
    pid = f"agent-{uuid.uuid4().hex[:8]}"
    settings = AgentSettings(provider_id=pid, wallet_addr=WALLET)
    wire = AgentWire(fleet.client, pid, names)
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.MANUAL, allow_private_ips=True))
    wire.prepare_answers()
    wire.publish_registration(build_message(settings, host_facts()))
    listener.run_once()  # answered before the agent reads
    answer = wire.wait_for_answer(5)
    assert answer is not None and answer.status is Status.PENDING


def test_the_listeners_answer_reads_the_same_for_this_agent_and_a_go_style_reader(fleet, names, cluster):
    pid = f"agent-{uuid.uuid4().hex[:8]}"
    settings = AgentSettings(provider_id=pid, wallet_addr=WALLET)
    listener = make_listener(
        fleet, names, ApprovalPolicy(mode=ApprovalMode.AUTO, allow_private_ips=True), cluster
    )
    Agent(fleet.client, names).register(build_message(settings, host_facts()))
    listener.run_once()
    go_reader = Agent(fleet.client, names).await_answer(pid)  # XREADGROUP agent-group, JSON in "data"
    [(_id, fields)] = fleet.client.xrange(names.response(pid))
    ours = parse_message(RegistrationResponse, fields["data"])
    assert go_reader is not None and go_reader["status"] == ours.status.value == "approved"
    assert go_reader["join_token"] == ours.join_token and go_reader["ca_hash"] == ours.ca_hash
    assert (go_reader["master_ip"], go_reader["master_port"]) == (ours.master_ip, ours.master_port)


def test_this_machines_registration_passes_the_listeners_validation(tmp_path, fleet, names):
    pid = f"agent-{uuid.uuid4().hex[:8]}"
    settings = AgentSettings(provider_id=pid, wallet_addr=WALLET, data_path=tmp_path)
    message = build_message(settings, discover(None, tmp_path))
    checked(message)
    policy = ApprovalPolicy(mode=ApprovalMode.MANUAL, min_gpus=0, allow_private_ips=True)
    listener = make_listener(fleet, names, policy)
    result_box: list[object] = []
    wire = AgentWire(fleet.client, pid, names)
    thread = threading.Thread(target=lambda: result_box.append(register(wire, message, 10)))
    thread.start()
    deadline = time.monotonic() + 10
    while thread.is_alive() and time.monotonic() < deadline:
        listener.run_once()
    thread.join(timeout=5)
    [result] = result_box
    assert result.outcome is Outcome.PENDING  # type: ignore[attr-defined]
    assert fleet.client.xlen(names.dead_letter(names.registration)) == 0
    assert fleet.store.require(pid).status is Status.PENDING


# -- run ----------------------------------------------------------------------------------------------


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def test_run_heartbeats_reregisters_when_unknown_and_survives_a_redis_restart(
    tmp_path, private_redis, keys, names
):
    pid = f"agent-{uuid.uuid4().hex[:8]}"
    fleet = Fleet.open(connect(private_redis.url), keys)
    settings = AgentSettings(
        provider_id=pid, wallet_addr=WALLET, redis_url=private_redis.url, heartbeat_interval=1
    )
    runner = Runner(settings, state_dir=tmp_path, names=names, discover_host=host_facts)
    agent = threading.Thread(target=runner.run, daemon=True)
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.MANUAL, allow_private_ips=True))
    agent.start()
    try:
        until(lambda: _pump(listener) and fleet.store.get(pid) is not None, "registered")
        until(
            lambda: _pump(listener) and fleet.heartbeats.last_beat_times([pid])[pid] is not None, "first beat"
        )
        assert json.loads((tmp_path / "state.json").read_text())["status"] == "pending"
        # The record is lost (a Redis restored from an old backup): the listener says so, the agent registers.
        fleet.client.delete(keys.provider(pid))
        fleet.client.srem(keys.status_index(Status.PENDING), pid)
        until(lambda: _pump(listener) and fleet.store.get(pid) is not None, "registered again")
        # Redis goes away and comes back: no crash, beats resume.
        before = runner.beats_sent
        private_redis.restart()
        until(
            lambda: _pump(listener) and runner.beats_sent > before + 1, "beats after the restart", timeout=40
        )
        assert agent.is_alive()
    finally:
        runner.stop.set()
        agent.join(timeout=5)
    assert not agent.is_alive()


def _pump(listener: Listener) -> bool:
    listener.sleep = lambda _s: time.sleep(0.1)
    listener.run(max_batches=1)  # as the daemon does: Redis errors and lost groups are retried
    return True


def until(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (redis.ConnectionError, redis.TimeoutError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {what}")


def test_run_exits_0_within_a_second_of_sigterm(tmp_path, redis_url, names):
    pid = f"agent-{uuid.uuid4().hex[:8]}"
    (tmp_path / "provider.yml").write_text(f"provider_id: {pid}\nwallet_addr: '{WALLET}'\n")
    env = {**os.environ, "WORLDLAND_REDIS_URL": redis_url, "WORLDLAND_PUBLIC_IP": "123.45.67.89"}
    process = subprocess.Popen(
        [str(PROVIDER), "--config", str(tmp_path / "provider.yml"), "--stream-namespace", names.namespace,
         "run", "--state-dir", str(tmp_path / "state")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        until(lambda: client.xlen(names.registration) > 0, "the registration")
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = process.wait(timeout=10)
        assert time.monotonic() - started < 1.5
        assert code == 0, process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
