"""Services the systemctl stand-in runs for real: units whose file is the host's own.

A unit file counts as the host's own when its private copy (in the host's overlay upper dir) exists:
written by the host itself to ``/etc/systemd/system``, or installed by a package to
``/usr/lib/systemd/system`` (``/lib/systemd/system``: on Debian 12 ``/lib`` is a symlink to ``usr/lib``,
so a package's files land under ``upper/usr/lib``). Through the overlays a host also sees this machine's
unit files (``sshd.service``, ``redis.service``, ...), and those must never start inside a lab host.

What of a unit is understood, as systemd reads it: the unit file and its drop-ins ``<unit>.d/*.conf``
from the same directories (applied in file-name order; a drop-in in ``/etc`` replaces one of the same
name in ``/usr/lib``), ``Environment=``, ``EnvironmentFile=`` (``-``: may be missing; its settings
override ``Environment=``), ``ExecStart=`` (an empty one resets the list; the last one runs),
``ExecStartPre=`` (run to completion first, ``-``: failure ignored), ``WorkingDirectory=``,
``LimitNOFILE=``, and ``$VAR`` / ``${VAR}`` in command lines: ``$VAR`` as a word of its own becomes the
value split at whitespace (zero or more words), ``${VAR}`` the value as it is, within one word; the
executable (first word) is not expanded.
``Restart=`` is not acted on (the stand-in does not supervise): a unit whose process exited is inactive.

The command starts in the background in the host's namespaces (so the lab's teardown by PID and namespace
removes it), in a new session with a systemd-like environment, its output appended to
``/var/log/worldland/<unit>.log``; it is stopped by its recorded PID and start time.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# systemd's unit search path, first wins (the /lib one is the /usr/lib one where /lib is a symlink)
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
LOG_DIR = Path("/var/log/worldland")
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # systemd's default
STOP_TIMEOUT_S = 5.0  # SIGTERM, then SIGKILL after this long (systemd: TimeoutStopSec)
START_TIMEOUT_S = 90.0  # an ExecStartPre= that runs longer fails (systemd: TimeoutStartSec)
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WHOLE_VAR = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")


class ServiceError(Exception):
    """The unit cannot start (a missing EnvironmentFile, a failing ExecStartPre): the message says why."""


@dataclass(frozen=True)
class Command:
    argv: list[str]
    ignore_failure: bool = False


@dataclass(frozen=True)
class Service:
    argv: list[str]
    environment: dict[str, str]
    working_directory: str
    pre: list[Command] = field(default_factory=list)
    limit_nofile: str | None = None
    restart: str = "no"
    unit_files: list[str] = field(default_factory=list)


def _upper(cfg: dict[str, Any]) -> Path:
    return Path(cfg.get("upper_dir") or Path(cfg["units_state"]).parent / "upper")


def is_own(cfg: dict[str, Any], path: str | Path) -> bool:
    """Whether the host's private copy of the file ``path`` (symlinks resolved) exists."""
    path = Path(path)
    if not path.is_file():
        return False
    real = os.path.realpath(path)
    return (_upper(cfg) / real.lstrip("/")).is_file()


def own_unit_file(cfg: dict[str, Any], name: str) -> Path | None:
    """The first of the host's own unit files for ``name`` along systemd's search path, else None."""
    for directory in UNIT_DIRS:
        path = Path(directory) / name
        if is_own(cfg, path):
            return path
    return None


def drop_ins(cfg: dict[str, Any], name: str) -> list[Path]:
    """The host's own ``<name>.d/*.conf``, in the order systemd applies them."""
    by_name: dict[str, Path] = {}
    for directory in reversed(UNIT_DIRS):  # earlier directories override later ones of the same name
        with contextlib.suppress(OSError):
            for conf in Path(directory, f"{name}.d").iterdir():
                if conf.name.endswith(".conf") and is_own(cfg, conf):
                    by_name[conf.name] = conf
    return [by_name[n] for n in sorted(by_name)]


def _assignments(text: str) -> list[tuple[str, str]]:
    """``[Service]`` ``key=value`` pairs of one unit file or drop-in, in order (continuations joined)."""
    section = ""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if section == "Service" and sep:
            out.append((key.strip(), value.strip()))
    return out


def _specifiers(value: str, name: str) -> str:
    table = {"%": "%", "n": name, "N": name.rsplit(".", 1)[0], "p": name.split("@")[0].rsplit(".", 1)[0]}
    table |= {"t": "/run", "h": "/root", "u": "root", "U": "0"}
    return re.sub(r"%(.)", lambda m: table.get(m.group(1), m.group(0)), value)


def parse_env_file(text: str) -> dict[str, str]:
    """``KEY=value`` lines as systemd reads an EnvironmentFile (quotes removed, ``#`` comments)."""
    env = {}
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            continue
        try:
            env[key] = " ".join(shlex.split(value))
        except ValueError:
            env[key] = value.strip()
    return env


def expand(argv: list[str], env: dict[str, str]) -> list[str]:
    """systemd's variable expansion in a command line: a word ``$VAR`` becomes the value's words,
    ``${VAR}`` the value within its word, ``$$`` a ``$``; ``$VAR`` inside a word stays as it is."""
    out = []
    for word in argv:
        whole = _WHOLE_VAR.match(word)
        if whole:
            out += env.get(whole.group(1), "").split()
            continue

        def one(m: re.Match[str]) -> str:
            return "$" if m.group(0) == "$$" else env.get(m.group(1), "")

        out.append(_VAR.sub(one, word))
    return out


def _command(value: str, name: str, env: dict[str, str]) -> Command | None:
    """An ``Exec*=`` line with its prefixes (``-`` ignore failure, ``:`` no expansion, ``@`` argv[0])."""
    prefixes = re.match(r"^[-@:+!]*", value).group(0)  # type: ignore[union-attr]
    words = shlex.split(_specifiers(value[len(prefixes) :], name))
    if not words:
        return None
    if ":" not in prefixes:
        words = [words[0], *expand(words[1:], env)]
    if "@" in prefixes and len(words) > 1:
        words = [words[0], *words[2:]]  # argv[0] as given is not kept (Popen has no way to set it)
    return Command(words, ignore_failure="-" in prefixes)


def parse_service(text: str | list[str], name: str = "", env_files: bool = True) -> Service | None:
    """The ``[Service]`` of a unit file (or of the file and its drop-ins, in order). None without a
    command. ``EnvironmentFile=`` is read now (raises ServiceError for a missing one without ``-``)."""
    texts = [text] if isinstance(text, str) else text
    settings: dict[str, list[str]] = {}
    for item in texts:
        for key, value in _assignments(item):
            if key in ("ExecStart", "ExecStartPre", "Environment", "EnvironmentFile") and not value:
                settings[key] = []  # an empty assignment resets the list
            else:
                settings.setdefault(key, []).append(value)
    environment: dict[str, str] = {}
    for value in settings.get("Environment", []):
        for item in shlex.split(_specifiers(value, name)):
            var, _, setting = item.partition("=")
            environment[var] = setting
    if env_files:
        for value in settings.get("EnvironmentFile", []):
            optional = value.startswith("-")
            path = Path(_specifiers(value.lstrip("-"), name))
            try:
                environment.update(parse_env_file(path.read_text(encoding="utf-8", errors="replace")))
            except OSError as exc:
                if not optional:
                    raise ServiceError(f"Failed to load environment files: {path}: {exc.strerror}") from None
    start = settings.get("ExecStart", [])
    command = _command(start[-1], name, environment) if start else None
    if command is None:
        return None
    pre = [c for v in settings.get("ExecStartPre", []) if (c := _command(v, name, environment))]
    last = {key: values[-1] for key, values in settings.items() if values}
    return Service(
        argv=command.argv,
        environment=environment,
        working_directory=last.get("WorkingDirectory", "/").lstrip("-") or "/",
        pre=pre,
        limit_nofile=last.get("LimitNOFILE"),
        restart=last.get("Restart", "no"),
    )


def service_of(cfg: dict[str, Any], name: str) -> Service | None:
    """The service of the host's own unit ``name`` (with its own drop-ins), None if there is none."""
    path = own_unit_file(cfg, name)
    if path is None:
        return None
    files = [path, *drop_ins(cfg, name)]
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    service = parse_service(texts, name)
    if service is None:
        return None
    return Service(**{**service.__dict__, "unit_files": [str(f) for f in files]})


def proc_start(pid: int) -> int | None:
    """Start time in clock ticks (field 22 of /proc/PID/stat); None when gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def running(unit: dict[str, Any]) -> bool:
    """Whether the process the stand-in started for ``unit`` still lives (same PID and start time)."""
    start = unit.get("pid_start")
    return start is not None and proc_start(int(unit.get("pid", 0))) == start


def _limits(service: Service) -> Any:
    if service.limit_nofile is None:
        return None
    value = service.limit_nofile.split(":")[-1].strip()

    def apply() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if value == "infinity" else int(value)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), min(want, hard)))

    return apply if value == "infinity" or value.isdigit() else None


def start(name: str, service: Service) -> dict[str, Any]:
    """Run its ExecStartPre= commands, then start its command in the background; what to record in the
    unit's state (OSError: not started; ServiceError: a pre-command failed)."""
    LOG_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}.log"
    env = {"PATH": SERVICE_PATH, "LANG": "C.UTF-8", **service.environment}
    with open(log_path, "ab") as out:
        for pre in service.pre:
            out.write(f"-- {time.strftime('%Y-%m-%d %H:%M:%S')} pre: {shlex.join(pre.argv)}\n".encode())
            out.flush()
            try:
                rc = subprocess.run(
                    pre.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=service.working_directory,
                    env=env,
                    timeout=START_TIMEOUT_S,
                    check=False,
                ).returncode
            except OSError as exc:
                rc, why = 203, exc.strerror
            except subprocess.TimeoutExpired:
                rc, why = 124, f"timed out after {START_TIMEOUT_S:.0f} s"
            else:
                why = f"exit status {rc}"
            if rc != 0 and not pre.ignore_failure:
                raise ServiceError(f"ExecStartPre={shlex.join(pre.argv)} failed ({why})")
        out.write(f"-- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {shlex.join(service.argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            service.argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=service.working_directory,
            env=env,
            start_new_session=True,  # outlives the SSH session that ran systemctl
            close_fds=True,
            preexec_fn=_limits(service),
        )
    return {"pid": proc.pid, "pid_start": proc_start(proc.pid), "exec": service.argv, "log": str(log_path)}


def stop(unit: dict[str, Any], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the recorded process, SIGKILL it if it is still there after ``timeout``; by PID only."""
    if running(unit):
        pid = int(unit["pid"])
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while running(unit) and time.monotonic() < deadline:
                time.sleep(0.02)
            if not running(unit):
                break
    unit.pop("pid_start", None)


def refresh(state: dict[str, dict[str, Any]]) -> None:
    """Units whose process has exited are no longer active."""
    for name, unit in state.items():
        if not name.startswith("_") and unit.get("pid_start") is not None and not running(unit):
            unit["active"] = False
            unit.pop("pid_start")
            unit["exited"] = unit.get("exited", 0) + 1
