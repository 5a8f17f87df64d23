"""The providers: ``status``, ``show``, ``approve``, ``reject``, ``reset``."""

from __future__ import annotations

import json

import click
from rich.table import Table

from worldland.cli.common import (
    KUBECONFIG_OPTION,
    STATUS_CHOICES,
    STREAM_NAMESPACE_OPTION,
    Context,
    _gpu_summary,
    cell,
    console,
    echo,
    fail,
    handles_errors,
    print_json,
)
from worldland.domain.lifecycle import Status


@click.command()
@click.option(
    "--status", "statuses", type=STATUS_CHOICES, multiple=True, help="Only these statuses (repeatable)."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of provider objects.")
@click.pass_obj
@handles_errors
def status(obj: Context, statuses: tuple[str, ...], as_json: bool) -> None:
    """List providers with their status, node, last heartbeat and GPUs."""
    wanted = [Status(s.lower()) for s in statuses] or None
    providers = obj.fleet.provider_views(wanted)
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


@click.command()
@click.argument("provider_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
@handles_errors
def show(obj: Context, provider_id: str, as_json: bool) -> None:
    """Show one provider in full."""
    provider = obj.fleet.provider_view(provider_id)
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
