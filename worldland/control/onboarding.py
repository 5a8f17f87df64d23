"""Registration, approval, join tokens and answers: what happens to a provider between its first
message and its node joining the cluster.

The listener feeds registrations here; ``worldland approve`` approves through here; the reconcile
step (also run by the audit) moves providers on as their nodes appear. Kubernetes is reached only
through ``worldland.kube`` (any object with the ``Cluster`` methods below).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from worldland.control.node_sync import NodeWriter, sync_node
from worldland.domain.join import (
    DEFAULT_TOKEN_TTL_S,
    MAX_TOKEN_TTL_S,
    MIN_TOKEN_TTL_S,
    TOKEN_REUSE_MARGIN_S,
    JoinValues,
    checked_join_values,
    join_command,
)
from worldland.domain.lifecycle import CLOSED_STATES, MAX_REASON_CHARS, Status, TransitionError
from worldland.domain.names import GPU_RESOURCE, desired_node, node_labels
from worldland.domain.policy import ApprovalMode, ApprovalPolicy
from worldland.domain.registration import (
    Registration,
    checked_offer,
    parse_registration,
    registration_from_json,
)
from worldland.protocol.ids import PROVIDER_ID_RE
from worldland.protocol.messages import (
    ALLOW_PRIVATE_IPS,
    UNKNOWN_PROVIDER,
    CapacityUpdate,
    MessageError,
    ProviderSpec,
    RegistrationResponse,
)
from worldland.protocol.streams import AGENT_RESPONSE_GROUPS, StreamNames
from worldland.state import decoded
from worldland.state.fleet import Fleet
from worldland.state.heartbeats import LastBeat
from worldland.state.ledger import CapacityError
from worldland.state.providers import (
    OPERATOR,
    ProviderRecord,
    ProviderStore,
    StatusConflict,
    StoreError,
    UnknownProvider,
    WalletMismatch,
    approved_registration,
    same_wallet,
)
from worldland.state.streams import send_response

if TYPE_CHECKING:  # the Kubernetes client is imported only where a cluster is used
    from worldland.control.offboarding import OffboardReport
    from worldland.kube import NodeState

log = logging.getLogger("worldland.onboarding")

MAX_READABLE_ID_PROBE = 65536
# The reconcile issues a missing token this long after the approval at the earliest (far longer than a
# handler takes to issue one, so it never races the listener that approved the provider).
TOKEN_RETRY_AFTER_S = 60.0
# How a failure to issue a join token begins in ``last_error``: the reconcile retries those only (an
# onboarding run's error, recorded by its playbook, stays until the next run or the node appears).
TOKEN_ERROR_PREFIX = "token: "  # noqa: S105 - a message prefix, no credential


class Cluster(NodeWriter, Protocol):
    """What onboarding needs from Kubernetes (implemented by ``worldland.kube.KubeClient``), and
    ``node_state`` for the audit, which works on the cluster of the ``Onboarding`` it is given."""

    def ensure_bootstrap_token(
        self, token_id: str, secret: str, expires_at: float, description: str, *, provider_id: str
    ) -> None: ...

    def bootstrap_token_secret(self, token_id: str) -> str | None: ...

    def delete_bootstrap_token(self, token_id: str) -> bool: ...

    def ca_cert_hash(self) -> str: ...

    def join_endpoint(self) -> tuple[str, int]: ...

    def node_states(self, node_names: Iterable[str]) -> dict[str, NodeState]: ...

    def node_state(self, name: str) -> NodeState: ...


class Rejected(Exception):
    """A message that is refused as a whole: dead-lettered with this reason (never holds a token).
    ``provider_id``: the id it names, where that could be read."""

    outcome = "invalid"  # the listener's metric label

    def __init__(self, reason: str, provider_id: str | None = None) -> None:
        super().__init__(reason)
        self.provider_id = provider_id


class JoinUnavailable(Exception):
    """No join for this provider now (not Approved, or the cluster failed); the reason is recorded.
    ``cluster_unreachable``: the API could not be reached or answered 5xx/429 (no provider of its own)."""

    def __init__(self, reason: str, *, cluster_unreachable: bool = False) -> None:
        super().__init__(reason)
        self.cluster_unreachable = cluster_unreachable


def is_unreachable(err: BaseException) -> bool:
    """Whether a cluster call failed for want of the API (down, timed out, overloaded), not for the
    provider it was about."""
    from worldland.kube.session import KubeUnavailable  # (loaded by then: a cluster raised)

    return isinstance(err, (KubeUnavailable, ConnectionError, TimeoutError))


class ForeignRegistration(Rejected):
    """A registration for a provider id bound to another wallet: never answered (the answer stream
    belongs to the id's owner), dead-lettered and counted."""

    outcome = "wallet_mismatch"


@dataclass(frozen=True)
class RegistrationOutcome:
    """What one registration came to: ``outcome`` (the listener's metric label: approved, pending,
    rejected, refused, held, existing), its provider, and for a refusal what the provider was told."""

    outcome: str
    provider_id: str
    reason: str | None = None


@dataclass
class ReconcileReport:
    tokens_issued: int = 0
    tokens_failed: list[str] = field(default_factory=list)  # Approved, still without a token (error recorded)
    tokens_deferred: int = 0  # of those, not tried: the API was unreachable earlier in the pass
    joined: list[str] = field(default_factory=list)
    available: list[str] = field(default_factory=list)
    synced: list[str] = field(default_factory=list)  # providers whose node was written
    # Joined providers not yet Available, and why (node not Ready, fewer GPUs allocatable than registered)
    waiting: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class AdvanceResult:
    provider_id: str
    before: Status
    after: Status
    node_written: bool
    waiting: str | None  # why a Joined provider is not Available yet

    @property
    def changed(self) -> bool:
        return self.before is not self.after or self.node_written


def readable_identity(raw: str | bytes | None) -> tuple[str | None, str | None]:
    """The provider id and wallet of a message that failed validation, where they can be read safely."""
    if raw is None or len(raw) > MAX_READABLE_ID_PROBE:
        return None, None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    pid, wallet = data.get("provider_id"), data.get("wallet_addr")
    return (
        pid if isinstance(pid, str) and PROVIDER_ID_RE.match(pid) else None,
        wallet if isinstance(wallet, str) else None,
    )


def is_token_error(last_error: str) -> bool:
    """Whether a provider's ``last_error`` is a failure to issue its join token."""
    return last_error.startswith(TOKEN_ERROR_PREFIX)


def error_line(message: str) -> str:
    """An error as a provider's ``last_error`` holds it: one line, at most ``MAX_REASON_CHARS``."""
    line = " ".join(message.split())
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 1] + "\u2026"


@dataclass
class Onboarding:
    fleet: Fleet
    streams: StreamNames
    policy: ApprovalPolicy
    cluster: Cluster | None
    token_ttl_s: int = DEFAULT_TOKEN_TTL_S
    agent_groups: tuple[str, ...] = AGENT_RESPONSE_GROUPS
    new_token: Callable[[], tuple[str, str]] | None = None  # (id, secret); worldland.kube's by default
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if not MIN_TOKEN_TTL_S <= self.token_ttl_s <= MAX_TOKEN_TTL_S:
            raise ValueError(
                f"token_ttl_s: must be {MIN_TOKEN_TTL_S}..{MAX_TOKEN_TTL_S} s (a short-lived join token)"
            )
        if self.new_token is None:
            from worldland.kube import new_bootstrap_token

            self.new_token = new_bootstrap_token

    @property
    def store(self) -> ProviderStore:
        return self.fleet.store

    # -- answers ----------------------------------------------------------------------------------

    def answer(self, provider_id: str, response: RegistrationResponse) -> None:
        send_response(self.fleet.client, self.streams, provider_id, response.to_wire(), self.agent_groups)

    def answer_state(self, record: ProviderRecord, message: str, *, success: bool | None = None) -> None:
        self.answer(
            record.provider_id,
            RegistrationResponse(
                success=record.status not in CLOSED_STATES if success is None else success,
                status=record.status,
                message=message,
                node_name=record.node_name,
            ),
        )

    def answer_unknown(self, provider_id: str) -> None:
        """A heartbeat came from an id this deployment does not know (never registered, or its record
        was lost): the agent is told to register again. Only for an id nobody owns."""
        if self.store.get(provider_id) is not None:
            return
        self.answer(
            provider_id,
            RegistrationResponse(
                success=False,
                status=Status.REJECTED,
                message=f"provider_id: {provider_id!r} is not registered; register again",
                code=UNKNOWN_PROVIDER,
            ),
        )

    def _may_answer(self, provider_id: str, wallet: str | None) -> bool:
        """Only the owner of a known provider id hears about it: an unknown id, or the same wallet."""
        record = self.store.get(provider_id)
        return record is None or (wallet is not None and same_wallet(record.wallet_addr, wallet))

    # -- registration -----------------------------------------------------------------------------

    def handle_registration(self, raw: str) -> RegistrationOutcome:
        """Process one registration message; returns what it came to.

        Every check (validation, wallet, policy, capacity) comes before any write. Raises ``Rejected``
        for a message that must be dead-lettered.
        """
        try:
            request = parse_registration(raw, allow_private_ips=self.policy.allow_private_ips)
        except MessageError as err:
            pid, wallet = readable_identity(raw)
            if pid is not None:
                if not self._may_answer(pid, wallet):
                    raise ForeignRegistration(
                        f"{err} (for provider {pid!r}, from another wallet)", pid
                    ) from None
                self.answer(
                    pid, RegistrationResponse(success=False, status=Status.REJECTED, message=str(err))
                )
            raise Rejected(str(err), pid) from None

        pid = request.provider_id
        existing = self.store.get(pid)
        if existing is not None and not same_wallet(existing.wallet_addr, request.wallet_addr):
            raise ForeignRegistration(str(WalletMismatch(pid)), pid)
        refusals = self.policy.refusals(request)
        if existing is None or existing.status is Status.PENDING:
            record = self._register(request, existing)
            if refusals:
                return self._reject_by_policy(record, refusals)
            return self._pending_or_approved(record)
        if existing.status is Status.REJECTED:
            if existing.rejected_by == OPERATOR:
                message = (
                    f"rejected by an operator ({existing.status_reason}); "
                    "registering again does not change that: ask the operator"
                )
                self.answer_state(existing, message)
                return RegistrationOutcome("rejected", pid, message)
            record = self._register(request, existing)
            if refusals:
                return self._reject_by_policy(record, refusals)
            self.store.transition(pid, Status.PENDING, reason="registered again")
            return self._pending_or_approved(self.store.require(pid))
        if existing.status is Status.REMOVED:
            return self._reregister_removed(existing, request, refusals)
        return self._reregister_live(existing, request, refusals)

    def _reregister_removed(
        self, existing: ProviderRecord, request: Registration, refusals: list[str]
    ) -> RegistrationOutcome:
        """An offboarded provider registers again: judged afresh, as a new one, and started over (Pending,
        then approved as the policy says). One the policy refuses stays Removed, and nothing is stored."""
        pid = existing.provider_id
        if refusals:
            message = "; ".join(refusals) + " (the provider was offboarded and stays so)"
            self.answer(
                pid,
                RegistrationResponse(
                    success=False, status=Status.REMOVED, message=message, node_name=existing.node_name
                ),
            )
            return RegistrationOutcome("rejected", pid, message)
        self._register(request, existing)
        self.store.transition(
            pid, Status.PENDING, reason="registered again after being offboarded", expected=Status.REMOVED
        )
        return self._pending_or_approved(self.store.require(pid))

    def _reregister_live(
        self, existing: ProviderRecord, request: Registration, refusals: list[str]
    ) -> RegistrationOutcome:
        """An approved (joined, available, offline) provider registers again: the policy applies as to
        a new one; a change it refuses is refused, one that needs an operator waits for one."""
        pid = existing.provider_id
        if refusals:
            message = (
                "registration change refused: "
                + "; ".join(refusals)
                + f"; the provider stays {existing.status} with the registration it was approved with"
            )
            self.answer_state(existing, message, success=False)
            return RegistrationOutcome("refused", pid, message)
        held = self.policy.changes_needing_approval(approved_registration(existing), request)
        if held:
            self.store.hold_change(pid, request)
            message = "registration change waits for an operator's approval: " + "; ".join(held)
            if existing.status is Status.APPROVED:
                self.send_join_token(pid, message=message)
            else:
                self.answer_state(existing, message)
            return RegistrationOutcome("held", pid)
        record = self._register(request, existing)
        if record.status is Status.APPROVED:  # the same token again while it lasts, else a fresh one
            self.send_join_token(pid)
            return RegistrationOutcome("approved", pid)
        self.answer_state(record, f"already {record.status}; no new join token")
        return RegistrationOutcome("existing", pid)

    def _reject_by_policy(self, record: ProviderRecord, refusals: list[str]) -> RegistrationOutcome:
        reason = "; ".join(refusals)
        if record.status is Status.PENDING:
            self.store.transition(record.provider_id, Status.REJECTED, reason=reason)
        self.answer(
            record.provider_id,
            RegistrationResponse(
                success=False, status=Status.REJECTED, message=reason, node_name=record.node_name
            ),
        )
        return RegistrationOutcome("rejected", record.provider_id, reason)

    def _pending_or_approved(self, record: ProviderRecord) -> RegistrationOutcome:
        if self.policy.mode is ApprovalMode.AUTO:
            self.approve(record.provider_id)
            return RegistrationOutcome("approved", record.provider_id)
        self.answer_state(record, "registration received; waiting for an operator's approval")
        return RegistrationOutcome("pending", record.provider_id)

    def _register(self, request: Registration, existing: ProviderRecord | None) -> ProviderRecord:
        try:
            return self.fleet.register(request).record
        except WalletMismatch as err:
            raise ForeignRegistration(str(err), request.provider_id) from None
        except CapacityError as err:
            message = f"capacity: {err}"
            if existing is not None:  # the wallet matched: the owner is told why
                self.answer_state(existing, message, success=False)
            raise Rejected(message, request.provider_id) from None

    # -- approval and tokens ----------------------------------------------------------------------

    def approve(self, provider_id: str) -> bool:
        """An operator's (or the auto policy's) approval; True when the provider got its answer.

        Pending -> Approved with a join token; Rejected goes through Pending first; a provider with a
        registration change waiting for approval gets that change applied.
        """
        record = self.store.require(provider_id)
        if record.status is Status.REMOVED:
            raise TransitionError(
                provider_id,
                record.status,
                Status.APPROVED,
                "an offboarded provider starts over only by registering again",
            )
        if record.pending_registration and record.status not in (Status.PENDING, Status.REJECTED):
            record = self._register(registration_from_json(record.pending_registration), record)
            if record.status is Status.APPROVED:
                return self.send_join_token(provider_id, message="registration change approved")
            self.answer_state(record, "registration change approved")
            return True
        if record.status is Status.REJECTED:
            self.store.transition(provider_id, Status.PENDING, reason="approved by an operator")
        self.store.transition(provider_id, Status.APPROVED, reason="approved")
        return self.send_join_token(provider_id)

    def join_values(self, provider_id: str, *, log_failure: bool = True) -> JoinValues:
        """An Approved provider's join: a valid token (the recorded one while it has more than
        ``TOKEN_REUSE_MARGIN_S`` left, else a fresh one: kubeadm hangs on an expired token), the CA
        hash and the endpoint, each checked. Raises ``JoinUnavailable`` (the error is recorded on the
        provider) when it is not Approved or the cluster fails.

        A token is created under an id recorded beforehand, so a crash in between never leaves two.
        """
        record = self.store.require(provider_id)
        if record.status is not Status.APPROVED:
            raise JoinUnavailable(f"provider {provider_id!r} is {record.status}, not approved")
        if self.cluster is None:
            error = f"{TOKEN_ERROR_PREFIX}no Kubernetes access configured (--kubeconfig)"
            self.store.set_error(provider_id, error)
            raise JoinUnavailable(error)
        now = self.clock()
        try:
            secret = None
            if record.token_id and (record.token_expires_at or 0) > now + TOKEN_REUSE_MARGIN_S:
                secret = self.cluster.bootstrap_token_secret(record.token_id)
            if secret is None:
                assert self.new_token is not None  # set by __post_init__
                token_id, secret = self.new_token()
                expires_at = now + self.token_ttl_s
                self.store.record_token(provider_id, token_id, expires_at)
                self.cluster.ensure_bootstrap_token(
                    token_id,
                    secret,
                    expires_at,
                    description=f"worldland provider {provider_id}",
                    provider_id=provider_id,
                )
                record = self.store.require(provider_id)
            host, port = self.cluster.join_endpoint()
            values = checked_join_values(
                host, port, f"{record.token_id}.{secret}", self.cluster.ca_cert_hash(), record.node_name
            )
        except Exception as err:  # any cluster failure: stays Approved, retried
            error = f"{TOKEN_ERROR_PREFIX}{type(err).__name__}: {err}"
            self.store.set_error(provider_id, error)
            if log_failure:  # (a reconcile pass reports its failures in one line instead)
                log.warning("join token not issued", extra={"provider_id": provider_id, "error": error})
            raise JoinUnavailable(error, cluster_unreachable=is_unreachable(err)) from None
        if is_token_error(record.last_error):  # (an onboarding run's error is not this one's to clear)
            self.store.set_error(provider_id, "")
        return values

    def send_join_token(
        self, provider_id: str, *, message: str = "registration approved", log_failure: bool = True
    ) -> bool:
        """Give an Approved provider a valid join token and answer it; False (error recorded) on failure.

        Idempotent: while the recorded token is valid the same one is sent again.
        """
        try:
            self._send_join_token(provider_id, message, log_failure)
        except JoinUnavailable:
            return False
        return True

    def _send_join_token(self, provider_id: str, message: str, log_failure: bool) -> None:
        """``send_join_token``, raising ``JoinUnavailable`` (error recorded) on failure."""
        values = self.join_values(provider_id, log_failure=log_failure)
        record = self.store.require(provider_id)
        self.answer(
            provider_id,
            RegistrationResponse(
                success=True,
                status=Status.APPROVED,
                message=message,
                join_token=values.token,
                join_command=join_command(values.host, values.port, values.token, values.ca_hash),
                master_ip=values.host,
                master_port=values.port,
                ca_hash=values.ca_hash,
                node_name=record.node_name,
                labels=node_labels(record.provider_id, record.gpu_models, Status.APPROVED),
            ),
        )
        log.info("join token sent", extra={"provider_id": provider_id, "token_id": record.token_id})

    def reject(self, provider_id: str, reason: str) -> None:
        """An operator rejects a pending provider or revokes an approved one: its join token is
        deleted (now, or by the next reconcile when Kubernetes cannot be reached) and it stays
        rejected until an operator approves or resets it."""
        self.fleet.reject(provider_id, reason)
        record = self.store.require(provider_id)
        if record.token_id:
            # Recorded for deletion before the record forgets it: a crash in between loses nothing.
            self.fleet.client.sadd(self.fleet.keys.revoked_tokens, record.token_id)
            self.store.forget_token(provider_id)
            self.delete_revoked_tokens()
        self.answer(
            provider_id,
            RegistrationResponse(
                success=False, status=Status.REJECTED, message=reason, node_name=record.node_name
            ),
        )

    def reset(self, provider_id: str) -> None:
        """Rejected -> Pending by an operator: the provider's next registration is judged afresh."""
        record = self.store.require(provider_id)
        if record.status is not Status.REJECTED:
            raise TransitionError(
                provider_id, record.status, Status.PENDING, "only a rejected provider is reset"
            )
        self.store.transition(
            provider_id, Status.PENDING, reason="reset by an operator", expected=Status.REJECTED
        )
        self.answer_state(self.store.require(provider_id), "reset by an operator; register again")

    def offboard(
        self,
        provider_id: str,
        *,
        reason: str | None = None,
        drain_timeout_s: float | None = None,
        force: bool = False,
    ) -> OffboardReport:
        """Take an approved provider out of the fleet: Removed, its node cordoned, drained (bounded) and
        deleted, its join tokens revoked, its capacity taken back (never below what running jobs hold;
        refused while jobs hold any, unless ``force``). Idempotent. ``worldland.control.offboarding``
        says how; raises its ``OffboardRefused`` when nothing may be done."""
        from worldland.control import offboarding

        return offboarding.offboard(
            self,
            provider_id,
            reason=offboarding.DEFAULT_REASON if reason is None else reason,
            drain_timeout_s=(
                offboarding.DEFAULT_DRAIN_TIMEOUT_S if drain_timeout_s is None else drain_timeout_s
            ),
            force=force,
        )

    def delete_revoked_tokens(self) -> list[str]:
        """Delete the join tokens of revoked providers; returns the errors (ids stay queued on error)."""
        errors: list[str] = []
        if self.cluster is None:
            return errors
        for token_id in sorted(decoded.smembers(self.fleet.client, self.fleet.keys.revoked_tokens)):
            try:
                self.cluster.delete_bootstrap_token(token_id)
            except Exception as err:  # the API is down: the next reconcile tries again
                errors.append(f"revoke token {token_id}: {type(err).__name__}: {err}")
                break
            self.fleet.client.srem(self.fleet.keys.revoked_tokens, token_id)
        return errors

    # -- capacity updates -------------------------------------------------------------------------

    def apply_capacity(self, update: CapacityUpdate) -> None:
        """Set a provider's offered totals from a capacity update, within its registered hardware."""
        record = self.store.get(update.provider_id)
        if record is None:
            raise Rejected(f"provider_id: provider {update.provider_id!r} is not registered")
        if record.status in CLOSED_STATES:
            raise Rejected(f"provider_id: provider {update.provider_id!r} is {record.status}")
        spec = ProviderSpec.model_validate(record.spec, context={ALLOW_PRIVATE_IPS: True})
        try:
            totals = checked_offer(spec, update.capacity)
        except MessageError as err:
            raise Rejected(str(err)) from None
        try:
            self.fleet.ledger.set_totals(update.provider_id, *totals)
        except CapacityError as err:
            raise Rejected(f"capacity: {err}") from None

    # -- reconcile --------------------------------------------------------------------------------

    def reconcile(self) -> ReconcileReport:
        """The listener's periodic pass: missing join tokens retried, then ``advance_nodes``.

        A token is retried where issuing it failed (a ``last_error`` of ``TOKEN_ERROR_PREFIX``; an
        onboarding run's error is left alone: its provider has a token), or where none was recorded
        ``TOKEN_RETRY_AFTER_S`` after the approval (its listener died in between): sooner, another
        listener of the group may still be issuing it, and the provider would be answered twice.

        Once the API proves unreachable the pass tries no more tokens (one failing call per pass, not
        one per waiting provider, each with its timeout); the others wait for the next pass."""
        report = ReconcileReport()
        if self.cluster is None:
            return report
        report.errors += self.delete_revoked_tokens()
        now = self.clock()
        unreachable = False
        for record in self.store.list([Status.APPROVED]):
            needs_token = is_token_error(record.last_error) or (
                not record.token_id and now - (record.approved_at or 0) >= TOKEN_RETRY_AFTER_S
            )
            if not needs_token:
                continue
            if unreachable:
                report.tokens_failed.append(record.provider_id)
                report.tokens_deferred += 1
                continue
            try:
                self._send_join_token(record.provider_id, "registration approved", log_failure=False)
                report.tokens_issued += 1
            except JoinUnavailable as err:
                report.tokens_failed.append(record.provider_id)
                unreachable = err.cluster_unreachable
        return self.advance_nodes(report)

    def advance_nodes(
        self, report: ReconcileReport | None = None, *, dry_run: bool = False
    ) -> ReconcileReport:
        """Approved providers whose node exists become Joined; Joined ones whose node is Ready with as
        many ``nvidia.com/gpu`` allocatable as the machine registered GPUs (a hard check: fewer is not
        Available) become Available; their labels are applied from the control plane. Shared by the
        listener's reconcile and the audit. ``dry_run`` reads and reports what would move, writing
        nothing (``worldland audit --dry-run``)."""
        report = report or ReconcileReport()
        if self.cluster is None:
            return report
        records = self.store.list([Status.APPROVED, Status.JOINED])
        try:
            states = self.cluster.node_states([r.node_name for r in records])
        except Exception as err:  # the API is down: nothing moves, the next pass tries again
            report.errors.append(f"nodes: {type(err).__name__}: {err}")
            return report
        beats = self.fleet.heartbeats.last_beats([r.provider_id for r in records]) if records else {}
        for record in records:
            state = states.get(record.node_name)
            if state is None or not state.exists:
                continue
            try:
                self._advance(record, state, beats.get(record.provider_id), report, dry_run)
            except (TransitionError, StatusConflict, StoreError):
                continue  # changed meanwhile (an audit, an operator): the next pass sees the new state
            except Exception as err:  # one node's API failure must not stop the pass
                report.errors.append(f"{record.provider_id}: {type(err).__name__}: {err}")
        return report

    def advance_provider(self, provider_id: str) -> AdvanceResult:
        """``advance_nodes`` for one provider (after its join, from a playbook): Approved -> Joined ->
        Available as its node allows, and the node's labels and taint brought in line. Raises
        ``JoinUnavailable`` when there is no cluster, the provider is not in a state with a node to
        come, or its node does not exist."""
        if self.cluster is None:
            raise JoinUnavailable("no Kubernetes access configured")
        record = self.store.require(provider_id)
        if record.status not in (Status.APPROVED, Status.JOINED, Status.AVAILABLE):
            raise JoinUnavailable(f"provider {provider_id!r} is {record.status}: no node to advance")
        state = self.cluster.node_state(record.node_name)
        if not state.exists:
            raise JoinUnavailable(f"node {record.node_name!r} of provider {provider_id!r} does not exist")
        beat = self.fleet.heartbeats.last_beats([provider_id])[provider_id]
        report = ReconcileReport()
        try:
            self._advance(record, state, beat, report)
        except StatusConflict:  # the listener's reconcile moved it meanwhile: go on from where it is
            moved = self.store.require(provider_id)
            if moved.status not in (Status.APPROVED, Status.JOINED, Status.AVAILABLE):
                raise JoinUnavailable(
                    f"provider {provider_id!r} is {moved.status}: no node to advance"
                ) from None
            self._advance(moved, state, beat, report)
        if record.last_error:
            self.store.set_error(provider_id, "")  # its node exists: the last failed attempt is over
        after = self.store.require(provider_id).status
        return AdvanceResult(
            provider_id=provider_id,
            before=record.status,
            after=after,
            node_written=provider_id in report.synced,
            waiting=report.waiting.get(provider_id),
        )

    def provider_nodes(self, provider_ids: Iterable[str]) -> dict[str, NodeState]:
        """Each provider's node (by its recorded node name) as the cluster sees it: the records in one
        batched read, the nodes in one ``node_states`` call. Raises ``JoinUnavailable`` without a
        cluster, ``UnknownProvider`` for an id with no record or no node name."""
        if self.cluster is None:
            raise JoinUnavailable("no Kubernetes access configured")
        ids = list(dict.fromkeys(provider_ids))
        names = {r.provider_id: r.node_name for r in self.store.get_many(ids) if r.node_name}
        for provider_id in ids:
            if provider_id not in names:
                raise UnknownProvider(provider_id)
        states = self.cluster.node_states(names.values())
        return {provider_id: states[name] for provider_id, name in names.items()}

    def record_onboarding_error(self, provider_id: str, message: str) -> str:
        """Record why onboarding ``provider_id`` failed (shown by ``worldland show``); it stays in its
        state and is retried by the next run. Returns the message as stored (one line, bounded)."""
        self.store.require(provider_id)
        line = error_line(message)
        self.store.set_error(provider_id, line)
        return line

    def _advance(
        self,
        record: ProviderRecord,
        state: NodeState,
        beat: LastBeat | None,
        report: ReconcileReport,
        dry_run: bool = False,
    ) -> None:
        assert self.cluster is not None
        status = record.status
        if status is Status.APPROVED:
            if not dry_run:
                self.store.transition(
                    record.provider_id, Status.JOINED, expected=Status.APPROVED, reason="node joined"
                )
            report.joined.append(record.provider_id)
            status = Status.JOINED
        ready_for_jobs = state.ready and state.gpus == record.gpu_count
        if status is Status.JOINED and not ready_for_jobs:
            report.waiting[record.provider_id] = (
                "node not Ready"
                if not state.ready
                else f"{state.gpus} of {record.gpu_count} GPUs allocatable ({GPU_RESOURCE})"
            )
        if status is Status.JOINED and ready_for_jobs:
            if not dry_run:
                self.store.transition(
                    record.provider_id,
                    Status.AVAILABLE,
                    expected=Status.JOINED,
                    reason="node Ready with all its GPUs allocatable",
                )
            report.available.append(record.provider_id)
            status = Status.AVAILABLE
        if dry_run:
            return
        desired = desired_node(
            record.provider_id,
            record.gpu_models,
            status,
            last_beat=beat.received_at if beat else None,
            active_jobs=beat.active_jobs if beat else None,
        )
        if sync_node(self.cluster, record.node_name, desired, state):
            report.synced.append(record.provider_id)
