"""The long-running poller and the ``--once`` burst mode.

``Poller.run()``: start the HTTP endpoints, prepare the model dir, subscribe (when
configured), run the initial sync, turn ready, then sync on every notification and every
poll interval until SIGTERM. While notifications are down (not subscribed yet, or the
stream ended), it lists every fallback poll interval instead, and lists at once when the
stream is lost and when it is back (what the lost subscription held is gone). Signals only
set a flag; the loop finishes or abandons the current install cleanly; the shutdown calls
(subscription delete, status flush, watches) share one budget of SHUTDOWN_SECONDS from the
signal, so an unreachable Pub/Sub or API server cannot hold the pod; then it returns 0.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections import OrderedDict
from types import FrameType
from typing import Callable

from model_poller.config import Settings
from model_poller.errors import Abandoned, ConfigError, PollerError, SourceError
from model_poller.feedback import Feedback
from model_poller.http import HttpServer, Probes
from model_poller.install import ModelDir
from model_poller.metrics import Metrics
from model_poller.notifications import DELETE, Hint, Notifications
from model_poller.report import Problem, RemovalGate, Reporter, build_report, source_problem
from model_poller.sources import Source, open_source
from model_poller.sync import Engine, SyncOutcome
from model_poller.text import one_line
from model_poller.versions import READY_MARKER, parse_archive_name, parse_version

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_CONFIG = 2
BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
_HANDLED_MEMORY = 10_000
# SIGTERM to exit: what is left of this after the loop has stopped goes to the shutdown
# calls, run side by side (at least SHUTDOWN_MIN_SECONDS). Under 5 s in all, well inside
# Kubernetes' default 30 s grace period, so a rollout never waits on an unreachable service.
SHUTDOWN_SECONDS = 2.5
SHUTDOWN_MIN_SECONDS = 1.0
# A notification failure that repeats unchanged is logged at most this often.
NOTIFY_LOG_EVERY = 600.0


class Backoff:
    def __init__(self, start: float = BACKOFF_START, cap: float = BACKOFF_MAX) -> None:
        self.start = start
        self.cap = cap
        self.delay = 0.0

    def fail(self) -> float:
        self.delay = min(self.cap, self.delay * 2 if self.delay else self.start)
        return self.delay

    def reset(self) -> None:
        self.delay = 0.0


class Poller:
    def __init__(self, settings: Settings, reporter: Reporter | None = None, gate: RemovalGate | None = None) -> None:
        self.settings = settings
        self._reporter = reporter
        self._gate = gate
        self.feedback: Feedback | None = None
        self.policy = settings.policy
        self._last: SyncOutcome | None = None
        self.stop = threading.Event()
        self._stop_requested_at: float | None = None
        self.wake = threading.Event()
        self.metrics = Metrics()
        self.probes = Probes(self.metrics.render)
        self.model_dir = ModelDir(settings.model_dir)
        self._hints: queue.SimpleQueue[Hint] = queue.SimpleQueue()
        self._handled: OrderedDict[tuple[str, str, int | None, str], None] = OrderedDict()
        self._source: Source | None = None
        self._engine: Engine | None = None
        self._notifications: Notifications | None = None
        self._listening = False
        self._bugs_logged: set[str] = set()

    # -- burst mode -------------------------------------------------------------------

    def run_once(self) -> int:
        """One full sync; 0 if the model dir holds the policy's versions."""
        if self.settings.report_to:
            log.error("--once does not follow a ModelDeployment: drop --report-to (and give --keep or --pinned)")
            return EXIT_CONFIG
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
            self._close_source()
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
                self.settings, self.wake.set, self.metrics, reporter=self._reporter, gate=self._gate
            )
        except ConfigError as exc:
            log.error("%s", exc)
            return EXIT_CONFIG
        http = HttpServer(self.settings.http_port, self.probes)
        http.start()
        if (self.settings.topic or self.settings.subscription) and not self.settings.source.startswith("gs://"):
            log.warning("Pub/Sub notifications describe gs:// sources only; %s is listed every %gs",
                        self.settings.source, self.settings.poll_interval)
        self.feedback.start()
        try:
            policy = self.feedback.wait_for_policy(self.stop)
            if policy is not None:
                self.policy = policy
                log.info("version policy from ModelDeployment %s: %s", self.settings.report_to, policy.describe())
            self._start_with_retry()
            if not self.stop.is_set():
                self._loop()
        finally:
            self._shutdown()
            self._close_source()
            http.stop()
        log.info("stopped")
        return EXIT_OK

    def _shutdown(self) -> None:
        """Delete our subscription and flush the status side by side, both bounded by what
        is left of SHUTDOWN_SECONDS since the signal: each may hang on an unreachable
        service (a black hole answers nothing until a timeout). What does not finish in
        time is left behind: the subscription expires on its own, the next poller writes
        the status, and the threads are daemons."""
        started = self._stop_requested_at if self._stop_requested_at is not None else time.monotonic()
        deadline = max(started + SHUTDOWN_SECONDS, time.monotonic() + SHUTDOWN_MIN_SECONDS)
        steps: list[tuple[str, Callable[[], None]]] = []
        notifications = self._notifications
        if notifications is not None:
            steps.append(("deleting the subscription",
                          lambda: notifications.stop(timeout=max(0.0, deadline - time.monotonic()))))
        if self.feedback is not None:
            steps.append(("the last status write and the watches", self.feedback.stop))
        threads = [threading.Thread(target=_quietly(fn, what), name=f"shutdown-{i}", daemon=True)
                   for i, (what, fn) in enumerate(steps)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        late = [what for (what, _), thread in zip(steps, threads) if thread.is_alive()]
        if late:
            log.warning("shutdown: gave up on %s after %.1fs (a service is slow or unreachable)", " and ".join(late),
                        time.monotonic() - started)

    def _prepare(self) -> None:
        removed = self.model_dir.prepare()
        if removed:
            log.info("removed leftovers of an interrupted run: %s", ", ".join(removed))
        if self._source is None:
            self._source = open_source(self.settings.source, self.settings.project, self.settings.transfer)
        gate = self.feedback.gate if self.feedback is not None else self._gate
        self._engine = Engine(
            self._source,
            self.model_dir,
            self.policy,
            self.settings.limits,
            self.stop,
            self.metrics,
            gate,
            storage_limit=self.settings.storage_limit,
        )

    def _start_with_retry(self) -> None:
        backoff = Backoff()
        while not self.stop.is_set():
            try:
                self._prepare()
                return
            except PollerError as exc:
                delay = backoff.fail()
                log.error("%s (retrying in %.0fs)", exc, delay)
                self.stop.wait(delay)

    def _start_notifications(self) -> None:
        s = self.settings
        if self._notifications is None:
            from model_poller.sources.gcs import parse_gs_uri

            bucket, prefix = parse_gs_uri(s.source)
            self._notifications = Notifications(
                bucket=bucket, prefix=prefix, on_hint=self._on_hint, subscription=s.subscription,
                topic=s.topic, pod=s.pod_name, source_uri=s.source, on_failure=self.wake.set,
            )
        self._notifications.start()
        self._listening = True

    def _wants_notifications(self) -> bool:
        """Configured for a gs:// source, and not (or no longer) listening."""
        s = self.settings
        if not (s.topic or s.subscription) or not s.source.startswith("gs://"):
            return False
        return not self._listening or (self._notifications is not None and self._notifications.failed)

    def _notifications_down(self) -> bool:
        """Nothing would be heard: not listening, or not connected to Pub/Sub. The loop then
        lists every fallback poll interval."""
        if self._wants_notifications():
            return True
        return self._notifications is not None and self._listening and not self._notifications.connected

    def _on_hint(self, hint: Hint) -> None:
        self._hints.put(hint)
        self.wake.set()

    def _drain(self) -> list[Hint]:
        hints = []
        while True:
            try:
                hints.append(self._hints.get_nowait())
            except queue.Empty:
                return hints

    def _needs_sync(self, hint: Hint) -> bool:
        """False for a hint that cannot change anything: a duplicate, a redelivery of
        something handled, an installed or rejected upload, a file of an unready folder,
        a name that is no version (logged: the hint is then acked and remembered)."""
        assert self._engine is not None
        if hint.key in self._handled:
            return False
        target = self._hint_target(hint)
        if target is None:
            log.info("ignoring notification for gs://%s/%s: not a version (<digits>.zip, .tar.gz, .tgz or "
                     "<digits>/_READY; ASCII digits, at most int64)", hint.bucket, one_line(hint.name, 300))
            return False
        if hint.event == DELETE:
            return True
        version, rest = target
        if rest and rest != READY_MARKER:
            return False  # a folder version's file: its _READY marker's notification matters
        return hint.generation is None or not self._engine.known(version, hint.generation)

    def _hint_target(self, hint: Hint) -> tuple[int, str] | None:
        """``(version, rest)`` for an object of a version (``rest`` is "" for an archive,
        the path inside the folder for a folder version's object); None for other names.
        Object names are untrusted: parse_version decides, never ``str.isdigit()``."""
        assert self._notifications is not None
        relative = hint.name[len(self._notifications.prefix):]
        head, sep, rest = relative.partition("/")
        if sep:
            version = parse_version(head)
            return (version, rest) if version is not None else None
        parsed = parse_archive_name(relative)
        return (parsed[0], "") if parsed is not None else None

    def _triage(self, hint: Hint) -> bool:
        """True if ``hint`` waits for the next sync; otherwise it is settled (acked) now."""
        try:
            needed = self._needs_sync(hint)
        except Exception:  # noqa: BLE001 - defence in depth: one message never ends the poller
            log.exception("ignoring notification for gs://%s/%s: unexpected error (a bug: please report it)",
                          hint.bucket, one_line(hint.name, 300))
            needed = False
        if needed:
            self.metrics.notifications.labels(outcome="sync").inc()
            return True
        self.metrics.notifications.labels(outcome="ignored").inc()
        self._remember(hint)
        hint.ack()
        return False

    def _remember(self, hint: Hint) -> None:
        self._handled[hint.key] = None
        while len(self._handled) > _HANDLED_MEMORY:
            self._handled.popitem(last=False)

    def _loop(self) -> None:
        assert self._engine is not None and self.feedback is not None
        interval = self.settings.poll_interval
        fallback = min(interval, self.settings.fallback_poll_interval)
        next_sync = 0.0  # the initial sync, now
        backoff = Backoff(cap=min(BACKOFF_MAX, interval))
        # Resubscribing is retried no slower than the fallback listing: once an administrator
        # recreates a topic, notifications are back within that long.
        notify_backoff = Backoff(cap=max(BACKOFF_START, fallback))
        next_notify_retry = 0.0
        subscribed_once = False
        notify_log = _RareLog(NOTIFY_LOG_EVERY)
        was_down = False
        waiting: list[Hint] = []
        while not self.stop.is_set():
            waiting.extend(hint for hint in self._drain() if self._triage(hint))
            now = time.monotonic()
            down = self._notifications_down()
            if down and not was_down:
                next_sync = min(next_sync, now + fallback)  # not a poll interval away
            was_down = down
            if self._wants_notifications():
                if self._listening:
                    # The stream just ended: messages it held are lost. List now, then every
                    # fallback interval until it is back.
                    self._listening = False
                    next_sync = now
                if now >= next_notify_retry:
                    try:
                        self._start_notifications()
                        notify_backoff.reset()
                        notify_log.reset()
                        if subscribed_once:
                            log.info("notifications are back; listing once to catch up on what happened meanwhile")
                            next_sync = now
                        subscribed_once = True
                    except PollerError as exc:
                        self._listening = False
                        next_notify_retry = now + notify_backoff.fail()
                        notify_log.error(f"{exc}", f" (retrying in {notify_backoff.delay:.0f}s; listing every "
                                                   f"{fallback:g}s meanwhile)")
            policy = self.feedback.take_policy()
            if policy is not None:
                self.policy = policy
                self._engine.set_policy(policy)
            serving_changed = self.feedback.take_serving_change()
            if now >= next_sync or (waiting and backoff.delay == 0):
                outcome = self._sync(waiting)
                if outcome is None and self.stop.is_set():
                    break
                if outcome is None or outcome.failed:
                    next_sync = time.monotonic() + backoff.fail()
                else:
                    backoff.reset()
                    next_sync = time.monotonic() + (fallback if self._notifications_down() else interval)
                waiting = []
            elif policy is not None or serving_changed:
                # Apply the new policy (or the removals TF Serving's confirmation allows) on
                # the listing at hand: within a second, with no listing. A new policy may
                # need installs; a confirmation only removes.
                self._sync([], relist=False, install=policy is not None)
            wake_at = next_sync
            if self._wants_notifications():
                wake_at = min(wake_at, next_notify_retry)
            self.wake.wait(max(0.0, wake_at - time.monotonic()))
            self.wake.clear()
        for hint in waiting:
            hint.nack()

    def _sync(self, hints: list[Hint], *, relist: bool = True, install: bool = True) -> SyncOutcome | None:
        """One sync for the loop; settles ``hints``, updates the probes and the report.
        None if the source could not be listed."""
        assert self._engine is not None
        try:
            outcome = self._engine.sync(relist=relist, install=install)
        except Abandoned:
            log.info("stop requested: current install abandoned, staging removed")
            for hint in hints:
                hint.nack()
            return None
        except PollerError as exc:
            self.metrics.sync_errors.inc()
            log.error("sync failed: %s", exc)
            for hint in hints:
                hint.nack()
            if isinstance(exc, SourceError):
                self._report_failure(source_problem(exc))
            self.probes.not_ready_because = f"initial sync not done: {one_line(exc, 300)}"
            return None
        except Exception as exc:  # noqa: BLE001 - defence in depth: a bug costs this sync (retried with backoff)
            self.metrics.sync_errors.inc()
            what = f"{type(exc).__name__}: {one_line(exc, 200)}"
            if what in self._bugs_logged:  # the traceback is in the log already
                log.error("sync failed with an unexpected error: %s", what)
            else:
                self._bugs_logged.add(what)
                log.exception("sync failed with an unexpected error (a bug: please report it with this traceback)")
            for hint in hints:
                hint.nack()
            return None
        installed = {r.version for r in outcome.installed}
        now = time.time()
        for hint in hints:
            version = self._hint_version(hint)
            if version is not None and version in installed:
                self.metrics.notification_latency.observe(max(0.0, now - hint.published))
            self._remember(hint)
            hint.ack()
        self._last = outcome
        assert self.feedback is not None
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
        if not outcome.complete and relist:
            log.warning("not in sync yet: %s", outcome.reason())
        return outcome

    def _report_failure(self, problem: Problem) -> None:
        """The source failed: report it with what is on disk (as of the last sync)."""
        assert self.feedback is not None
        last = self._last or SyncOutcome(latest=None, wanted=frozenset(), on_disk=tuple(sorted(self.model_dir.installed())),
                                         finished_at=time.time())
        self.feedback.report(last, problems=[problem])

    def _hint_version(self, hint: Hint) -> int | None:
        target = self._hint_target(hint)
        return target[0] if target is not None else None

    def _close_source(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None
            self._engine = None


class _RareLog:
    """Logs a failure at ERROR when it is new or changed, and a repeat at most every
    ``every`` seconds (a retry every few seconds must not flood the log)."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._last: str | None = None
        self._at = 0.0

    def error(self, what: str, detail: str = "") -> None:
        now = time.monotonic()
        if what != self._last or now - self._at >= self.every:
            log.error("%s%s", what, detail)
            self._last, self._at = what, now
        else:
            log.debug("%s%s", what, detail)

    def reset(self) -> None:
        self._last = None


def _quietly(fn: Callable[[], None], what: str) -> Callable[[], None]:
    """``fn`` for a shutdown thread: an error is logged, never raised into nowhere."""

    def run() -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - shutting down: say it and go on
            log.exception("shutdown: %s failed", what)

    return run
