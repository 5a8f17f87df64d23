"""nvidia-smi stand-in: the host's configured GPUs in nvidia-smi's own output formats.

Supported: ``-L``; ``--query-gpu=FIELDS --format=csv[,noheader][,nounits]`` (any order and subset of
the fields below); ``-i/--id``; ``--version``; the default table (driver 550 layout, 91 columns).
Without a driver it fails as nvidia-smi does (message on stdout, exit status 9); with a driver but no
GPU it prints "No devices were found" (exit status 6).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from _common import config, log

NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n"
)
BAD_ARGS = "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.\n"

# canonical field -> (unit for csv headers and values, or ""), plus accepted aliases
FIELDS: dict[str, str] = {
    "timestamp": "",
    "driver_version": "",
    "count": "",
    "name": "",
    "serial": "",
    "uuid": "",
    "pci.bus_id": "",
    "index": "",
    "vbios_version": "",
    "compute_cap": "",
    "persistence_mode": "",
    "pstate": "",
    "compute_mode": "",
    "mig.mode.current": "",
    "fan.speed": "%",
    "temperature.gpu": "",
    "utilization.gpu": "%",
    "utilization.memory": "%",
    "memory.total": "MiB",
    "memory.used": "MiB",
    "memory.free": "MiB",
    "memory.reserved": "MiB",
    "power.draw": "W",
    "power.limit": "W",
}
ALIASES = {
    "gpu_name": "name",
    "gpu_serial": "serial",
    "gpu_uuid": "uuid",
    "gpu_bus_id": "pci.bus_id",
    "pstate": "pstate",
    "temperature.gpu": "temperature.gpu",
    "enforced.power.limit": "power.limit",
}


def value(field: str, gpu: dict[str, Any], cfg: dict[str, Any], count: int) -> str:
    datacenter = not gpu["name"].startswith("NVIDIA GeForce")
    values: dict[str, Any] = {
        "timestamp": time.strftime("%Y/%m/%d %H:%M:%S.000"),
        "driver_version": cfg["driver_version"],
        "count": count,
        "name": gpu["name"],
        "serial": gpu["serial"] if datacenter else "[N/A]",
        "uuid": gpu["uuid"],
        "pci.bus_id": gpu["pci_bus_id"],
        "index": gpu["index"],
        "vbios_version": "94.02.5C.00.02",
        "compute_cap": gpu["compute_cap"],
        "persistence_mode": "Enabled" if datacenter else "Disabled",
        "pstate": "P8",
        "compute_mode": "Default",
        "mig.mode.current": "Disabled" if gpu["name"].startswith(("NVIDIA A100", "NVIDIA H100")) else "[N/A]",
        "fan.speed": "[N/A]" if datacenter else 0,
        "temperature.gpu": 31,
        "utilization.gpu": 0,
        "utilization.memory": 0,
        "memory.total": gpu["memory_mib"],
        "memory.used": 1,
        "memory.free": gpu["memory_mib"] - 1 - reserved(gpu),
        "memory.reserved": reserved(gpu),
        "power.draw": f"{gpu['power_limit_w'] * 0.07:.2f}",
        "power.limit": f"{gpu['power_limit_w']:.2f}",
    }
    return str(values[field])


def reserved(gpu: dict[str, Any]) -> int:
    return min(526, gpu["memory_mib"] // 40)


def csv(fields: list[str], gpus: list[dict[str, Any]], cfg: dict[str, Any], fmt: set[str]) -> str:
    lines = []
    if "noheader" not in fmt:
        lines.append(", ".join(f"{f} [{FIELDS[f]}]" if FIELDS[f] else f for f in fields))
    for gpu in gpus:
        cells = []
        for f in fields:
            text = value(f, gpu, cfg, len(gpus))
            if FIELDS[f] and "nounits" not in fmt and not text.startswith("["):
                text = f"{text} {FIELDS[f]}"
            cells.append(text)
        lines.append(", ".join(cells))
    return "\n".join(lines) + "\n"


def table(gpus: list[dict[str, Any]], cfg: dict[str, Any]) -> str:
    """The default view, laid out as driver 550's nvidia-smi lays it out (91 columns)."""
    rule = "+" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "+"
    ver, cuda = cfg["driver_version"], cfg["cuda_version"]
    out = [
        time.strftime("%a %b %d %H:%M:%S %Y") + " " * 7,
        "+" + "-" * 89 + "+",
        f"| NVIDIA-SMI {ver:<23}Driver Version: {ver:<15}CUDA Version: {cuda:<9}|",
        "|" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "|",
        "| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |",
        "| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |",
        "|                                         |                        |               MIG M. |",
        "|" + "=" * 41 + "+" + "=" * 24 + "+" + "=" * 22 + "|",
    ]
    for gpu in gpus:
        datacenter = not gpu["name"].startswith("NVIDIA GeForce")
        name = gpu["name"] if len(gpu["name"]) <= 28 else gpu["name"][:25] + "..."
        pm = "On" if datacenter else "Off"
        ecc = "0" if datacenter else "N/A"
        mig = value("mig.mode.current", gpu, cfg, len(gpus)).strip("[]")
        fan = "N/A" if datacenter else "0%"
        draw, cap = round(gpu["power_limit_w"] * 0.07), gpu["power_limit_w"]
        out += [
            f"|{gpu['index']:>4}  {name:<28}{pm:>5}  |{gpu['pci_bus_id']:>19} {'Off':>3} |{ecc:>21} |",
            f"|{fan:>4}{'31C':>6}{'P8':>6}{f'{draw}W':>16} / {f'{cap}W':>5} |"
            f"{'1MiB':>11} / {str(gpu['memory_mib']) + 'MiB':>9} |{'0%':>8}{'Default':>13} |",
            f"|{'':41}|{'':24}|{mig:>21} |",
            rule,
        ]
    out += [
        " " * 91,
        "+" + "-" * 89 + "+",
        "| " + f"{'Processes:':<88}|",
        "|  GPU   GI   CI        PID   Type   Process name                              GPU Memory |",
        "|        ID   ID                                                               Usage      |",
        "|" + "=" * 89 + "|",
        "| " + f"{' No running processes found':<88}|",
        "+" + "-" * 89 + "+",
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    cfg = config()
    log(cfg, "nvidia-smi", argv=argv)
    mode, fields, fmt, ids = "table", [], set(), None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-L", "--list-gpus"):
            mode = "list"
        elif arg == "--version":
            mode = "version"
        elif arg in ("-h", "--help"):
            sys.stdout.write("NVIDIA System Management Interface -- v" + cfg["driver_version"] + "\n")
            return 0
        elif arg.startswith("--query-gpu="):
            mode, fields = "query", [f.strip() for f in arg.split("=", 1)[1].split(",") if f.strip()]
        elif arg.startswith("--format="):
            fmt = {f.strip() for f in arg.split("=", 1)[1].split(",")}
        elif arg in ("-i", "--id") and i + 1 < len(argv):
            ids, i = argv[i + 1], i + 1
        elif arg.startswith("--id="):
            ids = arg.split("=", 1)[1]
        else:
            sys.stdout.write(BAD_ARGS)
            return 2
        i += 1
    if not cfg["driver"]:
        sys.stdout.write(NO_DRIVER)
        return 9
    if mode == "version":
        ver = cfg["driver_version"]
        sys.stdout.write(
            f"NVIDIA-SMI version  : {ver}\nNVML version        : {ver.rsplit('.', 1)[0]}\n"
            f"DRIVER version      : {ver}\nCUDA Version        : {cfg['cuda_version']}\n"
        )
        return 0
    gpus = cfg["gpus"]
    if ids is not None:
        wanted = {s.strip() for s in ids.split(",")}
        gpus = [
            g for g in gpus if str(g["index"]) in wanted or g["uuid"] in wanted or g["pci_bus_id"] in wanted
        ]
        if not gpus:
            sys.stdout.write("No devices were found\n")
            return 6
    if not gpus:
        sys.stdout.write("No devices were found\n")
        return 6
    if mode == "list":
        sys.stdout.write("".join(f"GPU {g['index']}: {g['name']} (UUID: {g['uuid']})\n" for g in gpus))
    elif mode == "query":
        if not fmt & {"csv"}:
            sys.stdout.write(
                "'--format' option is required with '--query-gpu'. Please run 'nvidia-smi -h'.\n"
            )
            return 2
        canonical = []
        for f in fields:
            name = ALIASES.get(f, f)
            if name not in FIELDS:
                sys.stdout.write(f'Field "{f}" is not a valid field to query.\n\n')
                return 2
            canonical.append(name)
        sys.stdout.write(csv(canonical, gpus, cfg, fmt))
    else:
        sys.stdout.write(table(gpus, cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
