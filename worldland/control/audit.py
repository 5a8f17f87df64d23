"""One heartbeat audit pass (``worldland audit``; run every minute by cron: docs/audit.md).

A pass, under a Redis lock so that concurrent runs (cron on several control hosts) skip instead of
applying twice:

1. **Recover**: an Offline provider whose last heartbeat is fresh and newer than its going Offline
   returns to the live state it had before (normally the listener does this when the beat arrives;
   the audit is the safety net, with the same compare-and-set, so either order gives one result).
2. **Offline**: a provider in any live state (Approved, Joined, Available) becomes Offline when its
   last heartbeat is more than ``stale_after`` seconds old or, if it has not beaten since its
   approval, when its ``grace`` period from approval has run out. The decision and the transition
   are one Lua script (the rule lives there only), so a beat arriving meanwhile always wins.
3. **Promote**: Approved/Joined providers move on as their nodes appear and become Ready with GPUs:
   ``Onboarding.advance_nodes``, the same code the listener's reconcile runs.
4. **Sync nodes**: every provider marked in ``Keys.node_sync`` (by any transition involving a node
   state, and by a heartbeat whose active jobs changed) gets its node's labels and the
   ``worldland.io/offline:NoSchedule`` taint brought in line with its state. A mark is removed only
   when its node was synced with the state read after the mark; when Kubernetes cannot be reached (or
   no kubeconfig is given) the marks stay: they are the pending writes, retried next pass.

Cost: every step reads only candidates (a range of the heartbeat index, the expired part of the
grace set, the Offline set, the Approved/Joined providers, the marked nodes), never the fleet.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import redis
import yaml

from worldland.control.node_sync import NodeWriter, sync_node
from worldland.domain.lifecycle import LIVE_STATES, NODE_STATES, Status, TransitionError
from worldland.domain.names import DesiredNode, desired_node
from worldland.protocol.timing import STALE_AFTER_S
from worldland.state import decoded
from worldland.state.providers import StatusConflict, StoreError
from worldland.state.scripts import script

if TYPE_CHECKING:  # the Kubernetes client is imported only where a cluster is used
    from worldland.control.onboarding import Onboarding
    from worldland.kube import NodeState

log = logging.getLogger("worldland.audit")

_T = TypeVar("_T")

DEFAULT_GRACE_S = 1800.0  # as long as the default join token lives: install drivers, join, beat
DEFAULT_LOCK_TTL_S = 300.0
PIPELINE_CHUNK = 1000

# The Redis scripts, in worldland/state/lua/audit_*.lua (each file says its KEYS, ARGV and reply).
# The liveness rule shares the transition functions with the store, and takes the live states from
# the header generated from the lifecycle.
_LIVENESS_SCRIPT = script("transition_functions", "audit_liveness")
_LOCK_RELEASE = script("audit_lock_release")
_LOCK_REFRESH = script("audit_lock_refresh")
_UNMARK = script("audit_unmark")


class AuditConfigError(ValueError):
    """The audit's settings (flags or config file) are not valid."""


class AuditCluster(NodeWriter, Protocol):
    """What the audit needs from Kubernetes (implemented by ``worldland.kube.KubeClient``)."""

    def node_state(self, name: str) -> NodeState: ...


@dataclass
class AuditSettings:
    """Settings of a pass; the config file's ``audit:`` section uses these names (seconds)."""

    stale_after: float = float(STALE_AFTER_S)  # Offline after more than this many seconds of silence
    grace: float = DEFAULT_GRACE_S  # ... or, never beaten since approval, this long after approval
    lock_ttl: float = DEFAULT_LOCK_TTL_S  # the lock expires if a pass dies; refreshed between steps
    # Refuse to mark more than this share of the live fleet Offline in one pass (and more than
    # ``mass_offline_floor`` providers): that is the heartbeat path failing, not the providers.
    # 1 turns the guard off.
    max_offline_fraction: float = 0.5
    mass_offline_floor: int = 10
    sync_batch: int = 5000  # node syncs per pass (the rest stay pending for the next)
    kube_workers: int = 8  # concurrent node syncs

    def __post_init__(self) -> None:
        checks = [
            (self.stale_after >= 1, "stale_after: at least 1 second"),
            (self.grace >= 0, "grace: not negative"),
            (self.lock_ttl >= 10, "lock_ttl: at least 10 seconds"),
            (0 < self.max_offline_fraction <= 1, "max_offline_fraction: above 0, at most 1"),
            (self.mass_offline_floor >= 0, "mass_offline_floor: not negative"),
            (self.sync_batch >= 1, "sync_batch: at least 1"),
            (1 <= self.kube_workers <= 64, "kube_workers: 1 to 64"),
        ]
        for ok, message in checks:
            if not ok:
                raise AuditConfigError(message)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None, **overrides: Any) -> AuditSettings:
        """Defaults, then the ``audit:`` section of the YAML file at ``path``, then ``overrides`` that
        are not None (the command-line flags)."""
        values: dict[str, Any] = {}
        if path is not None:
            try:
                document = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise AuditConfigError(f"config {str(path)!r}: {type(exc).__name__}: {exc}") from None
            section = document.get("audit", {}) if isinstance(document, dict) else None
            if not isinstance(section, dict):
                raise AuditConfigError(f"config {str(path)!r}: 'audit' must be a mapping")
            values.update(section)
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise AuditConfigError(f"unknown audit setting(s): {', '.join(unknown)}")
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise AuditConfigError(f"{name}: must be a number, not {value!r}")
            if known[name] == "int" and value != int(value):
                raise AuditConfigError(f"{name}: must be a whole number, not {value!r}")
            values[name] = int(value) if known[name] == "int" else float(value)
        return cls(**values)


@dataclass
class AuditReport:
    started_at: float
    dry_run: bool = False
    skipped: bool = False
    skip_reason: str = ""
    checked: int = 0  # distinct providers whose liveness was examined
    newly_offline: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    promoted: list[str] = field(default_factory=list)  # Joined -> Available
    joined: list[str] = field(default_factory=list)  # Approved -> Joined
    synced: list[str] = field(default_factory=list)  # nodes written (dry run: nodes to check)
    pending: int = 0  # node syncs left for the next pass
    errors: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    details: list[str] = field(default_factory=list)  # one human line per change

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("details")
        data["started_at"] = _iso(self.started_at)
        data["duration_s"] = round(self.duration_s, 4)
        return data

    def summary(self) -> str:
        head = f"{_iso(self.started_at)} audit{' (dry run)' if self.dry_run else ''}"
        if self.skipped:
            return f"{head}: skipped: {self.skip_reason}"
        would = "would be " if self.dry_run else ""
        return (
            f"{head}: checked {self.checked}, {would}newly offline {len(self.newly_offline)}, "
            f"{would}recovered {len(self.recovered)}, {would}promoted {len(self.promoted)}, "
            f"{would}joined {len(self.joined)}, nodes {'to check' if self.dry_run else 'written'} "
            f"{len(self.synced)}, node syncs pending {self.pending}, errors {len(self.errors)} "
            f"({self.duration_s:.2f} s)"
        )


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _lock_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class _NodeTarget:
    provider_id: str
    node_name: str
    score: str  # the mark's score when read
    desired: DesiredNode


class Audit:
    """One pass at a time per deployment (a Redis lock). ``onboarding`` brings the fleet, the cluster
    (None: state changes only, node writes left pending) and ``advance_nodes``."""

    def __init__(
        self,
        onboarding: Onboarding,
        settings: AuditSettings | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.onboarding = onboarding
        self.fleet = onboarding.fleet
        self.client: redis.Redis = self.fleet.client
        self.keys = self.fleet.keys
        self.store = self.fleet.store
        self.cluster: AuditCluster | None = onboarding.cluster
        self.settings = settings or AuditSettings()
        self.clock = clock or onboarding.clock
        self._liveness = self.client.register_script(_LIVENESS_SCRIPT)
        self._release = self.client.register_script(_LOCK_RELEASE)
        self._refresh = self.client.register_script(_LOCK_REFRESH)
        self._unmark = self.client.register_script(_UNMARK)
        self._token = _lock_token()

    # -- the lock ---------------------------------------------------------------------------------

    def _acquire_lock(self) -> bool:
        ttl_ms = int(self.settings.lock_ttl * 1000)
        return bool(self.client.set(self.keys.audit_lock, self._token, nx=True, px=ttl_ms))

    def _refresh_lock(self) -> bool:
        ttl_ms = int(self.settings.lock_ttl * 1000)
        return bool(self._refresh(keys=[self.keys.audit_lock], args=[self._token, ttl_ms]))

    def _release_lock(self) -> None:
        self._release(keys=[self.keys.audit_lock], args=[self._token])

    # -- the pass ---------------------------------------------------------------------------------

    def run(self, dry_run: bool = False) -> AuditReport:
        """One pass; ``dry_run`` reads everything and writes nothing (not even the lock)."""
        started = time.perf_counter()
        report = AuditReport(started_at=self.clock(), dry_run=dry_run)
        if not dry_run and not self._acquire_lock():
            owner = decoded.get(self.client, self.keys.audit_lock) or "?"
            report.skipped = True
            report.skip_reason = f"another audit holds the lock ({owner})"
            report.duration_s = time.perf_counter() - started
            return report
        try:
            examined: set[str] = set()
            steps = (self._recover, self._mark_offline, self._promote, self._sync_nodes)
            for step in steps:
                if not dry_run and not self._refresh_lock():
                    report.errors.append("lost the audit lock (the pass outlived lock_ttl); stopped")
                    break
                try:
                    step(report, examined, dry_run)
                except redis.RedisError:
                    raise  # no Redis, no pass: the command reports it and exits 1
                except Exception as exc:  # one step's failure must not keep the others from running
                    log.exception("audit step failed", extra={"step": step.__name__})
                    report.errors.append(f"{step.__name__.strip('_')}: {type(exc).__name__}: {exc}")
            report.checked = len(examined)
        finally:
            if not dry_run:
                try:
                    self._release_lock()
                except redis.RedisError:  # it expires on its own
                    log.warning("could not release the audit lock; it expires in lock_ttl")
        report.duration_s = time.perf_counter() - started
        return report

    def _recover(self, report: AuditReport, examined: set[str], dry_run: bool) -> None:
        """Offline providers that beat again (after going Offline, within stale_after): back."""
        offline = sorted(decoded.smembers(self.client, self.keys.status_index(Status.OFFLINE)))
        examined.update(offline)
        now = self.clock()
        cutoff = now - self.settings.stale_after
        for chunk in _chunks(offline):
            pipe = self.client.pipeline(transaction=False)
            for pid in chunk:
                pipe.hmget(self.keys.provider(pid), "status_changed_at", "previous_status")
            rows = pipe.execute()
            beats = self.client.zmscore(self.keys.heartbeat_index, chunk)
            for pid, (changed_at, previous), beat in zip(chunk, rows, beats, strict=True):
                if beat is None or beat < cutoff or beat <= float(changed_at or 0):
                    continue
                if dry_run:
                    report.recovered.append(pid)
                    report.details.append(f"would recover {pid}: offline -> {previous}")
                    continue
                try:
                    result = self.store.recover(pid)
                except (TransitionError, StatusConflict, StoreError):
                    continue  # recovered (or changed) by the listener meanwhile
                except (KeyError, ValueError) as exc:  # a record that does not decode
                    report.errors.append(f"{pid}: recover: {type(exc).__name__}: {exc}")
                    continue
                report.recovered.append(pid)
                report.details.append(f"recovered {pid}: offline -> {result.current.value}")
                log.info("recovered", extra={"provider_id": pid, "status": result.current.value})

    def _mark_offline(self, report: AuditReport, examined: set[str], dry_run: bool) -> None:
        now = self.clock()
        beat_cutoff = now - self.settings.stale_after
        grace_cutoff = now - self.settings.grace
        stale = decoded.zrangebyscore(self.client, self.keys.heartbeat_index, "-inf", f"({beat_cutoff!r}")
        awaiting = decoded.zrangebyscore(
            self.client, self.keys.awaiting_first_beat, "-inf", f"({grace_cutoff!r}"
        )
        candidates = list(dict.fromkeys([*stale, *awaiting]))
        examined.update(candidates)
        live = sum(self.store.counts()[s.value] for s in LIVE_STATES) if candidates else 0
        args = [repr(now), repr(beat_cutoff), repr(grace_cutoff), "no heartbeat"]
        classified = self._run_liveness(candidates, args, apply=False)
        due = [pid for pid, (outcome, _s, _p) in classified.items() if outcome == "due"]
        # Grace-set members that are out of it for good (beaten, not live) are dropped from it.
        in_awaiting = set(awaiting)
        prune = [p for p, (o, _s, _p) in classified.items() if p in in_awaiting and o not in ("due", "grace")]
        if due and self.settings.max_offline_fraction < 1:
            limit = max(self.settings.mass_offline_floor, self.settings.max_offline_fraction * live)
            if len(due) > limit:
                report.errors.append(
                    f"refused to mark {len(due)} of {live} live providers offline in one pass (limit "
                    f"{limit:.0f}: max_offline_fraction {self.settings.max_offline_fraction}): is the "
                    "listener recording heartbeats?"
                )
                due = []
        if dry_run:
            for pid in due:
                report.newly_offline.append(pid)
                report.details.append(f"would mark {pid} offline (was {classified[pid][1]})")
            return
        reason = f"no heartbeat for more than {self.settings.stale_after:g} s"
        args[-1] = reason
        for pid, (outcome, current, _previous) in self._run_liveness([*due, *prune], args, True).items():
            if outcome == "ok":
                report.newly_offline.append(pid)
                report.details.append(f"offline {pid} (was {current})")
                log.info("offline", extra={"provider_id": pid, "previous_status": current})

    def _run_liveness(
        self, provider_ids: list[str], args: list[str], apply: bool
    ) -> dict[str, tuple[str, str, str]]:
        keys = self.keys
        transition_keys = self.store.transition_keys()
        out: dict[str, tuple[str, str, str]] = {}
        for chunk in _chunks(provider_ids):
            pipe = self.client.pipeline(transaction=False)
            for pid in chunk:
                self._liveness(
                    keys=[keys.provider(pid), *transition_keys, keys.heartbeat_index],
                    args=[pid, *args, "1" if apply else "0"],
                    client=pipe,
                )
            for pid, (outcome, status, previous) in zip(chunk, pipe.execute(), strict=True):
                out[pid] = (outcome, status, previous)
        return out

    def _promote(self, report: AuditReport, examined: set[str], dry_run: bool) -> None:
        if self.cluster is None:
            return
        result = self.onboarding.advance_nodes(dry_run=dry_run)
        report.joined.extend(result.joined)
        report.promoted.extend(result.available)
        report.synced.extend(result.synced)
        report.errors.extend(f"advance: {e}" for e in result.errors)
        would = "would move" if dry_run else "moved"
        report.details.extend(f"{would} {pid}: approved -> joined" for pid in result.joined)
        report.details.extend(f"{would} {pid}: joined -> available" for pid in result.available)

    # -- node labels and taints -------------------------------------------------------------------

    def _sync_nodes(self, report: AuditReport, examined: set[str], dry_run: bool) -> None:
        key = self.keys.node_sync
        marks = [
            (pid, repr(score))
            for pid, score in decoded.zrange_withscores(self.client, key, 0, self.settings.sync_batch - 1)
        ]
        if dry_run:
            would = dict.fromkeys([*(pid for pid, _ in marks), *report.newly_offline, *report.recovered])
            report.synced.extend(would)
            report.pending = self.client.zcard(key)
            return
        if self.cluster is None:
            report.pending = self.client.zcard(key)
            return
        targets, nothing_to_do = self._targets(marks)
        self._unmark_many(nothing_to_do)
        done, written = self._write_nodes(targets, report)
        self._unmark_many(done)
        report.synced = sorted({*report.synced, *written})
        report.pending = self.client.zcard(key)

    def _targets(self, marks: list[tuple[str, str]]) -> tuple[list[_NodeTarget], list[tuple[str, str]]]:
        """What each marked provider's node should carry; marks with no node to sync are returned apart."""
        targets: list[_NodeTarget] = []
        nothing: list[tuple[str, str]] = []
        for chunk in _chunks(marks):
            pipe = self.client.pipeline(transaction=False)
            for pid, _score in chunk:
                pipe.hmget(self.keys.provider(pid), "status", "node_name", "gpu_models")
                pipe.hmget(self.keys.heartbeat(pid), "received_at", "active_jobs")
            replies = pipe.execute()
            for i, (pid, score) in enumerate(chunk):
                (status, node, models), (received_at, active_jobs) = replies[2 * i], replies[2 * i + 1]
                if not status or not node or Status(status) not in NODE_STATES:
                    nothing.append((pid, score))  # gone, or no node to label (pending, rejected, removed)
                    continue
                desired = desired_node(
                    pid,
                    json.loads(models or "[]"),
                    status,
                    last_beat=float(received_at) if received_at else None,
                    active_jobs=int(active_jobs or 0),
                )
                targets.append(_NodeTarget(pid, node, score, desired))
        return targets, nothing

    def _write_nodes(
        self, targets: list[_NodeTarget], report: AuditReport
    ) -> tuple[list[tuple[str, str]], list[str]]:
        """Sync each target's node; returns (marks done, providers whose node was written)."""
        from worldland.kube import KubeError, KubeNotFound, KubeUnavailable

        unavailable = threading.Event()
        lock = threading.Lock()
        done: list[tuple[str, str]] = []
        written: list[str] = []
        left = 0

        def sync(target: _NodeTarget) -> None:
            nonlocal left
            if unavailable.is_set():
                with lock:
                    left += 1
                return
            try:
                wrote = self._write_node(target)
            except KubeNotFound:
                wrote = False  # the node went away meanwhile: nothing to label
            except KubeUnavailable as exc:
                with lock:
                    left += 1
                    if not unavailable.is_set():
                        unavailable.set()
                        report.errors.append(f"node sync: Kubernetes unavailable: {exc}")
                return
            except (KubeError, ValueError) as exc:
                with lock:
                    report.errors.append(f"{target.provider_id}: node {target.node_name}: {exc}")
                return
            with lock:
                done.append((target.provider_id, target.score))
                if wrote:
                    written.append(target.provider_id)
                    report.details.append(
                        f"node {target.node_name} of {target.provider_id}: "
                        f"{'tainted' if target.desired.offline_taint else 'untainted'}, labels in line"
                    )

        workers = min(self.settings.kube_workers, max(1, len(targets)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="audit-sync") as pool:
            list(pool.map(sync, targets))
        if left:
            log.warning("node writes left pending", extra={"count": left})
        return done, sorted(written)

    def _write_node(self, target: _NodeTarget) -> bool:
        assert self.cluster is not None
        state = self.cluster.node_state(target.node_name)
        if not state.exists:
            return False  # not joined (yet): advance_nodes labels it when it appears
        return sync_node(self.cluster, target.node_name, target.desired, state)

    def _unmark_many(self, marks: Iterable[tuple[str, str]]) -> None:
        flat = [item for pair in marks for item in pair]
        for start in range(0, len(flat), 2 * PIPELINE_CHUNK):
            self._unmark(keys=[self.keys.node_sync], args=flat[start : start + 2 * PIPELINE_CHUNK])


def _chunks(items: list[_T], size: int = PIPELINE_CHUNK) -> Iterator[list[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
