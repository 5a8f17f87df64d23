"""The provider agent on the lab hosts: the wheelhouse the ``worldland_agent`` role installs from, the GPUs
the agent sees, the inventory ``install_agent.yml`` runs with, and the registrations the agents send."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from demo.children import Children, DemoError

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
HOST_PYTHON = "/usr/bin/python3"  # what the lab hosts run Python with (this machine's /usr)
AGENT_UNIT = "worldland-provider.service"
AGENT_LOG = f"/var/log/worldland/{AGENT_UNIT}.log"  # where the lab's systemctl puts a unit's output
# the lab's nvidia-smi, on the agent's PATH only: what the GPU owner's own driver is in a real deployment
LAB_DRIVER_BIN = "/opt/worldland-lab/provider-driver/bin"
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # systemd's default
STANDINS = REPO / "tests" / "lab" / "standins"
# price per GPU hour the agents offer (the agent sends those of the models it found)
GPU_PRICES = {"RTX-4090": 0.45, "A100-SXM4-80GB": 1.6, "H100-80GB-HBM3": 2.4}


def wallet_for(host_name: str) -> str:
    """A made-up wallet address per host, EIP-55 checksummed as a real one is."""
    from worldland.protocol.messages import eip55_checksum

    digest = hashlib.sha256(f"worldland-demo {host_name}".encode()).hexdigest()
    return eip55_checksum("0x" + digest[:40])


def build_wheelhouse(children: Children, out: Path, cache: Path) -> tuple[int, bool]:
    """worldland and its dependencies as wheels for the hosts' Python, in ``out``. The dependencies' wheels
    are kept in ``cache/<key>`` until pyproject.toml changes; worldland's own is built from this checkout
    every time. Returns (wheels, whether the dependencies came from the cache)."""
    out.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes() + HOST_PYTHON.encode()).hexdigest()[:16]
    cached = cache / key
    dependencies = sorted(cached.glob("*.whl")) if cached.is_dir() else []
    for wheel in dependencies:
        shutil.copy2(wheel, out)
    pip = [str(BIN / "pip"), "--python", HOST_PYTHON, "wheel", "--quiet", "--disable-pip-version-check"]
    argv = [*pip, *(["--no-deps"] if dependencies else []), "--wheel-dir", str(out), str(REPO)]
    proc = children.run(argv, timeout=300, what="pip wheel")
    if proc.returncode != 0:
        raise DemoError(f"building the wheelhouse failed: {(proc.stderr or proc.stdout).strip()[-600:]}")
    if not dependencies:  # keep them for the next run (another run may have filled the cache meanwhile)
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache))
        for wheel in out.glob("*.whl"):
            if not wheel.name.startswith("worldland-"):
                shutil.copy2(wheel, staging)
        with contextlib.suppress(OSError):
            staging.rename(cached)
        shutil.rmtree(staging, ignore_errors=True)
    return len(list(out.glob("*.whl"))), bool(dependencies)


def give_agent_the_driver(host: Any) -> None:
    """The lab's nvidia-smi on the agent's PATH (a drop-in of its unit), nowhere else on the host.

    Before onboard.yml installs the NVIDIA driver package, a lab host's stand-in GPUs answer nothing: a GPU
    owner's machine runs the vendor's driver already, and this is that driver for the agent."""
    wrapper = host.private_path(f"{LAB_DRIVER_BIN}/nvidia-smi")
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(
        "#!/bin/sh\n"
        "# worldland demo: the lab's nvidia-smi stand-in (tests/lab/standins/nvidia_smi.py)\n"
        f"WORLDLAND_LAB_HOST_CONFIG={shlex.quote(str(host.config_path))}\n"
        "export WORLDLAND_LAB_HOST_CONFIG\n"
        f'exec {shlex.quote(host.lab.python)} {shlex.quote(str(STANDINS / "nvidia_smi.py"))} "$@"\n'
    )
    wrapper.chmod(0o755)
    drop_in = host.private_path(f"/etc/systemd/system/{AGENT_UNIT}.d/10-worldland-demo-gpus.conf")
    drop_in.parent.mkdir(parents=True, exist_ok=True)
    drop_in.write_text(
        "# worldland demo: the agent finds the lab host's stand-in GPUs with this nvidia-smi\n"
        f"[Service]\nEnvironment=PATH={LAB_DRIVER_BIN}:{SERVICE_PATH}\n"
    )


def write_inventory(path: Path, env: Any, wheelhouse: Path, heartbeat_interval: float) -> Path:
    """A static inventory of the lab hosts (they are not providers yet) with the role's variables."""
    hosts = {
        host.name: {
            "ansible_host": host.address,
            "worldland_agent_public_ip": host.address,  # a lab host has no default route to take it from
            "worldland_agent_wallet_addr": wallet_for(host.name),
        }
        for host in env.lab.hosts
    }
    variables = {
        **env.connection_vars(),
        "worldland_agent_wheelhouse": str(wheelhouse),
        "worldland_agent_redis_url": env.redis.url_at(env.lab.gateway),
        "worldland_agent_heartbeat_interval": heartbeat_interval,
        "worldland_agent_gpu_prices": GPU_PRICES,
    }
    path.write_text(yaml.safe_dump({"all": {"hosts": hosts, "vars": variables}}, sort_keys=False))
    return path


def registrations(client: Any, host_names: list[str]) -> dict[str, dict[str, Any]] | None:
    """The newest registration of each host in the registration stream, by host name, once every host has
    sent one (None before)."""
    from worldland.protocol.streams import StreamNames

    found: dict[str, dict[str, Any]] = {}
    for _, fields in client.xrange(StreamNames().registration):
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            message = json.loads(fields.get(b"data") or fields.get("data"))
            found[str(message["spec"]["hostname"])] = message
    return found if all(name in found for name in host_names) else None


def gpus_found(message: dict[str, Any]) -> str:
    """``2 x NVIDIA GeForce RTX 4090`` from a registration's ``spec.gpus``."""
    names: dict[str, int] = {}
    for gpu in (message.get("spec") or {}).get("gpus") or []:
        if isinstance(gpu, dict):
            names[str(gpu.get("name"))] = names.get(str(gpu.get("name")), 0) + 1
    return ", ".join(f"{count} x {name}" for name, count in names.items()) or "no GPU"


def agent_log(host: Any, lines: int = 6) -> str:
    out = host.run(f"tail -n {lines} {AGENT_LOG}", check=False).stdout.strip()
    return f"{host.name}'s agent log: {' | '.join(out.splitlines())}" if out else f"{host.name}: no agent log"
