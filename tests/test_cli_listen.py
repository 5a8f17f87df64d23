"""What ``worldland listen`` tells an operator (issue 13, "First contact"): its options explained, where
metrics are served, that no join token can be sent without Kubernetes access, which provider each
registration was and why a refusal, that Redis is back after an outage, and one line per failed
reconcile pass when Kubernetes is down."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from testkit.agent import Agent
from testkit.factories import registration, registration_dict
from testkit.fleet import put_in
from testkit.listener import drain, make_listener
from testkit.redis_server import RedisServer, free_port
from worldland.cli.listen import listen
from worldland.cli.main import main
from worldland.control.listener import NO_KUBERNETES, Listener, ListenerSettings
from worldland.control.onboarding import Onboarding
from worldland.domain.lifecycle import Status
from worldland.domain.policy import ApprovalMode, ApprovalPolicy
from worldland.protocol.streams import StreamNames
from worldland.state.connection import connect
from worldland.state.fleet import Fleet

NO_TOKEN_ERROR = "token: no Kubernetes access configured (--kubeconfig)"
WORLDLAND = Path(sys.executable).parent / "worldland"


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


@pytest.fixture
def records():
    """The records the ``worldland`` loggers emit (attached to them directly: ``setup_logging``, run by
    an earlier CLI test in this process, stops them from propagating to caplog's root handler)."""
    captured: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    logger = logging.getLogger("worldland")
    handler, level = Keep(logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield captured
    logger.removeHandler(handler)
    logger.setLevel(level)


def named(records: list[logging.LogRecord], message: str) -> list[logging.LogRecord]:
    return [r for r in records if r.getMessage() == message]


# -- help ------------------------------------------------------------------------------------------------


def test_every_listen_option_is_explained():
    undocumented = [
        p.name for p in listen.params if isinstance(p, click.Option) and not p.hidden and not p.help
    ]
    assert undocumented == []
    text = " ".join(CliRunner().invoke(main, ["listen", "--help"]).output.split())
    assert "0, the default, serves none" in text
    assert "Address the metrics server binds" in text


# -- the daemon, as an operator starts it -----------------------------------------------------------------


def test_the_listener_says_where_metrics_are_and_that_no_token_can_be_sent(redis_url, keys, tmp_path):
    names = StreamNames(namespace=f"l{free_port()}:")
    policy = tmp_path / "policy.yml"
    policy.write_text("mode: auto\nallowed_gpu_models: [RTX-4090]\n")
    port, log_path = free_port(), tmp_path / "listener.log"
    command = [str(WORLDLAND), "listen", "--redis-url", redis_url, "--key-prefix", keys.prefix]
    command += ["--stream-namespace", names.namespace, "--block-ms", "100", "--policy", str(policy)]
    command += ["--metrics-port", str(port)]  # (the connection options after the command, as operators try)
    with log_path.open("w") as log:
        listener = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        agent = Agent(connect(redis_url), names)
        agent.register(registration_dict("p-ok"))
        agent.register(registration_dict("p-private", public_ip="10.1.2.3"))
        agent.register(registration_dict("p-a100", gpu_name="NVIDIA A100-SXM4-80GB"))

        def registrations() -> dict[str, dict]:
            return {
                line["provider_id"]: line
                for line in json_lines(log_path)
                if line.get("message") == "registration"
            }

        wait_for(lambda: len(registrations()) == 3, 30, what="three registration log lines")
        lines = json_lines(log_path)
        messages = [line.get("message") for line in lines]
        served = lines[messages.index("serving metrics")]
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        assert served["metrics_url"] == metrics_url
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            assert "worldland_registrations_total" in response.read().decode()
        start_warning = lines[messages.index(NO_KUBERNETES)]
        assert start_warning["level"] == "warning"
        assert messages.index(NO_KUBERNETES) < messages.index("registration")
        logged = registrations()
        assert logged["p-ok"]["outcome"] == "approved" and "reason" not in logged["p-ok"]
        assert logged["p-private"]["outcome"] == "invalid" and "public_ip" in logged["p-private"]["reason"]
        assert logged["p-a100"]["outcome"] == "rejected"
        assert "A100-SXM4-80GB not accepted" in logged["p-a100"]["reason"]
        per_approval = [
            line for line in lines if line.get("message", "").startswith("approved, but no join token")
        ]
        assert [line["provider_id"] for line in per_approval] == ["p-ok"]
    finally:
        listener.send_signal(signal.SIGTERM)
        try:
            code = listener.wait(timeout=30)
        except subprocess.TimeoutExpired:
            listener.kill()
            listener.wait()
            raise
    assert code == 0  # SIGTERM: the batch in hand finished, exit 0
    status = CliRunner(env={"COLUMNS": "200"}).invoke(
        main, ["status", "--redis-url", redis_url, "--key-prefix", keys.prefix]
    )
    assert f"  p-ok: {NO_TOKEN_ERROR}" in status.output.splitlines(), status.output


# -- registrations, in process ------------------------------------------------------------------------------


def test_registration_lines_name_the_provider_and_the_reason_it_was_refused(fleet, names, records):
    policy = ApprovalPolicy(mode=ApprovalMode.MANUAL, allowed_gpu_models=["RTX 4090"])
    listener = make_listener(fleet, names, policy)
    agent = Agent(fleet.client, names)
    fleet.register(registration("p-owned"))
    agent.register(registration_dict("p-owned", wallet="0x" + "ab" * 20))  # another wallet's claim
    agent.register(registration_dict("p-h100", gpu_name="NVIDIA H100 80GB HBM3"))
    agent.register(registration_dict("p-fine"))
    agent.register("{nope")
    drain(listener)
    lines = {getattr(r, "provider_id", None): r for r in named(records, "registration")}
    assert set(lines) == {"p-owned", "p-h100", "p-fine", None}
    assert lines["p-owned"].outcome == "wallet_mismatch" and "another wallet" in lines["p-owned"].reason
    assert lines["p-h100"].outcome == "rejected" and "H100-80GB-HBM3 not accepted" in lines["p-h100"].reason
    assert lines["p-fine"].outcome == "pending" and not hasattr(lines["p-fine"], "reason")
    assert lines[None].outcome == "invalid" and "not valid JSON" in lines[None].reason
    assert named(records, NO_KUBERNETES) == []  # (said by run(), at start)


def test_a_refused_change_of_a_live_provider_is_logged_with_what_it_was_told(fleet, names, records):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.AUTO, min_gpus=2))
    fleet.register(registration("p-live"))
    put_in(fleet.store, "p-live", Status.AVAILABLE)
    Agent(fleet.client, names).register(registration_dict("p-live", gpus=1))
    drain(listener)
    [line] = named(records, "registration")
    assert line.provider_id == "p-live" and line.outcome == "refused"
    assert line.reason.startswith("registration change refused: ") and "at least 2" in line.reason


def test_each_approval_without_kubernetes_warns_that_no_token_is_sent(fleet, names, records):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.AUTO))
    agent = Agent(fleet.client, names)
    for pid in ("p-a", "p-b"):
        agent.register(registration_dict(pid))
    listener.run(max_batches=1)
    assert len(named(records, NO_KUBERNETES)) == 1
    warned = [r for r in records if r.getMessage().startswith("approved, but no join token can be sent")]
    assert [r.provider_id for r in warned] == ["p-a", "p-b"]
    assert all(r.levelno == logging.WARNING for r in warned)
    assert fleet.store.require("p-a").last_error == NO_TOKEN_ERROR


# -- Redis and Kubernetes outages ---------------------------------------------------------------------------


def test_the_listener_says_when_redis_is_back(keys, records):
    with RedisServer() as server:
        fleet = Fleet.open(connect(server.url), keys)
        onboarding = Onboarding(fleet=fleet, streams=StreamNames("r:"), policy=ApprovalPolicy(), cluster=None)
        restarts = []

        def sleep(_seconds: float) -> None:  # the backoff: Redis comes back meanwhile
            restarts.append(server.restart())

        listener = Listener(onboarding, ListenerSettings(block_ms=10, consumer="c"), sleep=sleep)
        server.stop()
        listener.run(max_batches=1)
    assert len(restarts) == 1
    assert len(named(records, "redis unavailable; retrying")) == 1
    [back] = named(records, "redis reachable again; resumed")
    assert back.failed_attempts == 1 and back.unreachable_s >= 0
    assert back.levelno == logging.INFO


@pytest.fixture
def cluster(kube_api):
    from worldland.kube import KubeClient

    return KubeClient.from_kubeconfig(kube_api.kubeconfig)


def test_kubernetes_down_is_one_warning_per_reconcile_pass_not_one_per_provider(
    fleet, names, cluster, kube_api, records
):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.MANUAL), cluster)
    waiting = sorted(f"p-wait-{i}" for i in range(4))
    for pid in waiting:
        fleet.register(registration(pid))
        put_in(fleet.store, pid, Status.APPROVED)  # approved while no token could be made:
        fleet.store.set_error(pid, "token: ConnectionRefusedError: the approval's own attempt")
    with kube_api.server.outage("refuse"):
        listener.reconcile()
    warnings = [r for r in records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warnings] == ["reconcile pass incomplete"]
    [summary] = warnings
    assert summary.tokens_not_issued == 4 and summary.providers == waiting
    assert summary.token_error.startswith("token: ")
    assert any(error.startswith("nodes: ") for error in summary.errors)
    assert all(fleet.store.require(pid).last_error for pid in waiting)  # each one's error still recorded
    records.clear()
    listener.reconcile()  # Kubernetes is back: the tokens go out, and nothing is warned
    assert [r for r in records if r.levelno >= logging.WARNING] == []
    assert all(fleet.store.require(pid).token_id for pid in waiting)
    assert not any(fleet.store.require(pid).last_error for pid in waiting)


def test_an_approval_while_kubernetes_is_down_still_warns_for_that_provider(
    fleet, names, cluster, kube_api, records
):
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.AUTO), cluster)
    Agent(fleet.client, names).register(registration_dict("p-now"))
    with kube_api.server.outage("refuse"):
        drain(listener)
    [warning] = named(records, "join token not issued")
    assert warning.provider_id == "p-now"
