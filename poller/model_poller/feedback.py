"""The poller's two feedback links, built from the settings and run beside the sync loop:

- to its ModelDeployment (``--report-to``): the live version policy from ``spec.versions``
  (``PolicyWatcher``) and the pod's ``status.pollers`` entry (``PodEntryWriter``);
- to TF Serving (``--serving-url``): what it actually serves (``ServingWatcher``).

Each runs in a thread of its own and only wakes the sync loop; the loop alone installs,
removes and decides what to report, so none of them can slow or stop syncing.

The Kubernetes client is imported only with ``--report-to``: it takes a third of a second,
which ``--once`` and a poller outside Kubernetes never need.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from model_poller.config import Settings
from model_poller.metrics import Metrics
from model_poller.model_dir import BOOKKEEPING_DIR
from model_poller.policy import Policy, policy_from_json, policy_to_json
from model_poller.removal import RemovalPolicy, RemoveWhenOnDisk, RemoveWhenServing
from model_poller.report import EntryWriter, NoEntryWriter, Problem, build_report
from model_poller.serving import ServingStatus, ServingWatcher, load_failures, serving_ready
from model_poller.sync_outcome import SyncOutcome

if TYPE_CHECKING:
    from model_poller.entry_writer import PodEntryWriter
    from model_poller.kube import Kube
    from model_poller.policy_watch import PolicyWatcher

log = logging.getLogger(__name__)

# The last policy read from spec.versions, kept beside the versions for a restart during an
# API server outage (see Feedback.wait_for_policy).
POLICY_FILE = "policy.json"
SAVED_POLICY_AFTER = 10.0


class Feedback:
    def __init__(
        self,
        settings: Settings,
        wake: Callable[[], None],
        metrics: Metrics,
        *,
        entry_writer: EntryWriter | None = None,
        removal: RemovalPolicy | None = None,
    ) -> None:
        self._wake = wake
        self._metrics = metrics
        self._policy_file = settings.model_dir / BOOKKEEPING_DIR / POLICY_FILE
        self._lock = threading.Lock()
        self._policy: Policy | None = None
        self._serving_changed = False
        self.kube: Kube | None = None
        self.policy_watcher: PolicyWatcher | None = None
        self.writer: PodEntryWriter | None = None
        self.entry_writer: EntryWriter = entry_writer or NoEntryWriter()
        if settings.report_to is not None:
            self._follow_model_deployment(settings, metrics, write_entry=entry_writer is None)
        self.serving: ServingWatcher | None = None
        if settings.serving_url:
            assert settings.model_name  # config requires it with --serving-url
            self.serving = ServingWatcher(settings.serving_url, settings.model_name, self._on_serving)
        self.removal: RemovalPolicy = removal or (
            RemoveWhenServing(self.serving.current) if self.serving else RemoveWhenOnDisk()
        )

    def _follow_model_deployment(self, settings: Settings, metrics: Metrics, *, write_entry: bool) -> None:
        """``--report-to``: watch the ModelDeployment's spec.versions, write the pod's entry."""
        from model_poller.entry_writer import PodEntryWriter
        from model_poller.kube import Kube
        from model_poller.policy_watch import PolicyWatcher

        assert settings.report_to is not None
        self.kube = Kube.from_environment(settings.report_to)
        self.policy_watcher = PolicyWatcher(
            self.kube, self._on_policy, lambda outcome: metrics.policy_watch_errors.labels(outcome=outcome).inc()
        )
        if write_entry:
            self.writer = PodEntryWriter(
                self.kube,
                settings.pod_name,
                heartbeat=settings.status_heartbeat,
                on_write=lambda outcome: metrics.status_writes.labels(outcome=outcome).inc(),
            )
            self.entry_writer = self.writer

    # -- threads -------------------------------------------------------------------------

    def start(self) -> None:
        for part in (self.writer, self.policy_watcher, self.serving):
            if part is not None:
                part.start()

    def stop(self) -> None:
        if self.policy_watcher is not None:
            self.policy_watcher.stop()
        if self.serving is not None:
            self.serving.stop()
        if self.writer is not None:
            self.writer.stop()
        if self.kube is not None:
            self.kube.close()

    def _on_policy(self, policy: Policy) -> None:
        self._save_policy(policy)
        with self._lock:
            self._policy = policy
        self._wake()

    def _on_serving(self) -> None:
        with self._lock:
            self._serving_changed = True
        self._wake()

    # -- for the sync loop ------------------------------------------------------------------

    def wait_for_policy(self, stop: threading.Event) -> Policy | None:
        """With ``--report-to``: the policy from ``spec.versions`` before the first sync.

        The policy is never guessed. A poller restarted while the API server is away (its
        container OOM-killed, say) starts from the policy it last read, saved beside the
        versions, after ``SAVED_POLICY_AFTER`` seconds; the live one replaces it once read.
        A brand-new pod has none saved and waits (it could not have been created without
        the API server anyway)."""
        if self.policy_watcher is None:
            return None
        waited = 0.0
        while not self.policy_watcher.first.wait(1.0):
            if stop.is_set():
                return None
            waited += 1.0
            if waited >= SAVED_POLICY_AFTER and (saved := self._load_policy()) is not None:
                log.warning(
                    "spec.versions of ModelDeployment %s not readable yet: starting from the policy read "
                    "last (%s); the live one applies as soon as it is read",
                    self._target(),
                    saved.describe(),
                )
                return saved
            if waited in (10.0, 60.0) or waited % 600 == 0:
                log.warning(
                    "waiting for spec.versions of ModelDeployment %s before the first sync (%.0fs so far)",
                    self._target(),
                    waited,
                )
        return self.take_policy()

    def _target(self) -> str:
        return str(self.kube.target) if self.kube else "?"

    def _save_policy(self, policy: Policy) -> None:
        """Durably (temp file, rename) beside the versions; a failure only costs the fallback."""
        path = self._policy_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temp = path.with_name(path.name + ".tmp")
            temp.write_text(policy_to_json(policy))
            os.replace(temp, path)
        except OSError as exc:
            log.warning("could not save the version policy to %s: %s", path, exc)

    def _load_policy(self) -> Policy | None:
        try:
            return policy_from_json(self._policy_file.read_text())
        except OSError:
            return None

    def take_policy(self) -> Policy | None:
        """The policy read since the last call, if it changed."""
        with self._lock:
            policy, self._policy = self._policy, None
        return policy

    def take_serving_change(self) -> bool:
        with self._lock:
            changed, self._serving_changed = self._serving_changed, False
        return changed

    def expect_load(self, outcome: SyncOutcome) -> None:
        """Watch TF Serving closely until it has loaded (or failed) the version it will load
        next: the highest inside the policy on disk (TF Serving loads only the highest). Older
        versions inside the policy are never loaded, so they are not waited for."""
        in_place = set(outcome.wanted) & set(outcome.on_disk)
        if self.serving is None or not in_place:
            return
        newest = max(in_place)
        state = self.serving.current()
        entry = state.state_of(newest) if state is not None else None
        if entry is None or not (entry.state == "AVAILABLE" or entry.failed):
            self.serving.expect(frozenset({newest}))

    def refresh_serving(self, outcome: SyncOutcome) -> None:
        """A sync that installed or removed a version changed what TF Serving will serve: ask
        it again before the probes and the pod's entry read its answer."""
        if self.serving is not None and changed_model_dir(outcome):
            self.serving.refresh()

    def not_serving_reason(self, outcome: SyncOutcome) -> str:
        """One line for a 503 of ``/serving-ready``."""
        if self.serving is None:
            return "no version inside the policy on disk"
        status = self.serving.current()
        if status is None or not status.reachable:
            return f"TF Serving not answering: {status.problem if status else 'not asked yet'}"
        states = ", ".join(f"{v.version} {v.state}" for v in status.versions) or "no version"
        return f"TF Serving serves no version inside the policy ({', '.join(map(str, sorted(outcome.wanted))) or 'none'}): {states}"

    def serving_status(self) -> ServingStatus | None:
        return self.serving.current() if self.serving is not None else None

    def serving_ready(self, outcome: SyncOutcome) -> bool:
        """``/serving-ready`` (see ``serving.serving_ready``); without ``--serving-url``: a
        version inside the policy is on disk."""
        if self.serving is not None:
            return serving_ready(self.serving.current(), outcome.wanted, set(outcome.on_disk))
        return bool(set(outcome.wanted) & set(outcome.on_disk))

    def report(self, outcome: SyncOutcome, problems: list[Problem] | None = None) -> None:
        """Hand the pod's entry to the entry writer; ``problems`` replaces the outcome's (a
        failed listing reports the last outcome's disk state with the new problem)."""
        status = self.serving_status()
        report = build_report(
            on_disk=outcome.on_disk,
            latest=outcome.latest,
            wanted=outcome.wanted,
            problems=outcome.problems if problems is None else problems,
            finished_at=outcome.finished_at,
            serving=status,
            confirms=self.serving is not None,
        )
        if self.serving is not None:
            self._metrics.serving_version.set(report.serving if report.serving is not None else -1)
            self._metrics.load_failures.set(len(load_failures(status, outcome.wanted)))
        self.entry_writer.write_entry(report)


def changed_model_dir(outcome: SyncOutcome) -> bool:
    """The sync installed or removed a version: what TF Serving serves is about to change."""
    return bool(outcome.installed or outcome.removed)
