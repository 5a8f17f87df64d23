"""``worldland listen``: the registration listener daemon (streams -> domain -> answers).

One loop: claim what crashed consumers left pending, read a batch from the three input streams,
handle it (heartbeats as one pipelined batch), acknowledge only after the effects are stored, and
reconcile on an interval. With an ``OnboardQueue`` it also hands the providers that became Approved
(after a batch that approved some, and on an interval for operators' approvals) to the queue, whose
thread runs the onboarding playbook: the loop never waits for a run. Delivery is at-least-once, so
every handler is idempotent. SIGTERM/SIGINT finish the batch in hand; an unreachable Redis is retried
with capped backoff, never a crash loop (and the log says when it is reachable again).

The log says what an operator must know: where metrics are served, that no join token can be sent
without Kubernetes access (at start and at each approval), each registration's provider and outcome
(with the reason for a refusal), and one summary line per reconcile pass that failed, whatever the
number of providers it failed for.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

import redis
from prometheus_client import start_http_server

from worldland.control.metrics import Metrics
from worldland.control.onboard_queue import LOGGED_IDS_MAX, OnboardQueue
from worldland.control.onboarding import Onboarding, Rejected, readable_identity
from worldland.domain.lifecycle import Status
from worldland.protocol.messages import MessageError, parse_capacity_update, parse_heartbeat
from worldland.protocol.streams import DEFAULT_GROUP
from worldland.protocol.timing import STALE_AFTER_S
from worldland.state.streams import Entry, StreamConsumer

log = logging.getLogger("worldland.listener")

BACKOFF_START_S, BACKOFF_MAX_S = 0.2, 10.0

NO_KUBERNETES = (
    "no Kubernetes access (no --kubeconfig): approved providers get no join token, and no answer to "
    "their approval, until a listener with Kubernetes access issues one on its reconcile pass"
)
# Registration outcomes that refuse the provider: their log line carries the reason.
REFUSALS = frozenset({"rejected", "refused", "invalid", "wallet_mismatch"})


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class ListenerSettings:
    group: str = DEFAULT_GROUP
    consumer: str = ""
    batch: int = 500
    block_ms: int = 1000
    claim_idle_ms: int = 60_000
    claim_every_s: float = 30.0
    reconcile_every_s: float = 10.0
    stale_after_s: float = STALE_AFTER_S
    # An entry delivered more often than this was never acknowledged: whatever it does to a listener
    # (a crash, a kill), it is dead-lettered instead of being handled again.
    max_deliveries: int = 5
    # With onboarding: seconds between looks at the Approved providers (``worldland approve`` happens
    # outside the listener); a batch in which the policy approved someone looks at once.
    onboard_check_every_s: float = 10.0


class Listener:
    def __init__(
        self,
        onboarding: Onboarding,
        settings: ListenerSettings | None = None,
        metrics: Metrics | None = None,
        sleep: Callable[[float], None] = time.sleep,
        onboard: OnboardQueue | None = None,
    ) -> None:
        self.onboarding = onboarding
        self.fleet = onboarding.fleet
        self.settings = settings or ListenerSettings()
        if not self.settings.consumer:
            self.settings.consumer = default_consumer_name()
        self.metrics = metrics or Metrics()
        self.consumer = StreamConsumer(
            self.fleet.client, onboarding.streams, self.settings.group, self.settings.consumer
        )
        self.sleep = sleep
        self.stopping = False
        self._next_claim = 0.0
        self._next_reconcile = 0.0
        self._groups_ready = False
        self.onboard = onboard
        self._approved: set[str] | None = None  # the Approved ids at the last look (None: no look yet)
        self._next_approval_look = 0.0
        self._approvals_in_batch = False

    # -- lifecycle --------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("stopping after the batch in hand", extra={"signal": signal.Signals(signum).name})
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def serve_metrics(self, port: int, address: str = "127.0.0.1") -> str:
        """Serve ``/metrics`` on ``address:port``; returns (and logs) the URL of the socket bound."""
        server, _thread = start_http_server(port, addr=address, registry=self.metrics.registry)
        host, bound_port = server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        url = f"http://{f'[{host}]' if ':' in host else host}:{bound_port}/metrics"
        log.info("serving metrics", extra={"metrics_url": url})
        return url

    def run(self, max_batches: int | None = None) -> None:
        """Loop until stopped (or ``max_batches`` batches, for tests and benchmarks)."""
        backoff = BACKOFF_START_S
        batches = 0
        unreachable_since: float | None = None  # monotonic time of the first failure of an outage
        failures = 0
        if self.onboarding.cluster is None:
            log.warning(NO_KUBERNETES)
        if self.onboard is not None:
            self.onboard.start()
        while not self.stopping and (max_batches is None or batches < max_batches):
            try:
                self.run_once()
                batches += 1
                backoff = BACKOFF_START_S
                if unreachable_since is not None:
                    log.info(
                        "redis reachable again; resumed",
                        extra={
                            "unreachable_s": round(time.monotonic() - unreachable_since, 1),
                            "failed_attempts": failures,
                        },
                    )
                    unreachable_since, failures = None, 0
            except (redis.ConnectionError, redis.TimeoutError) as err:
                self.metrics.redis_errors.inc()
                self._groups_ready = False  # a restarted Redis may have lost them
                if unreachable_since is None:
                    unreachable_since = time.monotonic()
                failures += 1
                log.warning("redis unavailable; retrying", extra={"error": str(err), "retry_in_s": backoff})
                self.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            except redis.ResponseError as err:
                if "NOGROUP" not in str(err):
                    raise
                self._groups_ready = False
        if self.onboard is not None:
            self.onboard.stop()
        log.info("listener stopped", extra={"consumer": self.settings.consumer})

    def run_once(self) -> int:
        """Claim (when due), read, handle, ack, reconcile (when due); returns the entries handled."""
        if not self._groups_ready:
            self.consumer.ensure_groups()
            self._groups_ready = True
        now = time.monotonic()
        entries: list[Entry] = []
        if now >= self._next_claim:
            entries += self.consumer.claim_stale(self.settings.claim_idle_ms, self.settings.batch)
            self._next_claim = now + self.settings.claim_every_s
            self.metrics.pending.set(self.consumer.pending_count())
        if not entries:
            entries = self.consumer.read(self.settings.batch, self.settings.block_ms)
        self.handle(entries)
        if time.monotonic() >= self._next_reconcile:
            self.reconcile()
            self._next_reconcile = time.monotonic() + self.settings.reconcile_every_s
        if self.onboard is not None:
            self.watch_approvals()
        return len(entries)

    # -- handling ---------------------------------------------------------------------------------

    def handle(self, entries: list[Entry]) -> None:
        names = self.onboarding.streams
        by_stream: dict[str, list[Entry]] = {}
        set_aside: list[Entry] = []
        for entry in entries:
            reason = self._poison_reason(entry)
            if reason is None:
                by_stream.setdefault(entry.stream, []).append(entry)
                continue
            self._dead_letter(entry, reason)
            set_aside.append(entry)
        self.consumer.ack(set_aside)
        handlers = {
            names.registration: self._handle_registrations,
            names.heartbeat: self._handle_heartbeats,
            names.capacity: self._handle_capacity,
        }
        for stream, batch in by_stream.items():
            with self.metrics.latency.labels(stream=stream.rpartition(":")[2]).time():
                handlers[stream](batch)
                self.consumer.ack(batch)

    def _poison_reason(self, entry: Entry) -> str | None:
        """Why an entry is dead-lettered before any handler sees it, or None."""
        if entry.undecodable:
            return f"undecodable: {entry.undecodable}"
        if entry.deliveries > self.settings.max_deliveries:
            return (
                f"delivered {entry.deliveries} times without being acknowledged "
                f"(more than {self.settings.max_deliveries}); set aside so it cannot stop a listener again"
            )
        return None

    def _dead_letter(self, entry: Entry, reason: str) -> None:
        self.consumer.dead_letter(entry, reason)
        self.metrics.dead_letters.labels(stream=entry.stream.rpartition(":")[2]).inc()
        log.info(
            "dead-lettered", extra={"stream": entry.stream, "entry_id": entry.entry_id, "reason": reason}
        )

    def _dead_letter_failure(self, entry: Entry, err: Exception) -> None:
        # The exception's text stays in the log (with its traceback); the dead letter names its type only.
        log.exception("handler failed", extra={"stream": entry.stream, "entry_id": entry.entry_id})
        self._dead_letter(entry, f"internal error ({type(err).__name__}); see the listener's log")

    def _handle_registrations(self, batch: list[Entry]) -> None:
        for entry in batch:
            provider_id: str | None
            reason: str | None
            try:
                result = self.onboarding.handle_registration(entry.data or "")
                outcome, provider_id, reason = result.outcome, result.provider_id, result.reason
            except Rejected as err:
                outcome, provider_id, reason = err.outcome, err.provider_id, str(err)
                self._dead_letter(entry, reason)  # "wallet_mismatch" counts registrations for others' ids
            except (redis.ConnectionError, redis.TimeoutError):
                raise  # not acknowledged: handled again once Redis is back
            except Exception as err:  # a bug or a race must not stop the stream (nor loop on this entry)
                self._dead_letter_failure(entry, err)
                outcome, provider_id, reason = "failed", readable_identity(entry.data)[0], None
            self.metrics.registrations.labels(outcome=outcome).inc()
            if outcome == "approved":
                self._approvals_in_batch = True
            self._log_registration(entry, outcome, provider_id, reason)

    def _log_registration(
        self, entry: Entry, outcome: str, provider_id: str | None, reason: str | None
    ) -> None:
        """One line per registration: its provider (where the message names a valid id) and outcome;
        for a refusal the reason, which for one that was answered is what the provider was told."""
        fields: dict[str, object] = {
            "entry_id": entry.entry_id,
            "provider_id": provider_id,
            "outcome": outcome,
        }
        if outcome in REFUSALS:
            fields["reason"] = reason
        log.info("registration", extra=fields)
        if outcome == "approved" and self.onboarding.cluster is None:
            log.warning(
                "approved, but no join token can be sent: no Kubernetes access (no --kubeconfig)",
                extra={"provider_id": provider_id},
            )

    def _handle_heartbeats(self, batch: list[Entry]) -> None:
        beats, sources = [], []
        for entry in batch:
            try:
                beats.append(parse_heartbeat(entry.data or ""))
                sources.append(entry)
            except MessageError as err:
                self._dead_letter(entry, str(err))
                self.metrics.heartbeats.labels(outcome="invalid").inc()
        outcomes = self.fleet.heartbeats.record_many(beats)
        counts: dict[str, int] = {}
        unknown: set[str] = set()
        for entry, outcome in zip(sources, outcomes, strict=True):
            counts[outcome.outcome] = counts.get(outcome.outcome, 0) + 1
            if outcome.outcome == "unknown":
                unknown.add(outcome.provider_id)
            if not outcome.accepted:
                self._dead_letter(
                    entry, f"provider_id: {outcome.provider_id!r} is {outcome.outcome}; beat dropped"
                )
            elif outcome.outcome == "recovered":
                log.info(
                    "provider back from offline",
                    extra={"provider_id": outcome.provider_id, "status": outcome.status},
                )
        for name, count in counts.items():
            self.metrics.heartbeats.labels(outcome=name).inc(count)
        for provider_id in sorted(unknown):  # nobody owns an unknown id's answers: tell it to register
            self.onboarding.answer_unknown(provider_id)

    def _handle_capacity(self, batch: list[Entry]) -> None:
        for entry in batch:
            try:
                self.onboarding.apply_capacity(parse_capacity_update(entry.data or ""))
                outcome = "applied"
            except MessageError as err:
                self._dead_letter(entry, str(err))
                outcome = "invalid"
            except Rejected as err:
                self._dead_letter(entry, str(err))
                outcome = "refused"
            except (redis.ConnectionError, redis.TimeoutError):
                raise
            except Exception as err:
                self._dead_letter_failure(entry, err)
                outcome = "failed"
            self.metrics.capacity_updates.labels(outcome=outcome).inc()

    def watch_approvals(self) -> list[str]:
        """Hand the providers that became Approved since the last look to the onboard queue (at the first
        look: every Approved one, so none is forgotten across a restart); returns them. One Redis round
        trip, when due or after a batch that approved someone; never waits for a run."""
        now = time.monotonic()
        if self.onboard is None or (not self._approvals_in_batch and now < self._next_approval_look):
            return []
        self._approvals_in_batch = False
        self._next_approval_look = now + self.settings.onboard_check_every_s
        approved = set(self.fleet.store.ids([Status.APPROVED]))
        new = sorted(approved - (self._approved or set()))
        self._approved = approved  # one that leaves Approved and comes back is onboarded again
        if new:
            log.info(
                "newly approved: queued for onboarding",
                extra={"providers": new[:LOGGED_IDS_MAX], "count": len(new)},
            )
            self.onboard.submit(new)
        return new

    def reconcile(self) -> None:
        report = self.onboarding.reconcile()
        self.metrics.stale.set(self.fleet.heartbeats.count_stale(self.settings.stale_after_s))
        if report.errors or report.tokens_failed:
            # One line per pass, however many providers it failed for (Kubernetes down: all of them).
            first = report.tokens_failed[:1]
            record = self.fleet.store.get(first[0]) if first else None
            token_error = record.last_error if record else None
            log.warning(
                "reconcile pass incomplete",
                extra={
                    "errors": report.errors,
                    "tokens_not_issued": len(report.tokens_failed),
                    "tokens_not_tried": report.tokens_deferred,  # (the API was unreachable)
                    "providers": report.tokens_failed[:LOGGED_IDS_MAX],
                    "token_error": token_error,
                },
            )
        if report.joined or report.available or report.tokens_issued:
            log.info(
                "reconciled",
                extra={
                    "joined": report.joined,
                    "available": report.available,
                    "tokens_issued": report.tokens_issued,
                },
            )
