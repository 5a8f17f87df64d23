"""``worldland status --watch``: the fleet table, refreshed.

On a terminal it is one live display (``rich.live.Live``) redrawn in place every interval. Anywhere
else (a pipe, a file, a log) each refresh prints one plain snapshot under a header line with its time,
as ``vmstat 5`` does, so the output stays a readable log. Either runs until Ctrl-C, or for ``--count``
refreshes. Redis out of reach does not end it: the frame says so, and the next refresh tries again.
A live display taller than the terminal is cut at its bottom edge (rich's ``Live``): ``--status``
narrows a large fleet down.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

from worldland.cli.common import Context, cell, console
from worldland.cli.render import fleet_view, watch_header
from worldland.control.overview import fleet_overview
from worldland.domain.lifecycle import Status
from worldland.state.connection import connection_error_message

DEFAULT_WATCH_INTERVAL_S = 2.0


def watch_fleet(
    obj: Context,
    statuses: list[Status] | None,
    *,
    wide: bool,
    interval_s: float,
    count: int | None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Show the fleet every ``interval_s`` seconds, ``count`` times (None: until Ctrl-C); returns the
    number of refreshes shown."""

    def frame() -> RenderableType:
        try:
            overview = fleet_overview(obj.fleet, statuses)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            return Group(
                Text(watch_header(time.time(), interval_s), style="bold"),
                cell(f"{connection_error_message(obj.redis_url, exc)}; trying again in {interval_s:g} s"),
            )
        return fleet_view(overview, wide=wide, header=watch_header(overview.taken_at, interval_s))

    out = console(wide=wide)
    shown = 0
    try:
        if out.is_terminal:
            with Live(frame(), console=out, auto_refresh=False, transient=False) as live:
                shown = 1
                while count is None or shown < count:
                    sleep(interval_s)
                    live.update(frame(), refresh=True)
                    shown += 1
        else:
            while count is None or shown < count:
                if shown:
                    sleep(interval_s)
                    out.print(Text(""))
                out.print(frame())  # (rich flushes; a closed pipe ends the command, as rich does)
                shown += 1
    except KeyboardInterrupt:  # Ctrl-C is how a watch ends
        pass
    return shown
