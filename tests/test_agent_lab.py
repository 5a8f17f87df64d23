"""The agent inside a lab host (its own hostname, address and /etc, over the lab bridge to a Redis on the
gateway): it registers, its heartbeats keep the provider live; stopped, the audit makes it Offline;
started again, it recovers."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

from click.testing import CliRunner

from testkit.listener import make_listener
from testkit.redis_server import RedisServer
from worldland.cli.main import main as worldland
from worldland.domain.lifecycle import Status
from worldland.domain.policy import ApprovalMode, ApprovalPolicy
from worldland.protocol.streams import StreamNames
from worldland.state.connection import connect
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys

PROVIDER = Path(sys.executable).parent / "worldland-provider"
WALLET = "0x71C7656EC7ab88b098defB751B7401B5f6d8976F"


def until(condition, what: str, listener=None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listener is not None:
            listener.run(max_batches=1)
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {what}")


def test_agent_in_a_lab_host_registers_beats_goes_offline_and_recovers(lab, lab_gateway, keys: Keys):
    view = lab(n=1, gpus="RTX-4090:2")
    host = view.hosts[0]
    names = StreamNames(namespace=f"l{uuid.uuid4().hex[:6]}:")
    pid = f"lab-{uuid.uuid4().hex[:8]}"
    with RedisServer(also_bind=(lab_gateway,)) as redis_server:
        fleet = Fleet.open(connect(redis_server.url), keys)
        policy = ApprovalPolicy(mode=ApprovalMode.MANUAL, allow_private_ips=True)
        listener = make_listener(fleet, names, policy)
        config = (
            f"provider_id: {pid}\nwallet_addr: '{WALLET}'\nredis_url: {redis_server.url_at(lab_gateway)}\n"
            f"heartbeat_interval: 1\npublic_ip: {host.address}\ngpu_prices_per_hour: {{RTX 4090: 0.4}}\n"
        )
        host.run(
            "mkdir -p /etc/worldland /var/log/worldland && cat > /etc/worldland/provider.yml", input=config
        )
        start = (
            f"nohup {PROVIDER} --config /etc/worldland/provider.yml --stream-namespace {names.namespace} "
            "run --state-dir /var/lib/worldland > /var/log/worldland/agent.log 2>&1 & echo $!"
        )
        agent_pid = host.run(start).stdout.strip()
        try:
            until(lambda: fleet.store.get(pid) is not None, "the registration", listener)
            record = fleet.store.require(pid)
            assert record.hostname == host.name  # discovered inside the host, not on this machine
            assert record.public_ip == host.address
            assert fleet.ledger.get(pid).gpus["RTX-4090"].total == 2  # from the host's nvidia-smi
            listener.onboarding.approve(pid)  # no cluster here: Approved, token left to the reconcile
            assert fleet.store.require(pid).status is Status.APPROVED
            until(lambda: fleet.heartbeats.last_beat_times([pid])[pid] is not None, "heartbeats", listener)

            host.run(f"kill -TERM {agent_pid}")
            time.sleep(6)
            audit = CliRunner().invoke(
                worldland,
                ["--redis-url", redis_server.url, "--key-prefix", keys.prefix, "audit", "--stale-after", "5"],
            )
            assert audit.exit_code == 0, audit.output
            assert fleet.store.require(pid).status is Status.OFFLINE

            agent_pid = host.run(start).stdout.strip()
            until(lambda: fleet.store.require(pid).status is Status.APPROVED, "recovery", listener)
        finally:
            host.run(f"kill -TERM {agent_pid}", check=False)
            log = host.run("cat /var/log/worldland/agent.log", check=False).stdout
            print(log)
