"""Names that leave this system: canonical GPU models, Kubernetes node names and label values."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from datetime import UTC, datetime

# Vendor and brand words carry no information about the product (DESIGN.md, "Names and labels").
VENDOR_WORDS = frozenset({"nvidia", "geforce", "tesla", "quadro"})
LABEL_VALUE_MAX = 63
UNKNOWN_GPU_MODEL = "unknown"
MAX_NODE_NAME_ATTEMPT = 20  # the suffix grows 2 hex digits per attempt and must leave room

# Node labels (DESIGN.md, "Names and labels"), applied from the control-plane side.
LABEL_RENTAL_TYPE = "worldland.io/rental-type"
LABEL_PROVIDER_ID = "worldland.io/provider-id"
LABEL_GPU_MODEL = "worldland.io/gpu-model"
LABEL_RENTAL_STATUS = "worldland.io/rental-status"
# Written by the audit only when their value changes (never per heartbeat): docs/audit.md.
LABEL_ACTIVE_JOBS = "worldland.io/active-jobs"
LABEL_LAST_HEARTBEAT = "worldland.io/last-heartbeat"
RENTAL_TYPE_GPU = "gpu"

_LABEL_VALUE_RE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?\Z")
_NOT_LABEL_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_NOT_DNS_CHARS = re.compile(r"[^a-z0-9-]+")
_RUNS_OF_DASHES = re.compile(r"-{2,}")
_DNS_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def is_label_value(value: str) -> bool:
    """True when ``value`` is a valid Kubernetes label value (<= 63 chars, alphanumeric at both ends)."""
    return len(value) <= LABEL_VALUE_MAX and bool(_LABEL_VALUE_RE.match(value))


def label_value(text: str) -> str:
    """``text`` as a valid label value: unchanged when already valid, else sanitised with a hash suffix.

    The suffix keeps two different inputs from mapping to the same value after sanitising.
    """
    if is_label_value(text):
        return text
    cleaned = _RUNS_OF_DASHES.sub("-", _NOT_LABEL_CHARS.sub("-", text)).strip("-._")
    suffix = _digest(text, 8)
    cleaned = cleaned[: LABEL_VALUE_MAX - len(suffix) - 1].rstrip("-._")
    return f"{cleaned}-{suffix}" if cleaned else suffix


@functools.lru_cache(maxsize=4096)  # a fleet has few distinct models; listings ask for them per provider
def canonical_gpu_model(name: str) -> str:
    """The canonical model name used everywhere: labels, capacity maps, prices, inventory groups.

    ``NVIDIA GeForce RTX 4090`` -> ``RTX-4090``; ``NVIDIA H100 80GB HBM3`` -> ``H100-80GB-HBM3``.
    Vendor and brand words are dropped, the vendor's own case is kept, the rest joined by ``-``;
    the result is always a valid label value.
    """
    # Clean each word before the vendor check, so "NVIDIA," is dropped too and the result is idempotent
    # (before, "NVIDIA-" became "NVIDIA", which in turn became "unknown").
    words = [_NOT_LABEL_CHARS.sub("-", w).strip("-._") for w in name.split()]
    joined = "-".join(w for w in words if w and w.lower() not in VENDOR_WORDS)
    value = _RUNS_OF_DASHES.sub("-", joined).strip("-._")
    if not value:
        return UNKNOWN_GPU_MODEL
    if len(value) > LABEL_VALUE_MAX:
        suffix = _digest(value, 6)
        value = f"{value[: LABEL_VALUE_MAX - 7].rstrip('-._')}-{suffix}"
    return value


@functools.lru_cache(maxsize=4096)
def gpu_model_group(model: str) -> str:
    """Inventory group name for a canonical GPU model (``RTX-4090`` -> ``gpu_RTX_4090``)."""
    return "gpu_" + re.sub(r"[^A-Za-z0-9_]", "_", model)


def node_labels(provider_id: str, gpu_models: Iterable[str], status: str) -> dict[str, str]:
    """The node labels of a provider: the one description used by the inventory, the listener and audits.

    ``gpu_models`` are the provider's canonical models; a label holds one value, so a machine with
    several models is labelled with the first in sorted order (stable as long as its hardware is).
    ``worldland.io/gpu-model`` is left out for a machine without GPUs. Every value is a valid label value.
    """
    models = sorted({canonical_gpu_model(m) for m in gpu_models})
    labels = {
        LABEL_RENTAL_TYPE: RENTAL_TYPE_GPU,
        LABEL_PROVIDER_ID: label_value(provider_id),
    }
    if models:
        labels[LABEL_GPU_MODEL] = models[0]
    labels[LABEL_RENTAL_STATUS] = label_value(str(status))
    return labels


def heartbeat_label_value(epoch: float, resolution_s: int) -> str:
    """``worldland.io/last-heartbeat``: the beat time rounded down to ``resolution_s``, in UTC, as
    ``YYYYMMDDTHHMMZ`` (ISO 8601 basic form; a label value holds no ``:``)."""
    if resolution_s < 60:
        raise ValueError(f"resolution_s must be at least 60, not {resolution_s}")
    moment = datetime.fromtimestamp(epoch - epoch % resolution_s, UTC)
    return moment.strftime("%Y%m%dT%H%MZ")


def node_name(hostname: str, provider_id: str, attempt: int = 0) -> str:
    """A valid Kubernetes node name (RFC 1123 label) for a provider: ``<hostname>-<hash of id>``.

    ``attempt`` lengthens the hash suffix so a collision with another provider can be resolved.
    """
    if not 0 <= attempt <= MAX_NODE_NAME_ATTEMPT:
        raise ValueError(f"attempt must be 0 to {MAX_NODE_NAME_ATTEMPT}, not {attempt}")
    suffix = _digest(provider_id, 6 + 2 * attempt)
    base = _RUNS_OF_DASHES.sub("-", _NOT_DNS_CHARS.sub("-", hostname.lower())).strip("-")
    base = base[: 63 - len(suffix) - 1].rstrip("-")
    name = f"{base}-{suffix}" if base else f"node-{suffix}"
    assert _DNS_LABEL_RE.match(name), name
    return name
