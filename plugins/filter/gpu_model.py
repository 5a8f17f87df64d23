"""The ``worldland.provider.gpu_model`` filter: a raw GPU name as its canonical model (DESIGN.md)."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError

try:
    from worldland.domain.names import UnknownGpuModel, canonical_gpu_model
except ImportError as _error:  # reported when used, so ansible-doc still works without it
    IMPORT_ERROR: ImportError | None = _error
else:
    IMPORT_ERROR = None


def gpu_model(name: object) -> str:
    """``"NVIDIA GeForce RTX 4090" | worldland.provider.gpu_model`` -> ``"RTX-4090"``."""
    if IMPORT_ERROR is not None:
        raise AnsibleFilterError(f"gpu_model needs the worldland Python package: {IMPORT_ERROR}")
    if not isinstance(name, str):
        raise AnsibleFilterError(f"gpu_model: expects a GPU name (a string), not {type(name).__name__}")
    try:
        return canonical_gpu_model(name)
    except UnknownGpuModel as exc:
        raise AnsibleFilterError(f"gpu_model: {exc}") from None


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"gpu_model": gpu_model}
