"""``worldland status`` / ``show`` as a new operator meets them (issue 13, "First contact" and
"``worldland status --watch``"): readable at 80 columns and in a pipe, ages, mining, last errors, the
connection options after the command, and the live table."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from testkit.factories import heartbeat_dict, registration
from testkit.fleet import put_in
from testkit.redis_server import RedisServer, free_port
from worldland.cli.common import Context, age_text
from worldland.cli.main import main
from worldland.cli.watch import watch_fleet
from worldland.control.overview import fleet_overview, gpu_totals
from worldland.domain.lifecycle import Status
from worldland.protocol.messages import parse_heartbeat
from worldland.state.connection import connect
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys
from worldland.state.ledger import GpuCapacity

WORLDLAND = Path(sys.executable).parent / "worldland"
WALLET_ID = "0x3f5CE5FBFe3E9af3971dD833D26bA9b5C936f0bE"  # the Go agent's ids are wallet addresses: 42 chars
NO_TOKEN_ERROR = "token: no Kubernetes access configured (--kubeconfig)"
BLINK = "\x1b[5m"


@pytest.fixture
def fleet(redis_url: str, keys: Keys) -> Fleet:
    return Fleet.open(connect(redis_url), keys)


def invoker(redis_url: str, keys: Keys, **env: str | None):
    runner = CliRunner(env=env)

    def invoke(*args: str):
        return runner.invoke(main, ["--redis-url", redis_url, "--key-prefix", keys.prefix, *args])

    return invoke


def beat(fleet: Fleet, provider_id: str, seconds_ago: float) -> None:
    message = parse_heartbeat(json.dumps(heartbeat_dict(provider_id)))
    assert fleet.heartbeats.record(message, now=time.time() - seconds_ago).accepted


@pytest.fixture
def small_fleet(fleet: Fleet) -> Fleet:
    """A wallet-id provider that is Available, renting 2 GPUs and mining 1, beating 42 s ago; one Approved
    without a token (its last error recorded); one Pending that never beat."""
    for pid, status in (
        (WALLET_ID, Status.AVAILABLE),
        ("p-approved", Status.APPROVED),
        ("p-new", Status.PENDING),
    ):
        fleet.register(registration(pid, public_ip="123.45.67.89"))
        put_in(fleet.store, pid, status)
    fleet.ledger.set_mining(WALLET_ID, "RTX-4090", 1)
    fleet.ledger.allocate("job-1", WALLET_ID, "RTX-4090", 2, 4, 1024)
    beat(fleet, WALLET_ID, 42)
    fleet.store.set_error("p-approved", NO_TOKEN_ERROR)
    return fleet


def row_of(output: str, first: str) -> str:
    """The one line of ``output`` that starts with ``first`` (a provider's row, a field's)."""
    rows = [line for line in output.splitlines() if line.lstrip().startswith(f"{first} ")]
    assert len(rows) == 1, (first, output)
    return rows[0]


# -- the table ---------------------------------------------------------------------------------------------


def test_status_at_80_columns_keeps_every_value_whole(redis_url, keys, small_fleet: Fleet):
    result = invoker(redis_url, keys, COLUMNS="80")("status")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80, result.output
    assert "…" not in result.output and "..." not in result.output  # nothing cut
    wallet_row = row_of(result.output, WALLET_ID)
    assert "available" in wallet_row and "RTX-4090 1/2/1" in wallet_row  # free / in use / mining
    assert "42 s ago" in wallet_row or "43 s ago" in wallet_row
    assert "never" in row_of(result.output, "p-new")
    node = small_fleet.store.require(WALLET_ID).node_name
    assert node in lines[lines.index(wallet_row) + 1]  # the node name under the provider id
    assert "providers: 1 pending, 1 approved, 1 available" in result.output
    assert "GPUs: RTX-4090 12 (9 free, 2 in use, 1 mining)" in result.output
    assert f"  p-approved: {NO_TOKEN_ERROR}" in result.output.splitlines()


def test_long_ids_fold_at_80_columns_and_are_never_cut(redis_url, keys, fleet: Fleet):
    long_id = "prov-" + "abcdef0123" * 9  # 95 characters: no 80-column layout holds it on one line
    fleet.register(registration(long_id))
    result = invoker(redis_url, keys, COLUMNS="80")("status")
    assert result.exit_code == 0, result.output
    assert max(len(line.rstrip()) for line in result.output.splitlines()) <= 80
    assert "…" not in result.output
    lines = result.output.splitlines()
    body = lines[next(i for i, line in enumerate(lines) if line.startswith("───")) + 1 :]
    first_column = "".join(line.split()[0] for line in body if line.strip())
    assert first_column.startswith(long_id)  # folded over lines, every character kept


def test_status_in_a_pipe_is_a_row_per_provider_as_wide_as_its_content(redis_url, keys, small_fleet: Fleet):
    result = invoker(redis_url, keys, COLUMNS=None)("status")  # not a terminal, no COLUMNS: a pipe
    assert result.exit_code == 0, result.output
    assert "\x1b[" not in result.output  # plain text
    for pid in (WALLET_ID, "p-approved", "p-new"):
        assert pid in row_of(result.output, pid)
    assert f"  p-approved: {NO_TOKEN_ERROR}" in result.output.splitlines()  # the error, whole, on its line


def test_status_wide_shows_public_ip_full_time_and_last_error(redis_url, keys, small_fleet: Fleet):
    result = invoker(redis_url, keys, COLUMNS="80")("status", "--wide")
    assert result.exit_code == 0, result.output
    approved = row_of(result.output, "p-approved")
    assert "123.45.67.89" in approved and NO_TOKEN_ERROR in approved
    wallet_row = row_of(result.output, WALLET_ID)
    node = small_fleet.store.require(WALLET_ID).node_name
    assert node in wallet_row and "123.45.67.89" in wallet_row
    beat_time = small_fleet.provider_view(WALLET_ID)["last_heartbeat"]
    assert beat_time in wallet_row  # RFC 3339, to the microsecond
    assert "last errors:" not in result.output  # in the table instead


def test_json_output_keeps_its_shape(redis_url, keys, small_fleet: Fleet):
    run = invoker(redis_url, keys)
    plain_json = json.loads(run("status", "--json").output)
    assert plain_json == small_fleet.provider_views()
    assert json.loads(run("status", "--json", "--wide").output) == plain_json
    assert json.loads(run("show", WALLET_ID, "--json").output)["capacity"]["gpus"]["RTX-4090"] == {
        "total": 4,
        "available": 1,
        "in_use": 2,
        "mining": 1,
    }


def test_provider_text_in_the_table_is_text(redis_url, keys, fleet: Fleet):
    fleet.register(registration("p-hostile"))
    fleet.store.set_error("p-hostile", "bad \x1b[5mblink [blink]x[/blink] [link=https://evil]y[/link]")
    run = invoker(redis_url, keys, COLUMNS="200", TERM="xterm-256color", FORCE_COLOR="1", NO_COLOR=None)
    for args in (("status",), ("status", "--wide"), ("status", "--watch", "--count", "1")):
        result = run(*args)
        assert result.exit_code == 0, result.output
        assert BLINK not in result.output and "\x1b]8;" not in result.output
        assert "\\x1b[5mblink [blink]x[/blink] [link=https://evil]y[/link]" in result.output


# -- ages and sums -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "never"),
        (0.4, "0 s ago"),
        (12, "12 s ago"),
        (179.9, "179 s ago"),  # around the 120 s threshold: seconds
        (180, "3 min ago"),
        (7199, "119 min ago"),
        (7200, "2 h ago"),
        (2 * 86400, "2 d ago"),
    ],
)
def test_age_text(seconds, text):
    assert age_text(seconds) == text


def test_overview_counts_ages_and_gpu_sums(small_fleet: Fleet):
    overview = fleet_overview(small_fleet)
    assert overview.counts[Status.AVAILABLE] == 1 and overview.counts[Status.OFFLINE] == 0
    by_id = {p.provider_id: p for p in overview.providers}
    assert 41 <= by_id[WALLET_ID].heartbeat_age_s(overview.taken_at) < 60
    assert by_id["p-new"].heartbeat_age_s(overview.taken_at) is None
    assert overview.gpus == {"RTX-4090": GpuCapacity(total=12, available=9, in_use=2, mining=1)}
    assert [p.provider_id for p in overview.with_errors] == ["p-approved"]
    only_pending = fleet_overview(small_fleet, [Status.PENDING])
    assert [p.provider_id for p in only_pending.providers] == ["p-new"]
    assert only_pending.counts[Status.AVAILABLE] == 1  # the counts are the whole fleet's
    assert gpu_totals([]) == {}


# -- show --------------------------------------------------------------------------------------------------


def test_show_prints_fields_capacity_spec_and_gpus_as_rows(redis_url, keys, small_fleet: Fleet):
    small_fleet.store.record_token("p-approved", "abcdef", time.time() + 25 * 60 + 30)
    run = invoker(redis_url, keys, COLUMNS="80")
    result = run("show", WALLET_ID)
    assert result.exit_code == 0, result.output
    assert max(len(line.rstrip()) for line in result.output.splitlines()) <= 80
    assert '{"' not in result.output and '": ' not in result.output  # no JSON
    assert "AMD EPYC 7543 32-Core Processor" in row_of(result.output, "cpu_model")
    capacity = row_of(result.output, "GPU RTX-4090").split()
    assert capacity[-4:] == ["4", "1", "2", "1"]  # total, free, in use, mining
    assert row_of(result.output, "CPU cores").split()[-4:] == ["32", "28", "4", "-"]
    assert result.output.count("NVIDIA GeForce RTX 4090") == 4  # a row per GPU
    assert "GPU-" not in result.output  # uuids: --wide
    heartbeat = row_of(result.output, "last_heartbeat")
    assert " UTC (4" in heartbeat and "s ago)" in heartbeat and "." not in heartbeat.split("UTC")[0]
    assert "12.5, 12.5" in row_of(result.output, "gpu_usage")
    assert "status_reason" not in result.output  # empty fields: --wide
    wide = run("show", WALLET_ID, "--wide")
    assert wide.exit_code == 0, wide.output
    assert "GPU-" in wide.output and "status_reason" in wide.output
    assert small_fleet.provider_view(WALLET_ID)["last_heartbeat"] in wide.output
    token = row_of(run("show", "p-approved").output, "token_expires_at")
    assert "(in 25 min)" in token
    assert NO_TOKEN_ERROR in row_of(run("show", "p-approved").output, "last_error")


# -- approve without Kubernetes, then status -------------------------------------------------------------


def test_approve_without_kubeconfig_says_no_token_was_sent_and_status_shows_why(redis_url, keys, fleet):
    fleet.register(registration("p-wait"))
    run = invoker(redis_url, keys, COLUMNS="120")
    approved = run("approve", "p-wait")
    assert approved.exit_code == 0
    assert "no join token sent" in approved.output and "the listener sends" not in approved.output
    status = run("status")
    assert "approved" in row_of(status.output, "p-wait")
    assert f"  p-wait: {NO_TOKEN_ERROR}" in status.output.splitlines()


# -- --watch -----------------------------------------------------------------------------------------------


def test_watch_with_json_is_a_usage_error(redis_url, keys, fleet):
    result = invoker(redis_url, keys)("status", "--watch", "--json")
    assert result.exit_code == 2
    assert "--watch" in result.output and "--json" in result.output and "give one of them" in result.output


@pytest.mark.parametrize("option", [("--interval", "1"), ("--count", "2")])
def test_watch_options_without_watch_are_a_usage_error(redis_url, keys, fleet, option):
    result = invoker(redis_url, keys)("status", *option)
    assert result.exit_code == 2
    assert f"{option[0]} goes with --watch" in result.output


def test_watch_off_a_terminal_prints_a_plain_snapshot_per_refresh(redis_url, keys, small_fleet: Fleet):
    result = invoker(redis_url, keys, COLUMNS=None)("status", "--watch", "--count", "3", "--interval", "0.1")
    assert result.exit_code == 0, result.output
    assert "\x1b[" not in result.output
    assert result.output.count("WorldLand fleet at ") == 3
    assert result.output.count("3 provider(s)") == 3
    assert result.output.count(WALLET_ID) == 3


def test_watch_on_a_terminal_redraws_in_place(redis_url, keys, small_fleet: Fleet):
    run = invoker(redis_url, keys, COLUMNS="100", TERM="xterm-256color", FORCE_COLOR="1", NO_COLOR=None)
    result = run("status", "--watch", "--count", "2", "--interval", "0.1")
    assert result.exit_code == 0, result.output
    assert "\x1b[?25l" in result.output  # rich's live display: cursor hidden while it draws
    assert "\x1b[1A\x1b[2K" in result.output  # and each refresh goes back up over the last frame
    assert result.output.count("WorldLand fleet at ") >= 2
    assert "RTX-4090 1/2/1" in result.output


def test_each_refresh_reads_the_fleet_again(redis_url, keys, fleet: Fleet, capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    fleet.register(registration("p-first"))
    joined = iter(["p-second", "p-third"])

    def between_refreshes(_seconds: float) -> None:
        fleet.register(registration(next(joined)))

    shown = watch_fleet(
        Context(redis_url, keys.prefix), None, wide=False, interval_s=5, count=3, sleep=between_refreshes
    )
    assert shown == 3
    frames = capsys.readouterr().out.split("WorldLand fleet at ")[1:]
    assert len(frames) == 3
    for count, frame in enumerate(frames, start=1):
        assert f"\n{count} provider(s)" in frame or f" {count} provider(s)" in frame, frame
    assert "refreshed every 5 s" in frames[0]


def test_watch_outlives_a_redis_outage(keys, capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    with RedisServer(persist=True) as server:
        Fleet.open(connect(server.url), keys).register(registration("p-kept"))
        steps = iter([server.stop, server.restart])

        def between_refreshes(_seconds: float) -> None:
            next(steps)()

        shown = watch_fleet(
            Context(server.url, keys.prefix), None, wide=False, interval_s=1, count=3, sleep=between_refreshes
        )
    assert shown == 3
    frames = capsys.readouterr().out.split("WorldLand fleet at ")[1:]
    assert len(frames) == 3
    assert "p-kept" in frames[0]
    assert f"cannot reach Redis at {server.url}" in frames[1] and "trying again in 1 s" in frames[1]
    assert "p-kept" not in frames[1]
    assert "p-kept" in frames[2]  # Redis is back: so is the table


# -- connection options after the command --------------------------------------------------------------------

EVERY_COMMAND = sorted(main.commands)


@pytest.mark.parametrize("command", EVERY_COMMAND)
def test_every_command_takes_the_connection_options(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "--redis-url URL" in result.output and "--key-prefix PREFIX" in result.output


COMMANDS_ON_REDIS = [
    ("status", "--json"),
    ("show", "p-1", "--json"),
    ("approve", "p-2"),
    ("reject", "p-3", "--reason", "no"),
    ("mining", "--provider", "p-1", "--model", "RTX 4090", "--count", "1", "--json"),
    ("allocate", "--job", "j", "--provider", "p-1", "--model", "RTX-4090", "--gpus", "1", "--json"),
    ("release", "j", "--json"),
    ("audit", "--json"),
]


@pytest.mark.parametrize("args", COMMANDS_ON_REDIS, ids=[a[0] for a in COMMANDS_ON_REDIS])
@pytest.mark.parametrize("position", ["before", "after"])
def test_connection_options_before_or_after_the_command(redis_url, keys, fleet: Fleet, args, position):
    for pid in ("p-1", "p-2", "p-3"):
        fleet.register(registration(pid))
    put_in(fleet.store, "p-1", Status.AVAILABLE)  # jobs go only to available providers
    connection = ["--redis-url", redis_url, "--key-prefix", keys.prefix]
    argv = [*connection, *args] if position == "before" else [*args, *connection]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    if args[0] == "status":
        assert [p["provider_id"] for p in json.loads(result.output)] == ["p-1", "p-2", "p-3"]
    if args[0] == "approve":
        assert fleet.store.require("p-2").status is Status.APPROVED
    if args[0] == "reject":
        assert fleet.store.require("p-3").status is Status.REJECTED


def test_options_after_the_command_win_over_those_before(redis_url, keys, fleet: Fleet):
    fleet.register(registration("p-here"))
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    result = CliRunner().invoke(
        main,
        [
            *("--redis-url", unreachable, "--key-prefix", "other:"),
            *("status", "--json", "--redis-url", redis_url, "--key-prefix", keys.prefix),
        ],
    )
    assert result.exit_code == 0, result.output
    assert [p["provider_id"] for p in json.loads(result.output)] == ["p-here"]


def test_a_good_prefix_after_the_command_corrects_a_bad_one_from_the_environment(redis_url, keys, fleet):
    fleet.register(registration("p-env"))
    runner = CliRunner(env={"WORLDLAND_KEY_PREFIX": "provider:", "WORLDLAND_REDIS_URL": redis_url})
    fixed = runner.invoke(main, ["status", "--json", "--key-prefix", keys.prefix])
    assert fixed.exit_code == 0, fixed.output
    assert [p["provider_id"] for p in json.loads(fixed.output)] == ["p-env"]
    bad = runner.invoke(main, ["status", "--json"])
    assert bad.exit_code == 1 and bad.output.startswith(
        "worldland: WORLDLAND_KEY_PREFIX: 'provider:' collides"
    )
    bad_after = runner.invoke(main, ["status", "--key-prefix", ""])
    assert bad_after.exit_code == 1
    assert bad_after.output.startswith("worldland: --key-prefix: must not be empty")
    assert len(bad_after.output.strip().splitlines()) == 1


def test_the_installed_command_takes_the_redis_url_after_the_command(redis_url, keys, fleet: Fleet):
    fleet.register(registration("p-script"))
    proc = subprocess.run(
        [str(WORLDLAND), "status", "--redis-url", redis_url, "--key-prefix", keys.prefix, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert [p["provider_id"] for p in json.loads(proc.stdout)] == ["p-script"]


def test_a_url_without_a_scheme_names_every_scheme_including_sentinel():
    result = CliRunner().invoke(
        main, ["status", "--redis-url", "127.0.0.1:6379"]
    )  # refused before any connect
    assert result.exit_code == 1
    assert result.output.strip() == (
        "worldland: redis URL: needs a scheme: redis://, rediss://, unix:// or redis+sentinel://"
    )
    assert "redis+sentinel://" in CliRunner().invoke(main, ["--help"]).output
