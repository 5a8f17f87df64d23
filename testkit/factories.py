"""Valid wire messages for tests and benchmarks, built as the Go agent would send them."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from worldland.domain.registration import Registration, parse_registration


def wallet_for(seed: str) -> str:
    """A valid (all lower-case, so checksum-free) wallet address derived from ``seed``."""
    return "0x" + hashlib.sha1(seed.encode()).hexdigest()  # noqa: S324 - an id, not security


def registration_dict(
    provider_id: str,
    *,
    hostname: str | None = None,
    gpu_name: str = "NVIDIA GeForce RTX 4090",
    gpus: int = 4,
    cpu_cores: int = 32,
    memory_mb: int = 131072,
    public_ip: str = "123.45.67.89",
    wallet: str | None = None,
) -> dict[str, Any]:
    return {
        "provider_id": provider_id,
        "wallet_addr": wallet or wallet_for(provider_id),
        "spec": {
            "hostname": hostname or f"host-{hashlib.sha1(provider_id.encode()).hexdigest()[:8]}",  # noqa: S324
            "os": "Ubuntu 22.04.4 LTS",
            "kernel_ver": "5.15.0-105-generic",
            "architecture": "x86_64",
            "cpu_model": "AMD EPYC 7543 32-Core Processor",
            "cpu_cores": cpu_cores,
            "cpu_threads": cpu_cores * 2,
            "total_memory_mb": memory_mb,
            "gpus": [
                {
                    "index": i,
                    "name": gpu_name,
                    "memory_mb": 24576,
                    "uuid": f"GPU-{provider_id}-{i}"[:64],
                    "driver_ver": "550.54.15",
                    "cuda_version": "12.4",
                    "pci_bus_id": f"00000000:{i:02X}:00.0",
                }
                for i in range(gpus)
            ],
            "total_gpus": gpus,
            "total_disk_gb": 1800,
            "available_disk_gb": 1500,
            "public_ip": public_ip,
        },
        "capacity": {"gpu_price_per_hour": 0.5},
        "agent_version": "1.0.0",
        "timestamp": "2026-11-26T09:15:02.123456789Z",
    }


def registration(provider_id: str, **kwargs: Any) -> Registration:
    return parse_registration(json.dumps(registration_dict(provider_id, **kwargs)))


def heartbeat_dict(provider_id: str, **fields: Any) -> dict[str, Any]:
    """A heartbeat as the Go agent sends it, for an 8-GPU machine."""
    return {
        "provider_id": provider_id,
        "node_name": f"rig-{provider_id}",
        "status": "available",
        "gpu_usage": [12.5] * 8,
        "cpu_usage": 7.25,
        "memory_usage": 31.0,
        "active_jobs": 1,
        "timestamp": "2026-11-26T09:20:32.5Z",
        **fields,
    }
