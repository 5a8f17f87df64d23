"""``worldland-provider``: the provider agent's command (``worldland.agent``). It imports only what
``pip install worldland`` brings (protocol, domain, agent), never the control plane."""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click
import redis

from worldland.agent.config import ENVIRONMENT, AgentSettings, SettingsError, load_settings
from worldland.agent.discovery import discover
from worldland.agent.install import apply, plan
from worldland.agent.join import join
from worldland.agent.registration import Outcome, build_message, checked, register
from worldland.agent.runner import Runner
from worldland.agent.wire import AgentWire, connect, unreachable
from worldland.protocol.messages import MessageError, RegistrationResponse
from worldland.protocol.streams import StreamNames

DEFAULT_STATE_DIR = Path("/var/lib/worldland")
EXIT_CODES = """Exit codes: 0 approved (or already joined/available), 10 pending (waiting for an
operator), 11 rejected (the answer says why), 12 no answer in time, 13 Redis unreachable, 2 a setting
is not valid."""


STATE_DIR_OPTION = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Where run keeps the last answer's status (never a token).",
)


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"worldland-provider: {' '.join(message.split())}", err=True)
    sys.exit(code)


def price_flag(text: str) -> tuple[str, float]:
    model, sep, price = text.rpartition("=")
    try:
        if not sep or not model.strip():
            raise ValueError
        return model.strip(), float(price)
    except ValueError:
        fail(f"--gpu-price: {text!r} is not MODEL=PRICE (e.g. 'RTX 4090=0.45')", int(Outcome.INVALID))


def settings_of(ctx: click.Context, *, must_exist: bool = True, persist_id: bool = True) -> AgentSettings:
    """The settings, read when the command needs them (``SettingsError`` names a bad one)."""
    root = ctx.find_root()
    if not isinstance(root.obj, AgentSettings):
        config, flags = root.meta["settings_source"]
        root.obj = load_settings(config, flags, must_exist=must_exist, persist_id=persist_id)
    return root.obj


def handles_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except SettingsError as exc:
            fail(str(exc), int(Outcome.INVALID))
        except MessageError as exc:
            fail(f"the registration would be refused: {exc}", int(Outcome.INVALID))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            loaded = click.get_current_context().find_root().obj
            url = loaded.redis_url if isinstance(loaded, AgentSettings) else "the configured Redis"
            fail(str(unreachable(url, exc)), int(Outcome.REDIS_UNREACHABLE))

    return wrapper


def answer_dict(answer: RegistrationResponse, show_token: bool) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(answer.to_wire())
    if not show_token:
        for secret in ("join_token", "join_command"):
            if secret in data:
                data[secret] = "<hidden: --show-token>"
    return data


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML settings [default: /etc/worldland/provider.yml].",
)
@click.option(
    "--provider-id", help=f"env {ENVIRONMENT['provider_id']}; default: a UUID kept next to the config."
)
@click.option("--wallet-addr", help=f"env {ENVIRONMENT['wallet_addr']}.")
@click.option("--redis-url", help=f"env {ENVIRONMENT['redis_url']}.")
@click.option("--public-ip", help=f"env {ENVIRONMENT['public_ip']}; default: the default route's address.")
@click.option("--heartbeat-interval", type=float, help=f"seconds; env {ENVIRONMENT['heartbeat_interval']}.")
@click.option(
    "--data-path", type=click.Path(path_type=Path), help=f"disk figures of; env {ENVIRONMENT['data_path']}."
)
@click.option(
    "--gpu-price",
    "gpu_prices",
    multiple=True,
    metavar="MODEL=PRICE",
    help="Price per GPU hour of a model, any spelling (repeatable; the config's gpu_prices_per_hour).",
)
@click.option("--stream-namespace", default="", hidden=True, help="Prefix of the stream names (tests only).")
@click.version_option(package_name="worldland")
@click.pass_context
def main(
    ctx: click.Context,
    /,
    config: Path | None,
    stream_namespace: str,
    gpu_prices: tuple[str, ...],
    **flags: Any,
) -> None:
    """Register this machine with the WorldLand network and keep it heartbeating."""
    if gpu_prices:
        flags["gpu_prices_per_hour"] = dict(price_flag(p) for p in gpu_prices)
    ctx.meta["settings_source"] = (config, flags)
    ctx.meta["config_path"] = config
    ctx.meta["streams"] = StreamNames(stream_namespace)


@main.command("discover")
@click.option("--json", "as_json", is_flag=True, help="Print the spec as the registration carries it.")
@click.pass_context
@handles_errors
def discover_command(ctx: click.Context, as_json: bool) -> None:
    """What this machine is, as the registration will say it."""
    settings = settings_of(ctx)
    facts = discover(settings.public_ip, settings.data_path)
    if facts.gpus.warning:
        click.echo(f"worldland-provider: warning: {facts.gpus.warning}", err=True)
    spec = facts.spec()
    if as_json:
        click.echo(json.dumps(spec, indent=2))
        return
    for key, value in spec.items():
        if key != "gpus":
            click.echo(f"{key}: {value}")
    for gpu in facts.gpus.devices:
        click.echo(
            f"gpu {gpu.index}: {gpu.name}, {gpu.memory_mb} MiB, driver {gpu.driver_ver}, {gpu.pci_bus_id}"
        )


@main.command("register", epilog=EXIT_CODES)
@click.option(
    "--timeout", type=click.FloatRange(1, 3600), default=60, show_default=True, help="Seconds to wait."
)
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@click.option("--show-token", is_flag=True, help="Print the join token too (never logged).")
@click.pass_context
@handles_errors
def register_command(ctx: click.Context, timeout: float, as_json: bool, show_token: bool) -> None:
    """Register this machine and wait for the listener's answer."""
    settings = settings_of(ctx)
    facts = discover(settings.public_ip, settings.data_path)
    if facts.gpus.warning:
        click.echo(f"worldland-provider: warning: {facts.gpus.warning}", err=True)
    message = build_message(settings, facts)
    checked(message)
    client = connect(settings.redis_url)
    try:
        result = register(AgentWire(client, settings.provider_id, ctx.meta["streams"]), message, timeout)
    finally:
        client.close()
    if result.answer is None:
        fail(f"no answer within {timeout:.0f} s (is the listener running?)", int(Outcome.TIMEOUT))
    answer = result.answer
    if as_json:
        click.echo(json.dumps(answer_dict(answer, show_token), indent=2))
    else:
        click.echo(f"{answer.status.value}: {' '.join(answer.message.split())}")
        if answer.node_name:
            click.echo(f"node name: {answer.node_name}")
        if answer.join_token and show_token:
            click.echo(f"join token: {answer.join_token}")
    sys.exit(int(result.outcome))


@main.command("run")
@STATE_DIR_OPTION
@click.option(
    "--auto-join", is_flag=True, help="Run kubeadm join once approved (off: onboarding runs onboard.yml)."
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@click.pass_context
@handles_errors
def run_command(ctx: click.Context, state_dir: Path, auto_join: bool, log_level: str) -> None:
    """Register when there is no answer yet, then heartbeat every interval. SIGTERM stops it (exit 0)."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_of(ctx)
    settings.require_wallet()
    runner = Runner(settings, state_dir=state_dir, auto_join=auto_join, names=ctx.meta["streams"])

    def stop(_signum: int, _frame: FrameType | None) -> None:
        runner.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.exit(runner.run())


@main.command("join")
@click.option(
    "--answer",
    "answer_file",
    type=click.File("r"),
    required=True,
    help="The approved answer as JSON ('-': stdin).",
)
@handles_errors
def join_command(answer_file: Any) -> None:
    """kubeadm join from an approved answer's endpoint, token, CA hash and node name (no shell)."""
    try:
        answer = RegistrationResponse.model_validate_json(answer_file.read())
        result = join(answer)
    except ValueError as exc:
        fail(f"answer: {exc}", int(Outcome.INVALID))
    click.echo(result.summary)
    sys.exit(0 if result.joined or result.skipped else 1)


@main.command("install")
@click.option("--dry-run", is_flag=True, help="Print what would be written; write nothing.")
@STATE_DIR_OPTION
@click.option(
    "--unit-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/etc/systemd/system"),
    show_default=True,
)
@click.pass_context
@handles_errors
def install_command(ctx: click.Context, dry_run: bool, state_dir: Path, unit_dir: Path) -> None:
    """Write the config (0600) and a systemd unit for `run`, enable and start it. Idempotent."""
    settings = settings_of(ctx, must_exist=False, persist_id=not dry_run)
    settings.require_wallet()
    config = ctx.meta.get("config_path") or Path("/etc/worldland/provider.yml")
    executable = str(Path(sys.argv[0]).resolve())
    values = json.loads(settings.model_dump_json())
    files = plan(config, values, executable, state_dir, unit_dir)
    changed = apply(files, dry_run=dry_run)
    for planned in files:
        verb = ("would write" if dry_run else "wrote") if planned.path in changed else "unchanged"
        click.echo(f"{verb}: {planned.path} (mode {planned.mode:o})")
        if dry_run and planned.path in changed:
            click.echo(planned.content)


if __name__ == "__main__":
    main()
