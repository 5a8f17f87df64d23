"""Stand-ins for what changes the kernel of this machine itself: ``modprobe``, ``sysctl``, ``swapoff``
and ``update-initramfs`` (one script; the wrapper's name says which).

A lab host shares this machine's kernel, so loading a module or setting a global sysctl from a host would
change this machine. These keep the host's kernel state in ``kernel.json`` in the host's directory instead:
``modprobe NAME`` adds NAME to it and to the host's ``proc_modules`` file (what roles read in place of
``/proc/modules``); ``sysctl`` keeps keys there - except those of the host's own network
namespace (``net.*`` keys its ``/proc/sys`` has), which it sets for real - and reads fall back to
``/proc/sys``; a ``net.bridge.*`` key exists only once ``br_netfilter`` is loaded, as on a real kernel.
``swapoff -a`` empties the host's ``proc_swaps`` file (what roles read in place of ``/proc/swaps``);
``update-initramfs -u`` records the call. Every invocation is logged.
"""

from __future__ import annotations

import fcntl
import json
import sys
from pathlib import Path
from typing import Any

from _common import config, log, write_json

MODULE_KEYS = {"net.bridge.": "br_netfilter"}


def _state_path(cfg: dict[str, Any]) -> Path:
    return Path(cfg["units_state"]).parent / "kernel.json"


def _load(cfg: dict[str, Any]) -> dict[str, Any]:
    path = _state_path(cfg)
    return json.loads(path.read_text()) if path.exists() else {"modules": [], "sysctls": {}}


def _needs_module(key: str, state: dict[str, Any]) -> str | None:
    for prefix, module in MODULE_KEYS.items():
        if key.startswith(prefix) and module not in state["modules"]:
            return module
    return None


def modprobe(cfg: dict[str, Any], args: list[str]) -> int:
    names = [a for a in args if not a.startswith("-")]
    if not names:
        print("modprobe: no module name given", file=sys.stderr)
        return 1
    with open(str(_state_path(cfg)) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = _load(cfg)
        name = names[0]
        if name not in state["modules"]:
            state["modules"].append(name)
            with open(cfg["proc_modules"], "a") as modules:
                modules.write(f"{name} 16384 0 - Live 0x0000000000000000\n")
        write_json(_state_path(cfg), state)
    log(cfg, "modprobe", args=args)
    return 0


def _read_key(key: str, state: dict[str, Any]) -> str | None:
    proc = Path("/proc/sys", key.replace(".", "/"))
    if key.startswith("net.") and proc.exists():
        return proc.read_text().strip()
    if key in state["sysctls"]:
        return str(state["sysctls"][key])
    if _needs_module(key, state):
        return None
    try:
        return Path("/proc/sys", key.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def sysctl(cfg: dict[str, Any], args: list[str]) -> int:
    value_only = "-n" in args
    files = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-p", "--load")]
    words = [a for a in args if not a.startswith("-") and a not in files]
    with open(str(_state_path(cfg)) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = _load(cfg)
        settings: list[tuple[str, str]] = []
        for path in files:
            for line in Path(path).read_text().splitlines():
                line = line.strip()
                if line and line[0] not in "#;" and "=" in line:
                    key, _, value = line.partition("=")
                    settings.append((key.strip(), value.strip()))
        settings += [(w.partition("=")[0], w.partition("=")[2]) for w in words if "=" in w]
        status = 0
        for key, value in settings:
            if (module := _needs_module(key, state)) is not None:
                print(f"sysctl: cannot stat /proc/sys/{key.replace('.', '/')}: No such file or directory "
                      f"(load {module})", file=sys.stderr)  # fmt: skip
                status = 255
                continue
            proc = Path("/proc/sys", key.replace(".", "/"))
            if key.startswith("net.") and proc.exists():
                proc.write_text(value + "\n")  # the host's own network namespace: its value to set
            else:
                state["sysctls"][key] = value
            print(f"{key} = {value}")
        for key in (w for w in words if "=" not in w):
            value = _read_key(key, state)
            if value is None:
                print(f"sysctl: cannot stat /proc/sys/{key.replace('.', '/')}: No such file or directory",
                      file=sys.stderr)  # fmt: skip
                status = 255
            else:
                print(value if value_only else f"{key} = {value}")
        write_json(_state_path(cfg), state)
    log(cfg, "sysctl", args=args, rc=status)
    return status


def swapoff(cfg: dict[str, Any], args: list[str]) -> int:
    """Turns the host's swaps file to no swap (this machine's own swap is never touched)."""
    path = Path(cfg["proc_swaps"])
    path.write_text(path.read_text().splitlines(keepends=True)[0] if path.exists() else "")
    log(cfg, "swapoff", args=args)
    return 0


def update_initramfs(cfg: dict[str, Any], args: list[str]) -> int:
    log(cfg, "update-initramfs", args=args)
    print("update-initramfs: Generating /boot/initrd.img (worldland lab stand-in: nothing written)")
    return 0


COMMANDS = {"modprobe": modprobe, "sysctl": sysctl, "swapoff": swapoff, "update-initramfs": update_initramfs}

if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command not in COMMANDS:
        sys.exit(f"kernel.py: first argument must be one of {sorted(COMMANDS)}")
    sys.exit(COMMANDS[command](config(), sys.argv[2:]))
