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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from worldland.capacity import CapacityError
from worldland.fleet import Fleet
from worldland.lifecycle import Status, TransitionError
from worldland.models import (
    PROVIDER_ID_RE,
    CapacityUpdate,
    MessageError,
    ProviderSpec,
    RegistrationRequest,
    RegistrationResponse,
    parse_registration,
)
from worldland.names import node_labels
from worldland.policy import ApprovalMode, ApprovalPolicy
from worldland.store import ProviderRecord, StatusConflict, StoreError, WalletMismatch
from worldland.streams import StreamNames, send_response

if TYPE_CHECKING:  # the Kubernetes client is imported only where a cluster is used
    from worldland.kube import NodeState

log = logging.getLogger("worldland.onboarding")

DEFAULT_TOKEN_TTL_S = 30 * 60
MIN_TOKEN_TTL_S, MAX_TOKEN_TTL_S = 15 * 60, 60 * 60
TOKEN_REUSE_MARGIN_S = 5 * 60  # a token closer than this to expiry is replaced, not re-sent
MAX_READABLE_ID_PROBE = 65536


class Cluster(Protocol):
    """What onboarding needs from Kubernetes (implemented by ``worldland.kube.KubeClient``)."""

    def ensure_bootstrap_token(
        self, token_id: str, secret: str, expires_at: float, description: str
    ) -> None: ...

    def bootstrap_token_secret(self, token_id: str) -> str | None: ...

    def ca_cert_hash(self) -> str: ...

    def join_endpoint(self) -> tuple[str, int]: ...

    def node_states(self, node_names: Iterable[str]) -> dict[str, NodeState]: ...

    def apply_labels(
        self, node_name: str, labels: Mapping[str, str | None], *, current: Mapping[str, str] | None = None
    ) -> bool: ...


class Rejected(Exception):
    """A message that is refused as a whole: dead-lettered with this reason (never holds a token)."""


@dataclass
class ReconcileReport:
    tokens_issued: int = 0
    joined: list[str] = field(default_factory=list)
    available: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def readable_provider_id(raw: str | bytes | None) -> str | None:
    """The provider id of a message that failed validation, if one can be read safely."""
    if raw is None or len(raw) > MAX_READABLE_ID_PROBE:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    pid = data.get("provider_id") if isinstance(data, dict) else None
    return pid if isinstance(pid, str) and PROVIDER_ID_RE.match(pid) else None


def join_command(host: str, port: int, token: str, ca_hash: str) -> str:
    """The one-line form the deployed agent expects; the agent side of this project never runs it."""
    return f"kubeadm join {host}:{port} --token {token} --discovery-token-ca-cert-hash {ca_hash}"


@dataclass
class Onboarding:
    fleet: Fleet
    streams: StreamNames
    policy: ApprovalPolicy
    cluster: Cluster | None
    token_ttl_s: int = DEFAULT_TOKEN_TTL_S
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
    def store(self):
        return self.fleet.store

    # -- answers ----------------------------------------------------------------------------------

    def answer(self, provider_id: str, response: RegistrationResponse) -> None:
        send_response(self.fleet.client, self.streams, provider_id, response.to_wire())

    def answer_state(self, record: ProviderRecord, message: str) -> None:
        self.answer(
            record.provider_id,
            RegistrationResponse(
                success=record.status is not Status.REJECTED,
                status=record.status,
                message=message,
                node_name=record.node_name,
            ),
        )

    # -- registration -----------------------------------------------------------------------------

    def handle_registration(self, raw: str) -> str:
        """Process one registration message; returns its outcome (for metrics).

        Raises ``Rejected`` for a message that must be dead-lettered.
        """
        try:
            request = parse_registration(raw, allow_private_ips=self.policy.allow_private_ips)
        except MessageError as err:
            pid = readable_provider_id(raw)
            if pid is not None:
                self.answer(
                    pid, RegistrationResponse(success=False, status=Status.REJECTED, message=str(err))
                )
            raise Rejected(str(err)) from None

        existing = self.store.get(request.provider_id)
        if existing is not None and existing.status in (Status.JOINED, Status.AVAILABLE, Status.OFFLINE):
            self._register(request)
            self.answer_state(existing, f"already {existing.status}; no new join token")
            return "existing"

        refusals = self.policy.refusals(request)
        if refusals and (existing is None or existing.status in (Status.PENDING, Status.REJECTED)):
            record = self._register(request)
            reason = "; ".join(refusals)
            if record.status is Status.PENDING:
                self.store.transition(request.provider_id, Status.REJECTED, reason=reason)
            self.answer(
                request.provider_id,
                RegistrationResponse(
                    success=False, status=Status.REJECTED, message=reason, node_name=record.node_name
                ),
            )
            return "rejected"

        record = self._register(request)
        if record.status is Status.REJECTED:  # a corrected re-registration starts over
            self.store.transition(request.provider_id, Status.PENDING, reason="registered again")
            record = self.store.require(request.provider_id)
        if record.status is Status.PENDING:
            if self.policy.mode is ApprovalMode.AUTO:
                self.approve(request.provider_id)
                return "approved"
            self.answer_state(record, "registration received; waiting for an operator's approval")
            return "pending"
        # Approved already: the same token again while it lasts, else a fresh one.
        self.send_join_token(request.provider_id)
        return "approved"

    def _register(self, request: RegistrationRequest) -> ProviderRecord:
        try:
            return self.fleet.register(request).record
        except WalletMismatch as err:
            # No answer: the response stream belongs to the id's real owner, not to this sender.
            raise Rejected(str(err)) from None
        except CapacityError as err:
            raise Rejected(f"capacity: {err}") from None

    # -- approval and tokens ----------------------------------------------------------------------

    def approve(self, provider_id: str) -> bool:
        """Pending -> Approved, then a join token and the answer; True when the provider got its token."""
        self.store.transition(provider_id, Status.APPROVED, reason="approved")
        return self.send_join_token(provider_id)

    def send_join_token(self, provider_id: str) -> bool:
        """Give an Approved provider a valid join token and answer it; False (error recorded) on failure.

        Idempotent: while the recorded token is valid the same one is sent again; a token is created
        under an id recorded beforehand, so a crash in between never leaves two tokens behind.
        """
        record = self.store.require(provider_id)
        if record.status is not Status.APPROVED:
            return False
        if self.cluster is None:
            self.store.set_error(provider_id, "token: no Kubernetes access configured (--kubeconfig)")
            return False
        now = self.clock()
        try:
            secret = None
            if record.token_id and (record.token_expires_at or 0) > now + TOKEN_REUSE_MARGIN_S:
                secret = self.cluster.bootstrap_token_secret(record.token_id)
            if secret is None:
                token_id, secret = self.new_token()  # type: ignore[misc]
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
            ca_hash = self.cluster.ca_cert_hash()
            host, port = self.cluster.join_endpoint()
        except Exception as err:  # any cluster failure: stays Approved, retried
            message = f"token: {type(err).__name__}: {err}"
            self.store.set_error(provider_id, message)
            log.warning("join token not issued", extra={"provider_id": provider_id, "error": message})
            return False
        token = f"{record.token_id}.{secret}"
        if record.last_error:
            self.store.set_error(provider_id, "")
        self.answer(
            provider_id,
            RegistrationResponse(
                success=True,
                status=Status.APPROVED,
                message="registration approved",
                join_token=token,
                join_command=join_command(host, port, token, ca_hash),
                master_ip=host,
                master_port=port,
                ca_hash=ca_hash,
                node_name=record.node_name,
                labels=node_labels(record.provider_id, record.gpu_models, Status.APPROVED),
            ),
        )
        log.info("join token sent", extra={"provider_id": provider_id, "token_id": record.token_id})
        return True

    def reject(self, provider_id: str, reason: str) -> None:
        self.fleet.reject(provider_id, reason)
        record = self.store.require(provider_id)
        self.answer(
            provider_id,
            RegistrationResponse(
                success=False, status=Status.REJECTED, message=reason, node_name=record.node_name
            ),
        )

    # -- capacity updates -------------------------------------------------------------------------

    def apply_capacity(self, update: CapacityUpdate) -> None:
        """Set a provider's offered totals from a capacity update, within its registered hardware."""
        record = self.store.get(update.provider_id)
        if record is None:
            raise Rejected(f"provider_id: provider {update.provider_id!r} is not registered")
        if record.status is Status.REJECTED:
            raise Rejected(f"provider_id: provider {update.provider_id!r} is rejected")
        spec = ProviderSpec.model_validate(record.spec, context={"allow_private_ips": True})
        try:
            totals = update.capacity.within(spec)
        except ValueError as err:
            raise Rejected(str(err)) from None
        try:
            self.fleet.ledger.set_totals(update.provider_id, *totals)
        except CapacityError as err:
            raise Rejected(f"capacity: {err}") from None

    # -- reconcile --------------------------------------------------------------------------------

    def reconcile(self) -> ReconcileReport:
        """The listener's periodic pass: missing join tokens retried, then ``advance_nodes``."""
        report = ReconcileReport()
        if self.cluster is None:
            return report
        for record in self.store.list([Status.APPROVED]):
            needs_token = not record.token_id or record.last_error
            if needs_token and self.send_join_token(record.provider_id):
                report.tokens_issued += 1
        return self.advance_nodes(report)

    def advance_nodes(
        self, report: ReconcileReport | None = None, *, dry_run: bool = False
    ) -> ReconcileReport:
        """Approved providers whose node exists become Joined; Joined ones whose node is Ready with GPUs
        allocatable become Available; their labels are applied from the control plane. Shared by the
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
        for record in records:
            state = states.get(record.node_name)
            if state is None or not state.exists:
                continue
            try:
                self._advance(record, state, report, dry_run)
            except (TransitionError, StatusConflict, StoreError):
                continue  # changed meanwhile (an audit, an operator): the next pass sees the new state
            except Exception as err:  # one node's API failure must not stop the pass
                report.errors.append(f"{record.provider_id}: {type(err).__name__}: {err}")
        return report

    def _advance(
        self, record: ProviderRecord, state: NodeState, report: ReconcileReport, dry_run: bool = False
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
        if status is Status.JOINED and state.ready and state.gpus > 0:
            if not dry_run:
                self.store.transition(
                    record.provider_id,
                    Status.AVAILABLE,
                    expected=Status.JOINED,
                    reason="node ready with GPUs",
                )
            report.available.append(record.provider_id)
            status = Status.AVAILABLE
        if dry_run:
            return
        self.cluster.apply_labels(
            record.node_name, node_labels(record.provider_id, record.gpu_models, status), current=state.labels
        )
