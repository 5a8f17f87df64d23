from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.factories import registration
from worldland.cli import main, redacted
from worldland.config import connect
from worldland.fleet import Fleet
from worldland.keys import Keys
from worldland.lifecycle import Status

WORLDLAND = Path(sys.executable).parent / "worldland"


@pytest.fixture
def fleet(redis_url: str, keys: Keys) -> Fleet:
    return Fleet.open(connect(redis_url), keys)


@pytest.fixture
def run(redis_url: str, keys: Keys):
    runner = CliRunner(env={"COLUMNS": "200"})

    def invoke(*args: str):
        return runner.invoke(main, ["--redis-url", redis_url, "--key-prefix", keys.prefix, *args])

    return invoke


def available_provider(fleet: Fleet, provider_id: str, gpus: int = 4) -> None:
    fleet.register(registration(provider_id, gpus=gpus))
    for step in (Status.APPROVED, Status.JOINED, Status.AVAILABLE):
        fleet.store.transition(provider_id, step)


def test_status_json_lists_provider_objects(run, fleet: Fleet):
    fleet.register(registration("p-pending"))
    available_provider(fleet, "p-live")
    result = run("status", "--json")
    assert result.exit_code == 0, result.output
    providers = json.loads(result.output)
    assert [p["provider_id"] for p in providers] == ["p-live", "p-pending"]
    live = providers[0]
    for field in ("provider_id", "status", "wallet_addr", "node_name", "last_heartbeat", "capacity"):
        assert field in live
    assert live["status"] == "available"
    assert live["last_heartbeat"] is None
    assert live["capacity"]["gpus"]["RTX-4090"] == {"total": 4, "available": 4, "in_use": 0, "mining": 0}
    only = json.loads(run("status", "--status", "pending", "--json").output)
    assert [p["provider_id"] for p in only] == ["p-pending"]


def test_status_table_and_show(run, fleet: Fleet):
    available_provider(fleet, "p-1")
    table = run("status")
    assert table.exit_code == 0
    assert "p-1" in table.output and "available" in table.output and "RTX-4090 4/4" in table.output
    shown = json.loads(run("show", "p-1", "--json").output)
    assert shown["provider_id"] == "p-1" and shown["capacity"]["cpu"]["total"] == 32
    assert run("show", "p-1").exit_code == 0


def test_approve_and_reject(run, fleet: Fleet):
    fleet.register(registration("a"))
    fleet.register(registration("r"))
    assert run("approve", "a").output.strip() == "a: approved; the listener sends the join token"
    assert fleet.store.require("a").status is Status.APPROVED
    assert "no Kubernetes access" in fleet.store.require("a").last_error  # the listener's reconcile retries
    result = run("reject", "r", "--reason", "GPU model not accepted")
    assert result.exit_code == 0
    assert fleet.store.require("r").status_reason == "GPU model not accepted"
    illegal = run("approve", "r")
    assert illegal.exit_code == 1
    assert "cannot go from rejected to approved" in illegal.output
    assert "Traceback" not in illegal.output


def test_allocate_release_mining(run, fleet: Fleet):
    available_provider(fleet, "p", gpus=4)
    mined = json.loads(
        run(
            "mining", "--provider", "p", "--model", "NVIDIA GeForce RTX 4090", "--count", "3", "--json"
        ).output
    )
    assert mined["gpus"]["RTX-4090"] == {"total": 4, "available": 1, "in_use": 0, "mining": 3}
    took = run(
        "allocate",
        "--job",
        "j1",
        "--provider",
        "p",
        "--model",
        "RTX 4090",
        "--gpus",
        "2",
        "--cpu",
        "8",
        "--memory-mb",
        "32768",
        "--json",
    )
    assert took.exit_code == 0, took.output
    assert json.loads(took.output)["from_mining"] == 1
    short = run("allocate", "--job", "j2", "--provider", "p", "--model", "RTX-4090", "--gpus", "3")
    assert short.exit_code == 1 and "RTX-4090" in short.output
    released = json.loads(run("release", "j1", "--json").output)
    assert released["gpus"] == 2 and released["cpu_cores"] == 8
    assert json.loads(run("release", "j1", "--json").output) is None
    assert "nothing held" in run("release", "j1").output


def test_gpu_model_prints_one_canonical_name_per_line():
    result = CliRunner().invoke(main, ["gpu-model", "NVIDIA GeForce RTX 4090", "NVIDIA H100 80GB HBM3"])
    assert result.exit_code == 0
    assert result.output.splitlines() == ["RTX-4090", "H100-80GB-HBM3"]


def test_unknown_provider_is_one_line(run):
    result = run("show", "ghost")
    assert result.exit_code == 1
    assert result.output.strip() == "worldland: provider 'ghost' is not registered"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_redis_is_one_clear_line_without_traceback():
    """The installed console script, as an operator runs it."""
    url = f"redis://:s3cret@127.0.0.1:{_closed_port()}/0"
    proc = subprocess.run(
        [str(WORLDLAND), "--redis-url", url, "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("worldland: cannot reach Redis at redis://:***@127.0.0.1:")
    assert "s3cret" not in proc.stderr


def test_bad_arguments_exit_non_zero_without_traceback():
    proc = subprocess.run(
        [str(WORLDLAND), "allocate", "--job", "j", "--provider", "p", "--model", "x", "--gpus", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "--gpus" in proc.stderr


def test_invalid_job_id_names_the_argument(run, fleet: Fleet):
    available_provider(fleet, "p")
    result = run("allocate", "--job", "bad job id!", "--provider", "p", "--model", "RTX-4090", "--gpus", "1")
    assert result.exit_code == 1
    assert "job_id" in result.output


def test_redacted_hides_only_the_password():
    assert redacted("redis://user:pw@host:1/0") == "redis://user:***@host:1/0"
    assert redacted("redis://host:1/0") == "redis://host:1/0"
