"""``worldland listen``: the registration listener daemon."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import click

from worldland.cli.common import (
    KUBECONFIG_OPTION,
    STREAM_NAMESPACE_OPTION,
    Context,
    fail,
    handles_errors,
    load_policy,
)
from worldland.cli.onboard import ANSIBLE_CONFIG_OPTION, KEEP_RUNS_OPTION, RUNS_DIR_OPTION, onboard_settings
from worldland.control.listener import Listener, ListenerSettings
from worldland.control.logs import setup_logging
from worldland.control.onboard_queue import OnboardQueue, RetryPolicy, approved_onboarding
from worldland.control.onboard_runs import DEFAULT_PLAYBOOK
from worldland.domain.join import DEFAULT_TOKEN_TTL_S, MAX_TOKEN_TTL_S, MIN_TOKEN_TTL_S
from worldland.domain.policy import ApprovalPolicy, PolicyError
from worldland.protocol.streams import AGENT_RESPONSE_GROUPS, DEFAULT_GROUP
from worldland.state.connection import (
    redacted,
)

F = TypeVar("F", bound=Callable[..., Any])


def seconds_option(flag: str, default: float, help_text: str, minimum: float = 0.1) -> Callable[[F], F]:
    """An option of seconds (a float of at least ``minimum``), its default shown."""
    return click.option(
        flag, type=click.FloatRange(minimum), default=default, show_default=True, help=help_text
    )


@click.command()
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
@click.option(
    "--batch",
    type=click.IntRange(1, 10_000),
    default=500,
    show_default=True,
    help="Entries read per stream in one XREADGROUP (and claimed in one XAUTOCLAIM).",
)
@click.option(
    "--block-ms",
    type=click.IntRange(1, 60_000),
    default=1000,
    show_default=True,
    help="Milliseconds a read waits for new entries when the streams are idle (also how soon an idle "
    "listener notices SIGTERM and runs its interval work).",
)
@click.option(
    "--claim-idle-ms",
    type=click.IntRange(1000),
    default=60_000,
    show_default=True,
    help="Claim entries another consumer left pending this long.",
)
@seconds_option("--claim-interval", 30.0, "Seconds between looks for such entries.")
@seconds_option(
    "--reconcile-interval", 10.0, "Seconds between reconcile passes (tokens retried, Joined/Available)."
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Serve Prometheus metrics on this port (/metrics); 0, the default, serves none. The log says "
    "where they are served.",
)
@click.option(
    "--metrics-address",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics server binds (0.0.0.0 or :: for every interface).",
)
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
@click.option(
    "--onboard",
    "onboard_enabled",
    is_flag=True,
    help="Run the onboarding playbook (in the background, one run at a time) for providers that become "
    "Approved.",
)
@click.option(
    "--onboard-inventory",
    "onboard_inventories",
    multiple=True,
    help="With --onboard: inventory for the worldland plugin (repeatable) "
    "[default: inventory/worldland.yml].",
)
@click.option(
    "--onboard-playbook",
    default=DEFAULT_PLAYBOOK,
    show_default=True,
    help="With --onboard: the playbook each run runs (a file, or a collection playbook name).",
)
@click.option("--onboard-forks", type=click.IntRange(1, 1000), help="Hosts in parallel [default: Ansible's].")
@seconds_option(
    "--onboard-check-interval",
    10.0,
    "Seconds between looks for providers an operator approved (policy approvals: at once).",
)
@seconds_option(
    "--onboard-retry-delay",
    5.0,
    "Seconds before the first retry of a failed run; doubles per retry.",
    minimum=0.01,
)
@seconds_option(
    "--onboard-retry-max-delay", 300.0, "The longest wait between retries, seconds.", minimum=0.01
)
@click.option(
    "--onboard-retries",
    type=click.IntRange(0, 100),
    default=5,
    show_default=True,
    help="Retries of a failed run; then its providers wait for the next approval.",
)
@RUNS_DIR_OPTION
@KEEP_RUNS_OPTION
@ANSIBLE_CONFIG_OPTION
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Least severe level logged (JSON lines on stderr).",
)
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
    onboard_enabled: bool,
    onboard_inventories: tuple[str, ...],
    onboard_playbook: str,
    onboard_forks: int | None,
    onboard_check_interval: float,
    onboard_retry_delay: float,
    onboard_retry_max_delay: float,
    onboard_retries: int,
    runs_dir: str,
    keep_runs: int,
    ansible_config: str | None,
    log_level: str,
    stream_namespace: str,
) -> None:
    """Run the registration listener: registrations, heartbeats and capacity updates from Redis."""
    setup_logging(log_level)
    try:
        policy = load_policy(policy_path) if policy_path else ApprovalPolicy()
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
        onboard_check_every_s=onboard_check_interval,
    )
    queue = None
    if onboard_enabled:
        run_settings = onboard_settings(
            obj,
            onboard_inventories,
            onboard_playbook,
            runs_dir,
            keep_runs,
            onboard_forks,
            ansible_config,
            kubeconfig,
        )
        try:
            retry = RetryPolicy(
                onboard_retry_delay, max(onboard_retry_delay, onboard_retry_max_delay), onboard_retries
            )
        except ValueError as err:
            fail(f"--onboard-retry-*: {err}")
        queue = OnboardQueue(approved_onboarding(onboarding.fleet, run_settings), retry)
    listener = Listener(onboarding, settings, onboard=queue)
    listener.install_signal_handlers()
    if metrics_port:
        listener.metrics.count_providers(onboarding.fleet.store)
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
            "onboard": onboard_enabled,
            "redis": redacted(obj.redis_url),
        },
    )
    listener.run()
