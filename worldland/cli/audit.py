"""``worldland audit``: one heartbeat audit pass."""

from __future__ import annotations

import sys

import click

from worldland.cli.common import (
    KUBECONFIG_OPTION,
    Context,
    echo,
    fail,
    handles_errors,
    one_line,
    print_json,
)
from worldland.control.audit import Audit, AuditSettings
from worldland.control.logs import setup_logging


@click.command()
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
