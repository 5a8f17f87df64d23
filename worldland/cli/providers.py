"""The providers: ``status``, ``show``, ``approve``, ``reject``, ``reset``."""

from __future__ import annotations

import click

from worldland.cli.common import (
    KUBECONFIG_OPTION,
    STATUS_CHOICES,
    STREAM_NAMESPACE_OPTION,
    Context,
    console,
    echo,
    fail,
    handles_errors,
    print_json,
)
from worldland.cli.render import fleet_view, provider_view
from worldland.cli.watch import DEFAULT_WATCH_INTERVAL_S, watch_fleet
from worldland.control.overview import fleet_overview
from worldland.domain.lifecycle import Status

APPROVED_WITHOUT_KUBERNETES = (
    "approved, but no join token sent: no Kubernetes access here (--kubeconfig); "
    "a listener started with --kubeconfig sends it on its next reconcile pass"
)


@click.command()
@click.option(
    "--status", "statuses", type=STATUS_CHOICES, multiple=True, help="Only these statuses (repeatable)."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of provider objects.")
@click.option("--wide", is_flag=True, help="More columns (public IP, last error), full values and times.")
@click.option(
    "--watch",
    is_flag=True,
    help="Refresh the table until Ctrl-C (live on a terminal; elsewhere a snapshot per interval).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=DEFAULT_WATCH_INTERVAL_S,
    show_default=True,
    help="With --watch: seconds between refreshes.",
)
@click.option("--count", type=click.IntRange(min=1), help="With --watch: stop after this many refreshes.")
@click.pass_obj
@handles_errors
def status(
    obj: Context,
    statuses: tuple[str, ...],
    as_json: bool,
    wide: bool,
    watch: bool,
    interval: float,
    count: int | None,
) -> None:
    """List providers: status, node, GPUs per model (free / in use / mining), heartbeat age.

    Above the table: how many providers are in each state, and the GPUs per model; under it, the
    providers' last errors. --json prints the provider objects instead (machine output).
    """
    ctx = click.get_current_context()
    if watch and as_json:
        raise click.UsageError(
            "--watch draws a live table and --json prints the provider objects once: give one of them "
            "(for JSON over time, run `worldland status --json` on a schedule)",
            ctx,
        )
    if not watch:
        for name in ("interval", "count"):
            if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE:
                raise click.UsageError(f"--{name} goes with --watch", ctx)
    wanted = [Status(s.lower()) for s in statuses] or None
    if watch:
        watch_fleet(obj, wanted, wide=wide, interval_s=interval, count=count)
        return
    if as_json:
        print_json(obj.fleet.provider_views(wanted))
        return
    console(wide=wide).print(fleet_view(fleet_overview(obj.fleet, wanted), wide=wide))


@click.command()
@click.argument("provider_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--wide", is_flag=True, help="Every field, full times, every GPU detail.")
@click.pass_obj
@handles_errors
def show(obj: Context, provider_id: str, as_json: bool, wide: bool) -> None:
    """Show one provider in full: its record, capacity, spec and last heartbeat."""
    provider = obj.fleet.provider_view(provider_id)
    if as_json:
        print_json(provider)
        return
    console(wide=wide).print(provider_view(provider, obj.fleet.store.clock(), wide=wide))


@click.command()
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

    Without --kubeconfig only the approval is stored: no token is sent from here. A listener that has
    Kubernetes access (`worldland listen --kubeconfig`) sends it on its next reconcile pass; a listener
    without it cannot, and the provider waits.
    """
    onboarding = obj.onboarding(kubeconfig, join_endpoint=join_endpoint, stream_namespace=stream_namespace)
    if onboarding.approve(provider_id):
        echo(f"{provider_id}: approved; join token sent")
    elif kubeconfig:
        error = obj.fleet.store.require(provider_id).last_error
        fail(f"{provider_id}: approved, but no join token yet ({error}); the listener retries")
    else:
        echo(f"{provider_id}: {APPROVED_WITHOUT_KUBERNETES}")


@click.command()
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


@click.command()
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
