"""The ``worldland`` command: operators' view of and hand on the fleet. A thin adapter over ``Fleet``."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click
import redis
from rich.console import Console
from rich.table import Table
from rich.text import Text

from worldland.audit import Audit, AuditSettings
from worldland.capacity import CapacityError
from worldland.config import (
    DEFAULT_REDIS_URL,
    KEY_PREFIX_ENV,
    REDIS_URL_ENV,
    connect,
    connection_error_message,
    redacted,
    redis_error_reason,
)
from worldland.fleet import Fleet
from worldland.keys import DEFAULT_PREFIX, Keys
from worldland.lifecycle import Status, TransitionError
from worldland.listener import Listener, ListenerSettings
from worldland.logs import setup_logging
from worldland.names import canonical_gpu_model
from worldland.onboarding import DEFAULT_TOKEN_TTL_S, MAX_TOKEN_TTL_S, MIN_TOKEN_TTL_S, Onboarding
from worldland.policy import ApprovalPolicy, PolicyError
from worldland.store import StoreError
from worldland.streams import AGENT_RESPONSE_GROUPS, DEFAULT_GROUP, StreamNames

STATUS_CHOICES = click.Choice([s.value for s in Status], case_sensitive=False)


def plain(value: Any) -> str:
    """``value`` as text that cannot drive the terminal: control and other unprintable characters
    (ESC, CR, bidi overrides, ...) are shown escaped (``\\x1b``). Provider-supplied strings are free text."""
    text = "" if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def one_line(message: str) -> str:
    """``message`` on one line: its lines joined by spaces, nothing unprintable left."""
    return plain(" ".join(part.strip() for part in message.splitlines() if part.strip()))


def echo(message: str) -> None:
    """Print a line of text (never markup) on stdout."""
    click.echo(one_line(message))


def fail(message: str) -> NoReturn:
    """The CLI's error convention: ``worldland: <what is wrong>``, one line on stderr, exit status 1."""
    click.echo(f"worldland: {one_line(message)}", err=True)
    sys.exit(1)


def cell(value: Any) -> Text:
    """A table cell holding ``value`` as literal text: rich markup in it (``[/]``, ``[link=...]``) is
    shown, never interpreted; unprintable characters are escaped."""
    return Text(plain(value))


def console() -> Console:
    """The console tables print on. Markup, emoji codes and highlighting are off: everything printed
    is data (cells are Text objects as well, so a str passed by mistake still prints literally)."""
    return Console(markup=False, emoji=False, highlight=False)


class Context:
    def __init__(self, redis_url: str, keys: Keys) -> None:
        self.redis_url = redis_url
        self.keys = keys
        self._fleet: Fleet | None = None

    @property
    def fleet(self) -> Fleet:
        if self._fleet is None:
            self._fleet = Fleet.open(connect(self.redis_url), self.keys)
        return self._fleet

    def onboarding(
        self,
        kubeconfig: str | None,
        policy: ApprovalPolicy | None = None,
        join_endpoint: str | None = None,
        token_ttl_s: int = DEFAULT_TOKEN_TTL_S,
        stream_namespace: str = "",
        agent_groups: tuple[str, ...] = AGENT_RESPONSE_GROUPS,
    ) -> Onboarding:
        cluster = None
        if kubeconfig:
            from worldland.kube import KubeClient

            cluster = KubeClient.from_kubeconfig(kubeconfig, join_endpoint=join_endpoint)
        return Onboarding(
            fleet=self.fleet,
            streams=StreamNames(stream_namespace),
            policy=policy or ApprovalPolicy(),
            cluster=cluster,
            token_ttl_s=token_ttl_s,
            agent_groups=agent_groups,
        )


KUBECONFIG_OPTION = click.option(
    "--kubeconfig",
    envvar="WORLDLAND_KUBECONFIG",
    type=click.Path(exists=True, dir_okay=False),
    help="Kubeconfig for the cluster providers join (env WORLDLAND_KUBECONFIG).",
)
STREAM_NAMESPACE_OPTION = click.option(
    "--stream-namespace", default="", hidden=True, help="Prefix of the stream names (tests only)."
)


def _is_kube_error(exc: BaseException) -> bool:
    kube = sys.modules.get("worldland.kube")  # imported only by commands that talk to Kubernetes
    return kube is not None and isinstance(exc, kube.KubeError)


def handles_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn domain, connection and Kubernetes errors into one line on stderr and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context().find_object(Context)
        try:
            return command(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            fail(
                connection_error_message(ctx.redis_url, exc)
                if ctx
                else f"cannot reach Redis: {redis_error_reason(exc)}"
            )
        except redis.RedisError as exc:
            fail(f"Redis error: {redis_error_reason(exc)}")
        except (StoreError, TransitionError, CapacityError, ValueError) as exc:
            fail(str(exc))
        except Exception as exc:
            if _is_kube_error(exc):
                fail(f"Kubernetes: {exc}")
            raise

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
    try:
        keys = Keys(key_prefix)
    except ValueError as exc:
        source = ctx.get_parameter_source("key_prefix")
        option = KEY_PREFIX_ENV if source is click.core.ParameterSource.ENVIRONMENT else "--key-prefix"
        fail(f"{option}: {str(exc).removeprefix('key_prefix: ')}")
    ctx.obj = Context(redis_url, keys)


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
            cell(p["provider_id"]),
            cell(p["status"]),
            cell(p["node_name"]),
            cell(p["public_ip"]),
            cell(p["last_heartbeat"] or "never"),
            cell(_gpu_summary(p["capacity"])),
        )
    console().print(table)


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
    table = Table(show_header=False, title=cell(provider_id))
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in provider.items():
        text = json.dumps(value) if isinstance(value, dict | list) else value
        table.add_row(cell(key), cell(text))
    console().print(table)


@main.command()
@click.argument("provider_id")
@KUBECONFIG_OPTION
@click.option("--join-endpoint", help="HOST:PORT providers join (default: the kubeconfig's server).")
@STREAM_NAMESPACE_OPTION
@click.pass_obj
@handles_errors
def approve(
    obj: Context, provider_id: str, kubeconfig: str | None, join_endpoint: str | None, stream_namespace: str
) -> None:
    """Approve a pending provider and send its join token.

    Without --kubeconfig the provider is approved and the running listener issues the token.
    """
    onboarding = obj.onboarding(kubeconfig, join_endpoint=join_endpoint, stream_namespace=stream_namespace)
    if onboarding.approve(provider_id):
        echo(f"{provider_id}: approved; join token sent")
    elif kubeconfig:
        error = obj.fleet.store.require(provider_id).last_error
        fail(f"{provider_id}: approved, but no join token yet ({error}); the listener retries")
    else:
        echo(f"{provider_id}: approved; the listener sends the join token")


@main.command()
@click.argument("provider_id")
@click.option("--reason", required=True, help="Why; the provider is told.")
@KUBECONFIG_OPTION
@STREAM_NAMESPACE_OPTION
@click.pass_obj
@handles_errors
def reject(
    obj: Context, provider_id: str, reason: str, kubeconfig: str | None, stream_namespace: str
) -> None:
    """Reject a pending (or revoke an approved) provider, and tell it why.

    A revoked provider's join token is deleted (with --kubeconfig at once, else by the listener's
    next reconcile). It stays rejected until `worldland approve` or `worldland reset`.
    """
    onboarding = obj.onboarding(kubeconfig, stream_namespace=stream_namespace)
    onboarding.reject(provider_id, reason)
    queued = obj.fleet.client.scard(obj.keys.revoked_tokens)
    if queued:
        echo(f"{provider_id}: rejected; {queued} revoked join token(s) wait for the listener's reconcile")
    else:
        echo(f"{provider_id}: rejected")


@main.command()
@click.argument("provider_id")
@STREAM_NAMESPACE_OPTION
@click.pass_obj
@handles_errors
def reset(obj: Context, provider_id: str, stream_namespace: str) -> None:
    """Give a rejected provider a fresh start: Rejected -> Pending.

    Its next registration is judged by the policy as a new one would be.
    """
    obj.onboarding(None, stream_namespace=stream_namespace).reset(provider_id)
    echo(f"{provider_id}: pending; its next registration is judged afresh")


@main.command()
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Approval policy YAML (default: manual approval, public addresses only).",
)
@KUBECONFIG_OPTION
@click.option("--join-endpoint", help="HOST:PORT providers join (default: the kubeconfig's server).")
@click.option(
    "--token-ttl",
    type=click.IntRange(MIN_TOKEN_TTL_S // 60, MAX_TOKEN_TTL_S // 60),
    default=DEFAULT_TOKEN_TTL_S // 60,
    show_default=True,
    help="Join token lifetime, minutes.",
)
@click.option("--group", default=DEFAULT_GROUP, show_default=True, help="Consumer group.")
@click.option("--consumer", default="", help="Consumer name [default: host-pid].")
@click.option("--batch", type=click.IntRange(1, 10_000), default=500, show_default=True)
@click.option("--block-ms", type=click.IntRange(1, 60_000), default=1000, show_default=True)
@click.option(
    "--claim-idle-ms",
    type=click.IntRange(1000),
    default=60_000,
    show_default=True,
    help="Claim entries another consumer left pending this long.",
)
@click.option(
    "--claim-interval",
    type=click.FloatRange(0.1),
    default=30.0,
    show_default=True,
    help="Seconds between looks for such entries.",
)
@click.option(
    "--reconcile-interval",
    type=click.FloatRange(0.1),
    default=10.0,
    show_default=True,
    help="Seconds between reconcile passes (tokens retried, Joined/Available).",
)
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=0, help="Serve Prometheus metrics.")
@click.option("--metrics-address", default="127.0.0.1", show_default=True)
@click.option(
    "--max-deliveries",
    type=click.IntRange(1, 1000),
    default=5,
    show_default=True,
    help="Dead-letter an entry delivered this often without being acknowledged (it stops listeners).",
)
@click.option(
    "--agent-group",
    "agent_groups",
    multiple=True,
    default=AGENT_RESPONSE_GROUPS,
    show_default=True,
    help="Consumer group an agent reads its answers with; created before the first answer (repeatable).",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@STREAM_NAMESPACE_OPTION
@click.pass_obj
@handles_errors
def listen(
    obj: Context,
    policy_path: str | None,
    kubeconfig: str | None,
    join_endpoint: str | None,
    token_ttl: int,
    group: str,
    consumer: str,
    batch: int,
    block_ms: int,
    claim_idle_ms: int,
    claim_interval: float,
    reconcile_interval: float,
    max_deliveries: int,
    agent_groups: tuple[str, ...],
    metrics_port: int,
    metrics_address: str,
    log_level: str,
    stream_namespace: str,
) -> None:
    """Run the registration listener: registrations, heartbeats and capacity updates from Redis."""
    setup_logging(log_level)
    try:
        policy = ApprovalPolicy.load(policy_path) if policy_path else ApprovalPolicy()
    except PolicyError as err:
        fail(str(err))
    onboarding = obj.onboarding(
        kubeconfig, policy, join_endpoint, token_ttl * 60, stream_namespace, tuple(agent_groups)
    )
    settings = ListenerSettings(
        group=group,
        consumer=consumer,
        batch=batch,
        block_ms=block_ms,
        claim_idle_ms=claim_idle_ms,
        claim_every_s=claim_interval,
        reconcile_every_s=reconcile_interval,
        max_deliveries=max_deliveries,
    )
    listener = Listener(onboarding, settings)
    listener.install_signal_handlers()
    if metrics_port:
        try:
            listener.serve_metrics(metrics_port, metrics_address)
        except OSError as exc:
            fail(f"cannot serve metrics on {metrics_address}:{metrics_port}: {exc.strerror or exc}")
    logging.getLogger("worldland.listener").info(
        "listening",
        extra={
            "group": group,
            "consumer": listener.settings.consumer,
            "policy": policy.mode.value,
            "kubernetes": bool(kubeconfig),
            "redis": redacted(obj.redis_url),
        },
    )
    listener.run()


@main.command()
@click.option(
    "--stale-after",
    type=click.FloatRange(min=1),
    help="Offline after more than this many seconds without a heartbeat [default: 120].",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    help="Seconds after approval before a provider that never beat goes Offline [default: 1800].",
)
@click.option(
    "--max-offline-fraction",
    type=click.FloatRange(0, 1, min_open=True),
    help="Refuse to mark more than this share of the live fleet Offline in one pass [default: 0.5].",
)
@click.option(
    "--config",
    "config_path",
    envvar="WORLDLAND_CONFIG",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML file whose 'audit:' section sets these (flags win); env WORLDLAND_CONFIG.",
)
@KUBECONFIG_OPTION
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="warning")
@click.pass_obj
@handles_errors
def audit(
    obj: Context,
    stale_after: float | None,
    grace: float | None,
    max_offline_fraction: float | None,
    config_path: str | None,
    kubeconfig: str | None,
    dry_run: bool,
    as_json: bool,
    log_level: str,
) -> None:
    """One heartbeat audit pass: stale providers go Offline (node labelled and tainted), returning ones
    come back, ready Joined nodes become Available. Safe to run from cron on several hosts at once.

    Exit 0 when the pass completed (or another pass held the lock), 1 on errors. Without
    --kubeconfig only Redis changes; node label/taint writes stay pending for a pass that has one.
    """
    setup_logging(log_level)
    settings = AuditSettings.load(
        config_path, stale_after=stale_after, grace=grace, max_offline_fraction=max_offline_fraction
    )
    from worldland.kube import KubeError

    try:
        onboarding = obj.onboarding(kubeconfig)
    except KubeError as exc:
        fail(f"Kubernetes: {exc}")
    report = Audit(onboarding, settings).run(dry_run=dry_run)
    if as_json:
        print_json(report.to_dict())
    else:
        echo(report.summary())
        for line in report.details:
            click.echo(f"  {one_line(line)}")
    for error in report.errors:
        click.echo(f"worldland audit: error: {one_line(error)}", err=True)
    if report.errors:
        sys.exit(1)


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
        echo(
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
        echo(f"{job_id}: nothing held (already released or never allocated)")
    else:
        echo(
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
    obj.fleet.store.require(provider_id)  # one line naming an unknown provider
    canonical = canonical_gpu_model(model)
    offered = obj.fleet.ledger.get(provider_id).to_dict()["gpus"]
    if model.strip() and canonical not in offered:  # (an empty name: the ledger says what is wrong)
        models = ", ".join(sorted(offered)) or "none"
        fail(f"provider {provider_id!r} has no {canonical} GPUs (its models: {models})")
    capacity = obj.fleet.ledger.set_mining(provider_id, model, count)
    if as_json:
        print_json(capacity.to_dict())
    else:
        counts = capacity.to_dict()["gpus"].get(canonical, {})
        echo(f"{provider_id} {canonical}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@main.command("gpu-model")
@click.argument("names", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object raw name -> canonical.")
def gpu_model(names: tuple[str, ...], as_json: bool) -> None:
    """Print the canonical model name for each raw GPU name, one per line."""
    if as_json:
        print_json({name: canonical_gpu_model(name) for name in names})
    else:
        for name in names:
            echo(canonical_gpu_model(name))


if __name__ == "__main__":
    main()
