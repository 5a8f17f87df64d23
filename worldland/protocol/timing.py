"""The agent's timing, fixed by the deployed Go agent (DESIGN.md, "Provider lifecycle")."""

from __future__ import annotations

HEARTBEAT_INTERVAL_S = 30  # the agent beats this often
STALE_AFTER_S = 120  # a live provider silent for longer than this is Offline
