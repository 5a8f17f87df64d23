"""What the ``worldland`` commands share: printing (never markup), errors as one line, the context
that opens Redis and Kubernetes, and the common options (the connection options on every command)."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

import click
import redis
from rich.console import Console
from rich.text import Text

from worldland.control.onboarding import Onboarding
from worldland.domain.join import DEFAULT_TOKEN_TTL_S, IN_CLUSTER
from worldland.domain.lifecycle import Status, TransitionError
from worldland.domain.policy import ApprovalPolicy, PolicyError
from worldland.protocol.streams import AGENT_RESPONSE_GROUPS, StreamNames
from worldland.state.connection import (
    connect,
    connection_error_message,
    redis_error_reason,
)
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys
from worldland.state.ledger import CapacityError
from worldland.state.providers import StoreError

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


# Not on a terminal (a pipe, a file) and no COLUMNS: tables are as wide as their content, a row per line,
# so that grep and awk see whole values.
UNWRAPPED_WIDTH = 10_000


def cell_lines(lines: Iterable[Any]) -> Text:
    """A cell of several lines, each as ``cell`` makes it (a newline inside a value is shown escaped)."""
    return Text("\n".join(plain(line) for line in lines))


def console(*, wide: bool = False) -> Console:
    """The console tables print on. Markup, emoji codes and highlighting are off: everything printed
    is data (cells are Text objects as well, so a str passed by mistake still prints literally).

    On a terminal it is the terminal's width; ``wide`` (``--wide``), or stdout not a terminal with no
    ``COLUMNS`` set, lets tables take the width their content needs."""
    width = None
    if wide or (not sys.stdout.isatty() and not os.environ.get("COLUMNS", "").isdigit()):
        width = UNWRAPPED_WIDTH
    return Console(markup=False, emoji=False, highlight=False, width=width)


def age_text(seconds: float | None) -> str:
    """``12 s ago``, ``5 min ago``, ``3 h ago``, ``2 d ago``; ``never`` for None. Seconds up to 3 min, so
    that a heartbeat near the 120 s staleness threshold reads exactly."""
    if seconds is None:
        return "never"
    whole = int(seconds)
    if whole < 180:
        return f"{whole} s ago"
    if whole < 2 * 3600:
        return f"{whole // 60} min ago"
    if whole < 2 * 86400:
        return f"{whole // 3600} h ago"
    return f"{whole // 86400} d ago"


class Context:
    """The connection the command works on: the group's ``--redis-url``/``--key-prefix``, or the same
    options given after the command (``with_connection_options``). The key prefix is checked when a
    command first needs Redis, so one given after the command can correct one from the environment."""

    def __init__(self, redis_url: str, key_prefix: str, key_prefix_source: str = "--key-prefix") -> None:
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.key_prefix_source = key_prefix_source  # the option or variable an error names
        self._keys: Keys | None = None
        self._fleet: Fleet | None = None

    def use(self, redis_url: str | None, key_prefix: str | None) -> None:
        """The connection options given after the command: they win over those before it."""
        if redis_url is not None:
            self.redis_url = redis_url
        if key_prefix is not None:
            self.key_prefix, self.key_prefix_source = key_prefix, "--key-prefix"
        self._keys = self._fleet = None

    @property
    def keys(self) -> Keys:
        if self._keys is None:
            try:
                self._keys = Keys(self.key_prefix)
            except ValueError as exc:
                fail(f"{self.key_prefix_source}: {str(exc).removeprefix('key_prefix: ')}")
        return self._keys

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

            cluster = KubeClient.open(kubeconfig, join_endpoint=join_endpoint)
        return Onboarding(
            fleet=self.fleet,
            streams=StreamNames(stream_namespace),
            policy=policy or ApprovalPolicy(),
            cluster=cluster,
            token_ttl_s=token_ttl_s,
            agent_groups=agent_groups,
        )


class KubeconfigParam(click.Path):
    """A kubeconfig file that exists, or ``in-cluster``: the pod's own service account."""

    def __init__(self) -> None:
        super().__init__(exists=True, dir_okay=False)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == IN_CLUSTER:
            return value
        return super().convert(value, param, ctx)


KUBECONFIG_OPTION = click.option(
    "--kubeconfig",
    envvar="WORLDLAND_KUBECONFIG",
    type=KubeconfigParam(),
    help=f"Kubeconfig for the cluster providers join, or {IN_CLUSTER} for the pod's service account (its "
    "token read again when the kubelet rotates it) (env WORLDLAND_KUBECONFIG).",
)
STREAM_NAMESPACE_OPTION = click.option(
    "--stream-namespace", default="", hidden=True, help="Prefix of the stream names (tests only)."
)


def with_connection_options(command: click.Command) -> click.Command:
    """``command`` accepts ``--redis-url`` and ``--key-prefix`` too, so that they may also follow it
    (``worldland status --redis-url URL``); given there, they win over those given before it."""
    if any(param.name == "connection_redis_url" for param in command.params):
        return command  # (already given them)
    command.params += [
        click.Option(
            ["--redis-url", "connection_redis_url"],
            metavar="URL",
            help="As `worldland --redis-url`, which it overrides (either place works).",
        ),
        click.Option(
            ["--key-prefix", "connection_key_prefix"],
            metavar="PREFIX",
            help="As `worldland --key-prefix`, which it overrides (either place works).",
        ),
    ]
    callback = command.callback
    assert callback is not None

    @functools.wraps(callback)
    def with_connection(
        *args: Any, connection_redis_url: str | None, connection_key_prefix: str | None, **kwargs: Any
    ) -> Any:
        obj = click.get_current_context().find_object(Context)
        if obj is not None:
            obj.use(connection_redis_url, connection_key_prefix)
        return callback(*args, **kwargs)

    command.callback = with_connection
    return command


def load_policy(path: str) -> ApprovalPolicy:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"policy {path}: cannot read: {exc.strerror}") from None
    return ApprovalPolicy.from_yaml(text, source=path)


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
