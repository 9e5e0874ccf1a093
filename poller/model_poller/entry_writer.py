"""Writes this pod's entry of its ModelDeployment's ``status.pollers`` (``--report-to``).

The sync loop hands over every report; a thread of its own writes it, so the API server's
trouble never slows or stops syncing. Only the *latest* report is kept: after an outage
the current state is written once, never a queue of stale ones. A write happens only when
the entry changed (``lastSync`` aside), plus a heartbeat 1 to 1.2 x ``heartbeat`` seconds
after the last write (never sooner: at most one per ``heartbeat``).

- unreachable, 5xx, 409, 429: retried with exponential backoff and jitter, at most 5 s
  apart (or the answer's Retry-After, if longer), so the status is right within seconds of
  the API server's return;
- 401/403: one log line naming the missing permission (at most every 10 minutes), a
  metric, and retries slowing to one a minute (an administrator may fix the Role);
- 404: the ModelDeployment is gone: said (at most every 10 minutes), syncing goes on.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from model_poller_api.models import PollerReport

from model_poller.backoff import Backoff
from model_poller.config import DEFAULT_HEARTBEAT
from model_poller.kube import Kube, KubeError, KubeForbidden, KubeNotFound, KubeRejected

log = logging.getLogger(__name__)

RETRY_START = 0.5
RETRY_MAX = 5.0
# After a 403 or 404, retry this often (a fixed Role or a re-created object is picked up).
SLOW_RETRY = 60.0
# A repeated 403/404 is logged at most this often.
LOG_EVERY = 600.0
STOP_JOIN = 15.0
# An unchanged entry is rewritten between ``heartbeat`` and (1 + this) x ``heartbeat`` after
# the last write: pods started together (a rollout) do not all beat at once, and the jitter
# only lengthens the interval, so there is never more than one heartbeat per ``heartbeat``.
HEARTBEAT_JITTER = 0.2


def _content(report: PollerReport) -> PollerReport:
    """What counts as a change: everything but the time of the last sync."""
    return replace(report, last_sync=None)


class PodEntryWriter:
    def __init__(
        self,
        kube: Kube,
        pod: str,
        *,
        heartbeat: float = DEFAULT_HEARTBEAT,
        on_write: Callable[[str], None] | None = None,
    ) -> None:
        self.kube = kube
        self.pod = pod
        self.heartbeat = heartbeat
        self._on_write = on_write or (lambda outcome: None)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._desired: PollerReport | None = None
        self._written: PollerReport | None = None
        self._thread = threading.Thread(target=self._run, name="entry-writer", daemon=True)
        self._last_logged: dict[type, float] = {}
        self._backoff = Backoff(start=RETRY_START, cap=RETRY_MAX, jitter=0.5)
        self._last_kind: type | None = None  # of the failures counted in the backoff
        self.writes = 0

    def write_entry(self, report: PollerReport) -> None:
        """Hand over the current state; never blocks, never raises."""
        with self._lock:
            self._desired = report
        self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self, flush_seconds: float = 2.0) -> None:
        """Stop; first give a pending change ``flush_seconds`` to be written."""
        deadline = time.monotonic() + flush_seconds
        while self._pending() and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=STOP_JOIN)

    def _pending(self) -> bool:
        with self._lock:
            desired, written = self._desired, self._written
        return desired is not None and (written is None or _content(desired) != _content(written))

    def _run(self) -> None:
        next_heartbeat = float("inf")
        while not self._stop.is_set():
            with self._lock:
                desired, written = self._desired, self._written
            now = time.monotonic()
            changed = desired is not None and (written is None or _content(desired) != _content(written))
            if desired is None or not (changed or now >= next_heartbeat):
                self._wake.wait(max(0.0, next_heartbeat - now) if next_heartbeat != float("inf") else None)
                self._wake.clear()
                continue
            delay = self._write(desired)
            if delay is None:
                next_heartbeat = time.monotonic() + self.heartbeat * random.uniform(1.0, 1.0 + HEARTBEAT_JITTER)
            else:
                # Wait on stop, not on wake: new reports during an outage only replace the
                # state to write; they must not turn the backoff into a busy retry.
                self._stop.wait(delay)

    def _write(self, desired: PollerReport) -> float | None:
        """Write ``desired``; None once written, else the delay before the next attempt."""
        try:
            self.kube.patch_entry(self.pod, desired.to_status())
        except Exception as exc:  # noqa: BLE001 - KubeError, or a bug: never the thread's end
            return self._failed(exc if isinstance(exc, KubeError) else KubeRejected(0, f"unexpected: {exc!r}"))
        self.writes += 1
        self._on_write("ok")
        if self._backoff.backing_off:
            log.info("status.pollers.%s of %s written again", self.pod, self.kube.target)
        self._backoff.reset()
        self._last_kind = None
        with self._lock:
            self._written = desired
        return None

    def _failed(self, exc: KubeError) -> float:
        """Count and log a failed write; the delay before the next attempt.

        Exponential with jitter from RETRY_START: capped at RETRY_MAX while the API server
        is away (so the status is right within seconds of its return), at SLOW_RETRY for
        401/403/404 (a fixed Role or a re-created object is picked up; an API server that
        is starting can answer 403 for a moment, hence the short first retries)."""
        # Count failures of one kind in a row: an outage (many "unreachable") followed by
        # the API server's start-up 403 restarts the short retries.
        if type(exc) is not self._last_kind:
            self._backoff.reset()
        self._last_kind = type(exc)
        outcome, message = self._describe(exc)
        self._on_write(outcome)
        if outcome == "retry":
            # Backoff with jitter, but never sooner than the API server's Retry-After (429, 503).
            delay = max(self._backoff.fail(cap=RETRY_MAX), exc.retry_after or 0.0)
            failures = self._backoff.failures
            if failures == 1 or failures % 20 == 0:
                log.warning(
                    "status write for %s failed (%d attempts so far), retrying in %.1fs: %s",
                    self.kube.target,
                    failures,
                    delay,
                    exc,
                )
            return delay
        # A 403/404 at the first attempt may be the API server's start-up blip: said once it persists.
        if self._backoff.failures >= 1 or isinstance(exc, KubeRejected):
            self._log_rarely(type(exc), message)
        return self._backoff.fail(cap=SLOW_RETRY)

    def _describe(self, exc: KubeError) -> tuple[str, str]:
        """(the write's metric outcome, the log line) for a failed write."""
        where = f"status.pollers.{self.pod} of {self.kube.target}"
        if isinstance(exc, KubeForbidden):
            return "forbidden", (
                f"cannot write {where}: {exc} (the poller's ServiceAccount needs patch on "
                f"modeldeployments/status of {self.kube.target}; syncing goes on)"
            )
        if isinstance(exc, KubeNotFound):
            return "not_found", (
                f"cannot write status.pollers.{self.pod}: ModelDeployment {self.kube.target} is "
                f"gone ({exc}); syncing goes on"
            )
        if isinstance(exc, KubeRejected):
            # The API server refused the entry itself (e.g. a field this CRD version does not
            # know): the same entry will be refused again; a new one may not be.
            return "rejected", f"{where} refused: {exc}"
        return "retry", ""

    def _log_rarely(self, kind: type, message: str) -> None:
        now = time.monotonic()
        last = self._last_logged.get(kind)
        if last is None or now - last >= LOG_EVERY:
            self._last_logged[kind] = now
            log.error("%s", message)
