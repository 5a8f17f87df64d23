"""The ``worldland`` command: operators' view of and hand on the fleet. A thin adapter over the packages
below; one module per group of commands."""

from __future__ import annotations

import click

from worldland.cli import audit, capacity, listen, onboard, providers
from worldland.cli.common import Context, with_connection_options
from worldland.state.connection import (
    DEFAULT_REDIS_URL,
    KEY_PREFIX_ENV,
    REDIS_URL_ENV,
)
from worldland.state.keys import DEFAULT_PREFIX


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--redis-url",
    envvar=REDIS_URL_ENV,
    default=DEFAULT_REDIS_URL,
    show_default=True,
    help="Redis URL (redis://, rediss://, unix://, redis+sentinel://HOST:PORT[,...]/SERVICE); "
    f"env {REDIS_URL_ENV}. May also follow the command.",
)
@click.option(
    "--key-prefix",
    envvar=KEY_PREFIX_ENV,
    default=DEFAULT_PREFIX,
    show_default=True,
    help=f"Prefix of every Redis key of this deployment; env {KEY_PREFIX_ENV}. May also follow the command.",
)
@click.version_option(package_name="worldland")
@click.pass_context
def main(ctx: click.Context, redis_url: str, key_prefix: str) -> None:
    """Onboard and operate WorldLand GPU providers.

    The connection options (--redis-url, --key-prefix) go before or after the command.
    """
    source = ctx.get_parameter_source("key_prefix")
    named = KEY_PREFIX_ENV if source is click.core.ParameterSource.ENVIRONMENT else "--key-prefix"
    ctx.obj = Context(redis_url, key_prefix, named)


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
    main.add_command(with_connection_options(_command))


if __name__ == "__main__":
    main()
