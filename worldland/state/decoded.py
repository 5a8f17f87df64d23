"""The replies of a decoding client, typed as they come: ``str``, never ``bytes``.

``connection.connect`` makes every client with ``decode_responses=True``, so Redis replies reach us as
``str``; redis-py annotates its commands for either kind of client (``bytes | str``). Each function
here is exactly the redis-py call it is named after, and the one place that says what it returns, so
the code that reads these replies is checked against ``str``. Replies the code reads either way (the
capacity ledger's) and raw reads (``NEVER_DECODE``) do not come through here.
"""

from __future__ import annotations

from typing import TypedDict, cast

import redis


class PendingEntry(TypedDict):
    """One row of ``XPENDING <stream> <group> <min> <max> <count> [<consumer>]``."""

    message_id: str
    consumer: str
    time_since_delivered: int
    times_delivered: int


def get(client: redis.Redis, name: str) -> str | None:
    return cast("str | None", client.get(name))


def hgetall(client: redis.Redis, name: str) -> dict[str, str]:
    return cast("dict[str, str]", client.hgetall(name))


def smembers(client: redis.Redis, name: str) -> set[str]:
    return cast("set[str]", client.smembers(name))


def sunion(client: redis.Redis, names: list[str]) -> set[str]:
    return cast("set[str]", client.sunion(names))


def zrangebyscore(client: redis.Redis, name: str, min: float | str, max: float | str) -> list[str]:
    """Members with a score from ``min`` to ``max`` (``"-inf"``, ``"(1.5"``: as Redis reads them)."""
    return cast("list[str]", client.zrangebyscore(name, min, max))


def zrangebyscore_withscores(
    client: redis.Redis,
    name: str,
    min: float | str,
    max: float | str,
    start: int | None = None,
    num: int | None = None,
) -> list[tuple[str, float]]:
    """(member, score) pairs with a score from ``min`` to ``max``; ``start``/``num`` page them (both
    or neither)."""
    return cast(
        "list[tuple[str, float]]",
        client.zrangebyscore(name, min, max, start=start, num=num, withscores=True),
    )


def zrange_withscores(client: redis.Redis, name: str, start: int, end: int) -> list[tuple[str, float]]:
    """(member, score) pairs by rank, ``start`` to ``end`` inclusive."""
    return cast("list[tuple[str, float]]", client.zrange(name, start, end, withscores=True))


def xpending_range(
    client: redis.Redis, name: str, group: str, min: str, max: str, count: int, consumer: str
) -> list[PendingEntry]:
    """The pending entries of ``group`` from ``min`` to ``max`` (ids), at most ``count``, of ``consumer``."""
    return cast(
        "list[PendingEntry]",
        client.xpending_range(name, group, min=min, max=max, count=count, consumername=consumer),
    )
