"""The ``worldland`` command: operators' view of and hand on the fleet. A thin adapter over the packages
below; one module per group of commands."""

from __future__ import annotations

import click

from worldland.cli import audit, capacity, listen, onboard, providers
from worldland.cli.common import (
    Context,
    fail,
)
from worldland.state.connection import (
    DEFAULT_REDIS_URL,
    KEY_PREFIX_ENV,
    REDIS_URL_ENV,
)
from worldland.state.keys import DEFAULT_PREFIX, Keys


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


for _command in (
    providers.status,
    providers.show,
    providers.approve,
    providers.reject,
    providers.reset,
    listen.listen,
    onboard.onboard,
    audit.audit,
    capacity.allocate,
    capacity.release,
    capacity.mining,
    capacity.gpu_model,
):
    main.add_command(_command)


if __name__ == "__main__":
    main()
