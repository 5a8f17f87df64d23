"""Onboarding runs: the onboarding playbook (default ``worldland.provider.onboard``) through ansible-runner.

A thin driver over ``ansible_runner.run``. Each run gets a fresh private data dir under the runs dir
(removed after the run) and keeps its artifacts in ``<runs dir>/artifacts/<run id>``; ansible-runner
rotates those, keeping the newest ``keep_runs``. Nothing is written to the private data dir's ``env/``
(``suppress_env_files``), and the environment ansible-runner copies into the ``command`` artifact is
removed from it after the run (it holds the Redis URL, credentials included).

Provider data is hostile (DESIGN.md): it reaches the play only through the inventory plugin, which marks
it unsafe, never as extra vars (those are rendered). The extra vars here carry only what this module
made or checked: the run id and provider ids that match the id pattern; the limit is node names, which
the core makes (RFC 1123 labels).

Each task result (ok, failed, unreachable, skipped) and the run's stats become one JSON log line on
``worldland.onboard``; a result that no_log censored gives host, task and status only. ansible-core 2.19
prints a failed no_log task's error message (``[ERROR]: Task failed: Action failed: <msg>``) although it
censors the result: the event handler replaces the ``stdout`` of every censored event before
ansible-runner writes it (the event's file and the ``stdout`` artifact are both written from the event
the handler was given), so that text is in no artifact.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import sysconfig
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worldland.control.onboarding import error_line
from worldland.domain.lifecycle import Status
from worldland.domain.names import is_node_name
from worldland.protocol.ids import ID_RULE, PROVIDER_ID_RE
from worldland.state.connection import KEY_PREFIX_ENV, REDIS_URL_ENV
from worldland.state.fleet import Fleet

log = logging.getLogger("worldland.onboard")

DEFAULT_PLAYBOOK = "worldland.provider.onboard"  # playbooks/onboard.yml of the collection
DEFAULT_RUNS_DIR = "~/.local/state/worldland/runs"
DEFAULT_KEEP_RUNS = 20
MESSAGE_MAX = 500  # characters of a failure message in a log line
# A limited run keeps the controller: the playbook's plays on it (onboard.yml's device plugin play) still
# run; the provider plays are limited to the providers' nodes.
CONTROLLER_HOSTS = ("localhost",)

# namespace.collection.playbook, as ansible-playbook finds it in the collections path.
_COLLECTION_PLAYBOOK_RE = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*\.[A-Za-z0-9_]+\Z")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
HOST_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}
# HostStats field -> the key of Ansible's stats
STATS_KEYS = {
    "ok": "ok",
    "changed": "changed",
    "failed": "failures",
    "unreachable": "dark",
    "skipped": "skipped",
    "rescued": "rescued",
    "ignored": "ignored",
}
PLUGIN_REASON = "worldland inventory:"  # how the inventory plugin's errors begin
CENSORED_STDOUT = "{status}: [{host}] (output hidden: the task is no_log)"


class OnboardError(Exception):
    """A run that cannot start: a playbook, inventory, config or runs dir that is not there."""


@dataclass(frozen=True)
class OnboardSettings:
    """Where a run's parts are. ``redis_url``/``key_prefix``/``kubeconfig`` reach the play (the inventory
    plugin, the lookups and actions) as ``WORLDLAND_REDIS_URL``/``WORLDLAND_KEY_PREFIX``/
    ``WORLDLAND_KUBECONFIG``; ``ansible_config`` as ``ANSIBLE_CONFIG``."""

    inventories: tuple[str, ...]
    playbook: str = DEFAULT_PLAYBOOK
    runs_dir: str = DEFAULT_RUNS_DIR
    keep_runs: int = DEFAULT_KEEP_RUNS
    forks: int | None = None
    ansible_config: str | None = None
    redis_url: str | None = None
    key_prefix: str | None = None
    kubeconfig: str | None = None

    def __post_init__(self) -> None:
        if self.keep_runs < 1:
            raise OnboardError(f"keep_runs must be at least 1, not {self.keep_runs}")
        if self.forks is not None and self.forks < 1:
            raise OnboardError(f"forks must be at least 1, not {self.forks}")


@dataclass(frozen=True)
class HostStats:
    """One host's counts from the run's stats (``failed`` and ``unreachable`` are Ansible's
    ``failures`` and ``dark``)."""

    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0

    @property
    def succeeded(self) -> bool:
        return self.failed == 0 and self.unreachable == 0

    def to_dict(self) -> dict[str, int]:
        return {
            "ok": self.ok,
            "changed": self.changed,
            "failed": self.failed,
            "unreachable": self.unreachable,
            "skipped": self.skipped,
            "rescued": self.rescued,
            "ignored": self.ignored,
        }


@dataclass(frozen=True)
class OnboardResult:
    """What a run did. ``providers``: the provider ids it was limited to, with their node names (empty:
    no limit). ``error``: why the run failed before any play started (playbook not found, inventory
    unparsable, ...), else None."""

    run_id: str
    rc: int
    status: str  # ansible-runner's: successful, failed, canceled, timeout
    hosts: dict[str, HostStats]
    artifacts: Path
    providers: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    unreachable: dict[str, str] = field(default_factory=dict)  # host -> why
    failures: dict[str, str] = field(default_factory=dict)  # host -> its first failed task: "task: why"

    @property
    def succeeded(self) -> bool:
        return self.rc == 0 and self.status == "successful" and all(h.succeeded for h in self.hosts.values())

    @property
    def failed_hosts(self) -> list[str]:
        return sorted(name for name, host in self.hosts.items() if not host.succeeded)

    def failed_providers(self) -> list[str]:
        """The providers of the limit this run did not onboard: those whose host failed or was
        unreachable; all of them when the run failed without a provider's host failing (it stopped
        early, or a host that is not a provider's failed)."""
        if self.succeeded:
            return []
        failed = set(self.failed_hosts)
        mine = sorted(pid for pid, node in self.providers.items() if node in failed)
        return mine or sorted(self.providers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "rc": self.rc,
            "status": self.status,
            "succeeded": self.succeeded,
            "hosts": {name: host.to_dict() for name, host in sorted(self.hosts.items())},
            "providers": dict(sorted(self.providers.items())),
            "artifacts": str(self.artifacts),
            "error": self.error,
        }


# -- which hosts ----------------------------------------------------------------------------------------


def provider_hosts(fleet: Fleet, provider_ids: Iterable[str]) -> dict[str, str]:
    """Provider id -> node name, for a run's limit. Raises ``ValueError`` for an id that does not match
    the id pattern and ``UnknownProvider`` for one that is not registered."""
    hosts: dict[str, str] = {}
    for provider_id in provider_ids:
        if not PROVIDER_ID_RE.match(provider_id):
            raise ValueError(f"provider id {provider_id!r}: {ID_RULE}")
        record = fleet.store.require(provider_id)
        if not is_node_name(record.node_name):
            raise ValueError(f"provider {provider_id!r} has no valid node name")
        hosts[provider_id] = record.node_name
    return hosts


def approved_hosts(fleet: Fleet, provider_ids: Iterable[str]) -> dict[str, str]:
    """Provider id -> node name of those of ``provider_ids`` that are Approved now (others, and ids that
    are not valid or no longer registered, are left out)."""
    wanted = sorted({pid for pid in provider_ids if PROVIDER_ID_RE.match(pid)})
    return {
        record.provider_id: record.node_name
        for record in fleet.store.get_many(wanted, on_invalid=lambda _pid, _err: None)
        if record.status is Status.APPROVED and is_node_name(record.node_name)
    }


# -- a run ----------------------------------------------------------------------------------------------


def new_run_id() -> str:
    """Sortable by time, unique, and of the characters of ids only (it is a directory and an extra var)."""
    run_id = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(3)}"
    assert PROVIDER_ID_RE.match(run_id), run_id
    return run_id


def resolve_playbook(playbook: str) -> str:
    """A playbook file (made absolute) or a collection playbook name (passed on as it is)."""
    path = Path(playbook).expanduser()
    if path.is_file():
        return str(path.resolve())
    if _COLLECTION_PLAYBOOK_RE.match(playbook):
        return playbook  # ansible-playbook finds it through the collections path (ansible.cfg)
    raise OnboardError(
        f"playbook {playbook}: no such file, and not a collection playbook name (namespace.collection.name)"
    )


def _existing(kind: str, value: str, *, file_only: bool = False) -> str:
    path = Path(value).expanduser()
    if not (path.is_file() if file_only else path.exists()):
        raise OnboardError(f"{kind} {value}: no such {'file' if file_only else 'file or directory'}")
    return str(path.resolve())


def checked(settings: OnboardSettings) -> OnboardSettings:
    """``settings`` with its playbook, inventories and config checked and their paths made absolute;
    raises ``OnboardError`` naming what is missing."""
    if not settings.inventories:
        raise OnboardError("no inventory given")
    config = settings.ansible_config
    return replace(
        settings,
        playbook=resolve_playbook(settings.playbook),
        inventories=tuple(_existing("inventory", inventory) for inventory in settings.inventories),
        ansible_config=_existing("ansible config", config, file_only=True) if config else None,
    )


def environment(settings: OnboardSettings) -> dict[str, str]:
    """What a run adds to this process's environment."""
    env: dict[str, str] = {}
    # ansible-playbook of the Python that runs this (its inventory plugin imports worldland from there),
    # also when that Python's scripts directory is not on PATH (a virtualenv, not activated) or comes after
    # another Ansible's.
    scripts = sysconfig.get_path("scripts")
    path = os.environ.get("PATH", os.defpath).split(os.pathsep)
    if scripts and shutil.which("ansible-playbook", path=scripts) and path[:1] != [scripts]:
        env["PATH"] = os.pathsep.join([scripts, *path])
    if settings.ansible_config:
        env["ANSIBLE_CONFIG"] = settings.ansible_config
    if settings.redis_url:
        env[REDIS_URL_ENV] = settings.redis_url
    if settings.key_prefix:
        env[KEY_PREFIX_ENV] = settings.key_prefix
    if settings.kubeconfig:
        from worldland.kube.session import KUBECONFIG_ENV  # here: it loads the kubernetes client

        env[KUBECONFIG_ENV] = settings.kubeconfig
    if "ANSIBLE_FORCE_COLOR" not in os.environ:
        env.setdefault("ANSIBLE_NOCOLOR", "1")  # artifacts as text, not terminal codes
    return env


def run_onboarding(
    settings: OnboardSettings,
    providers: Mapping[str, str] | None = None,
    *,
    cancel: Callable[[], bool] | None = None,
) -> OnboardResult:
    """One run of the playbook; ``providers`` (id -> node name, see ``provider_hosts``) limits it to
    those hosts. ``cancel``: polled during the run, True stops it (without it ansible-runner stops the
    run on SIGINT/SIGTERM when called from the main thread). Raises ``OnboardError`` when it cannot
    start; a run that fails is a result."""
    import ansible_runner  # here: the listener imports this module, and runs only with --onboard
    from ansible_runner.exceptions import AnsibleRunnerException

    settings = checked(settings)
    playbook = settings.playbook
    limit = dict(providers or {})
    for provider_id, node in limit.items():
        if not PROVIDER_ID_RE.match(provider_id) or not is_node_name(node):
            raise ValueError(f"not a provider id and node name: {provider_id!r}, {node!r}")

    runs = Path(settings.runs_dir).expanduser()
    run_id = new_run_id()
    private = runs / "private" / run_id
    artifacts = runs / "artifacts" / run_id
    try:
        runs.mkdir(mode=0o700, parents=True, exist_ok=True)
        private.mkdir(mode=0o700, parents=True)
    except OSError as exc:
        raise OnboardError(f"runs dir {runs}: {exc.strerror or exc}") from None

    # Only values made or checked here: never a provider's text (extra vars are rendered).
    extravars: dict[str, Any] = {"worldland_run_id": run_id}
    if limit:
        extravars["worldland_provider_ids"] = sorted(limit)
    kwargs: dict[str, Any] = {}
    if cancel is not None:
        kwargs["cancel_callback"] = cancel
    events = RunEvents(run_id)
    log.info(
        "onboard run started",
        extra={
            "run_id": run_id,
            "playbook": playbook,
            "providers": sorted(limit) if limit else "all",
            "artifacts": str(artifacts),
        },
    )
    try:
        runner = ansible_runner.run(
            private_data_dir=str(private),
            artifact_dir=str(runs / "artifacts"),
            ident=run_id,
            playbook=playbook,
            inventory=list(settings.inventories),
            limit=",".join([*sorted(set(limit.values())), *CONTROLLER_HOSTS]) if limit else None,
            extravars=extravars,
            envvars=environment(settings),
            forks=settings.forks,
            quiet=True,
            suppress_env_files=True,
            rotate_artifacts=settings.keep_runs,
            event_handler=events,
            **kwargs,
        )
    except AnsibleRunnerException as exc:
        raise OnboardError(f"ansible-runner: {exc}") from None
    finally:
        shutil.rmtree(private, ignore_errors=True)
        _drop_environment(artifacts / "command")
    result = OnboardResult(
        run_id=run_id,
        rc=int(runner.rc if runner.rc is not None else -1),
        status=str(runner.status),
        hosts=events.hosts(),
        artifacts=artifacts,
        providers=limit,
        error=None,
        unreachable=dict(events.unreachable),
        failures=dict(events.failures),
    )
    if not result.succeeded and not result.failed_hosts:  # it stopped early, or not on a host
        result = replace(result, error=events.error() or f"the run ended {result.status} (rc {result.rc})")
    log.log(
        logging.INFO if result.succeeded else logging.WARNING,
        "onboard run finished",
        extra={
            "run_id": run_id,
            "rc": result.rc,
            "status": result.status,
            "succeeded": result.succeeded,
            "failed_hosts": result.failed_hosts,
            "error": result.error,
            "artifacts": str(artifacts),
        },
    )
    return result


def record_failures(fleet: Fleet, result: OnboardResult) -> dict[str, str]:
    """Every host that failed and whose provider is still Approved gets why as its ``last_error`` (it
    stays Approved and the next run tries it again): unreachable over SSH, or its first failed task
    where the playbook's ``rescue`` did not record one (a task outside the block, fact gathering, a
    playbook without a rescue). Returns provider id -> message."""
    # (a host without stats: the run stopped before them)
    failed = set(result.unreachable) | {
        h for h in result.failures if h not in result.hosts or not result.hosts[h].succeeded
    }
    if not failed:
        return {}
    store = fleet.store
    by_node = {r.node_name: r for r in store.get_many(store.ids([Status.APPROVED]))}
    recorded = {}
    for host in sorted(failed):
        record = by_node.get(host)
        if record is None:
            continue
        if host in result.unreachable:
            message = f"unreachable over SSH: {result.unreachable[host]}"
        elif host in result.hosts and result.hosts[host].rescued and record.last_error:
            continue  # the playbook's rescue recorded this run's failure
        else:
            message = result.failures[host]
        recorded[record.provider_id] = error_line(message)
        store.set_error(record.provider_id, recorded[record.provider_id])
    return recorded


def _drop_environment(command_file: Path) -> None:
    """ansible-runner writes the run's whole environment into the ``command`` artifact; keep the
    command and its directory only."""
    try:
        data = json.loads(command_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(data, dict) or "env" not in data:
        return
    data["env"] = "(removed: the environment can hold credentials)"
    temporary = command_file.with_name(command_file.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(data, out)
    os.replace(temporary, command_file)


# -- events ---------------------------------------------------------------------------------------------


def is_censored(result: object) -> bool:
    """Whether a task result is no_log's: censored by the callback, or still marked ``_ansible_no_log``
    (also per loop item)."""
    if not isinstance(result, dict):
        return False
    if "censored" in result or result.get("_ansible_no_log"):
        return True
    items = result.get("results")
    return isinstance(items, list) and any(
        isinstance(item, dict) and ("censored" in item or item.get("_ansible_no_log")) for item in items
    )


def _text(value: object, limit: int = MESSAGE_MAX) -> str:
    text = " ".join(_ANSI_RE.sub("", str(value)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RunEvents:
    """ansible-runner's ``event_handler``: log lines, the run's stats, and the error of a run that
    stopped before its first play. Returns True: every event is kept (a censored one without its
    stdout)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.stats: dict[str, Any] | None = None
        self.unreachable: dict[str, str] = {}  # host -> why (the first time it became unreachable)
        self.failures: dict[str, str] = {}  # host -> "task: why" of its first failure not ignored
        self._played = False
        self._early_output: list[str] = []

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event")
        data = event.get("event_data") or {}
        result = data.get("res")
        censored = is_censored(result)
        if censored:
            status = HOST_EVENTS.get(str(kind), str(kind))
            event["stdout"] = CENSORED_STDOUT.format(status=status, host=data.get("host"))
        if kind in HOST_EVENTS:
            self._log_result(HOST_EVENTS[kind], data, result, censored)
        elif kind == "playbook_on_stats":
            self.stats = data
            log.info(
                "onboard stats",
                extra={"run_id": self.run_id, "hosts": {n: h.to_dict() for n, h in self.hosts().items()}},
            )
        elif kind == "playbook_on_play_start":
            self._played = True
        elif kind == "verbose" and not self._played and len(self._early_output) < 200:
            self._early_output += [line for line in str(event.get("stdout", "")).splitlines() if line.strip()]
        return True

    def _log_result(self, status: str, data: dict[str, Any], result: object, censored: bool) -> None:
        line: dict[str, Any] = {
            "run_id": self.run_id,
            "host": data.get("host"),
            "task": data.get("task"),
            "status": status,
        }
        if not censored:
            res = result if isinstance(result, dict) else {}
            line.update(
                action=data.get("task_action"),
                changed=bool(res.get("changed", False)),
                failed=status == "failed",
                unreachable=status == "unreachable",
            )
            if data.get("ignore_errors"):
                line["ignored"] = True
            if status in ("failed", "unreachable") and res.get("msg"):
                line["error"] = _text(res["msg"])
            if status == "unreachable" and not data.get("ignore_unreachable"):
                self.unreachable.setdefault(str(data.get("host")), _text(res.get("msg") or "unreachable"))
        failing = status in ("failed", "unreachable") and not data.get("ignore_errors")
        if failing and status == "failed":
            res = result if isinstance(result, dict) else {}
            why = (
                "failed (output hidden: the task is no_log)"
                if censored
                else _text(res.get("msg") or "failed")
            )
            self.failures.setdefault(str(data.get("host")), f"{data.get('task')}: {why}")
        log.log(logging.WARNING if failing else logging.INFO, "onboard task", extra=line)

    def hosts(self) -> dict[str, HostStats]:
        """Per host, from the run's stats (empty before them, or when the run stopped early)."""
        stats = self.stats or {}
        counts = {ours: stats.get(theirs) or {} for ours, theirs in STATS_KEYS.items()}
        names = sorted({str(name) for per_host in counts.values() for name in per_host})
        return {
            name: HostStats(**{key: int(per_host.get(name, 0)) for key, per_host in counts.items()})
            for name in names
        }

    def error(self) -> str | None:
        """The first error line printed before any play (else the last line printed), if any; with the
        worldland inventory plugin's reason when it failed (Ansible prints that as a warning)."""
        lines = [_text(line) for line in self._early_output]
        errors = [line for line in lines if "ERROR" in line]
        error = errors[0] if errors else (lines[-1] if lines else None)
        reasons = [line[line.index(PLUGIN_REASON) :] for line in lines if PLUGIN_REASON in line]
        if error is not None and reasons and reasons[0] not in error:
            error = f"{error} ({reasons[0]})"
        return error
