"""Settings shared by the CLI, the listener and the plugins, and the one way to open Redis."""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit, urlunsplit

import redis
from redis.sentinel import Sentinel

from worldland.keys import DEFAULT_PREFIX

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_URL_ENV = "WORLDLAND_REDIS_URL"
KEY_PREFIX_ENV = "WORLDLAND_KEY_PREFIX"


def redis_url_from_env() -> str:
    return os.environ.get(REDIS_URL_ENV) or DEFAULT_REDIS_URL


def key_prefix_from_env() -> str:
    return os.environ.get(KEY_PREFIX_ENV) or DEFAULT_PREFIX


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # e.g. a bad port: show no part of what may hold a password
        return "<unparsable URL>"
    if password is None:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def connect(url: str, *, timeout: float = 5.0) -> redis.Redis:
    """A decoding client for ``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://`` URLs.

    Sentinel form: ``redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db]``;
    the client follows the primary that Sentinel names, through redis-py's own Sentinel support.
    """
    if url.startswith("redis+sentinel://"):
        parts = urlsplit(url)
        hosts = []
        for item in parts.netloc.rpartition("@")[2].split(","):
            host, _, port = item.rpartition(":")
            hosts.append((host or item, int(port) if port else 26379))
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError(
                "redis+sentinel:// URL needs a service name: redis+sentinel://host:port/mymaster"
            )
        db = int(path[1]) if len(path) > 1 else 0
        password = unquote(parts.password) if parts.password else None
        sentinel = Sentinel(hosts, socket_timeout=timeout)
        return sentinel.master_for(
            path[0], db=db, password=password, decode_responses=True, socket_timeout=timeout
        )
    return redis.Redis.from_url(
        url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout
    )
