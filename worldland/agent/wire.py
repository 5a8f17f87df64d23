"""The agent's side of the wire protocol, exactly as the deployed Go agent speaks it: ``data``/``timestamp``
entries on ``provider:registration`` and ``provider:heartbeat``, answers read from
``provider:response:<id>`` with the consumer group ``agent-group``.

One difference, on purpose: the Go agent creates its group at ``$`` after publishing and so misses a fast
answer; this agent creates it (and moves it past older answers) before publishing.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any, cast

import redis

from worldland.protocol.messages import MessageError, RegistrationResponse, parse_message
from worldland.protocol.streams import AGENT_RESPONSE_GROUP, StreamNames, rfc3339_now

Clock = Callable[[], float]


class RedisUnreachable(Exception):
    """Redis could not be reached; the message says where (no password) and why, in one line."""


def redacted(url: str) -> str:
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, credentials = head.partition("://")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user + ':' if user else ':'}***@{tail}"


def connect(url: str, timeout: float = 5.0) -> redis.Redis:
    """A decoding client for ``redis://``, ``rediss://`` or ``unix://`` (checked by the settings)."""
    return redis.Redis.from_url(
        url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout
    )


def unreachable(url: str, exc: Exception) -> RedisUnreachable:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return RedisUnreachable(f"cannot reach Redis at {redacted(url)}: {reason[:200]}")


class AgentWire:
    """One provider's streams."""

    def __init__(self, client: redis.Redis, provider_id: str, names: StreamNames | None = None) -> None:
        self.client = client
        self.provider_id = provider_id
        self.names = names or StreamNames()
        self.response_stream = self.names.response(provider_id)
        self.consumer = f"{socket.gethostname()}-agent"

    def prepare_answers(self) -> None:
        """Create the answer group at ``0`` if missing and move it past every older answer, so the next
        answer read is one to what is published next."""
        try:
            self.client.xgroup_create(self.response_stream, AGENT_RESPONSE_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self.client.xgroup_setid(self.response_stream, AGENT_RESPONSE_GROUP, "$")

    def publish_registration(self, message: dict[str, Any]) -> str:
        return self._publish(self.names.registration, message)

    def publish_heartbeat(self, message: dict[str, Any]) -> str:
        return self._publish(self.names.heartbeat, message)

    def _publish(self, stream: str, message: dict[str, Any]) -> str:
        fields = {"data": json.dumps(message, separators=(",", ":")), "timestamp": rfc3339_now()}
        return cast(str, self.client.xadd(stream, fields))  # type: ignore[arg-type]  # redis-py's field union

    def next_answer(self, block_ms: int | None) -> RegistrationResponse | None:
        """The next answer (acknowledged), waiting up to ``block_ms`` (None: do not wait).

        An answer that does not parse is acknowledged and skipped (``MessageError`` is not raised: the
        agent waits for the next one)."""
        reply = self.client.xreadgroup(
            AGENT_RESPONSE_GROUP, self.consumer, {self.response_stream: ">"}, count=1, block=block_ms
        )
        for _stream, entries in cast(list[tuple[str, list[tuple[str, dict[str, str]]]]], reply or []):
            for entry_id, fields in entries:
                self.client.xack(self.response_stream, AGENT_RESPONSE_GROUP, entry_id)
                try:
                    return parse_message(RegistrationResponse, fields.get("data", ""))
                except MessageError:
                    return None
        return None

    def wait_for_answer(self, timeout_s: float, clock: Clock = time.monotonic) -> RegistrationResponse | None:
        deadline = clock() + timeout_s
        while (left := deadline - clock()) > 0:
            answer = self.next_answer(block_ms=max(1, int(min(left, 1.0) * 1000)))
            if answer is not None:
                return answer
        return None
