"""The ``worldland`` command: operators' view of and hand on the fleet. A thin adapter over ``Fleet``."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click
import redis
from rich.console import Console
from rich.table import Table

from worldland.capacity import CapacityError
from worldland.config import DEFAULT_REDIS_URL, KEY_PREFIX_ENV, REDIS_URL_ENV, connect, redacted
from worldland.fleet import Fleet
from worldland.keys import DEFAULT_PREFIX, Keys
from worldland.lifecycle import Status, TransitionError
from worldland.names import canonical_gpu_model
from worldland.store import StoreError

STATUS_CHOICES = click.Choice([s.value for s in Status], case_sensitive=False)


def fail(message: str) -> NoReturn:
    click.echo(f"worldland: {message}", err=True)
    sys.exit(1)


class Context:
    def __init__(self, redis_url: str, key_prefix: str) -> None:
        self.redis_url = redis_url
        self.keys = Keys(key_prefix)
        self._fleet: Fleet | None = None

    @property
    def fleet(self) -> Fleet:
        if self._fleet is None:
            self._fleet = Fleet.open(connect(self.redis_url), self.keys)
        return self._fleet


def handles_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn domain and connection errors into one line on stderr and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context().find_object(Context)
        try:
            return command(*args, **kwargs)
        except redis.ConnectionError as exc:
            url = redacted(ctx.redis_url) if ctx else "?"
            fail(f"cannot reach Redis at {url}: {exc}")
        except redis.RedisError as exc:
            fail(f"Redis error: {exc}")
        except (StoreError, TransitionError, CapacityError, ValueError) as exc:
            fail(str(exc))

    return wrapper


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def _gpu_summary(capacity: dict[str, Any] | None) -> str:
    if not capacity:
        return ""
    parts = []
    for model, counts in sorted((capacity.get("gpus") or {}).items()):
        parts.append(f"{model} {counts['available']}/{counts['total']}")
    return ", ".join(parts)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--redis-url",
    envvar=REDIS_URL_ENV,
    default=DEFAULT_REDIS_URL,
    show_default=True,
    help=f"Redis URL (redis://, rediss://, unix://, redis+sentinel://); env {REDIS_URL_ENV}.",
)
@click.option(
    "--key-prefix",
    envvar=KEY_PREFIX_ENV,
    default=DEFAULT_PREFIX,
    show_default=True,
    help=f"Prefix of every Redis key of this deployment; env {KEY_PREFIX_ENV}.",
)
@click.version_option(package_name="worldland")
@click.pass_context
def main(ctx: click.Context, redis_url: str, key_prefix: str) -> None:
    """Onboard and operate WorldLand GPU providers."""
    ctx.obj = Context(redis_url, key_prefix)


@main.command()
@click.option(
    "--status", "statuses", type=STATUS_CHOICES, multiple=True, help="Only these statuses (repeatable)."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of provider objects.")
@click.pass_obj
@handles_errors
def status(obj: Context, statuses: tuple[str, ...], as_json: bool) -> None:
    """List providers with their status, node, last heartbeat and GPUs."""
    wanted = [Status(s.lower()) for s in statuses] or None
    providers = obj.fleet.describe(wanted)
    if as_json:
        print_json(providers)
        return
    table = Table(title=f"{len(providers)} provider(s)")
    for column in ("provider", "status", "node", "public ip", "last heartbeat", "GPUs free/total"):
        table.add_column(column)
    for p in providers:
        table.add_row(
            p["provider_id"],
            p["status"],
            p["node_name"],
            p["public_ip"],
            p["last_heartbeat"] or "never",
            _gpu_summary(p["capacity"]),
        )
    Console().print(table)


@main.command()
@click.argument("provider_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
@handles_errors
def show(obj: Context, provider_id: str, as_json: bool) -> None:
    """Show one provider in full."""
    provider = obj.fleet.describe_one(provider_id)
    if as_json:
        print_json(provider)
        return
    table = Table(show_header=False, title=provider_id)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in provider.items():
        text = json.dumps(value) if isinstance(value, dict | list) else ("" if value is None else str(value))
        table.add_row(key, text)
    Console().print(table)


@main.command()
@click.argument("provider_id")
@click.pass_obj
@handles_errors
def approve(obj: Context, provider_id: str) -> None:
    """Approve a pending provider."""
    result = obj.fleet.approve(provider_id)
    click.echo(f"{provider_id}: {'approved' if result.changed else 'already approved'}")


@main.command()
@click.argument("provider_id")
@click.option("--reason", required=True, help="Why; the provider is told.")
@click.pass_obj
@handles_errors
def reject(obj: Context, provider_id: str, reason: str) -> None:
    """Reject a pending (or revoke an approved) provider."""
    result = obj.fleet.reject(provider_id, reason)
    click.echo(f"{provider_id}: {'rejected' if result.changed else 'already rejected'}")


@main.command()
@click.option("--job", "job_id", required=True, help="Job id (idempotency key).")
@click.option("--provider", "provider_id", required=True, help="Provider id.")
@click.option("--model", required=True, help="GPU model (any spelling; canonicalised).")
@click.option("--gpus", type=click.IntRange(min=0), required=True)
@click.option("--cpu", "cpu_cores", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--memory-mb", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handles_errors
def allocate(
    obj: Context,
    job_id: str,
    provider_id: str,
    model: str,
    gpus: int,
    cpu_cores: int,
    memory_mb: int,
    as_json: bool,
) -> None:
    """Allocate a job's GPUs, CPU and memory on a provider: all or nothing."""
    allocation = obj.fleet.ledger.allocate(job_id, provider_id, model, gpus, cpu_cores, memory_mb)
    if as_json:
        print_json(allocation.to_dict())
    else:
        click.echo(
            f"{job_id}: {allocation.gpus} x {allocation.model} ({allocation.from_mining} from mining), "
            f"{allocation.cpu_cores} cores, {allocation.memory_mb} MiB on {provider_id}"
        )


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handles_errors
def release(obj: Context, job_id: str, as_json: bool) -> None:
    """Release what a job holds (idempotent)."""
    allocation = obj.fleet.ledger.release(job_id)
    if as_json:
        print_json(allocation.to_dict() if allocation else None)
    elif allocation is None:
        click.echo(f"{job_id}: nothing held (already released or never allocated)")
    else:
        click.echo(
            f"{job_id}: released {allocation.gpus} x {allocation.model}, {allocation.cpu_cores} cores, "
            f"{allocation.memory_mb} MiB on {allocation.provider_id}"
        )


@main.command()
@click.option("--provider", "provider_id", required=True)
@click.option("--model", required=True, help="GPU model (any spelling; canonicalised).")
@click.option("--count", type=click.IntRange(min=0), required=True, help="GPUs of that model that mine.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handles_errors
def mining(obj: Context, provider_id: str, model: str, count: int, as_json: bool) -> None:
    """Set how many idle GPUs of a model mine (rentals take them back when needed)."""
    obj.fleet.ledger.set_mining(provider_id, model, count)
    capacity = obj.fleet.ledger.get(provider_id)
    if as_json:
        print_json(capacity.to_dict())
    else:
        canonical = canonical_gpu_model(model)
        counts = capacity.to_dict()["gpus"][canonical]
        click.echo(f"{provider_id} {canonical}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@main.command("gpu-model")
@click.argument("names", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object raw name -> canonical.")
def gpu_model(names: tuple[str, ...], as_json: bool) -> None:
    """Print the canonical model name for each raw GPU name, one per line."""
    if as_json:
        print_json({name: canonical_gpu_model(name) for name in names})
    else:
        for name in names:
            click.echo(canonical_gpu_model(name))


if __name__ == "__main__":
    main()
