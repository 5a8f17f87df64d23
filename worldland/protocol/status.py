"""The provider statuses (lower case, as the wire spells them), and what an answer may say on the wire.

``Status.REMOVED`` (an operator offboarded the provider) is this project's own: the deployed Go agent knows
``pending|approved|joined|available|busy|offline|rejected`` only (DESIGN.md, "Wire protocol"), so an answer
to a removed provider says ``rejected`` (with ``code: removed``, which the Go agent ignores): ``wire_status``.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    JOINED = "joined"
    AVAILABLE = "available"
    OFFLINE = "offline"
    REJECTED = "rejected"
    REMOVED = "removed"  # offboarded by an operator; only a fresh registration starts it over


# The statuses the deployed Go agent knows in an answer (``busy`` is its own; this project never sends it).
WIRE_STATUSES = frozenset({"pending", "approved", "joined", "available", "busy", "offline", "rejected"})


def wire_status(status: Status) -> str:
    """What an answer's ``status`` says for ``status``: itself, or ``rejected`` for ``removed``."""
    return Status.REJECTED.value if status is Status.REMOVED else Status(status).value
