"""systemctl stand-in: records unit actions and answers like systemd would for them.

A unit exists when the host's config lists it (``known_units``) or its unit file is in one of
systemd's unit directories (``/etc/systemd/system``, ``/run/systemd/system``, ``/usr/lib/systemd/system``,
``/lib/systemd/system``). State (active, enabled, masked) lives in a JSON file per host; every
invocation is logged (``command: systemctl``) in the host's stand-in log. Exit statuses follow
systemctl: ``is-active`` 0/3, ``is-enabled`` 0/1, ``status`` 0/3/4, a missing unit on start 5, a unit
that failed to start 1.

A unit whose file is the host's own - written by the host to ``/etc/systemd/system``, or installed by a
package to ``/usr/lib/systemd/system`` - with an ``ExecStart=`` runs for real (``_services.py``: drop-ins,
``Environment=``, ``EnvironmentFile=``, ``ExecStartPre=``, variable expansion): ``start``,
``enable --now`` and ``restart`` start its command in the background (output in
``/var/log/worldland/<unit>.log``, PID and start time in the state file), ``stop``, ``restart`` and
``disable --now`` stop it (SIGTERM, then SIGKILL), and it is active while that process lives. Every other
unit is recorded only.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any

import _services
from _common import config, log, units

UNIT_DIRS = _services.UNIT_DIRS
SUFFIXES = (".service", ".socket", ".target", ".timer", ".mount", ".path", ".slice", ".scope")
# options that take a value, as separate argument
VALUE_OPTIONS = {"-p", "--property", "-t", "--type", "--state", "-n", "--lines", "-o", "--output", "-H", "-M"}


def unit_name(name: str) -> str:
    return name if name.endswith(SUFFIXES) else name + ".service"


def exists(name: str, cfg: dict[str, Any], state: dict[str, Any]) -> bool:
    if name in cfg.get("known_units", []) or name in state:
        return True
    return any(os.path.exists(os.path.join(d, name)) for d in UNIT_DIRS)


def own_units(cfg: dict[str, Any]) -> set[str]:
    """Names of the host's own unit files (those the stand-in runs for real)."""
    names = set()
    for directory in UNIT_DIRS:
        with contextlib.suppress(OSError):
            names |= {
                entry.name
                for entry in os.scandir(directory)
                if entry.name.endswith(SUFFIXES) and _services.is_own(cfg, entry.path)
            }
    return names


def show(name: str, cfg: dict[str, Any], state: dict[str, Any], props: list[str], value_only: bool) -> str:
    unit = state.get(name, {})
    found = exists(name, cfg, state)
    own = _services.own_unit_file(cfg, name)
    active = bool(unit.get("active"))
    load = "masked" if unit.get("masked") else ("loaded" if found else "not-found")
    since = unit.get("since", 0)
    stamp = time.strftime("%a %Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if active else ""
    data = {
        "Type": "simple",
        "Restart": "always" if name == "kubelet.service" else "no",
        "MainPID": str(unit.get("pid", 0)) if active else "0",
        "ExecMainStartTimestamp": stamp,
        "ExecMainPID": str(unit.get("pid", 0)) if active else "0",
        "Id": name,
        "Names": name,
        "Description": cfg.get("unit_descriptions", {}).get(name, name.rsplit(".", 1)[0]),
        "LoadState": load,
        "ActiveState": "active" if active else "inactive",
        "SubState": ("running" if active else "dead") if found else "dead",
        "FragmentPath": str(own) if own else f"/lib/systemd/system/{name}" if found else "",
        "DropInPaths": " ".join(str(p) for p in _services.drop_ins(cfg, name)) if own else "",
        "UnitFileState": (
            "masked" if unit.get("masked") else "enabled" if unit.get("enabled") else "disabled"
        )
        if found
        else "",
        "UnitFilePreset": "enabled" if found else "",
        "ActiveEnterTimestamp": stamp,
        "CanStart": "yes" if found else "no",
        "CanStop": "yes" if found else "no",
    }
    keys = props or list(data)
    return "".join((data.get(k, "") if value_only else f"{k}={data.get(k, '')}") + "\n" for k in keys)


def status_text(name: str, cfg: dict[str, Any], state: dict[str, Any]) -> str:
    unit = state.get(name, {})
    active = bool(unit.get("active"))
    enabled = "enabled" if unit.get("enabled") else "disabled"
    since = time.strftime("%a %Y-%m-%d %H:%M:%S UTC", time.gmtime(unit.get("since", 0)))
    line = f"active (running) since {since}" if active else "inactive (dead)"
    return (
        f"{'●' if active else '○'} {name} - {name.rsplit('.', 1)[0]}\n"
        f"     Loaded: loaded (/lib/systemd/system/{name}; {enabled}; preset: enabled)\n"
        f"     Active: {line}\n" + (f"   Main PID: {unit.get('pid', 0)}\n" if active else "")
    )


def main(argv: list[str]) -> int:
    cfg = config()
    options: list[str] = []
    args: list[str] = []
    props: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in VALUE_OPTIONS and i + 1 < len(argv):
            if arg in ("-p", "--property"):
                props += argv[i + 1].split(",")
            options.append(arg)
            i += 1
        elif arg.startswith("--property="):
            props += arg.split("=", 1)[1].split(",")
        elif arg.startswith("-"):
            options.append(arg)
        else:
            args.append(arg)
        i += 1
    verb = args[0] if args else "list-units"
    names = [unit_name(a) for a in args[1:]]
    quiet = "-q" in options or "--quiet" in options
    now = "--now" in options
    log(cfg, "systemctl", argv=argv, verb=verb, units=names)
    out: list[str] = []
    rc = 0
    with units(cfg) as state:
        _services.refresh(state)
        if verb in ("daemon-reload", "daemon-reexec", "reset-failed"):
            state.setdefault("_daemon", {})[verb] = state.get("_daemon", {}).get(verb, 0) + 1
        elif verb == "list-units":
            for name, unit in sorted(state.items()):
                if not name.startswith("_") and unit.get("active"):
                    out.append(f"  {name:<40} loaded active running {name.rsplit('.', 1)[0]}")
        elif verb == "list-unit-files":
            pattern = names[0].removesuffix(".service").rstrip("*") if names else ""
            candidates = set(cfg.get("known_units", [])) | {k for k in state if k[0] != "_"} | own_units(cfg)
            found = [n for n in sorted(candidates) if n.startswith(pattern)]
            for name in found:
                out.append(
                    f"{name:<40} {'enabled' if state.get(name, {}).get('enabled') else 'disabled'} enabled"
                )
            rc = 0 if found else 1
        elif verb in (
            "start",
            "stop",
            "restart",
            "reload",
            "try-restart",
            "reload-or-restart",
            "enable",
            "disable",
        ):
            for name in names:
                if not exists(name, cfg, state):
                    what = {"enable": "enable unit", "disable": "disable unit"}.get(verb, verb)
                    sys.stderr.write(f"Failed to {what}: Unit file {name} does not exist.\n")
                    return 5 if verb not in ("enable", "disable") else 1
                unit = state.setdefault(name, {})
                if unit.get("masked") and verb in ("start", "restart", "enable"):
                    sys.stderr.write(f"Failed to {verb} {name}: Unit {name} is masked.\n")
                    return 1
                if verb in ("enable", "disable"):
                    unit["enabled"] = verb == "enable"
                starting = verb in ("start", "restart", "reload-or-restart") or (verb == "enable" and now)
                stopping = verb == "stop" or (verb == "disable" and now)
                restarting = verb in ("restart", "reload-or-restart")
                service = None
                if starting:
                    try:
                        service = _services.service_of(cfg, name)
                    except _services.ServiceError as exc:  # e.g. a required EnvironmentFile= is missing
                        if not restarting and unit.get("active"):
                            continue  # start of a running unit: nothing to do
                        _services.stop(unit)
                        unit["active"] = False
                        sys.stderr.write(f"Job for {name} failed: {exc}\n")
                        return 1
                if service is not None and starting:
                    if restarting or not unit.get("active"):  # start / enable --now: no-op while running
                        _services.stop(unit)
                        try:
                            unit.update(_services.start(name, service))
                        except OSError as exc:
                            unit["active"] = False
                            sys.stderr.write(f"Failed to start {name}: {service.argv[0]}: {exc.strerror}\n")
                            return 1
                        except _services.ServiceError as exc:
                            unit["active"] = False
                            sys.stderr.write(f"Job for {name} failed: {exc}\n")
                            return 1
                        unit.update(active=True, since=time.time())
                        unit["starts"] = unit.get("starts", 0) + 1
                elif starting and (not unit.get("active") or verb != "start"):
                    unit.update(active=True, since=time.time(), pid=40000 + len(state) * 10)
                    unit["starts"] = unit.get("starts", 0) + 1
                if stopping:
                    _services.stop(unit)
                    unit["active"] = False
        elif verb in ("mask", "unmask"):
            for name in names:
                state.setdefault(name, {})["masked"] = verb == "mask"
        elif verb == "is-active":
            states = ["active" if state.get(n, {}).get("active") else "inactive" for n in names]
            out += [] if quiet else states
            rc = 0 if states and all(s == "active" for s in states) else 3
        elif verb == "is-enabled":
            for name in names:
                if not exists(name, cfg, state):
                    sys.stderr.write(f"Failed to get unit file state for {name}: No such file or directory\n")
                    return 1
                unit = state.get(name, {})
                word = "masked" if unit.get("masked") else "enabled" if unit.get("enabled") else "disabled"
                out += [] if quiet else [word]
                rc = rc or (0 if word == "enabled" else 1)
        elif verb == "show":
            text = "\n".join(show(n, cfg, state, props, "--value" in options) for n in names or ["-.slice"])
            out.append(text.rstrip("\n"))
        elif verb == "status":
            for name in names:
                if not exists(name, cfg, state):
                    sys.stderr.write(f"Unit {name} could not be found.\n")
                    return 4
                out.append(status_text(name, cfg, state).rstrip("\n"))
                rc = rc or (0 if state.get(name, {}).get("active") else 3)
        else:
            sys.stderr.write(f'Unknown command verb "{verb}".\n')
            return 1
    if out:
        sys.stdout.write("\n".join(out) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
