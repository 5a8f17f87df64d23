"""From a plugin's options to the ``Fleet`` (Redis URL, key prefix, timeout), every failure one Ansible
error that names the source and never shows a password."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
from ansible.errors import AnsibleParserError

from worldland.state.connection import connect, redacted
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys


@contextmanager
def open_fleet(url: str, prefix: str, timeout: float, who: str) -> Iterator[Fleet]:
    """The fleet behind ``url``/``prefix`` for the ``with`` block; closed after it.

    A bad prefix or URL, or Redis failing inside the block, raises ``AnsibleParserError`` ("<who>: ...").
    """
    try:
        keys = Keys(prefix)
    except ValueError as exc:
        raise AnsibleParserError(f"{who}: {exc}") from None
    try:
        client = connect(url, timeout=timeout)
    except (ValueError, redis.RedisError) as exc:
        raise AnsibleParserError(f"{who}: bad redis_url {redacted(url)}: {exc}") from None
    try:
        yield Fleet.open(client, keys)
    except (redis.RedisError, OSError) as exc:
        raise AnsibleParserError(
            f"{who}: cannot read the providers from Redis at {redacted(url)}: {exc}"
        ) from None
    finally:
        client.close()
