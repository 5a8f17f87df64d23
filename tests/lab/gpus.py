"""GPU models the lab's hosts can pretend to have, and the ``--gpus`` spec that assigns them.

A spec gives each host its GPUs; host specs are separated by ``,`` and cycle over the hosts::

    RTX-4090:2                  every host: two RTX 4090, driver present
    A100-SXM4-80GB:8,none       odd hosts: eight A100, even hosts: no GPU at all
    RTX-4090:1+L4:2/nodriver    one RTX 4090 and two L4, but no NVIDIA driver (nvidia-smi fails)
    "My Card@12288:1"           a model not in the table, with its memory in MiB

Model names are matched loosely (``RTX 4090``, ``rtx-4090``, ``NVIDIA GeForce RTX 4090`` are one
model); the hosts always report the full marketing name, as nvidia-smi does.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

# name as nvidia-smi prints it -> memory.total (MiB), power limit (W), compute capability
MODELS: dict[str, tuple[int, int, str]] = {
    "NVIDIA GeForce RTX 4090": (24564, 450, "8.9"),
    "NVIDIA GeForce RTX 3090": (24576, 350, "8.6"),
    "NVIDIA A100-SXM4-80GB": (81920, 400, "8.0"),
    "NVIDIA A100-SXM4-40GB": (40960, 400, "8.0"),
    "NVIDIA A100-PCIE-40GB": (40960, 250, "8.0"),
    "NVIDIA H100 80GB HBM3": (81559, 700, "9.0"),
    "NVIDIA RTX A6000": (49140, 300, "8.6"),
    "NVIDIA A10": (23028, 150, "8.6"),
    "NVIDIA L4": (23034, 72, "8.9"),
    "Tesla T4": (15360, 70, "7.5"),
}
SHORT = {"A100": "NVIDIA A100-SXM4-80GB", "H100": "NVIDIA H100 80GB HBM3", "A6000": "NVIDIA RTX A6000"}
DEFAULT_SPEC = "RTX-4090:1"
# PCI bus numbers as they appear on an 8-GPU server board, then made-up ones.
_BUSES = (0x07, 0x0F, 0x47, 0x4E, 0x87, 0x90, 0xB7, 0xBD)


def _key(name: str) -> str:
    words = re.split(r"[\s_-]+", name.strip().lower())
    return "-".join(w for w in words if w and w not in ("nvidia", "geforce", "tesla"))


_BY_KEY = {_key(n): n for n in MODELS} | {_key(k): v for k, v in SHORT.items()}


@dataclass(frozen=True)
class GpuModel:
    name: str
    memory_mib: int
    power_limit_w: int = 300
    compute_cap: str = "8.0"


def model(name: str) -> GpuModel:
    """``"RTX 4090"`` -> the RTX 4090; ``"Name@MiB"`` for a model the table lacks."""
    name, _, mem = name.partition("@")
    full = _BY_KEY.get(_key(name))
    if full is not None:
        memory, power, cap = MODELS[full]
        return GpuModel(full, int(mem) if mem else memory, power, cap)
    if not mem:
        known = ", ".join(sorted(MODELS))
        raise ValueError(f"unknown GPU model {name!r}: give its memory as {name}@MiB, or one of: {known}")
    return GpuModel(name.strip(), int(mem))


@dataclass(frozen=True)
class HostGpus:
    """What one host has: its GPUs (in index order) and whether the NVIDIA driver is present."""

    models: tuple[GpuModel, ...] = ()
    driver: bool = True

    @classmethod
    def parse(cls, spec: str) -> HostGpus:
        spec = spec.strip()
        driver = True
        if spec.endswith("/nodriver"):
            spec, driver = spec[: -len("/nodriver")], False
        if spec.lower() in ("", "none", "0"):
            return cls((), driver)
        models: list[GpuModel] = []
        for item in spec.split("+"):
            name, _, count = item.rpartition(":") if ":" in item else (item, "", "1")
            if not count.isdigit():
                raise ValueError(f"bad GPU count in {item!r} (MODEL[:COUNT])")
            models += [model(name)] * int(count)
        return cls(tuple(models), driver)

    def records(self, host: str) -> list[dict[str, Any]]:
        """Per-GPU facts for the host's config: stable UUIDs and bus ids, derived from the host name."""
        out = []
        for index, gpu in enumerate(self.models):
            bus = _BUSES[index] if index < len(_BUSES) else 0x10 + index
            out.append(
                {
                    "index": index,
                    "name": gpu.name,
                    "memory_mib": gpu.memory_mib,
                    "power_limit_w": gpu.power_limit_w,
                    "compute_cap": gpu.compute_cap,
                    "uuid": "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"worldland-lab/{host}/{index}")),
                    "pci_bus_id": f"00000000:{bus:02X}:00.0",
                    "serial": str(
                        1320000000000 + int(uuid.uuid5(uuid.NAMESPACE_URL, host).int % 10**9) + index
                    ),
                }
            )
        return out

    def __str__(self) -> str:
        if not self.models:
            text = "none"
        else:
            counts: dict[str, int] = {}
            for gpu in self.models:
                counts[gpu.name] = counts.get(gpu.name, 0) + 1
            text = "+".join(f"{name}:{count}" for name, count in counts.items())
        return text if self.driver else text + "/nodriver"


@dataclass
class GpuPlan:
    """A spec for a whole lab: host ``i`` (0-based) gets ``hosts[i % len(hosts)]``."""

    hosts: list[HostGpus] = field(default_factory=lambda: [HostGpus.parse(DEFAULT_SPEC)])

    @classmethod
    def parse(cls, spec: str | HostGpus | list[str | HostGpus] | GpuPlan | None) -> GpuPlan:
        if spec is None:
            return cls()
        if isinstance(spec, GpuPlan):
            return spec
        if isinstance(spec, HostGpus):
            return cls([spec])
        items = spec.split(",") if isinstance(spec, str) else spec
        hosts = [item if isinstance(item, HostGpus) else HostGpus.parse(item) for item in items]
        if not hosts:
            raise ValueError("empty GPU spec")
        return cls(hosts)

    def for_host(self, index: int) -> HostGpus:
        return self.hosts[index % len(self.hosts)]
