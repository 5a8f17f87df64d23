"""The provider statuses as the wire spells them (``status`` of an answer; lower case)."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    JOINED = "joined"
    AVAILABLE = "available"
    OFFLINE = "offline"
    REJECTED = "rejected"
