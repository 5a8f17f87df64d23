"""The streams of the wire protocol (DESIGN.md, "Wire protocol"): their names, the consumer groups the
agents read answers with, and the answer stream's bounds.

Stream names are fixed by the agent; ``StreamNames.namespace`` exists only so tests and benchmarks can
share a Redis without sharing streams (production leaves it empty).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from worldland.protocol.ids import PROVIDER_ID_RE

DEFAULT_GROUP = "orchestrator-group"
AGENT_RESPONSE_GROUP = "agent-group"  # the deployed agent reads its answers with this group
SDK_RESPONSE_GROUP = "sdk-group"  # the Go SDK (internal/sdk) reads them with this one
AGENT_RESPONSE_GROUPS = (AGENT_RESPONSE_GROUP, SDK_RESPONSE_GROUP)
DEAD_LETTER_MAXLEN = 10_000
DEAD_LETTER_DATA_CHARS = 65536
RESPONSE_MAXLEN = 100
RESPONSE_TTL_S = 7 * 24 * 3600  # an answer nobody reads does not stay forever


@dataclass(frozen=True, slots=True)
class StreamNames:
    namespace: str = ""

    @property
    def registration(self) -> str:
        return f"{self.namespace}provider:registration"

    @property
    def heartbeat(self) -> str:
        return f"{self.namespace}provider:heartbeat"

    @property
    def capacity(self) -> str:
        return f"{self.namespace}provider:capacity"

    @property
    def inputs(self) -> tuple[str, str, str]:
        return (self.registration, self.heartbeat, self.capacity)

    def response(self, provider_id: str) -> str:
        if not PROVIDER_ID_RE.match(provider_id):
            raise ValueError("provider_id: not a valid provider id; no response stream for it")
        return f"{self.namespace}provider:response:{provider_id}"

    @staticmethod
    def dead_letter(stream: str) -> str:
        return f"{stream}:dead"


def rfc3339_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
