"""Offboarding: taking an approved provider out of the fleet for good, on the control-plane side.

``offboard`` (also ``Onboarding.offboard``; the action ``worldland.provider.provider_offboard`` and
``playbooks/offboard.yml`` run it) does, for one provider:

1. check: only a provider that was approved (Approved, Joined, Available, Offline; or already Removed, to
   finish what an earlier run left) is offboarded, and one whose resources running jobs hold is refused
   unless forced: an operator who has not asked for it does not expect rentals to be killed. Nothing is
   written when it is refused.
2. mark it Removed with the reason (first, so nothing allocates to it, issues it a token or moves it on
   while the rest happens), drop a registration change that waited for approval, and tell its agent
   (on the wire as ``rejected`` with ``code: removed``: the deployed Go agent knows no ``removed``);
3. its node: cordoned, drained within ``drain_timeout_s`` through the Eviction API (DaemonSet and mirror
   pods left alone; what is still there when the time is up is reported, and the node goes anyway: a
   real cluster's pod garbage collector removes pods bound to a node that no longer exists), deleted;
4. its join tokens revoked: the recorded one and any other Secret labelled for it, deleted now, or queued
   (``revoked-tokens``) for the listener's next reconcile when Kubernetes fails;
5. its capacity taken back from the ledger, but never below what running jobs hold (forced): their
   share stays until they are released, and a later offboard takes that back too.

Every step finds its own work done on a second run, which then reports nothing changed. A step that fails
(Kubernetes unreachable) is reported and recorded as the provider's last error; the provider stays
Removed and running ``offboard`` again finishes the job. The host itself (kubelet, ``kubeadm reset``) is
``offboard.yml``'s second part.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from worldland.control.onboarding import Onboarding, error_line
from worldland.domain.join import TOKEN_ID_RE
from worldland.domain.lifecycle import REMOVABLE_STATES, Status
from worldland.domain.names import LABEL_PROVIDER_ID, label_value
from worldland.protocol.messages import PROVIDER_REMOVED, RegistrationResponse
from worldland.state import decoded
from worldland.state.ledger import Allocation, Capacity
from worldland.state.providers import ProviderRecord, StatusConflict

if TYPE_CHECKING:  # the Kubernetes client is imported only where a cluster is used
    from worldland.kube import BootstrapTokenInfo, DrainResult, NodeState

log = logging.getLogger("worldland.offboarding")

DEFAULT_REASON = "offboarded by an operator"
DEFAULT_DRAIN_TIMEOUT_S = 120.0
MAX_DRAIN_TIMEOUT_S = 3600.0
MARK_ATTEMPTS = 3  # the provider's status changed under the compare-and-set (an audit): read it again


class OffboardRefused(Exception):
    """Offboarding was refused before anything was written; the message says why."""


class OffboardCluster(Protocol):
    """What offboarding needs from Kubernetes (implemented by ``worldland.kube.KubeClient``)."""

    def node_state(self, name: str) -> NodeState: ...

    def cordon(self, node_name: str, *, unschedulable: bool = True) -> bool: ...

    def evict_pods(self, node_name: str, *, timeout_s: float) -> DrainResult: ...

    def delete_node(self, node_name: str) -> bool: ...

    def delete_bootstrap_token(self, token_id: str) -> bool: ...

    def list_bootstrap_tokens(self, provider_id: str | None = None) -> list[BootstrapTokenInfo]: ...


@dataclass
class OffboardReport:
    """What one ``offboard`` did; ``changed`` is False when it found everything done already."""

    provider_id: str
    node_name: str
    before: Status
    after: Status
    forced: bool = False
    node_existed: bool = False
    cordoned: bool = False
    evicted: list[str] = field(default_factory=list)  # pods (namespace/name) whose eviction was accepted
    skipped: list[str] = field(default_factory=list)  # DaemonSet and mirror pods, left alone
    left: dict[str, str] = field(default_factory=dict)  # pods still on the node after the drain, and why
    node_deleted: bool = False
    tokens_revoked: list[str] = field(default_factory=list)  # token ids whose Secret was deleted now
    tokens_queued: list[str] = field(default_factory=list)  # ids left for the listener's next reconcile
    capacity_before: Capacity | None = None
    capacity_after: Capacity | None = None
    held_by_jobs: list[str] = field(default_factory=list)  # summaries of the jobs still holding resources
    errors: list[str] = field(default_factory=list)

    @property
    def marked(self) -> bool:
        return self.before is not self.after

    @property
    def capacity_released(self) -> bool:
        return self.capacity_before != self.capacity_after

    @property
    def changed(self) -> bool:
        return bool(
            self.marked
            or self.cordoned
            or self.evicted
            or self.node_deleted
            or self.tokens_revoked
            or self.tokens_queued
            or self.capacity_released
        )

    @property
    def complete(self) -> bool:
        """Removed, node gone, no token left, nothing offered beyond what jobs hold, no error."""
        return self.after is Status.REMOVED and not self.errors and not self.tokens_queued

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider_id": self.provider_id,
            "node_name": self.node_name,
            "status": self.after.value,
            "previous_status": self.before.value,
            "changed": self.changed,
            "complete": self.complete,
            "forced": self.forced,
            "cordoned": self.cordoned,
            "evicted": self.evicted,
            "skipped": self.skipped,
            "left": self.left,
            "node_deleted": self.node_deleted,
            "tokens_revoked": self.tokens_revoked,
            "tokens_queued": self.tokens_queued,
            "capacity_released": self.capacity_released,
            "capacity": self.capacity_after.to_dict() if self.capacity_after else None,
            "held_by_jobs": self.held_by_jobs,
            "errors": self.errors,
        }


def jobs_summary(jobs: Iterable[Allocation]) -> list[str]:
    return [f"job {job.job_id}: {job.summary()}" for job in jobs]


def offboard(
    onboarding: Onboarding,
    provider_id: str,
    *,
    reason: str = DEFAULT_REASON,
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
    force: bool = False,
) -> OffboardReport:
    """Offboard one provider (the module docstring says how). Raises ``OffboardRefused`` (nothing
    written) when it was never approved, running jobs hold its resources and ``force`` is not set, or
    there is no Kubernetes access; ``UnknownProvider`` for an unknown id; ``ValueError`` for an empty
    reason or a drain timeout out of range."""
    if not 0 <= drain_timeout_s <= MAX_DRAIN_TIMEOUT_S:
        raise ValueError(f"drain_timeout_s: must be 0 to {MAX_DRAIN_TIMEOUT_S:g} s, not {drain_timeout_s}")
    cluster = cast("OffboardCluster | None", onboarding.cluster)  # a KubeClient is both
    fleet = onboarding.fleet
    record = fleet.store.require(provider_id)
    if record.status not in REMOVABLE_STATES and record.status is not Status.REMOVED:
        raise OffboardRefused(
            f"provider {provider_id!r} is {record.status}: only an approved provider (approved, joined, "
            "available, offline) is offboarded; a pending one is rejected instead (worldland reject)"
        )
    if cluster is None:
        raise OffboardRefused("no Kubernetes access configured (--kubeconfig): its node cannot be removed")
    jobs = fleet.ledger.jobs(provider_id)
    if jobs and not force and record.status is not Status.REMOVED:
        raise OffboardRefused(
            f"provider {provider_id!r}: {len(jobs)} running job(s) hold its resources ("
            + "; ".join(jobs_summary(jobs))
            + "): release them first, or force it (their pods are evicted with the rest, and what they hold "
            "stays in the capacity ledger until they are released)"
        )
    report = OffboardReport(provider_id, record.node_name, record.status, record.status, forced=force)
    record = _mark_removed(onboarding, record, reason, report)
    _remove_node(cluster, record, drain_timeout_s, report)
    _revoke_tokens(onboarding, cluster, record, report)
    before, after = fleet.ledger.withdraw(provider_id)
    report.capacity_before, report.capacity_after = before, after
    report.held_by_jobs = jobs_summary(fleet.ledger.jobs(provider_id))
    if report.errors:
        fleet.store.set_error(provider_id, error_line("offboard: " + "; ".join(report.errors)))
    elif record.last_error:
        fleet.store.set_error(provider_id, "")
    log.info(
        "offboarded" if report.complete else "offboard incomplete",
        extra={"provider_id": provider_id, "changed": report.changed, "errors": report.errors},
    )
    return report


def _mark_removed(
    onboarding: Onboarding, record: ProviderRecord, reason: str, report: OffboardReport
) -> ProviderRecord:
    """Removed (a compare-and-set on the status read; read again when an audit moved it meanwhile), and
    the provider told; the record as it is afterwards."""
    fleet = onboarding.fleet
    pid = record.provider_id
    for _ in range(MARK_ATTEMPTS):
        if record.status is Status.REMOVED:
            break
        try:
            fleet.remove(pid, reason, expected=record.status)
        except StatusConflict:
            record = fleet.store.require(pid)
            continue
        record = fleet.store.require(pid)
        report.after = Status.REMOVED
        onboarding.answer(
            pid,
            RegistrationResponse(
                success=False,
                status=Status.REMOVED,
                message=f"{record.status_reason}; this machine is no longer part of the network "
                "(register again to start over)",
                node_name=record.node_name,
                code=PROVIDER_REMOVED,
            ),
        )
        log.info("removed", extra={"provider_id": pid, "previous_status": report.before.value})
        break
    else:  # moved under each of MARK_ATTEMPTS compare-and-sets: nothing else was done
        raise StatusConflict(pid, report.before.value, record.status.value)
    return record


def _remove_node(
    cluster: OffboardCluster, record: ProviderRecord, drain_timeout_s: float, report: OffboardReport
) -> None:
    from worldland.kube import KubeError

    name = record.node_name
    try:
        state = cluster.node_state(name)
        if not state.exists:
            return
        report.node_existed = True
        owner = state.labels.get(LABEL_PROVIDER_ID)
        if owner is not None and owner != label_value(record.provider_id):
            report.errors.append(f"node {name} is labelled for provider {owner!r}, not this one: left alone")
            return
        report.cordoned = cluster.cordon(name)
        drained = cluster.evict_pods(name, timeout_s=drain_timeout_s)
        report.evicted, report.skipped, report.left = drained.evicted, drained.skipped, drained.left
        report.node_deleted = cluster.delete_node(name)
    except KubeError as exc:
        report.errors.append(f"node {name}: {exc}")


def _revoke_tokens(
    onboarding: Onboarding, cluster: OffboardCluster, record: ProviderRecord, report: OffboardReport
) -> None:
    """The recorded token and any other Secret labelled for the provider: queued for deletion before the
    record forgets the id (as ``Onboarding.reject`` does), then deleted through the queue."""
    from worldland.kube import KubeError

    fleet = onboarding.fleet
    ids = {record.token_id} if record.token_id else set()
    try:
        listed = cluster.list_bootstrap_tokens(record.provider_id)
        ids |= {t.token_id for t in listed if TOKEN_ID_RE.match(t.token_id)}  # never queue what is not an id
    except KubeError as exc:
        report.errors.append(f"list join tokens: {exc}")
    if not ids:
        return
    fleet.client.sadd(fleet.keys.revoked_tokens, *sorted(ids))
    if record.token_id:
        fleet.store.forget_token(record.provider_id)
    report.errors += onboarding.delete_revoked_tokens()
    queued = decoded.smembers(fleet.client, fleet.keys.revoked_tokens)
    report.tokens_revoked = sorted(ids - queued)
    report.tokens_queued = sorted(ids & queued)
