"""A stand-in for the deployed Go agent on the Redis streams: the same fields, groups and ids."""

from __future__ import annotations

import json

import redis

from worldland.protocol.streams import AGENT_RESPONSE_GROUP, StreamNames


class Agent:
    """Talks to Redis exactly as the deployed Go agent does (fields, groups, ids)."""

    def __init__(self, client: redis.Redis, names: StreamNames) -> None:
        self.client = client
        self.names = names

    def publish(self, stream: str, data: str) -> str:
        return self.client.xadd(stream, {"data": data, "timestamp": "2026-11-26T09:15:02.123456789Z"})

    def register(self, message: dict | str) -> str:
        data = message if isinstance(message, str) else json.dumps(message)
        return self.publish(self.names.registration, data)

    def await_answer(self, provider_id: str, block_ms: int = 100) -> dict | None:
        """The agent creates its group at "$" after publishing, then reads ">"."""
        stream = self.names.response(provider_id)
        try:
            self.client.xgroup_create(stream, AGENT_RESPONSE_GROUP, id="$", mkstream=True)
        except redis.ResponseError as exc:
            assert "BUSYGROUP" in str(exc)
        reply = self.client.xreadgroup(
            AGENT_RESPONSE_GROUP, "agent-1", {stream: ">"}, count=1, block=block_ms
        )
        if not reply:
            return None
        _stream, [(entry_id, fields)] = reply[0]
        self.client.xack(stream, AGENT_RESPONSE_GROUP, entry_id)
        assert set(fields) == {"data", "timestamp"}
        return json.loads(fields["data"])
