"""config.connect's URL checks and error messages, and the key prefix check in keys.py."""

from __future__ import annotations

import inspect
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from testkit.redis_server import RedisServer
from worldland.protocol.streams import StreamNames
from worldland.state.connection import connect, connection_error_message, redacted, redis_error_reason
from worldland.state.keys import _FAMILIES, AGENT_STREAM_PREFIX, DEFAULT_PREFIX, Keys


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- databases and schemes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1/abc", "redis URL: database must be a non-negative integer, got 'abc'"),
        ("redis://127.0.0.1:6379/-1", "redis URL: database must be a non-negative integer, got '-1'"),
        ("rediss://127.0.0.1/1.5", "redis URL: database must be a non-negative integer, got '1.5'"),
        ("redis://127.0.0.1/1/2", "redis URL: path must be /<database>, got '/1/2'"),
        (
            "redis://127.0.0.1/0?db=x",
            "redis URL: db= query: database must be a non-negative integer, got 'x'",
        ),
        ("redis://127.0.0.1/1?db=2", "redis URL: names more than one database: 1, 2"),
        (
            "unix:///run/redis.sock?db=-3",
            "redis URL: db= query: database must be a non-negative integer, got '-3'",
        ),
        (
            "redis+sentinel://127.0.0.1:26379/mymaster/abc",
            "redis+sentinel URL: database must be a non-negative integer, got 'abc'",
        ),
        (
            "redis+sentinel://127.0.0.1:26379/mymaster/-1",
            "redis+sentinel URL: database must be a non-negative integer, got '-1'",
        ),
        (
            "redis+sentinel://127.0.0.1:26379/mymaster/0/extra",
            "redis+sentinel URL: path must be /service_name[/db], got '/mymaster/0/extra'",
        ),
        (
            "redis+sentinel://127.0.0.1:port/mymaster",
            "redis+sentinel URL: port must be a number from 1 to 65535",
        ),
        (
            "redis+sentinel://127.0.0.1:0/mymaster",
            "redis+sentinel URL: port must be a number from 1 to 65535",
        ),
        ("redis+sentinel://a:1,,b:2/mymaster", "redis+sentinel URL: sentinel address '' has no host"),
        ("redis+sentinel:///mymaster", "redis+sentinel URL: needs at least one sentinel"),
        ("redis+sentinel://127.0.0.1:26379", "redis+sentinel:// URL needs a service name"),
    ],
)
def test_connect_refuses_a_bad_database_or_url_part(url: str, message: str):
    with pytest.raises(ValueError) as caught:
        connect(url)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "http://127.0.0.1:6379/0",
            "redis URL: unknown scheme 'http'; use redis://, rediss://, unix:// or redis+sentinel://",
        ),
        ("sentinel://127.0.0.1/mymaster", "redis URL: unknown scheme 'sentinel'"),
        ("REDIS://127.0.0.1/0", "redis URL: unknown scheme 'REDIS'"),
        ("127.0.0.1:6379", "redis URL: needs a scheme: redis://, rediss://, unix:// or redis+sentinel://"),
        ("", "redis URL: needs a scheme"),
    ],
)
def test_connect_refuses_unknown_schemes(url: str, message: str):
    with pytest.raises(ValueError) as caught:
        connect(url)
    assert str(caught.value).startswith(message)


def test_scheme_errors_never_show_the_password():
    with pytest.raises(ValueError) as caught:
        connect("http://:s3cret@127.0.0.1/0")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "db"),
    [
        ("redis://127.0.0.1:6379/0", 0),
        ("redis://127.0.0.1:6379/15", 15),
        ("redis://127.0.0.1:6379/", 0),
        ("redis://127.0.0.1:6379", 0),
        ("redis://127.0.0.1:6379?db=4", 4),
        ("redis://127.0.0.1:6379/4?db=4", 4),
        ("unix:///run/redis.sock?db=2", 2),
        ("redis+sentinel://127.0.0.1:26379/mymaster", 0),
        ("redis+sentinel://127.0.0.1:26379,[::1]:26380/mymaster/7", 7),
    ],
)
def test_connect_reads_valid_databases(url: str, db: int):
    client = connect(url)  # no connection is opened yet
    assert client.connection_pool.connection_kwargs.get("db", 0) == db


def test_connect_selects_the_database_of_the_url(redis_server: RedisServer):
    base = f"redis://127.0.0.1:{redis_server.port}"
    connect(f"{base}/3").set("test-config:db", "three")
    assert connect(f"{base}/3").get("test-config:db") == "three"
    assert connect(f"{base}/0").get("test-config:db") is None
    connect(f"{base}/3").delete("test-config:db")


def test_redacted_hides_the_password_in_user_part_and_query():
    assert redacted("redis+sentinel://:pw@h1:1,h2:2/mymaster") == "redis+sentinel://:***@h1:1,h2:2/mymaster"
    shown = redacted("redis://h:1/0?password=s3cret&db=0")
    assert "s3cret" not in shown and "password=***" in shown
    assert redacted("unix:///run/redis.sock?db=1") == "unix:///run/redis.sock?db=1"


# -- connection errors: one short line ---------------------------------------------------------------


def test_sentinel_without_primary_is_one_short_line():
    url = f"redis+sentinel://:s3cret@127.0.0.1:{_closed_port()},127.0.0.1:{_closed_port()}/mymaster"
    with pytest.raises(redis.ConnectionError) as caught:
        connect(url, timeout=1).ping()
    message = connection_error_message(url, caught.value)
    assert message == (
        f"cannot reach Redis at {redacted(url)}: "
        "Sentinel found no primary for service 'mymaster' (no sentinel reachable: connection refused)"
    )
    assert len(message) < 200 and "\n" not in message
    assert "s3cret" not in message and "<redis" not in message and "Connection(" not in str(caught.value)


def test_closed_port_is_connection_refused():
    url = f"redis://:s3cret@127.0.0.1:{_closed_port()}/0"
    with pytest.raises(redis.ConnectionError) as caught:
        connect(url, timeout=1).ping()
    assert redis_error_reason(caught.value) == "connection refused"
    assert connection_error_message(url, caught.value).startswith(
        "cannot reach Redis at redis://:***@127.0.0.1:"
    )


def test_redis_error_reason_keeps_one_short_line():
    long = redis.ResponseError("WRONGTYPE " + "x" * 500 + "\nsecond line")
    reason = redis_error_reason(long)
    assert "\n" not in reason and len(reason) <= 200 and reason.startswith("WRONGTYPE x")
    assert (
        redis_error_reason(redis.TimeoutError("Timeout reading from socket")) == "timeout reading from socket"
    )


@pytest.fixture
def sentinel() -> Iterator[tuple[RedisServer, int]]:
    """A real redis-server in Sentinel mode watching a private primary as 'mymaster'; stopped by PID."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    with RedisServer() as primary:
        workdir = Path(tempfile.mkdtemp(prefix="worldland-sentinel-"))
        port = _closed_port()
        conf = workdir / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor mymaster 127.0.0.1 {primary.port} 1\n"
        )
        process = subprocess.Popen(
            [binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            probe = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2)
            deadline = time.monotonic() + 10
            while True:
                try:
                    if probe.sentinel_masters().get("mymaster"):
                        break
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.skip("redis-server --sentinel did not start")
                time.sleep(0.02)
            probe.close()
            yield primary, port
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            shutil.rmtree(workdir, ignore_errors=True)


def test_real_sentinel_primary_database_and_unknown_service(sentinel: tuple[RedisServer, int]):
    primary, port = sentinel
    client = connect(f"redis+sentinel://127.0.0.1:{port}/mymaster/3", timeout=2)
    client.set("test-config:via-sentinel", "yes")
    assert (
        redis.Redis(port=primary.port, db=3, decode_responses=True).get("test-config:via-sentinel") == "yes"
    )
    url = f"redis+sentinel://127.0.0.1:{port},127.0.0.1:{_closed_port()}/other"
    with pytest.raises(redis.ConnectionError) as caught:
        connect(url, timeout=1).ping()
    assert redis_error_reason(caught.value) == (
        "Sentinel found no primary for service 'other' (1 of 2 sentinels unreachable: connection refused)"
    )
    with pytest.raises(redis.ConnectionError) as caught:
        connect(f"redis+sentinel://127.0.0.1:{port}/other", timeout=1).ping()
    assert redis_error_reason(caught.value) == (
        "Sentinel found no primary for service 'other' (the sentinels do not know it, or see it down)"
    )


# -- key prefixes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix", ["", "provider:", "provider:x:", "provider:response:", "provider:registration"]
)
def test_keys_refuse_a_prefix_that_reaches_the_agent_streams(prefix: str):
    with pytest.raises(ValueError) as caught:
        Keys(prefix)
    message = str(caught.value)
    assert message.startswith("key_prefix: ")
    assert (
        ("must not be empty" in message)
        if not prefix
        else ("collides with the agent's stream names" in message)
    )
    assert "provider:registration" in message


def test_empty_prefix_would_put_a_provider_record_on_a_stream():
    """What the check prevents: provider:<id> for id 'registration' is the agent's registration stream."""
    streams = StreamNames()
    assert f"provider:{'registration'}" == streams.registration
    with pytest.raises(ValueError, match="key_prefix: must not be empty"):
        Keys("")


@pytest.mark.parametrize(
    "prefix",
    [
        DEFAULT_PREFIX,
        "test-0a1b2c3d:",  # tests/conftest.py
        "test-0a1b2c3d:other:",  # tests/test_inventory_plugin.py
        "test-sm-0a1b2c3d:",  # tests/test_capacity.py
        "bench:",
        "bench-hb:",
        "bench-x:",
        "bench-audit-x:",  # bench/
        "provider",  # no key under it can start with 'provider:'
        "p",
    ],
)
def test_keys_accept_the_prefixes_in_use(prefix: str):
    assert Keys(prefix).prefix == prefix


def test_no_key_of_an_accepted_prefix_can_be_a_stream():
    for prefix in (DEFAULT_PREFIX, "provider", "p", "x"):
        keys = Keys(prefix)
        for name, takes_id in _FAMILIES:
            member = getattr(keys, name)
            stem = member("") if takes_id else member
            assert not stem.startswith(AGENT_STREAM_PREFIX)
            assert not (takes_id and AGENT_STREAM_PREFIX.startswith(stem))


def test_the_prefix_check_covers_every_key_family():
    public = {
        name
        for name, member in inspect.getmembers(Keys)
        if not name.startswith("_")
        and name != "prefix"
        and (inspect.isfunction(member) or isinstance(member, property))
    }
    assert {name for name, _ in _FAMILIES} == public
    keys = Keys()
    for name, takes_id in _FAMILIES:
        assert callable(getattr(keys, name)) is takes_id
