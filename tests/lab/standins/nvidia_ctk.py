"""nvidia-ctk stand-in (NVIDIA Container Toolkit CLI 1.17.3): the subcommands the roles call.

It is a STAND-IN: there is no NVML here, so the CDI spec is made from the host's configured GPUs (the
lab host config named by ``$WORLDLAND_LAB_HOST_CONFIG``, the same records the nvidia-smi stand-in reports),
and ``runtime configure`` edits containerd's TOML as text instead of through a TOML library.

Supported:

- ``nvidia-ctk --version`` (also ``-v``): ``NVIDIA Container Toolkit CLI version 1.17.3`` and a commit line.
- ``nvidia-ctk cdi generate [--output=PATH] [--format=yaml|json] [--device-name-strategy=index|uuid]``:
  a CDI spec (``cdiVersion: 0.5.0``, ``kind: nvidia.com/gpu``) with one device per GPU, named by its
  index (or UUID), each with ``containerEdits.deviceNodes`` ``/dev/nvidia<i>``, plus the device ``all``
  (every GPU); the common edits hold ``/dev/nvidiactl`` and the UVM nodes. Without ``--output`` the
  spec goes to stdout. Without a driver (host config ``driver: false``) it fails as the real one does
  when NVML cannot be loaded.
- ``nvidia-ctk cdi list [--spec-dir=DIR ...]``: ``nvidia.com/gpu=<name>`` for each device of the specs
  in ``/etc/cdi`` and ``/var/run/cdi`` (or the given directories), the count on stderr.
- ``nvidia-ctk runtime configure --runtime=containerd [--config=PATH] [--set-as-default] [--dry-run]``:
  makes sure containerd's config has the ``nvidia`` runtime
  (``[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]``, ``runtime_type =
  "io.containerd.runc.v2"``, options ``BinaryName = "/usr/bin/nvidia-container-runtime"``), appending
  the tables when they are absent, and with ``--set-as-default`` sets ``default_runtime_name =
  "nvidia"``. Running it again changes nothing. ``version = 3`` configs (containerd 2) use the
  ``io.containerd.cri.v1.runtime`` plugin instead. The default ``--config`` is
  ``/etc/containerd/config.toml``.

Anything else: a message on stderr and exit status 1 (2 for a usage error).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

VERSION = "1.17.3"
COMMIT = "2a3a1ec5d5b6e3d4e1b1f4f0f62ed1d9d3f4b2a0"  # made up: the stand-in has no upstream commit
KIND = "nvidia.com/gpu"
CDI_VERSION = "0.5.0"
SPEC_DIRS = ("/etc/cdi", "/var/run/cdi")
CONTAINERD_CONFIG = "/etc/containerd/config.toml"
RUNTIME_BINARY = "/usr/bin/nvidia-container-runtime"
NO_NVML = (
    'level=error msg="failed to generate CDI spec: failed to create device CDI specs: '
    'failed to initialize NVML: ERROR_LIBRARY_NOT_FOUND"\n'
)


class Usage(Exception):
    """A command line the stand-in does not accept (exit status 2)."""


class Fail(Exception):
    """The command cannot do what was asked (exit status 1)."""


def options(argv: list[str], value_flags: set[str], bool_flags: set[str]) -> dict[str, list[str]]:
    """``--flag=value``, ``--flag value`` and ``--flag``; anything else is a usage error."""
    out: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise Usage(f"unexpected argument {arg!r}")
        name, eq, val = arg[2:].partition("=")
        if name in value_flags:
            if not eq:
                if i + 1 >= len(argv):
                    raise Usage(f"flag needs an argument: --{name}")
                i += 1
                val = argv[i]
            out.setdefault(name, []).append(val)
        elif name in bool_flags:
            if eq and val.lower() not in ("true", "false"):
                raise Usage(f"invalid boolean value {val!r} for --{name}")
            out.setdefault(name, []).append(val.lower() if eq else "true")
        else:
            raise Usage(f"flag provided but not defined: --{name}")
        i += 1
    return out


def last(opts: dict[str, list[str]], name: str, default: str = "") -> str:
    return opts.get(name, [default])[-1]


def flag(opts: dict[str, list[str]], *names: str) -> bool:
    return any(last(opts, n, "false") == "true" for n in names)


# -- cdi ------------------------------------------------------------------------------------------


def host_config() -> dict[str, Any]:
    path = os.environ.get("WORLDLAND_LAB_HOST_CONFIG")
    if not path:
        raise Fail("nvidia-ctk: lab stand-in run outside a lab host (WORLDLAND_LAB_HOST_CONFIG is unset)")
    return json.loads(Path(path).read_text())  # type: ignore[no-any-return]


def log(cfg: dict[str, Any], **fields: Any) -> None:
    if cfg.get("standin_log"):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _common import log as common_log

        common_log(cfg, "nvidia-ctk", **fields)


def spec(gpus: list[dict[str, Any]], strategy: str) -> dict[str, Any]:
    devices = []
    for gpu in gpus:
        name = str(gpu["index"]) if strategy == "index" else str(gpu["uuid"])
        devices.append(
            {"name": name, "containerEdits": {"deviceNodes": [{"path": f"/dev/nvidia{gpu['index']}"}]}}
        )
    if gpus:
        every = [{"path": f"/dev/nvidia{gpu['index']}"} for gpu in gpus]
        devices.append({"name": "all", "containerEdits": {"deviceNodes": every}})
    return {
        "cdiVersion": CDI_VERSION,
        "kind": KIND,
        "devices": devices,
        "containerEdits": {
            "env": ["NVIDIA_VISIBLE_DEVICES=void"],
            "deviceNodes": [
                {"path": "/dev/nvidia-modeset"},
                {"path": "/dev/nvidia-uvm"},
                {"path": "/dev/nvidia-uvm-tools"},
                {"path": "/dev/nvidiactl"},
            ],
        },
    }


def to_yaml(data: dict[str, Any]) -> str:
    """The spec in the block style nvidia-ctk writes (only the shapes ``spec`` makes)."""

    def scalar(value: Any) -> str:
        return json.dumps(value) if isinstance(value, str) else str(value)

    def nodes(items: list[dict[str, str]], indent: str) -> list[str]:
        return [f"{indent}- path: {n['path']}" for n in items]

    lines = ["---", f"cdiVersion: {data['cdiVersion']}", "containerEdits:"]
    common = data["containerEdits"]
    lines += ["  deviceNodes:", *nodes(common["deviceNodes"], "  ")]
    lines += ["  env:", *(f"  - {scalar(e)}" for e in common["env"])]
    lines.append("devices:" if data["devices"] else "devices: []")
    for device in data["devices"]:
        lines += [
            "- containerEdits:",
            "    deviceNodes:",
            *nodes(device["containerEdits"]["deviceNodes"], "    "),
        ]
        lines.append(f"  name: {scalar(device['name'])}")
    lines.append(f"kind: {data['kind']}")
    return "\n".join(lines) + "\n"


def from_yaml(text: str) -> dict[str, Any]:
    """kind and device names of a CDI spec in YAML (PyYAML when the host's Python has it)."""
    try:
        import yaml

        loaded = yaml.safe_load(text)
        if isinstance(loaded, dict):
            return loaded
    except ImportError:
        pass
    kind = re.search(r"^kind:\s*['\"]?([^'\"\s]+)", text, re.M)
    names = re.findall(r"^(?:- |  )name:\s*['\"]?([^'\"\n]+?)['\"]?\s*$", text, re.M)
    return {"kind": kind.group(1) if kind else "", "devices": [{"name": n} for n in names]}


def cdi_generate(argv: list[str]) -> int:
    opts = options(
        argv, {"output", "format", "device-name-strategy", "driver-root", "mode"}, {"debug", "quiet"}
    )
    fmt = last(opts, "format", "yaml")
    if fmt not in ("yaml", "json"):
        raise Usage(f"invalid output format: {fmt}")
    strategy = last(opts, "device-name-strategy", "index")
    if strategy not in ("index", "uuid"):
        raise Usage(f"invalid device name strategy {strategy!r} (the stand-in knows index and uuid)")
    mode = last(opts, "mode", "auto")
    if mode not in ("auto", "nvml"):
        raise Fail(f"nvidia-ctk stand-in: --mode={mode} is not supported (auto and nvml are)")
    cfg = host_config()
    log(cfg, argv=["cdi", "generate", *argv])
    if not cfg.get("driver", True):
        sys.stderr.write(NO_NVML)
        return 1
    data = spec(list(cfg.get("gpus", [])), strategy)
    text = json.dumps(data, indent=2) + "\n" if fmt == "json" else to_yaml(data)
    output = last(opts, "output")
    if not output:
        sys.stdout.write(text)
        return 0
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    os.replace(tmp, path)
    sys.stderr.write(f'level=info msg="Generated CDI spec with version {CDI_VERSION}"\n')
    return 0


def cdi_list(argv: list[str]) -> int:
    opts = options(argv, {"spec-dir"}, {"debug", "quiet"})
    names = []
    for directory in opts.get("spec-dir", list(SPEC_DIRS)):
        base = Path(directory)
        if not base.is_dir():
            continue
        for path in sorted(base.iterdir()):
            if path.suffix not in (".yaml", ".yml", ".json"):
                continue
            try:
                text = path.read_text()
                data = json.loads(text) if path.suffix == ".json" else from_yaml(text)
            except (OSError, ValueError) as exc:
                sys.stderr.write(f'level=warning msg="failed to load CDI spec {path}: {exc}"\n')
                continue
            kind = str(data.get("kind", ""))
            names += [f"{kind}={d['name']}" for d in data.get("devices") or [] if "name" in d]
    sys.stderr.write(f'level=info msg="Found {len(names)} CDI devices"\n')
    sys.stdout.write("".join(f"{n}\n" for n in names))
    return 0


# -- runtime configure ----------------------------------------------------------------------------


def cri_plugin(text: str) -> str:
    version = re.search(r"^\s*version\s*=\s*(\d+)", text, re.M)
    if version and int(version.group(1)) >= 3:
        return "io.containerd.cri.v1.runtime"
    return "io.containerd.grpc.v1.cri"


def header(text: str, table: str) -> re.Match[str] | None:
    return re.search(r"^[ \t]*\[" + re.escape(table) + r"\][ \t]*(#.*)?$", text, re.M)


def parsed(text: str, plugin: str) -> dict[str, Any] | None:
    """The CRI plugin's ``containerd`` table as TOML sees it (None without tomllib)."""
    try:
        import tomllib
    except ImportError:
        return None
    table = tomllib.loads(text).get("plugins", {}).get(plugin, {}).get("containerd", {})
    return table if isinstance(table, dict) else {}


def configure(text: str, set_default: bool) -> str:
    """``text`` with the nvidia runtime (and the default runtime) configured; unchanged when it is."""
    if not text.strip():
        text = "version = 2\n"
    plugin = cri_plugin(text)
    containerd = f'plugins."{plugin}".containerd'
    runtime = f"{containerd}.runtimes.nvidia"
    seen = parsed(text, plugin)
    has_runtime = "nvidia" in seen.get("runtimes", {}) if seen is not None else header(text, runtime)
    if not has_runtime:
        # the runc runtime's SystemdCgroup setting carries over, as the real nvidia-ctk copies runc's options
        cgroup = ""
        runc = header(text, f"{containerd}.runtimes.runc.options")
        if runc:
            body = text[runc.end() :].split("\n[", 1)[0]
            found = re.search(r"^\s*SystemdCgroup\s*=\s*(true|false)", body, re.M)
            if found:
                cgroup = f"\n    SystemdCgroup = {found.group(1)}"
        if not text.endswith("\n"):
            text += "\n"
        text += (
            f"\n[{runtime}]\n"
            '  runtime_type = "io.containerd.runc.v2"\n'
            "\n"
            f"  [{runtime}.options]\n"
            f'    BinaryName = "{RUNTIME_BINARY}"{cgroup}\n'
        )
    seen = parsed(text, plugin)
    if set_default and not (seen is not None and seen.get("default_runtime_name") == "nvidia"):
        table = header(text, containerd)
        if table is None:
            text += f'\n[{containerd}]\n  default_runtime_name = "nvidia"\n'
        else:
            start = table.end()
            following = re.search(r"^[ \t]*\[", text[start:], re.M)
            end = start + following.start() if following else len(text)
            body = text[start:end]
            key = re.compile(r'^([ \t]*default_runtime_name[ \t]*=[ \t]*)"[^"\n]*"', re.M)
            if key.search(body):
                body = key.sub(lambda m: m.group(1) + '"nvidia"', body, count=1)
            else:
                body = '\n  default_runtime_name = "nvidia"' + body
            text = text[:start] + body + text[end:]
    return text


def runtime_configure(argv: list[str]) -> int:
    opts = options(
        argv,
        {"runtime", "config", "nvidia-runtime-path", "config-mode"},
        {"set-as-default", "nvidia-set-as-default", "dry-run", "cdi.enabled"},
    )
    runtime = last(opts, "runtime", "docker")
    if runtime != "containerd":
        raise Fail(f"nvidia-ctk stand-in: --runtime={runtime} is not supported (only containerd)")
    if last(opts, "nvidia-runtime-path", RUNTIME_BINARY) != RUNTIME_BINARY:
        raise Fail(f"nvidia-ctk stand-in: only --nvidia-runtime-path={RUNTIME_BINARY} is supported")
    if flag(opts, "cdi.enabled"):
        raise Fail("nvidia-ctk stand-in: --cdi.enabled is not supported")
    path = Path(last(opts, "config", CONTAINERD_CONFIG))
    try:
        before = path.read_text() if path.exists() else ""
    except OSError as exc:
        raise Fail(f'level=error msg="unable to load config for runtime containerd: {exc}"') from None
    try:
        import tomllib

        tomllib.loads(before)
    except ImportError:
        pass
    except ValueError as exc:
        raise Fail(f'level=error msg="unable to load config for runtime containerd: {exc}"') from None
    after = configure(before, flag(opts, "set-as-default", "nvidia-set-as-default"))
    if flag(opts, "dry-run"):
        sys.stdout.write(after)
        return 0
    if after != before:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(after)
        tmp.chmod(0o644)
        os.replace(tmp, path)
    sys.stderr.write(f'level=info msg="Wrote updated config to {path}"\n')
    sys.stderr.write('level=info msg="It is recommended that containerd daemon be restarted."\n')
    return 0


def main(argv: list[str]) -> int:
    try:
        if argv in (["--version"], ["-v"], ["version"]):
            sys.stdout.write(f"NVIDIA Container Toolkit CLI version {VERSION}\ncommit: {COMMIT}\n")
            return 0
        if argv[:2] == ["cdi", "generate"]:
            return cdi_generate(argv[2:])
        if argv[:2] == ["cdi", "list"]:
            return cdi_list(argv[2:])
        if argv[:2] == ["runtime", "configure"]:
            return runtime_configure(argv[2:])
        raise Usage(f"the nvidia-ctk stand-in does not implement {' '.join(argv) or '(no command)'!r}")
    except Usage as exc:
        sys.stderr.write(f"nvidia-ctk: {exc}\n")
        return 2
    except Fail as exc:
        sys.stderr.write(f"{exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
