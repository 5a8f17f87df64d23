"""Settings shared by the CLI, the listener and the plugins, and the one way to open Redis."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, cast
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from worldland.state.keys import DEFAULT_PREFIX

if TYPE_CHECKING:
    from redis.typing import SentinelMastersResponse

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_URL_ENV = "WORLDLAND_REDIS_URL"
KEY_PREFIX_ENV = "WORLDLAND_KEY_PREFIX"
SENTINEL_SCHEME = "redis+sentinel"
SCHEMES = ("redis", "rediss", "unix", SENTINEL_SCHEME)
DEFAULT_SENTINEL_PORT = 26379
MAX_ERROR_LINE_CHARS = 200

_DATABASE_RE = re.compile(r"[0-9]+")
_PORT_RE = re.compile(r"[0-9]{1,5}")
# redis-py's socket errors: "Error 111 connecting to 127.0.0.1:6379. Connection refused."
_CONNECT_ERROR_RE = re.compile(r"Error -?\d+ connecting to \S+?\. (?P<reason>.+?)\.?$")
# redis-py's own MasterNotFoundError: "No master found for 'mymaster' : <client reprs and errors>".
_NO_MASTER_RE = re.compile(r"No master found for (?P<service>'[^']*'|\"[^\"]*\")")


def redis_url_from_env() -> str:
    return os.environ.get(REDIS_URL_ENV) or DEFAULT_REDIS_URL


def key_prefix_from_env() -> str:
    """``$WORLDLAND_KEY_PREFIX``; unset or empty means the default (as click treats empty variables)."""
    return os.environ.get(KEY_PREFIX_ENV) or DEFAULT_PREFIX


def redacted(url: str) -> str:
    """The URL without its password (in the user part or a ``password=`` query), for messages."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # e.g. a bad port: show no part of what may hold a password
        return "<unparsable URL>"
    hidden_query = bool(parts.query) and "password" in parse_qs(parts.query, keep_blank_values=True)
    if password is None and not hidden_query:
        return url
    if password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{password}@", ":***@"))
    if hidden_query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        parts = parts._replace(
            query=urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*")
        )
    return urlunsplit(parts)


def _database(text: str, where: str) -> int:
    """A database number from a URL part: a non-negative integer, or ValueError naming the part."""
    if not _DATABASE_RE.fullmatch(text):
        raise ValueError(f"{where}: database must be a non-negative integer, got {text!r}")
    return int(text)


def _scheme(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        raise ValueError("redis URL: needs a scheme: redis://, rediss://, unix:// or redis+sentinel://")
    if scheme not in SCHEMES:
        raise ValueError(
            f"redis URL: unknown scheme {scheme!r}; use redis://, rediss://, unix:// or redis+sentinel://"
        )
    return scheme


def _check_database(url: str, scheme: str) -> None:
    """Refuse what redis-py would silently read as database 0 (``/abc``) or misread (``/1/2``, ``/-1``)."""
    parts = urlsplit(url)
    dbs = []
    if scheme != "unix":  # a unix:// path is the socket; its database is only ever ?db=
        segments = [s for s in unquote(parts.path).split("/") if s]
        if len(segments) > 1:
            raise ValueError(f"redis URL: path must be /<database>, got {unquote(parts.path)!r}")
        if segments:
            dbs.append(_database(segments[0], "redis URL"))
    dbs += [_database(value, "redis URL: db= query") for value in parse_qs(parts.query).get("db", [])]
    if len(set(dbs)) > 1:
        raise ValueError(f"redis URL: names more than one database: {', '.join(map(str, dbs))}")


def _sentinel_address(item: str) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, sep, rest = item[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"redis+sentinel URL: bad sentinel address {item!r}")
        port = rest[1:]
    else:
        host, _, port = item.partition(":")
    if not host:
        raise ValueError(f"redis+sentinel URL: sentinel address {item!r} has no host")
    if not port:
        return host, DEFAULT_SENTINEL_PORT
    if not _PORT_RE.fullmatch(port) or not 0 < int(port) < 65536:
        raise ValueError(f"redis+sentinel URL: port must be a number from 1 to 65535, got {port!r}")
    return host, int(port)


class NoPrimaryError(MasterNotFoundError):
    """No sentinel named a usable primary for the service; the message is one short line."""


class _SentinelClient(redis.Redis):
    """A sentinel's client that remembers why its last SENTINEL MASTERS failed (None: it answered)."""

    last_error: BaseException | None = None

    def sentinel_masters(self) -> SentinelMastersResponse:
        try:
            masters = super().sentinel_masters()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.last_error = exc
            raise
        self.last_error = None
        return masters


class _Sentinel(Sentinel):
    """redis-py's Sentinel, whose "no primary" error says why in one line instead of listing reprs."""

    def __init__(self, sentinels: list[tuple[str, int]], **connection_kwargs: object) -> None:
        super().__init__(sentinels, **connection_kwargs)  # type: ignore[no-untyped-call]  # redis-py's Sentinel is unannotated
        self.sentinels = [_SentinelClient(host, port, **self.sentinel_kwargs) for host, port in sentinels]

    def discover_master(self, service_name: str) -> tuple[str, int]:
        try:
            return cast(tuple[str, int], super().discover_master(service_name))  # type: ignore[no-untyped-call]  # redis-py's Sentinel is unannotated
        except MasterNotFoundError:
            pass
        failed = [
            s.last_error
            for s in self.sentinels
            if isinstance(s, _SentinelClient) and s.last_error is not None  # all are: see __init__
        ]
        reason = f"Sentinel found no primary for service {service_name!r}"
        if failed:
            why = ", ".join(sorted({redis_error_reason(error) for error in failed}))
            if len(failed) == len(self.sentinels):
                reason += f" (no sentinel reachable: {why})"
            else:
                reason += f" ({len(failed)} of {len(self.sentinels)} sentinels unreachable: {why})"
        else:
            reason += " (the sentinels do not know it, or see it down)"
        raise NoPrimaryError(reason) from None


def _connect_sentinel(url: str, timeout: float) -> redis.Redis:
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    if not hostlist:
        raise ValueError(
            "redis+sentinel URL: needs at least one sentinel: redis+sentinel://host:port/mymaster"
        )
    hosts = [_sentinel_address(item) for item in hostlist.split(",")]
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("redis+sentinel:// URL needs a service name: redis+sentinel://host:port/mymaster")
    if len(path) > 2:
        raise ValueError(f"redis+sentinel URL: path must be /service_name[/db], got {parts.path!r}")
    db = _database(unquote(path[1]), "redis+sentinel URL") if len(path) > 1 else 0
    username = unquote(parts.username) if userinfo and parts.username else None
    password = unquote(parts.password) if userinfo and parts.password else None
    # Each sentinel is asked once per discovery (the next one is the retry): redis-py's default of 10
    # retries with backoff per sentinel held a discovery ~5 s on each sentinel that is down.
    sentinel_kwargs = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    sentinel = _Sentinel(
        hosts, sentinel_kwargs=sentinel_kwargs, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    client = sentinel.master_for(  # type: ignore[no-untyped-call]  # redis-py's Sentinel is unannotated
        unquote(path[0]),
        db=db,
        username=username,
        password=password,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    return cast(redis.Redis, client)


def connect(url: str, *, timeout: float = 5.0) -> redis.Redis:
    """A decoding client for ``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://`` URLs.

    Sentinel form: ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]``;
    the client follows the primary that Sentinel names, through redis-py's own Sentinel support.
    A URL that is not one of these, or whose database is not a non-negative integer, is refused
    (ValueError naming the part), never read as something else.
    """
    scheme = _scheme(url)
    try:
        urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed [IPv6] bracket
        raise ValueError(f"redis URL: {exc}") from None
    if scheme == SENTINEL_SCHEME:
        return _connect_sentinel(url, timeout)
    _check_database(url, scheme)
    try:
        return redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout
        )
    except ValueError as exc:  # e.g. a port out of range, a bad query value
        raise ValueError(f"redis URL: {exc}") from None


def _short(text: str) -> str:
    line = (text.strip().splitlines() or [""])[0].strip()
    return line if len(line) <= MAX_ERROR_LINE_CHARS else line[: MAX_ERROR_LINE_CHARS - 3].rstrip() + "..."


def _socket_reason(text: str) -> str:
    """``Error 111 connecting to h:p. Connection refused.`` -> ``connection refused``."""
    match = _CONNECT_ERROR_RE.match(text.strip())
    reason = match.group("reason") if match else _short(text)
    if reason.endswith(".") and not reason.endswith("..."):
        reason = reason[:-1]
    if reason[1:2].islower():  # "Connection refused" -> "connection refused"; "WRONGTYPE ..." stays
        reason = reason[:1].lower() + reason[1:]
    return reason


def redis_error_reason(exc: BaseException) -> str:
    """A Redis error as a short phrase on one line: no client reprs, no nesting."""
    if isinstance(exc, NoPrimaryError):
        return _short(str(exc))
    if isinstance(exc, MasterNotFoundError):  # raised by redis-py itself: its reprs are left out
        match = _NO_MASTER_RE.match(str(exc))
        return f"Sentinel found no primary for service {match.group('service') if match else '?'}"
    if isinstance(exc, redis.AuthenticationError):
        return f"authentication failed: {_socket_reason(str(exc))}"
    return _socket_reason(str(exc)) or type(exc).__name__


def connection_error_message(url: str, exc: BaseException) -> str:
    """``cannot reach Redis at <url without password>: <short reason>``."""
    return f"cannot reach Redis at {redacted(url)}: {redis_error_reason(exc)}"
