from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from testkit.factories import heartbeat_dict, registration, registration_dict
from worldland.cli.common import one_line, plain
from worldland.cli.main import main
from worldland.domain.lifecycle import Status
from worldland.domain.registration import parse_registration
from worldland.protocol.messages import parse_heartbeat
from worldland.state.connection import connect, redacted
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys

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
    assert "p-1" in table.output and "available" in table.output and "RTX-4090 4/0/0" in table.output
    shown = json.loads(run("show", "p-1", "--json").output)
    assert shown["provider_id"] == "p-1" and shown["capacity"]["cpu"]["total"] == 32
    assert run("show", "p-1").exit_code == 0


def test_approve_and_reject(run, fleet: Fleet):
    fleet.register(registration("a"))
    fleet.register(registration("r"))
    assert run("approve", "a").output.strip() == (
        "a: approved, but no join token sent: no Kubernetes access here (--kubeconfig); "
        "a listener started with --kubeconfig sends it on its next reconcile pass"
    )
    assert fleet.store.require("a").status is Status.APPROVED
    assert "no Kubernetes access" in fleet.store.require("a").last_error  # the listener's reconcile retries
    result = run("reject", "r", "--reason", "GPU model not accepted")
    assert result.exit_code == 0
    assert fleet.store.require("r").status_reason == "GPU model not accepted"
    assert run("approve", "r").exit_code == 0  # an operator may approve a rejected provider
    assert fleet.store.require("r").status is Status.APPROVED
    fleet.register(registration("j"))
    for step in (Status.APPROVED, Status.JOINED):
        fleet.store.transition("j", step)
    illegal = run("approve", "j")
    assert illegal.exit_code == 1
    assert "cannot go from joined to approved" in illegal.output
    assert "Traceback" not in illegal.output


def test_reject_stays_until_reset(run, fleet: Fleet):
    fleet.register(registration("z"))
    assert run("reject", "z", "--reason", "no").exit_code == 0
    assert fleet.store.require("z").rejected_by == "operator"
    assert run("reset", "z").output.strip() == "z: pending; its next registration is judged afresh"
    record = fleet.store.require("z")
    assert record.status is Status.PENDING and record.rejected_by == ""
    again = run("reset", "z")
    assert again.exit_code == 1 and "only a rejected provider is reset" in again.output


def test_reject_without_kubeconfig_queues_the_token_for_the_listener(run, fleet: Fleet):
    fleet.register(registration("t"))
    fleet.store.transition("t", Status.APPROVED)
    fleet.store.record_token("t", "abcdef", fleet.store.clock() + 600)
    result = run("reject", "t", "--reason", "revoked")
    assert result.output.strip() == "t: rejected; 1 revoked join token(s) wait for the listener's reconcile"
    assert fleet.client.smembers(fleet.keys.revoked_tokens) == {"abcdef"}
    assert fleet.store.require("t").token_id == ""


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
    line = status_error_line(url)
    assert line.startswith("worldland: cannot reach Redis at redis://:***@127.0.0.1:")
    assert "s3cret" not in line


def status_error_line(url: str) -> str:
    """``worldland --redis-url URL status`` run as an operator runs it: exit 1, nothing on stdout, and
    the single line on stderr it fails with."""
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
    return lines[0]


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


# -- provider text is text (issue 9, item 11) -----------------------------------------------------------

MARKUP_PAYLOADS = ["[/]", "[blink]x[/blink]", "[link=https://evil]x[/link]"]
BLINK = "\x1b[5m"
HYPERLINK = "\x1b]8;"


@pytest.fixture
def run_on_terminal(redis_url: str, keys: Keys):
    """The CLI as it prints on a colour terminal: any styling rich applied would show as escapes."""
    runner = CliRunner(
        env={"COLUMNS": "5000", "TERM": "xterm-256color", "FORCE_COLOR": "1", "NO_COLOR": None}
    )

    def invoke(*args: str):
        return runner.invoke(main, ["--redis-url", redis_url, "--key-prefix", keys.prefix, *args])

    return invoke


def _register_with_text(fleet: Fleet, provider_id: str, payload: str) -> None:
    data = registration_dict(provider_id, gpu_name=f"NVIDIA GeForce RTX 4090 {payload}")
    data["spec"]["cpu_model"] = f"AMD EPYC {payload}"
    data["spec"]["os"] = f"Ubuntu {payload}"
    fleet.register(parse_registration(json.dumps(data)))
    beat = parse_heartbeat(json.dumps(heartbeat_dict(provider_id, status=payload)))
    assert fleet.heartbeats.record(beat).accepted


@pytest.mark.parametrize("payload", MARKUP_PAYLOADS)
def test_provider_text_is_printed_as_text_not_markup(run_on_terminal, fleet: Fleet, payload: str):
    _register_with_text(fleet, "p-markup", payload)
    styled = run_on_terminal("status")
    assert styled.exit_code == 0, styled.output
    assert "\x1b[" in styled.output  # the terminal is a colour one: the title is styled
    shown = run_on_terminal("show", "p-markup")
    assert shown.exit_code == 0, shown.output
    assert "Traceback" not in shown.output
    for text in (f"AMD EPYC {payload}", f"Ubuntu {payload}", f"NVIDIA GeForce RTX 4090 {payload}"):
        assert text in shown.output
    assert any(
        "reported_status" in line and line.rstrip().endswith(payload) for line in shown.output.splitlines()
    ), shown.output
    for output in (styled.output, shown.output):
        assert BLINK not in output
        assert HYPERLINK not in output


def test_control_characters_from_providers_never_reach_the_terminal(run_on_terminal, fleet: Fleet):
    fleet.register(registration("p-esc"))
    fleet.reject("p-esc", "bad \x1b[5mblink\x1b[0m \x1b]8;;https://evil\x07link")
    shown = run_on_terminal("show", "p-esc")
    assert shown.exit_code == 0, shown.output
    assert BLINK not in shown.output and HYPERLINK not in shown.output
    assert "bad \\x1b[5mblink\\x1b[0m \\x1b]8;;https://evil\\x07link" in shown.output


def test_plain_and_one_line_escape_what_could_drive_a_terminal():
    assert plain("RTX [/] 4090") == "RTX [/] 4090"
    assert plain("a\x1b[5mb\u202ec") == "a\\x1b[5mb\\u202ec"
    assert one_line("policy p: not valid YAML: while parsing\n  in 'p', line 3\n") == (
        "policy p: not valid YAML: while parsing in 'p', line 3"
    )


# -- one line, no traceback (issue 9, item 12) ------------------------------------------------------------


def test_mining_unknown_provider_or_model_is_one_line(run, fleet: Fleet):
    available_provider(fleet, "p", gpus=4)
    cases = {
        ("ghost", "RTX 4090", "0"): "worldland: provider 'ghost' is not registered",
        ("ghost", "RTX 4090", "1"): "worldland: provider 'ghost' is not registered",
        ("p", "H100", "0"): "worldland: provider 'p' has no H100 GPUs (its models: RTX-4090)",
        ("p", "H100", "2"): "worldland: provider 'p' has no H100 GPUs (its models: RTX-4090)",
    }
    for (provider_id, model, count), expected in cases.items():
        for extra in ((), ("--json",)):
            result = run("mining", "--provider", provider_id, "--model", model, "--count", count, *extra)
            assert result.exit_code == 1, (provider_id, model, count, result.output)
            assert result.output.strip() == expected
            assert not isinstance(result.exception, KeyError)


@pytest.fixture
def bad_kubeconfig(tmp_path: Path) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text("apiVersion: v1\nclusters: [unclosed\n")
    return str(path)


@pytest.mark.parametrize("command", [("approve", "p"), ("listen",), ("audit",)])
def test_bad_kubeconfig_is_one_line(run, fleet: Fleet, bad_kubeconfig: str, command: tuple[str, ...]):
    fleet.register(registration("p"))
    result = run(*command, "--kubeconfig", bad_kubeconfig)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert lines == [f"worldland: Kubernetes: cannot load kubeconfig {bad_kubeconfig!r}: ParserError"]
    assert fleet.store.require("p").status is Status.PENDING  # nothing was approved


def test_busy_metrics_port_is_one_line(run):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run("listen", "--metrics-port", str(port))
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"worldland: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    ]


# -- key prefix (issue 9, item 13) -------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "provider:", "provider:x:"])
def test_colliding_key_prefix_is_one_line(redis_url: str, prefix: str):
    result = CliRunner().invoke(main, ["--redis-url", redis_url, "--key-prefix", prefix, "status"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("worldland: --key-prefix: ")
    assert (
        ("must not be empty" in lines[0])
        if not prefix
        else ("collides with the agent's stream names" in lines[0])
    )


def test_colliding_key_prefix_from_the_environment_names_the_variable(redis_url: str):
    result = CliRunner(env={"WORLDLAND_KEY_PREFIX": "provider:"}).invoke(
        main, ["--redis-url", redis_url, "status"]
    )
    assert result.exit_code == 1
    assert result.output.startswith("worldland: WORLDLAND_KEY_PREFIX: 'provider:' collides")
    assert len(result.output.strip().splitlines()) == 1


def test_empty_key_prefix_variable_means_the_default(redis_url: str):
    """click reads an empty variable as unset (as config.key_prefix_from_env does): the default prefix."""
    result = CliRunner(env={"WORLDLAND_KEY_PREFIX": ""}).invoke(
        main, ["--redis-url", redis_url, "status", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert isinstance(json.loads(result.output), list)


def test_registration_named_like_a_stream_does_not_touch_it(run, fleet: Fleet, redis_client):
    """With a valid prefix a provider named 'registration' is a record beside the stream, not on it."""
    fleet.register(registration("registration"))
    redis_client.xadd("provider:registration", {"data": "{}"})
    try:
        assert redis_client.type(fleet.keys.provider("registration")) == "hash"
        assert redis_client.type("provider:registration") == "stream"
        assert run("show", "registration").exit_code == 0
    finally:
        redis_client.delete("provider:registration")


# -- Redis URLs and connection errors (issue 9, items 15b, 15c) -------------------------------------------


def test_sentinel_without_primary_is_one_short_line_without_traceback():
    """The installed console script, as an operator runs it, against sentinels that are all down."""
    url = f"redis+sentinel://:s3cret@127.0.0.1:{_closed_port()},127.0.0.1:{_closed_port()}/mymaster"
    line = status_error_line(url)
    assert line == (
        f"worldland: cannot reach Redis at {redacted(url)}: "
        "Sentinel found no primary for service 'mymaster' (no sentinel reachable: connection refused)"
    )
    assert len(line) < 250
    assert "s3cret" not in line


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis://127.0.0.1:6379/abc",
            "worldland: redis URL: database must be a non-negative integer, got 'abc'",
        ),
        (
            "redis+sentinel://127.0.0.1:26379/mymaster/-1",
            "worldland: redis+sentinel URL: database must be a non-negative integer, got '-1'",
        ),
        (
            "http://127.0.0.1:6379/0",
            "worldland: redis URL: unknown scheme 'http'; use redis://, rediss://, unix:// or redis+sentinel://",
        ),
    ],
)
def test_bad_redis_url_is_one_line(url: str, expected: str):
    result = CliRunner().invoke(main, ["--redis-url", url, "status"])
    assert result.exit_code == 1
    assert result.output.strip() == expected


def test_gpu_model_of_a_name_without_a_model_is_one_line(run):
    result = run("gpu-model", "NVIDIA GeForce")
    assert result.exit_code == 1
    assert "names no GPU model" in result.output and "Traceback" not in result.output
