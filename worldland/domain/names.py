"""Names that leave this system: canonical GPU models, Kubernetes node names and label values."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from worldland.protocol.status import Status

# Vendor and brand words carry no information about the product (DESIGN.md, "Names and labels").
VENDOR_WORDS = frozenset({"nvidia", "geforce", "tesla", "quadro"})
LABEL_VALUE_MAX = 63
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
GPU_RESOURCE = "nvidia.com/gpu"  # the extended resource NVIDIA's device plugin advertises per GPU
# An Offline provider's node takes no new pods: this taint, removed when it comes back.
OFFLINE_TAINT_KEY = "worldland.io/offline"
OFFLINE_TAINT_EFFECT = "NoSchedule"
LAST_HEARTBEAT_RESOLUTION_S = 600  # worldland.io/last-heartbeat is rounded down to this

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


class UnknownGpuModel(ValueError):
    """A GPU name that names no model: empty, punctuation only, or only vendor and brand words."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


# Canonical names are matched without regard to case: every word of a model is upper-cased (RTX, SXM4,
# 80GB, SUPER, TITAN), except these words, which NVIDIA spells in mixed or lower case (keys lower-case).
# A word is a piece between "-" or spaces, so "Max-Q" is "Max" and "Q". One spelling per word: nvidia-smi
# writes "PCIE" in "Tesla V100-PCIE-32GB" but "PCIe" in "NVIDIA H100 PCIe"; both become "PCIe".
_MIXED_CASE_WORDS = {
    w.lower(): w
    for w in (
        "Ti", "PCIe", "Ada", "Generation", "Laptop", "Max", "with", "Design", "Mobile", "Embedded",
        "Xp", "Pascal", "Rev", "Blackwell", "Workstation", "Server", "Edition", "Display", "Graphics",
        "Device", "HBM3e", "Orin", "nvgpu",
    )
}  # fmt: skip
# MIG profiles stay lower case (``1g.10gb``, ``1c.2g.20gb``), as do their ``+me``/``+gfx`` options (the
# "+" becomes a word break). Bounded digits keep a cut-down long word from ever looking like a profile.
_MIG_PROFILE = re.compile(r"(?:\d{1,2}c\.)?\d{1,2}g\.\d{1,3}gb\Z")
_MIG_OPTIONS = frozenset({"me", "gfx"})
_LONG_MODEL_SUFFIX = 6  # hex digits of the hash that ends a shortened name


def _quoted(name: str) -> str:
    shown = name if len(name) <= 80 else name[:80] + "..."
    return json.dumps(shown)


def _canonical_word(word: str, previous: str | None) -> str:
    lower = word.lower()
    if _MIG_PROFILE.match(lower) or (lower in _MIG_OPTIONS and previous and _MIG_PROFILE.match(previous)):
        return lower
    return _MIXED_CASE_WORDS.get(lower, word.upper())


@functools.lru_cache(maxsize=4096)  # a fleet has few distinct models; listings ask for them per provider
def canonical_gpu_model(name: str) -> str:
    """The canonical model name used everywhere: labels, capacity maps, prices, inventory groups.

    ``NVIDIA GeForce RTX 4090`` -> ``RTX-4090``; ``NVIDIA H100 80GB HBM3`` -> ``H100-80GB-HBM3``;
    ``nvidia geforce rtx 3060 ti`` -> ``RTX-3060-Ti``. The name is cut into words at spaces, ``-`` and
    characters a label value cannot hold; vendor and brand words are dropped; each word gets its one
    spelling, whatever the input's case (upper case unless NVIDIA spells it otherwise: ``Ti``, ``PCIe``,
    ``Ada``, ``1g.10gb``); the words are joined by ``-``. The result is a valid label value, and the
    canonical name of a canonical name is itself. Raises ``UnknownGpuModel`` when no word is left.
    """
    pieces = [p.strip("._") for p in _NOT_LABEL_CHARS.sub("-", name).split("-")]
    pieces = [p for p in pieces if p]
    words: list[str] = []
    for piece in pieces:
        if piece.lower() not in VENDOR_WORDS:
            words.append(_canonical_word(piece, words[-1] if words else None))
    if not words:
        if pieces:
            raise UnknownGpuModel(name, f"{_quoted(name)} names no GPU model (only vendor or brand words)")
        raise UnknownGpuModel(name, f"{_quoted(name)} names no GPU model")
    value = "-".join(words)
    if len(value) > LABEL_VALUE_MAX:
        # Cut at a word boundary, so every kept word keeps its spelling and the result stays canonical;
        # the hash is taken on the case-normalised name, so case variants of a long name agree.
        suffix = _digest(value, _LONG_MODEL_SUFFIX).upper()
        room = LABEL_VALUE_MAX - len(suffix) - 1
        kept: list[str] = []
        for word in words:
            if len("-".join([*kept, word])) > room:
                break
            kept.append(word)
        # Only a first word longer than the room is cut; its head is spelled again ("TI....X" -> "Ti").
        head = "-".join(kept) if kept else _canonical_word(words[0][:room].rstrip("._"), None)
        value = f"{head}-{suffix}" if head else suffix
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


@dataclass(frozen=True, slots=True)
class DesiredNode:
    """What a provider's node must carry: labels (None: absent) and whether it has the offline taint."""

    labels: dict[str, str | None]
    offline_taint: bool


def desired_node(
    provider_id: str,
    gpu_models: Iterable[str],
    status: str,
    *,
    last_beat: float | None,
    active_jobs: int | None,
) -> DesiredNode:
    """The one rule for a node's labels and taint, from the provider's state and last heartbeat.

    The listener's reconcile and the audit both write this, so a node never depends on which of them
    touched it last. ``worldland.io/active-jobs`` and ``worldland.io/last-heartbeat`` (rounded down to
    ``LAST_HEARTBEAT_RESOLUTION_S``, so they change rarely) are absent until the first beat.
    """
    labels: dict[str, str | None] = dict(node_labels(provider_id, gpu_models, status))
    beaten = last_beat is not None
    labels[LABEL_ACTIVE_JOBS] = str(int(active_jobs or 0)) if beaten else None
    labels[LABEL_LAST_HEARTBEAT] = (
        heartbeat_label_value(last_beat, LAST_HEARTBEAT_RESOLUTION_S) if last_beat is not None else None
    )
    return DesiredNode(labels, offline_taint=status == Status.OFFLINE)


def heartbeat_label_value(epoch: float, resolution_s: int) -> str:
    """``worldland.io/last-heartbeat``: the beat time rounded down to ``resolution_s``, in UTC, as
    ``YYYYMMDDTHHMMZ`` (ISO 8601 basic form; a label value holds no ``:``)."""
    if resolution_s < 60:
        raise ValueError(f"resolution_s must be at least 60, not {resolution_s}")
    moment = datetime.fromtimestamp(epoch - epoch % resolution_s, UTC)
    return moment.strftime("%Y%m%dT%H%MZ")


def is_node_name(value: object) -> bool:
    """Whether ``value`` has the form ``node_name`` gives node names (an RFC 1123 label)."""
    return isinstance(value, str) and bool(_DNS_LABEL_RE.match(value))


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
