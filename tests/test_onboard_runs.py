"""Onboarding runs through the real ansible-runner and ansible-playbook, on the suite's real Redis.

The playbook is ``tests/data/playbooks/onboard_probe.yml``: it targets the ``approved`` group like
``onboard.yml``, with ``connection: local`` (it reaches no machine), and leaves per host what it saw
under a temporary dir; one no_log task uses a secret and, for the hosts the test names, fails with the
secret as its message. Hosts come from the worldland inventory plugin over the test's key prefix.

HOME is a temporary dir in every test: the hostile provider strings would ``touch ~/m-...`` if rendered.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from testkit.agent import Agent
from testkit.factories import registration, registration_dict
from testkit.fleet import put_in
from testkit.listener import drain, make_listener
from tests.conftest import REPO
from worldland.cli.main import main
from worldland.control.listener import Listener
from worldland.control.logs import JsonFormatter
from worldland.control.onboard_queue import OnboardQueue, RetryPolicy, approved_onboarding
from worldland.control.onboard_runs import (
    HostStats,
    OnboardResult,
    OnboardSettings,
    record_failures,
    run_onboarding,
)
from worldland.domain.lifecycle import Status
from worldland.domain.names import canonical_gpu_model
from worldland.domain.policy import ApprovalMode, ApprovalPolicy
from worldland.domain.registration import parse_registration
from worldland.protocol.streams import StreamNames
from worldland.state.connection import connect
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys

PROBE = REPO / "tests" / "data" / "playbooks" / "onboard_probe.yml"
ANSIBLE_CFG = REPO / "ansible.cfg"
WORLDLAND = Path(sys.executable).parent / "worldland"
CENSORED_KEYS = {"time", "level", "logger", "message", "run_id", "host", "task", "status"}


# -- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME, and none of this machine's ANSIBLE_*/WORLDLAND_* settings."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in list(os.environ):
        if name.startswith(("ANSIBLE_", "WORLDLAND_")):
            monkeypatch.delenv(name)
    return home


@pytest.fixture(autouse=True)
def restore_signals() -> Iterator[None]:
    """ansible-runner, called from the main thread, takes SIGINT/SIGTERM (to cancel its run)."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[logging.Logger]:
    """``worldland onboard`` sets the worldland logger up (JSON lines on its stderr): undone after."""
    logger = logging.getLogger("worldland")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield logger
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


@pytest.fixture
def log_lines(restore_logging: logging.Logger) -> Callable[[], list[dict[str, Any]]]:
    """The worldland JSON log lines written during the test (parsed)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    restore_logging.handlers[:] = [handler]
    restore_logging.setLevel(logging.INFO)
    restore_logging.propagate = False
    return lambda: [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture
def fleet(redis_url: str, keys: Keys) -> Iterator[Fleet]:
    fleet = Fleet.open(connect(redis_url), keys)
    yield fleet
    fleet.client.close()


@dataclass
class Probe:
    """The probe playbook's world: its inventory (the plugin + group vars), output dir and secret."""

    root: Path
    settings: OnboardSettings
    secret: str

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def inventory(self) -> Path:
        return self.root / "inventory"

    @property
    def runs(self) -> Path:
        return Path(self.settings.runs_dir)

    def set_vars(self, **values: Any) -> None:
        """group_vars/all.yml: how to reach the hosts (not at all) and the probe's knobs: our values."""
        data = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "probe_dir": str(self.out),
            "probe_secret": self.secret,
            **values,
        }
        (self.inventory / "group_vars" / "all.yml").write_text(yaml.safe_dump(data))

    def marker(self, node: str) -> dict[str, Any] | None:
        path = self.out / f"{node}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def attempts(self, node: str) -> int:
        path = self.out / f"{node}.attempts"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def artifact_runs(self) -> list[str]:
        return sorted(p.name for p in (self.runs / "artifacts").iterdir())

    def artifact_text(self) -> str:
        """Every file under the runs dir, as text."""
        return "\n".join(
            p.read_bytes().decode("utf-8", "replace") for p in sorted(self.runs.rglob("*")) if p.is_file()
        )


@pytest.fixture
def probe(tmp_path: Path, redis_url: str, keys: Keys) -> Probe:
    root = tmp_path / "probe"
    (root / "inventory" / "group_vars").mkdir(parents=True)
    (root / "out").mkdir()
    (root / "inventory" / "worldland.yml").write_text(
        yaml.safe_dump(
            {"plugin": "worldland.provider.worldland", "redis_url": redis_url, "key_prefix": keys.prefix}
        )
    )
    settings = OnboardSettings(
        inventories=(str(root / "inventory"),),
        playbook=str(PROBE),
        runs_dir=str(root / "runs"),
        keep_runs=5,
        ansible_config=str(ANSIBLE_CFG),
        redis_url=redis_url,
        key_prefix=keys.prefix,
    )
    made = Probe(root, settings, secret=f"s3cret-{secrets.token_hex(8)}")
    made.set_vars()
    return made


def put(fleet: Fleet, provider_id: str, status: Status) -> str:
    """A registered provider in ``status``; its node name."""
    if fleet.store.get(provider_id) is None:
        fleet.register(registration(provider_id))
    if status is Status.REJECTED:
        fleet.reject(provider_id, "no")
    else:
        put_in(fleet.store, provider_id, status)
    return fleet.store.require(provider_id).node_name


# What a provider may write in free text, each rendering would leave its own file in HOME.
def payload(marker: str) -> str:
    return "{{lookup('pipe','touch ~/" + marker + "')}}"  # 31 characters for a 2-letter marker: fits 32


HOSTILE = {
    "os": "{{ lookup('pipe', 'touch ~/m-os') }}",
    "kernel_ver": "{{ lookup('pipe', 'touch ~/m-kernel') }}",
    "cpu_model": "{{ lookup('pipe', 'touch ~/m-cpu') }}",
    "gpu_name": "NVIDIA {{ lookup('pipe', 'touch ~/m-gpu') }}",
    "uuid": "{{ lookup('pipe', 'touch ~/m-uuid') }}",
    "driver_ver": payload("m5"),
    "cuda_version": payload("m6"),
    "pci_bus_id": payload("m7"),
    "agent_version": payload("m8"),
}


def put_hostile(fleet: Fleet, provider_id: str) -> str:
    """An Approved provider whose every free-text field of the registration is a Jinja2 payload."""
    data = registration_dict(provider_id, gpu_name=HOSTILE["gpu_name"], gpus=1)
    spec, gpu = data["spec"], data["spec"]["gpus"][0]
    for name in ("os", "kernel_ver", "cpu_model"):
        spec[name] = HOSTILE[name]
    for name in ("uuid", "driver_ver", "cuda_version", "pci_bus_id"):
        gpu[name] = HOSTILE[name]
    data["agent_version"] = HOSTILE["agent_version"]
    fleet.register(parse_registration(json.dumps(data)))
    return put(fleet, provider_id, Status.APPROVED)


def rendered(home: Path) -> list[str]:
    return sorted(p.name for p in home.iterdir() if p.name.startswith("m"))


def events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((run_dir / "job_events").glob("*.json"))]


def of(lines: list[dict[str, Any]], message: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["message"] == message]


def at(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(line["time"].replace("Z", "+00:00")).timestamp()


# -- one run --------------------------------------------------------------------------------------------


def test_a_run_reports_per_host_keeps_secrets_out_and_never_renders_provider_text(
    fleet: Fleet, probe: Probe, log_lines, environment: Path
):
    hostile = put_hostile(fleet, "p-hostile")
    failing = put(fleet, "p-failing", Status.APPROVED)
    loud = put(fleet, "p-loud", Status.APPROVED)
    pending = put(fleet, "p-pending", Status.PENDING)
    available = put(fleet, "p-available", Status.AVAILABLE)
    put(fleet, "p-rejected", Status.REJECTED)
    probe.set_vars(probe_fail_hosts=[failing], probe_attempts_needed={loud: 2})

    kubeconfig = probe.root / "admin.conf"
    kubeconfig.write_text("not read by the probe\n")

    result = run_onboarding(replace(probe.settings, kubeconfig=str(kubeconfig)))

    # Per host, from the stats: only the approved ones were in the play.
    assert set(result.hosts) == {hostile, failing, loud}
    assert result.hosts[hostile].succeeded and result.hosts[hostile].changed == 2
    assert result.hosts[hostile].ok == 4 and result.hosts[hostile].skipped == 2
    assert result.hosts[failing].failed == 1 and not result.hosts[failing].succeeded
    assert result.failed_hosts == sorted([failing, loud])
    assert (result.rc, result.status, result.succeeded) == (2, "failed", False)
    assert result.artifacts == probe.runs / "artifacts" / result.run_id and result.artifacts.is_dir()
    assert probe.marker(pending) is None and probe.marker(available) is None
    marker = probe.marker(hostile)
    assert marker is not None and marker["run_id"] == result.run_id and marker["provider_ids"] == []
    assert marker["env"] == {
        "redis_url": probe.settings.redis_url,
        "key_prefix": probe.settings.key_prefix,
        "kubeconfig": str(kubeconfig),
    }

    # Provider text is data everywhere: nothing ran, and the literal text is what the play saw and kept.
    assert rendered(environment) == []
    spec = marker["spec"]
    assert [spec["os"], spec["kernel_ver"], spec["cpu_model"]] == [
        HOSTILE[k] for k in ("os", "kernel_ver", "cpu_model")
    ]
    gpu = spec["gpus"][0]
    assert [gpu[k] for k in ("name", "uuid", "driver_ver", "cuda_version", "pci_bus_id")] == [
        HOSTILE[k] for k in ("gpu_name", "uuid", "driver_ver", "cuda_version", "pci_bus_id")
    ]
    shown = [
        e["event_data"]["res"]["msg"]
        for e in events(result.artifacts)
        if e["event"] == "runner_on_ok"
        and e["event_data"]["task"] == "Show what the provider sent"
        and e["event_data"]["host"] == hostile
    ]
    h = HOSTILE
    assert shown == [
        f"os={h['os']} kernel={h['kernel_ver']} cpu={h['cpu_model']} gpu={h['gpu_name']} uuid={h['uuid']} "
        f"driver={h['driver_ver']} cuda={h['cuda_version']} pci={h['pci_bus_id']} "
        f"models={canonical_gpu_model(h['gpu_name'])}"
    ]
    # Extra vars carry only what the driver made: the run id (the ansible-playbook command line).
    command = json.loads((result.artifacts / "command").read_text())
    extra = [json.loads(command["command"][i + 1]) for i, arg in enumerate(command["command"]) if arg == "-e"]
    assert extra == [{"worldland_run_id": result.run_id}]
    assert not isinstance(command["env"], dict)  # the environment (Redis URL, ...) is not kept

    # One log line per task result; the no_log tasks' lines say host, task and status only.
    lines = log_lines()
    tasks = of(lines, "onboard task")
    copy = [t for t in tasks if t["task"] == "Write the marker" and t["host"] == hostile]
    assert copy and copy[0]["action"] == "ansible.builtin.copy" and copy[0]["changed"] is True
    assert copy[0]["failed"] is False and copy[0]["unreachable"] is False
    censored = [t for t in tasks if t["task"] in ("Use the secret", "Fail with the secret")]
    assert sorted((t["host"], t["task"], t["status"]) for t in censored) == sorted(
        [
            (hostile, "Use the secret", "ok"),
            (failing, "Use the secret", "ok"),
            (hostile, "Fail with the secret", "skipped"),
            (failing, "Fail with the secret", "failed"),
        ]
    )
    # What no_log censored says host, task and status only (a skipped task ran nothing: not censored).
    assert [set(t) for t in censored if t["status"] != "skipped"] == [CENSORED_KEYS] * 3
    (stats,) = of(lines, "onboard stats")
    assert stats["hosts"][failing]["failed"] == 1 and stats["hosts"][hostile]["changed"] == 2
    (finished,) = of(lines, "onboard run finished")
    assert finished["failed_hosts"] == sorted([failing, loud]) and finished["run_id"] == result.run_id
    # A failure that no_log does not hide is logged with its message.
    failures = [t for t in tasks if t["status"] == "failed" and "error" in t]
    assert [(t["host"], t["task"], t["error"]) for t in failures] == [
        (loud, "Fail until the attempt the test asks for", "attempt 1 of 2")
    ]

    # The secret is in no log line and in no file the run left (ansible-core 2.19 prints a failed
    # no_log task's message: the driver keeps it out of the artifacts).
    assert probe.secret in (probe.inventory / "group_vars" / "all.yml").read_text()  # it was there to leak
    assert probe.secret not in json.dumps(lines)
    assert probe.secret not in probe.artifact_text()
    assert HOSTILE["os"] in probe.artifact_text()

    # The probe has no rescue: each failed host's first failure is recorded on its provider, a no_log
    # one without its message; a host that did not fail keeps no error.
    assert record_failures(fleet, result) == {
        "p-failing": "Fail with the secret: failed (output hidden: the task is no_log)",
        "p-loud": "Fail until the attempt the test asks for: attempt 1 of 2",
    }
    assert (
        fleet.store.require("p-loud").last_error == "Fail until the attempt the test asks for: attempt 1 of 2"
    )
    assert probe.secret not in fleet.store.require("p-failing").last_error
    assert fleet.store.require("p-hostile").last_error == ""


# -- the command ----------------------------------------------------------------------------------------


def test_worldland_onboard_exit_codes_limit_and_kept_runs(
    fleet: Fleet, probe: Probe, redis_url: str, keys: Keys
):
    one = put(fleet, "p-one", Status.APPROVED)
    two = put(fleet, "p-two", Status.APPROVED)
    runner = CliRunner(env={"COLUMNS": "250"})

    def onboard(*args: str, playbook: str = str(PROBE), inventory: str = str(probe.inventory)):
        return runner.invoke(
            main,
            [
                *("--redis-url", redis_url, "--key-prefix", keys.prefix, "onboard", "--inventory", inventory),
                *("--playbook", playbook, "--runs-dir", str(probe.runs), "--keep-runs", "2"),
                *("--ansible-config", str(ANSIBLE_CFG), "--log-level", "error", *args),
            ],
        )

    ok = onboard("--provider", "p-one", "--json")
    assert ok.exit_code == 0, ok.output
    first = json.loads(ok.stdout)
    assert set(first["hosts"]) == {one} and first["providers"] == {"p-one": one}
    assert probe.marker(one) is not None and probe.marker(two) is None
    # The limit is the providers' node names; the extra vars name the (checked) provider ids.
    command = json.loads(Path(first["artifacts"], "command").read_text())["command"]
    assert command[command.index("--limit") + 1] == f"{one},localhost"  # the controller's plays run too
    assert json.loads(command[command.index("-e") + 1]) == {
        "worldland_run_id": first["run_id"],
        "worldland_provider_ids": ["p-one"],
    }

    probe.set_vars(probe_fail_hosts=[two])
    failed = onboard()
    assert failed.exit_code == 2, failed.output
    assert one in failed.stdout and two in failed.stdout and "FAILED" in failed.stdout
    assert "2 host(s): 1 succeeded, 1 failed or unreachable" in failed.stdout

    early = onboard(playbook="worldland.provider.no_such_playbook")
    assert early.exit_code == 1
    assert early.stderr.count("\n") == 1 and "Traceback" not in early.output
    assert early.stderr.startswith("worldland: onboard run ") and "no_such_playbook" in early.stderr

    # Three runs, two kept: the first one's artifacts are gone.
    kept = probe.artifact_runs()
    assert len(kept) == 2 and first["run_id"] not in kept

    for args, kwargs, expected in [
        (("--provider", "p one"), {}, "worldland: provider id 'p one': must be 1 to 128 characters"),
        (("--provider", "p-ghost"), {}, "worldland: provider 'p-ghost' is not registered"),
        ((), {"playbook": str(probe.root / "nope.yml")}, "worldland: playbook "),
        ((), {"inventory": str(probe.root / "nowhere")}, "worldland: inventory "),
    ]:
        bad = onboard(*args, **kwargs)
        assert bad.exit_code == 1, bad.output
        assert bad.stderr.startswith(expected) and bad.stderr.count("\n") == 1, bad.stderr
    assert probe.artifact_runs() == kept  # none of them started a run


# -- the listener ---------------------------------------------------------------------------------------


@pytest.fixture
def names() -> StreamNames:
    return StreamNames(namespace=f"t{uuid.uuid4().hex[:6]}:")


def listener_with_queue(
    fleet: Fleet, names: StreamNames, probe: Probe, retry: RetryPolicy
) -> tuple[Listener, OnboardQueue]:
    listener = make_listener(fleet, names, ApprovalPolicy(mode=ApprovalMode.AUTO), onboard_check_every_s=0.2)
    queue = OnboardQueue(approved_onboarding(fleet, probe.settings), retry)
    listener.onboard = queue
    queue.start()
    return listener, queue


def test_the_listener_onboards_providers_as_they_are_approved(
    fleet: Fleet, names: StreamNames, probe: Probe, log_lines
):
    listener, queue = listener_with_queue(fleet, names, probe, RetryPolicy(0.2, 1.0, 1))
    try:
        drain(listener)  # the first look: nothing approved yet
        assert queue.runs == 0
        Agent(fleet.client, names).register(registration_dict("p-auto"))  # the auto policy approves it
        started = time.monotonic()
        drain(listener)
        assert time.monotonic() - started < 2.0 and not queue.idle  # the loop went on while it runs
        assert queue.wait_idle(60)
        auto = fleet.store.require("p-auto").node_name
        assert probe.marker(auto) is not None and probe.marker(auto)["provider_ids"] == ["p-auto"]

        put(fleet, "p-operator", Status.PENDING)
        listener.onboarding.approve("p-operator")  # as `worldland approve` does, outside the listener
        time.sleep(0.3)
        listener.run_once()  # the periodic look finds it
        assert queue.wait_idle(60)
        operator = fleet.store.require("p-operator").node_name
        assert probe.marker(operator)["provider_ids"] == ["p-operator"]
        assert probe.attempts(auto) == 1  # it was not onboarded again
        assert queue.runs == 2
        started = [line["providers"] for line in of(log_lines(), "onboard run started")]
        assert started == [["p-auto"], ["p-operator"]]
    finally:
        queue.stop()


def test_the_listener_retries_a_failed_run_with_backoff_then_leaves_it_for_the_next_approval(
    fleet: Fleet, names: StreamNames, probe: Probe, log_lines
):
    slow = put(fleet, "p-slow", Status.PENDING)
    broken = put(fleet, "p-broken", Status.PENDING)
    # p-slow succeeds at its third attempt (the second retry); p-broken only at its fourth: after its
    # retries ran out, in the run the next approval starts.
    probe.set_vars(probe_attempts_needed={slow: 3, broken: 4})
    listener, queue = listener_with_queue(fleet, names, probe, RetryPolicy(0.5, 10.0, 2))
    try:
        for pid in ("p-slow", "p-broken"):
            listener.onboarding.approve(pid)
        listener.run_once()
        assert queue.wait_idle(90)

        assert queue.runs == 3 and probe.attempts(slow) == 3 and probe.attempts(broken) == 3
        assert probe.marker(slow) is not None and probe.marker(broken) is None
        assert queue.left == ["p-broken"]
        lines = log_lines()
        retries = of(lines, "onboard retry scheduled")
        assert [(r["retry"], r["in_s"], r["providers"]) for r in retries] == [
            (1, 0.5, ["p-broken", "p-slow"]),
            (2, 1.0, ["p-broken", "p-slow"]),
        ]
        (gave_up,) = [line for line in lines if line["message"].startswith("onboard gave up")]
        assert gave_up["providers"] == ["p-broken"] and gave_up["level"] == "warning"
        # Each retry started no sooner than its delay after the run before it ended.
        ended, began = of(lines, "onboard run finished"), of(lines, "onboard run started")
        assert at(began[1]) - at(ended[0]) >= 0.5 and at(began[2]) - at(ended[1]) >= 1.0

        # The next approval's run takes the provider left behind along.
        put(fleet, "p-next", Status.PENDING)
        listener.onboarding.approve("p-next")
        time.sleep(0.3)
        listener.run_once()
        assert queue.wait_idle(60)
        assert of(log_lines(), "onboard run started")[-1]["providers"] == ["p-broken", "p-next"]
        assert probe.attempts(broken) == 4 and probe.marker(broken) is not None
        assert queue.runs == 4 and queue.left == []
    finally:
        queue.stop()


def test_worldland_listen_onboard_runs_the_playbook_for_an_approved_provider(
    fleet: Fleet, names: StreamNames, probe: Probe, redis_url: str, keys: Keys, tmp_path: Path
):
    policy = tmp_path / "policy.yml"
    policy.write_text("mode: auto\n")
    log = tmp_path / "listener.log"
    args = [str(WORLDLAND), "--redis-url", redis_url, "--key-prefix", keys.prefix, "listen"]
    args += ["--stream-namespace", names.namespace, "--block-ms", "100", "--policy", str(policy), "--onboard"]
    args += ["--onboard-inventory", str(probe.inventory), "--onboard-playbook", str(PROBE)]
    args += ["--runs-dir", str(probe.runs), "--ansible-config", str(ANSIBLE_CFG)]
    with log.open("w") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        Agent(fleet.client, names).register(registration_dict("p-cli"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and fleet.store.get("p-cli") is None:
            time.sleep(0.1)
        node = fleet.store.require("p-cli").node_name
        while time.monotonic() < deadline and probe.marker(node) is None:
            time.sleep(0.2)
        assert probe.marker(node) is not None, log.read_text()
        assert probe.marker(node)["provider_ids"] == ["p-cli"]
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    assert code == 0, log.read_text()
    messages = [json.loads(line)["message"] for line in log.read_text().splitlines()]
    assert "onboard run finished" in messages and messages[-1] == "listener stopped"


def test_settings_and_retry_policy_refuse_nonsense(probe: Probe):
    from worldland.control.onboard_runs import OnboardError

    with pytest.raises(OnboardError, match="keep_runs"):
        replace(probe.settings, keep_runs=0)
    with pytest.raises(ValueError):
        RetryPolicy(first_delay_s=0)
    assert [RetryPolicy(5, 300, 10).delay(n) for n in (1, 2, 3, 7, 8)] == [5, 10, 20, 300, 300]


def test_an_unreachable_host_is_recorded_on_its_approved_provider_only(fleet: Fleet, tmp_path: Path) -> None:
    """An unreachable host gets no rescue in the playbook: the run's result records why on the provider."""
    approved = put(fleet, "p-gone", Status.APPROVED)
    available = put(fleet, "p-done", Status.AVAILABLE)
    result = OnboardResult(
        run_id="r1",
        rc=4,
        status="failed",
        hosts={},
        artifacts=tmp_path,
        unreachable={approved: "ssh: connect to host 10.0.0.9 port 22: Connection refused\n", available: "x"},
    )
    assert record_failures(fleet, result) == {
        "p-gone": "unreachable over SSH: ssh: connect to host 10.0.0.9 port 22: Connection refused"
    }
    gone, done = fleet.store.require("p-gone"), fleet.store.require("p-done")
    assert gone.status is Status.APPROVED and gone.last_error.startswith("unreachable over SSH: ssh: connect")
    assert done.last_error == ""


def test_a_failure_the_playbook_rescued_keeps_the_error_the_rescue_recorded(
    fleet: Fleet, tmp_path: Path
) -> None:
    """onboard.yml's rescue records the failed task's message; a failure outside the block (fact
    gathering) has no rescue and is recorded from the run's events."""
    rescued = put(fleet, "p-rescued", Status.APPROVED)
    facts = put(fleet, "p-facts", Status.APPROVED)
    fleet.store.set_error("p-rescued", "Join the cluster: kubeadm join timed out")
    result = OnboardResult(
        run_id="r2",
        rc=2,
        status="failed",
        hosts={rescued: HostStats(ok=3, failed=1, rescued=1), facts: HostStats(failed=1)},
        artifacts=tmp_path,
        failures={
            rescued: "Join the cluster: kubeadm join timed out",
            facts: "Gathering Facts: Timeout (12s)",
        },
    )
    assert record_failures(fleet, result) == {"p-facts": "Gathering Facts: Timeout (12s)"}
    assert fleet.store.require("p-rescued").last_error == "Join the cluster: kubeadm join timed out"
    assert fleet.store.require("p-facts").last_error == "Gathering Facts: Timeout (12s)"
