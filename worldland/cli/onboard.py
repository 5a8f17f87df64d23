"""``worldland onboard``: one run of the onboarding playbook through ansible-runner, and the options
``worldland listen --onboard`` shares with it."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from worldland.cli.common import (
    KUBECONFIG_OPTION,
    Context,
    cell,
    console,
    echo,
    fail,
    handles_errors,
    print_json,
)
from worldland.control.logs import setup_logging
from worldland.control.onboard_runs import (
    DEFAULT_KEEP_RUNS,
    DEFAULT_PLAYBOOK,
    DEFAULT_RUNS_DIR,
    OnboardError,
    OnboardResult,
    OnboardSettings,
    checked,
    provider_hosts,
    record_failures,
    run_onboarding,
)

DEFAULT_INVENTORY = "inventory/worldland.yml"  # the repo's, when run from its root
DEFAULT_ANSIBLE_CONFIG = "ansible.cfg"  # likewise: what ansible-playbook run here would read
EXIT_HOST_FAILED = 2

RUNS_DIR_OPTION = click.option(
    "--runs-dir",
    envvar="WORLDLAND_RUNS_DIR",
    default=DEFAULT_RUNS_DIR,
    show_default=True,
    help="Where runs keep their artifacts (<dir>/artifacts/<run id>); env WORLDLAND_RUNS_DIR.",
)
KEEP_RUNS_OPTION = click.option(
    "--keep-runs",
    type=click.IntRange(1, 100_000),
    default=DEFAULT_KEEP_RUNS,
    show_default=True,
    help="Artifacts of this many runs are kept (the oldest are removed).",
)
ANSIBLE_CONFIG_OPTION = click.option(
    "--ansible-config",
    envvar="ANSIBLE_CONFIG",
    type=click.Path(dir_okay=False),
    help=f"ansible.cfg for the run [default: $ANSIBLE_CONFIG, else ./{DEFAULT_ANSIBLE_CONFIG} when here].",
)


def onboard_settings(
    obj: Context,
    inventories: tuple[str, ...],
    playbook: str,
    runs_dir: str,
    keep_runs: int,
    forks: int | None,
    ansible_config: str | None,
    kubeconfig: str | None,
) -> OnboardSettings:
    """The settings of a run, checked (one line and exit 1 for what is missing)."""
    if not inventories:
        if not Path(DEFAULT_INVENTORY).is_file():
            fail(f"no inventory: give --inventory (there is no {DEFAULT_INVENTORY} here)")
        inventories = (DEFAULT_INVENTORY,)
    if ansible_config is None and Path(DEFAULT_ANSIBLE_CONFIG).is_file():
        ansible_config = DEFAULT_ANSIBLE_CONFIG
    try:
        return checked(
            OnboardSettings(
                inventories=inventories,
                playbook=playbook,
                runs_dir=runs_dir,
                keep_runs=keep_runs,
                forks=forks,
                ansible_config=ansible_config,
                redis_url=obj.redis_url,
                key_prefix=obj.keys.prefix,
                kubeconfig=kubeconfig,
            )
        )
    except OnboardError as exc:
        fail(str(exc))


def print_result(result: OnboardResult) -> None:
    """Per host (host names come from providers: printed as text, never markup), then one line."""
    failed = result.failed_hosts
    summary = (
        f"{len(result.hosts)} host(s): {len(result.hosts) - len(failed)} succeeded, "
        f"{len(failed)} failed or unreachable; artifacts: {result.artifacts}"
    )
    if not result.hosts:
        echo(summary)
        return
    node_owner = {node: pid for pid, node in result.providers.items()}
    table = Table(title=cell(f"onboard run {result.run_id}: {result.status} (rc {result.rc})"))
    columns = ["host", *(["provider"] if node_owner else []), "ok", "changed", "failed", "unreachable"]
    for column in (*columns, "skipped", "result"):
        table.add_column(column)
    for name, host in sorted(result.hosts.items()):
        table.add_row(
            cell(name),
            *([cell(node_owner.get(name, ""))] if node_owner else []),
            cell(host.ok),
            cell(host.changed),
            cell(host.failed),
            cell(host.unreachable),
            cell(host.skipped),
            cell("ok" if host.succeeded else "FAILED"),
        )
    console().print(table)
    echo(summary)


@click.command()
@click.option(
    "--inventory",
    "inventories",
    multiple=True,
    help=f"Inventory file or directory for the worldland plugin (repeatable) [default: {DEFAULT_INVENTORY}].",
)
@click.option(
    "--playbook",
    default=DEFAULT_PLAYBOOK,
    show_default=True,
    help="A playbook file, or a collection playbook name.",
)
@click.option(
    "--provider",
    "provider_ids",
    multiple=True,
    help="Only this provider's host (repeatable) [default: every host the playbook targets].",
)
@RUNS_DIR_OPTION
@KEEP_RUNS_OPTION
@click.option("--forks", type=click.IntRange(1, 1000), help="Hosts in parallel [default: Ansible's].")
@ANSIBLE_CONFIG_OPTION
@KUBECONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the run's result as one JSON object.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@click.pass_obj
@handles_errors
def onboard(
    obj: Context,
    inventories: tuple[str, ...],
    playbook: str,
    provider_ids: tuple[str, ...],
    runs_dir: str,
    keep_runs: int,
    forks: int | None,
    ansible_config: str | None,
    kubeconfig: str | None,
    as_json: bool,
    log_level: str,
) -> None:
    """Run the onboarding playbook on the approved providers (or on those given).

    A log line (JSON, on stderr) per task result. Exit status 0 when every host succeeded, 2 when a host
    failed or was unreachable, 1 when the run could not start or failed before any host.
    """
    setup_logging(log_level)
    settings = onboard_settings(
        obj, inventories, playbook, runs_dir, keep_runs, forks, ansible_config, kubeconfig
    )
    hosts = provider_hosts(obj.fleet, dict.fromkeys(provider_ids)) if provider_ids else None
    try:
        result = run_onboarding(settings, hosts)
    except OnboardError as exc:
        fail(str(exc))
    record_failures(obj.fleet, result)
    if as_json:
        print_json(result.to_dict())
    elif result.succeeded or result.failed_hosts:  # else the error line says it all
        print_result(result)
    if result.succeeded:
        return
    if result.failed_hosts:
        sys.exit(EXIT_HOST_FAILED)
    fail(
        f"onboard run {result.run_id} failed ({result.status}, rc {result.rc}): {result.error}; "
        f"artifacts: {result.artifacts}"
    )
