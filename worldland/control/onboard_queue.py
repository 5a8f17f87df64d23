"""Onboarding newly approved providers from the listener: one run at a time, in a background thread.

The listener hands over the ids it saw become Approved (``submit``, which never blocks on a run); a
worker thread runs them together as one onboard run (``onboard_runs.run_onboarding``, limited to those
of them that are still Approved). Providers submitted while a run is in progress wait for the next run.
Providers a run did not onboard (their host failed or was unreachable, or the run failed as a whole) are
retried, alone, with exponential backoff (``RetryPolicy``: 5 s doubling to 5 min, 5 retries by
default); after the last retry they are logged and left until the next approval starts a run, which
takes them along. Stopping cancels a run in progress.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from worldland.control.onboard_runs import (
    OnboardResult,
    OnboardSettings,
    approved_hosts,
    record_failures,
    run_onboarding,
)
from worldland.state.fleet import Fleet

log = logging.getLogger("worldland.onboard")

LOGGED_IDS_MAX = 100  # provider ids named in one log line (the count is always there)

# One run for these provider ids; polls the callable to know whether to stop. None: nothing to run.
RunFunction = Callable[[list[str], Callable[[], bool]], OnboardResult | None]


@dataclass(frozen=True)
class RetryPolicy:
    """Retry ``n`` of a batch waits ``first_delay_s * 2**(n-1)`` seconds, at most ``max_delay_s``;
    there are at most ``max_retries`` retries."""

    first_delay_s: float = 5.0
    max_delay_s: float = 300.0
    max_retries: int = 5

    def __post_init__(self) -> None:
        if self.first_delay_s <= 0 or self.max_delay_s < self.first_delay_s or self.max_retries < 0:
            raise ValueError(
                "retries need 0 < first delay <= max delay and a number of retries of 0 or more, not "
                f"{self.first_delay_s}, {self.max_delay_s}, {self.max_retries}"
            )

    def delay(self, retry: int) -> float:
        return float(min(self.first_delay_s * 2 ** (retry - 1), self.max_delay_s))


@dataclass
class _Batch:
    provider_ids: list[str]
    retry: int  # 0: the first run
    due: float  # monotonic time


def _named(ids: Iterable[str]) -> list[str]:
    return sorted(ids)[:LOGGED_IDS_MAX]


class OnboardQueue:
    """See the module's docstring. ``start``/``stop`` are idempotent; ``submit`` is thread-safe."""

    def __init__(
        self,
        run: RunFunction,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run = run
        self.retry = retry or RetryPolicy()
        self._clock = clock
        self._cond = threading.Condition()
        self._new: set[str] = set()  # submitted, waiting for the next run
        self._retries: list[_Batch] = []  # failed, waiting for their retry
        self._left: set[str] = set()  # out of retries: they join the next run an approval starts
        self._running = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0  # runs started (for tests and logs)

    # -- the listener's side ----------------------------------------------------------------------------

    def submit(self, provider_ids: Iterable[str]) -> None:
        ids = set(provider_ids)
        if not ids:
            return
        with self._cond:
            self._new |= ids | self._left
            self._left.clear()
            for batch in self._retries:  # approved again: a fresh start instead of the pending retry
                batch.provider_ids = [pid for pid in batch.provider_ids if pid not in ids]
            self._retries = [batch for batch in self._retries if batch.provider_ids]
            self._cond.notify_all()

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping.clear()
            self._thread = threading.Thread(target=self._work, name="worldland-onboard", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the worker; a run in progress is canceled (ansible-playbook is stopped)."""
        with self._cond:
            thread, self._thread = self._thread, None
            self._stopping.set()
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("onboard worker did not stop in time", extra={"timeout_s": timeout})

    @property
    def idle(self) -> bool:
        """Nothing running, nothing submitted, no retry waiting (providers left after their last retry
        do not count)."""
        with self._cond:
            return not (self._running or self._new or self._retries)

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._running or self._new or self._retries:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    @property
    def left(self) -> list[str]:
        """Providers out of retries, waiting for the next approval's run."""
        with self._cond:
            return sorted(self._left)

    # -- the worker -------------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stopping.is_set():
            with self._cond:
                batch = self._next_batch()
                if batch is None:
                    self._cond.wait(self._wait_s())
                    continue
                self._running = True
                self.runs += 1
            failed: list[str] = []
            try:
                failed = self._attempt(batch)
            finally:
                with self._cond:  # one step with the end of the run: idle never shows in between
                    scheduled = self._schedule(batch, failed) if not self._stopping.is_set() else None
                    self._running = False
                    self._cond.notify_all()
            if scheduled is not None:
                self._log_scheduled(batch, *scheduled)

    def _next_batch(self) -> _Batch | None:
        now = self._clock()
        if self._new:
            ids, self._new = sorted(self._new), set()
            return _Batch(ids, 0, now)
        due = [batch for batch in self._retries if batch.due <= now]
        if not due:
            return None
        batch = min(due, key=lambda b: b.due)
        self._retries.remove(batch)
        return batch

    def _wait_s(self) -> float | None:
        if not self._retries:
            return None  # until a submit or stop
        return max(0.0, min(batch.due for batch in self._retries) - self._clock())

    def _attempt(self, batch: _Batch) -> list[str]:
        """Run the batch; the providers it did not onboard."""
        try:
            result = self._run(batch.provider_ids, self._stopping.is_set)
        except Exception:  # Redis, a settings error, a bug: the whole batch is retried
            log.exception(
                "onboard run failed to run",
                extra={"providers": _named(batch.provider_ids), "retry": batch.retry},
            )
            return list(batch.provider_ids)
        if result is None:
            return []
        return result.failed_providers()

    def _schedule(self, batch: _Batch, failed: list[str]) -> tuple[list[str], float | None] | None:
        """Under the lock: a retry for the providers the run did not onboard (delay None: out of retries,
        left for the next approval)."""
        failed = [pid for pid in failed if pid not in self._new]  # submitted again meanwhile
        if not failed:
            return None
        retry = batch.retry + 1
        if retry > self.retry.max_retries:
            self._left |= set(failed)
            return failed, None
        delay = self.retry.delay(retry)
        self._retries.append(_Batch(failed, retry, self._clock() + delay))
        return failed, delay

    def _log_scheduled(self, batch: _Batch, failed: list[str], delay: float | None) -> None:
        if delay is None:
            log.warning(
                "onboard gave up; the next approval's run takes them along",
                extra={"providers": _named(failed), "count": len(failed), "retries": batch.retry},
            )
        else:
            log.info(
                "onboard retry scheduled",
                extra={
                    "providers": _named(failed),
                    "count": len(failed),
                    "retry": batch.retry + 1,
                    "in_s": delay,
                },
            )


def approved_onboarding(fleet: Fleet, settings: OnboardSettings) -> RunFunction:
    """The listener's run: those of the ids that are Approved now, as one run limited to their hosts."""

    def run(provider_ids: list[str], cancel: Callable[[], bool]) -> OnboardResult | None:
        hosts = approved_hosts(fleet, provider_ids)
        if not hosts:
            log.info(
                "nothing to onboard: none of them is approved now",
                extra={"providers": _named(provider_ids)},
            )
            return None
        result = run_onboarding(settings, hosts, cancel=cancel)
        record_failures(fleet, result)
        return result

    return run
