"""How ``worldland status`` (and ``--watch``) and ``worldland show`` look: readable at 80 columns, whole
values (folded onto more lines, never cut), ages instead of bare times; ``wide`` adds the less important
columns and full times. Every value a provider sent is a ``cell`` (literal text, unprintables escaped)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from worldland.cli.common import age_text, cell, cell_lines, plain
from worldland.control.overview import FleetOverview, ProviderLine, seconds_since_iso
from worldland.state.ledger import GpuCapacity

GPU_COLUMN = "GPUs: free/\nin use/mining"  # per model; two lines, as narrow as a cell
# Provider fields ``show`` prints as times (RFC 3339 in provider objects).
TIME_FIELDS = frozenset(
    {"created_at", "updated_at", "status_changed_at", "approved_at", "token_expires_at", "last_heartbeat"}
)
# Shown elsewhere than in the provider's own table.
SECTION_FIELDS = frozenset({"spec", "capacity", "heartbeat"})
# Per-GPU details ``show`` leaves to --wide: long, and the same kind of value on every row.
WIDE_GPU_FIELDS = frozenset({"uuid", "pci_bus_id"})


def duration_text(seconds: float) -> str:
    """``12 s``, ``5 min``, ``3 h``, ``2 d`` (seconds up to 3 min: around the 120 s threshold, exact)."""
    return age_text(seconds).removesuffix(" ago")


def relative_text(seconds: float | None) -> str:
    """Seconds since a time as ``12 s ago``; a time still to come as ``in 25 min``."""
    if seconds is None:
        return "never"
    if seconds < -1:  # (a second's disagreement between two hosts' clocks is "now")
        return f"in {duration_text(-seconds)}"
    return age_text(max(0.0, seconds))


def time_text(epoch: float, wide: bool) -> str:
    """A time: to the second in UTC, or (``wide``) in full as RFC 3339."""
    moment = datetime.fromtimestamp(epoch, UTC)
    if wide:
        return moment.isoformat().replace("+00:00", "Z")
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def gpu_cell(gpus: Mapping[str, GpuCapacity]) -> Text:
    """One line per model: ``RTX-4090 2/1/1`` (free / in use by rentals / mining)."""
    return cell_lines(f"{m} {c.available}/{c.in_use}/{c.mining}" for m, c in sorted(gpus.items()))


def fleet_summary(overview: FleetOverview) -> Text:
    """Providers per state in the whole fleet, and the GPUs of those listed, per model."""
    counts = ", ".join(f"{n} {status}" for status, n in overview.counts.items() if n)
    lines = [f"providers: {counts or 'none'}"]
    if overview.gpus:
        lines.append(
            "GPUs: "
            + "; ".join(
                f"{model} {c.total} ({c.available} free, {c.in_use} in use, {c.mining} mining)"
                for model, c in overview.gpus.items()
            )
        )
    return cell_lines(lines)


def provider_table(providers: list[ProviderLine], taken_at: float, *, wide: bool = False) -> Table:
    """A row per provider, heartbeat ages as at ``taken_at``. To fit 80 columns with the agent's
    42-character ids, the node name goes under the provider id (its own column with ``wide``); values
    too long fold onto more lines."""
    table = Table(
        title=f"{len(providers)} provider(s)",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),  # with the divider: two spaces between columns
    )
    table.add_column("provider" if wide else Text.assemble("provider\n", ("node", "dim")), overflow="fold")
    table.add_column("status", no_wrap=True)
    if wide:
        table.add_column("node", overflow="fold")
        table.add_column("public ip", overflow="fold")
    table.add_column(GPU_COLUMN, overflow="fold")
    table.add_column("heartbeat", no_wrap=True)
    if wide:
        table.add_column("last heartbeat (UTC)", no_wrap=True)
        table.add_column("last error", overflow="fold")
    for p in providers:
        if wide:
            row = [cell(p.provider_id), cell(p.status), cell(p.node_name), cell(p.public_ip)]
        else:
            who = cell(p.provider_id)
            who.append("\n" + plain(p.node_name), style="dim")
            row = [who, cell(p.status)]
        row += [gpu_cell(p.gpus), cell(relative_text(p.heartbeat_age_s(taken_at)))]
        if wide:
            row.append(cell(time_text(p.last_heartbeat, wide=True) if p.last_heartbeat else ""))
            row.append(cell(p.last_error))
        table.add_row(*row)
    return table


def errors_block(providers: Iterable[ProviderLine]) -> Text | None:
    """``last errors:`` and a line per provider that has one, in full (as a column, at 80 columns it
    would leave the others no room)."""
    lines = [f"  {p.provider_id}: {p.last_error}" for p in providers if p.last_error]
    return cell_lines(["last errors:", *lines]) if lines else None


def fleet_view(overview: FleetOverview, *, wide: bool = False, header: str | None = None) -> Group:
    """What ``status`` prints, and each frame of ``status --watch``."""
    parts: list[RenderableType] = []
    if header is not None:
        parts.append(Text(header, style="bold"))
    parts += [fleet_summary(overview), provider_table(overview.providers, overview.taken_at, wide=wide)]
    if not wide:  # --wide has them in the table
        errors = errors_block(overview.providers)
        if errors is not None:
            parts.append(errors)
    return Group(*parts)


def watch_header(taken_at: float, interval_s: float) -> str:
    when = time_text(taken_at, wide=False)
    return f"WorldLand fleet at {when}, refreshed every {interval_s:g} s (Ctrl-C stops)"


# -- show ---------------------------------------------------------------------------------------------


def value_text(value: Any) -> str:
    """A scalar or a list of scalars as text: ``a, b``; yes/no for booleans; ``-`` for nothing."""
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(value_text(v) for v in value)
    return plain(value)


def flattened(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as ``a.b`` keys, lists of mappings as ``a[0].b``: one value per row."""
    rows: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows += flattened(value, f"{name}.")
        elif isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                rows += (
                    flattened(item, f"{name}[{i}].")
                    if isinstance(item, Mapping)
                    else [(f"{name}[{i}]", item)]
                )
        else:
            rows.append((name, value))
    return rows


def field_table(title: str, rows: Iterable[tuple[str, Any]]) -> Table:
    table = Table(title=cell(title), show_header=False, box=box.SIMPLE, title_justify="left")
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(cell(key), value if isinstance(value, Text) else cell(value_text(value)))
    return table


def provider_fields(view: Mapping[str, Any], now: float, wide: bool) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in view.items():
        if key in SECTION_FIELDS or (not wide and value in (None, "", [], False)):
            continue
        since = seconds_since_iso(value, now) if key in TIME_FIELDS else None
        if since is not None:
            shown = value if wide else time_text(now - since, wide=False)
            if key == "last_heartbeat":  # our own receive time: never in the future
                since = max(0.0, since)
            value = cell(f"{shown} ({relative_text(since)})")
        rows.append((key, value))
    return rows


def capacity_table(capacity: Mapping[str, Any]) -> Table:
    table = Table(title="capacity", title_justify="left", box=box.SIMPLE)
    table.add_column("resource", overflow="fold")
    for column in ("total", "free", "in use", "mining"):
        table.add_column(column, justify="right", no_wrap=True)
    for model, c in (capacity.get("gpus") or {}).items():
        table.add_row(
            cell(f"GPU {model}"),
            *(cell(c.get(k, 0)) for k in ("total", "available", "in_use", "mining")),
        )
    for name, pool in (("CPU cores", capacity.get("cpu")), ("memory MiB", capacity.get("memory"))):
        if pool:
            table.add_row(
                cell(name), *(cell(pool.get(k, 0)) for k in ("total", "available", "in_use")), cell("-")
            )
    return table


def gpus_table(gpus: list[Any], wide: bool) -> Table | None:
    """The GPUs the machine registered, one row each (columns: the fields they carry)."""
    rows = [g for g in gpus if isinstance(g, Mapping)]
    if not rows:
        return None
    columns = list(dict.fromkeys(k for g in rows for k in g if wide or k not in WIDE_GPU_FIELDS))
    table = Table(title="GPUs", title_justify="left", box=box.SIMPLE)
    for column in columns:
        table.add_column(cell(column), overflow="fold")
    for gpu in rows:
        table.add_row(*(cell(value_text(gpu.get(c))) for c in columns))
    return table


def provider_view(view: Mapping[str, Any], now: float, *, wide: bool = False) -> Group:
    """What ``show`` prints: the provider, its capacity, its spec (its GPUs as a table), its last beat."""
    parts: list[RenderableType] = [
        field_table(f"provider {view['provider_id']}", provider_fields(view, now, wide))
    ]
    if view.get("capacity"):
        parts.append(capacity_table(view["capacity"]))
    spec = view.get("spec")
    if isinstance(spec, Mapping) and spec:
        gpus = spec.get("gpus")
        table = gpus_table(gpus, wide) if isinstance(gpus, list) else None
        rest = {k: v for k, v in spec.items() if not (k == "gpus" and table is not None)}
        parts.append(field_table("spec", flattened(rest)))
        if table is not None:
            parts.append(table)
    beat = view.get("heartbeat")
    if isinstance(beat, Mapping):
        parts.append(field_table("last heartbeat", [(k, v) for k, v in beat.items() if k != "received_at"]))
    return Group(*parts)
