"""The run loop of the long-running poller, and the ``--once`` burst mode.

``Poller.run()``: start the HTTP endpoints, prepare the model dir, subscribe (when
configured), run the initial sync, turn ready, then sync on every notification and every
poll interval until SIGTERM. While notifications are down (not subscribed yet, or the
stream ended), it lists every fallback poll interval instead, and lists at once when the
stream is lost and when it is back (what the lost subscription held is gone): see
``notifications.Listener``; the hints themselves wait in a ``hints.HintInbox``. Signals
only set a flag; the loop finishes or abandons the current install cleanly; the shutdown
calls (subscription delete, status flush, watches) share one budget of SHUTDOWN_SECONDS
from the signal, so an unreachable Pub/Sub or API server cannot hold the pod; then it
returns 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from model_poller_api.names import SCHEME_GCS

from model_poller.backoff import Backoff
from model_poller.config import Settings
from model_poller.errors import Abandoned, ConfigError, PollerError, SourceError
from model_poller.feedback import Feedback
from model_poller.hints import HintInbox
from model_poller.metrics import Metrics
from model_poller.model_dir import ModelDir
from model_poller.notifications import Hint, Listener, Notifications
from model_poller.probes import Probes
from model_poller.removal import RemovalPolicy
from model_poller.report import EntryWriter, Problem, source_problem
from model_poller.stores import Store, open_store
from model_poller.stores.gcs import parse_gs_uri
from model_poller.sync import Engine
from model_poller.sync_outcome import SyncOutcome
from model_poller.text import one_line

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_CONFIG = 2
BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
# SIGTERM to exit: what is left of this after the loop has stopped goes to the shutdown
# calls, run side by side (at least SHUTDOWN_MIN_SECONDS). Under 5 s in all, well inside
# Kubernetes' default 30 s grace period, so a rollout never waits on an unreachable service.
SHUTDOWN_SECONDS = 2.5
SHUTDOWN_MIN_SECONDS = 1.0


@dataclass
class Schedule:
    """When the loop lists next: every poll interval, every fallback interval while
    notifications are down, sooner with backoff after a failed sync; waiting hints are
    synced at once unless a failure is being backed off."""

    interval: float
    fallback: float
    next_sync: float = 0.0  # the initial sync: now
    backoff: Backoff = field(init=False)

    def __post_init__(self) -> None:
        self.backoff = Backoff(start=BACKOFF_START, cap=min(BACKOFF_MAX, self.interval))

    def sooner(self, at: float | None) -> None:
        if at is not None:
            self.next_sync = min(self.next_sync, at)

    def due(self, now: float, hints_waiting: bool) -> bool:
        return now >= self.next_sync or (hints_waiting and not self.backoff.backing_off)

    def synced(self, ok: bool, notifications_down: bool) -> None:
        now = time.monotonic()
        if not ok:
            self.next_sync = now + self.backoff.fail()
            return
        self.backoff.reset()
        self.next_sync = now + (self.fallback if notifications_down else self.interval)


class Poller:
    def __init__(
        self, settings: Settings, entry_writer: EntryWriter | None = None, removal: RemovalPolicy | None = None
    ) -> None:
        self.settings = settings
        self._entry_writer = entry_writer
        self._removal = removal
        self.feedback: Feedback | None = None
        self.policy = settings.policy
        self._last: SyncOutcome | None = None
        self.stop = threading.Event()
        self._stop_requested_at: float | None = None
        self.wake = threading.Event()
        self.metrics = Metrics()
        self.probes = Probes(self.metrics.render)
        self.model_dir = ModelDir(settings.model_dir)
        self._store: Store | None = None
        self._engine: Engine | None = None
        bucket, prefix = parse_gs_uri(settings.source) if settings.notifications else ("", "")
        self._inbox = HintInbox(prefix, self.metrics, self.wake.set)
        self._listener = self._make_listener(bucket, prefix) if settings.notifications else None
        self._bugs_logged: set[str] = set()

    def _make_listener(self, bucket: str, prefix: str) -> Listener:
        s = self.settings
        notifications = Notifications(
            bucket=bucket,
            prefix=prefix,
            on_hint=self._inbox.put,
            subscription=s.subscription,
            topic=s.topic,
            pod=s.pod_name,
            source_uri=s.source,
            on_failure=self.wake.set,
        )
        return Listener(notifications, fallback=min(s.poll_interval, s.fallback_poll_interval))

    # -- burst mode -------------------------------------------------------------------

    def run_once(self) -> int:
        """One full sync; 0 if the model dir holds the policy's versions."""
        try:
            self._prepare()
            assert self._engine is not None
            outcome = self._engine.sync()
        except PollerError as exc:
            log.error("sync failed: %s", exc)
            return EXIT_INCOMPLETE
        except Abandoned:
            log.warning("stopped before the sync finished")
            return EXIT_INCOMPLETE
        finally:
            self._close_store()
        if outcome.complete:
            log.info("in sync: versions %s on disk (%s)", list(outcome.on_disk), self.policy.describe())
            return EXIT_OK
        log.error("not in sync: %s", outcome.reason())
        return EXIT_INCOMPLETE

    # -- long-running -------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop()

    def request_stop(self) -> None:
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
        self.stop.set()
        self.wake.set()

    def run(self) -> int:
        try:
            self.feedback = Feedback(
                self.settings, self.wake.set, self.metrics, entry_writer=self._entry_writer, removal=self._removal
            )
        except ConfigError as exc:
            log.error("%s", exc)
            return EXIT_CONFIG
        # Imported here: --once serves no endpoint, and asyncio and http.server cost a
        # process start tens of milliseconds.
        from model_poller.http import HttpServer

        http = HttpServer(self.settings.http_port, self.probes)
        http.start()
        if (self.settings.topic or self.settings.subscription) and not self.settings.notifications:
            log.warning(
                "Pub/Sub notifications describe %s sources only; %s is listed every %gs",
                SCHEME_GCS,
                self.settings.source,
                self.settings.poll_interval,
            )
        self.feedback.start()
        try:
            self._follow_first_policy(self.feedback)
            self._start_with_retry()
            if not self.stop.is_set():
                self._loop()
        finally:
            self._shutdown()
            self._close_store()
            http.stop()
        log.info("stopped")
        return EXIT_OK

    def _follow_first_policy(self, feedback: Feedback) -> None:
        policy = feedback.wait_for_policy(self.stop)
        if policy is not None:
            self.policy = policy
            log.info("version policy from ModelDeployment %s: %s", self.settings.report_to, policy.describe())

    def _shutdown(self) -> None:
        """Delete our subscription and flush the status side by side, both bounded by what
        is left of SHUTDOWN_SECONDS since the signal: each may hang on an unreachable
        service (a black hole answers nothing until a timeout). What does not finish in
        time is left behind: the subscription expires on its own, the next poller writes
        the status, and the threads are daemons."""
        started = self._stop_requested_at if self._stop_requested_at is not None else time.monotonic()
        deadline = max(started + SHUTDOWN_SECONDS, time.monotonic() + SHUTDOWN_MIN_SECONDS)
        steps: list[tuple[str, Callable[[], None]]] = []
        if self._listener is not None:
            notifications = self._listener.notifications
            steps.append(
                ("deleting the subscription", lambda: notifications.stop(timeout=max(0.0, deadline - time.monotonic())))
            )
        if self.feedback is not None:
            steps.append(("the last status write and the watches", self.feedback.stop))
        threads = [
            threading.Thread(target=_quietly(fn, what), name=f"shutdown-{i}", daemon=True)
            for i, (what, fn) in enumerate(steps)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        late = [what for (what, _), thread in zip(steps, threads, strict=False) if thread.is_alive()]
        if late:
            log.warning(
                "shutdown: gave up on %s after %.1fs (a service is slow or unreachable)",
                " and ".join(late),
                time.monotonic() - started,
            )

    def _prepare(self) -> None:
        removed = self.model_dir.prepare()
        if removed:
            log.info("removed leftovers of an interrupted run: %s", ", ".join(removed))
        if self._store is None:
            self._store = open_store(self.settings.source, self.settings.project, self.settings.transfer)
        removal = self.feedback.removal if self.feedback is not None else self._removal
        self._engine = Engine(
            self._store,
            self.model_dir,
            self.policy,
            self.settings.limits,
            self.stop,
            self.metrics,
            removal,
            storage_limit=self.settings.storage_limit,
        )

    def _start_with_retry(self) -> None:
        backoff = Backoff(start=BACKOFF_START, cap=BACKOFF_MAX)
        while not self.stop.is_set():
            try:
                self._prepare()
                return
            except PollerError as exc:
                delay = backoff.fail()
                log.error("%s (retrying in %.0fs)", exc, delay)
                self.stop.wait(delay)

    def _notifications_down(self) -> bool:
        """Nothing would be heard: the loop then lists every fallback poll interval."""
        return self._listener is not None and self._listener.down

    def _loop(self) -> None:
        assert self._engine is not None
        schedule = Schedule(
            self.settings.poll_interval, min(self.settings.poll_interval, self.settings.fallback_poll_interval)
        )
        waiting: list[Hint] = []
        while not self.stop.is_set():
            waiting += self._inbox.take(self._engine.known)
            now = time.monotonic()
            if self._listener is not None:
                schedule.sooner(self._listener.tend(now))
            new_policy, serving_changed = self._take_feedback()
            if schedule.due(now, bool(waiting)):
                outcome, waiting = self._sync(waiting), []
                if outcome is None and self.stop.is_set():
                    break
                schedule.synced(outcome is not None and not outcome.failed, self._notifications_down())
            elif new_policy or serving_changed:
                # Apply the new policy (or the removals TF Serving's confirmation allows) on
                # the listing at hand: within a second, with no listing. A new policy may
                # need installs; a confirmation only removes.
                self._sync([], relist=False, install=new_policy)
            self._sleep(schedule)
        self._inbox.release(waiting)

    def _take_feedback(self) -> tuple[bool, bool]:
        """(a new version policy was applied, TF Serving's answer changed)."""
        assert self.feedback is not None and self._engine is not None
        policy = self.feedback.take_policy()
        if policy is not None:
            self.policy = policy
            self._engine.set_policy(policy)
        return policy is not None, self.feedback.take_serving_change()

    def _sleep(self, schedule: Schedule) -> None:
        """Until the next sync is due, a resubscription is, or something wakes the loop."""
        wake_at = schedule.next_sync
        if self._listener is not None:
            wake_at = min(wake_at, self._listener.wake_at())
        self.wake.wait(max(0.0, wake_at - time.monotonic()))
        self.wake.clear()

    def _sync(self, hints: list[Hint], *, relist: bool = True, install: bool = True) -> SyncOutcome | None:
        """One sync for the loop; settles ``hints``, updates the probes and the report.
        None if the source could not be listed."""
        assert self._engine is not None
        try:
            outcome = self._engine.sync(relist=relist, install=install)
        except Abandoned:
            log.info("stop requested: current install abandoned, staging removed")
            self._inbox.release(hints)
            return None
        except Exception as exc:  # noqa: BLE001 - a failed listing, or a bug: retried with backoff
            self._inbox.release(hints)
            self._sync_failed(exc)
            return None
        self._inbox.settle(hints, {r.version for r in outcome.installed})
        self._last = outcome
        self._publish(outcome)
        if not outcome.complete and relist:
            log.warning("not in sync yet: %s", outcome.reason())
        return outcome

    def _sync_failed(self, exc: Exception) -> None:
        self.metrics.sync_errors.inc()
        if isinstance(exc, PollerError):
            log.error("sync failed: %s", exc)
            if isinstance(exc, SourceError):
                self._report_failure(source_problem(exc))
            self.probes.not_ready_because = f"initial sync not done: {one_line(exc, 300)}"
            return
        what = f"{type(exc).__name__}: {one_line(exc, 200)}"
        if what in self._bugs_logged:  # the traceback is in the log already
            log.error("sync failed with an unexpected error: %s", what)
        else:
            self._bugs_logged.add(what)
            log.exception(
                "sync failed with an unexpected error (a bug: please report it with this traceback)", exc_info=exc
            )

    def _publish(self, outcome: SyncOutcome) -> None:
        """The probes and the pod's entry, from a sync's outcome."""
        assert self.feedback is not None
        self.feedback.refresh_serving(outcome)
        self.feedback.expect_load(outcome)
        if outcome.settled:
            self.probes.ready.set()
        else:
            self.probes.not_ready_because = f"initial sync not done: {outcome.reason() or 'installing'}"
        if self.feedback.serving_ready(outcome):
            self.probes.serving.set()
        else:
            self.probes.serving.clear()
            self.probes.not_serving_because = self.feedback.not_serving_reason(outcome)
        self.feedback.report(outcome)

    def _report_failure(self, problem: Problem) -> None:
        """The source failed: report it with what is on disk (as of the last sync)."""
        assert self.feedback is not None
        last = self._last or SyncOutcome(
            latest=None, wanted=frozenset(), on_disk=tuple(sorted(self.model_dir.installed())), finished_at=time.time()
        )
        self.feedback.report(last, problems=[problem])

    def _close_store(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
            self._engine = None


def _quietly(fn: Callable[[], None], what: str) -> Callable[[], None]:
    """``fn`` for a shutdown thread: an error is logged, never raised into nowhere."""

    def run() -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - shutting down: say it and go on
            log.exception("shutdown: %s failed", what)

    return run
