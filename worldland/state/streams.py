"""Redis Streams as the deployed WorldLand agent uses them: consumer groups, acks, claims, dead letters
and answers (DESIGN.md, "Wire protocol"; names and groups in ``worldland.protocol.streams``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import redis
from redis.client import NEVER_DECODE
from redis.typing import EncodableT, FieldT

from worldland.domain.lifecycle import MAX_REASON_CHARS
from worldland.protocol.streams import (
    AGENT_RESPONSE_GROUPS,
    DEAD_LETTER_DATA_CHARS,
    DEAD_LETTER_MAXLEN,
    RESPONSE_MAXLEN,
    RESPONSE_TTL_S,
    StreamNames,
    rfc3339_now,
)
from worldland.state import decoded


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry, its fields decoded as UTF-8.

    An entry whose field names or values are not valid UTF-8 has ``undecodable`` set (the reason) and
    its fields escaped (``\\x80``), so it can be dead-lettered as it came without stopping the reader.
    ``deliveries`` is how often the group delivered it (known for claimed entries; 1 for new ones).
    """

    stream: str
    entry_id: str
    fields: dict[str, str]
    undecodable: str | None = None
    deliveries: int = 1

    @property
    def data(self) -> str | None:
        return self.fields.get("data")


def _escaped(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


def decode_entry(stream: str, entry_id: bytes | str, raw: dict[bytes, bytes] | None) -> Entry:
    """An entry read as bytes, decoded per field; never raises on bad bytes."""
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode("ascii")  # Redis writes ids itself: digits and one dash
    fields: dict[str, str] = {}
    bad: list[str] = []
    for name, value in (raw or {}).items():
        try:
            key = name.decode("utf-8")
        except UnicodeDecodeError as exc:
            key = _escaped(name)
            bad.append(f"field name {key} is not valid UTF-8 (byte {exc.start})")
        try:
            fields[key] = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            fields[key] = _escaped(value)
            bad.append(f"{key}: is not valid UTF-8 (byte {exc.start})")
    return Entry(stream, entry_id, fields, "; ".join(bad) or None)


def _raw_command(client: redis.Redis, *args: str | int) -> Any:
    """A command whose reply comes as bytes even from a decoding client (decoded by the caller)."""
    return client.execute_command(*args, **{NEVER_DECODE: True})  # type: ignore[no-untyped-call]  # redis-py's execute_command is unannotated


def ensure_group(client: redis.Redis, stream: str, group: str, start: str = "0") -> None:
    """Create a consumer group (and the stream) if missing; an existing group is left as it is."""
    try:
        client.xgroup_create(stream, group, id=start, mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class StreamConsumer:
    """One consumer of the listener's group on the three input streams."""

    def __init__(self, client: redis.Redis, names: StreamNames, group: str, consumer: str) -> None:
        self.client = client
        self.names = names
        self.group = group
        self.consumer = consumer
        self._claim_cursor: dict[str, str] = dict.fromkeys(names.inputs, "0-0")

    def ensure_groups(self) -> None:
        # From "0": registrations that waited for the first listener are answered, not skipped.
        for stream in self.names.inputs:
            ensure_group(self.client, stream, self.group, "0")

    def read(self, count: int, block_ms: int) -> list[Entry]:
        """New entries for this consumer (at most ``count`` per stream), waiting up to ``block_ms``.

        Read as bytes and decoded per field (``decode_entry``): one bad byte must not stop the reader.
        """
        streams = self.names.inputs
        reply = _raw_command(
            self.client, "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count,
            "BLOCK", block_ms, "STREAMS", *streams, *(">" for _ in streams),
        )  # fmt: skip
        by_name = {name.encode(): name for name in streams}
        pairs = reply.items() if isinstance(reply, dict) else (reply or [])
        return [
            decode_entry(by_name.get(stream, _escaped(stream)), entry_id, fields)
            for stream, messages in pairs
            for entry_id, fields in messages
        ]

    def claim_stale(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Entries that another (crashed) consumer left pending longer than ``min_idle_ms``, each with
        how often it has been delivered (so an entry that kills every reader can be set aside)."""
        claimed: list[Entry] = []
        for stream in self.names.inputs:
            cursor, messages, *_ = _raw_command(
                self.client, "XAUTOCLAIM", stream, self.group, self.consumer, min_idle_ms,
                self._claim_cursor[stream], "COUNT", count,
            )  # fmt: skip
            self._claim_cursor[stream] = cursor.decode("ascii") if isinstance(cursor, bytes) else cursor
            entries = [decode_entry(stream, entry_id, fields) for entry_id, fields in messages if fields]
            if entries:
                deliveries = self._deliveries(stream, entries)
                entries = [replace(e, deliveries=deliveries.get(e.entry_id, 1)) for e in entries]
            claimed.extend(entries)
        return claimed

    def _deliveries(self, stream: str, entries: list[Entry]) -> dict[str, int]:
        rows = decoded.xpending_range(
            self.client,
            stream,
            self.group,
            min=entries[0].entry_id,
            max=entries[-1].entry_id,
            count=len(entries),
            consumer=self.consumer,
        )
        return {row["message_id"]: int(row["times_delivered"]) for row in rows}

    def ack(self, entries: Iterable[Entry]) -> None:
        by_stream: dict[str, list[str]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry.entry_id)
        if not by_stream:
            return
        pipe = self.client.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xack(stream, self.group, *ids)
        pipe.execute()

    def pending_count(self) -> int:
        total = 0
        for stream in self.names.inputs:
            summary = self.client.xpending(stream, self.group)
            total += int(summary.get("pending", 0))
        return total

    def dead_letter(self, entry: Entry, reason: str, pipe: Any = None) -> None:
        """Copy an entry that cannot be processed, with why, to ``<stream>:dead`` (bounded length).

        An undecodable entry keeps all its fields, escaped, as JSON in ``fields``.
        """
        target = pipe if pipe is not None else self.client
        fields: dict[FieldT, EncodableT] = {
            "source_id": entry.entry_id,
            "reason": reason[:MAX_REASON_CHARS],
            "data": (entry.data or "")[:DEAD_LETTER_DATA_CHARS],
            "timestamp": rfc3339_now(),
        }
        if entry.undecodable:
            fields["fields"] = json.dumps(entry.fields)[:DEAD_LETTER_DATA_CHARS]
        target.xadd(self.names.dead_letter(entry.stream), fields, maxlen=DEAD_LETTER_MAXLEN, approximate=True)


def send_response(
    client: redis.Redis,
    names: StreamNames,
    provider_id: str,
    payload: str,
    groups: Iterable[str] = AGENT_RESPONSE_GROUPS,
) -> None:
    """Answer a provider on ``provider:response:<id>`` the way the deployed agent and SDK read it.

    They create their groups at ``$`` only after publishing, so a fast answer would be missed: the
    groups are created at ``0`` before the answer is written (an existing group is kept). A restarted
    agent reads its oldest unread answer first, so each group is moved past the older answers
    (``XGROUP SETID $``) in the same transaction that adds this one: the newest answer is read next.
    """
    stream = names.response(provider_id)
    groups = tuple(groups)
    creating = client.pipeline(transaction=False)  # all groups in one round trip; existing ones stay
    for group in groups:
        creating.xgroup_create(stream, group, id="0", mkstream=True)
    for reply in creating.execute(raise_on_error=False):
        if isinstance(reply, redis.ResponseError) and "BUSYGROUP" not in str(reply):
            raise reply
    pipe = client.pipeline(transaction=True)
    for group in groups:
        pipe.xgroup_setid(stream, group, "$")
    pipe.xadd(stream, {"data": payload, "timestamp": rfc3339_now()}, maxlen=RESPONSE_MAXLEN, approximate=True)
    pipe.expire(stream, RESPONSE_TTL_S)
    pipe.execute()
