"""One sync: list the source, install what the policy wants, remove what it no longer does.

The engine is single-threaded by design: notifications and the poll timer only wake the
loop that calls ``sync()``, so two installs of one version can never run at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from model_poller_api.models import ReportReason

from model_poller.errors import Abandoned, ModelDirError, Rejected, SourceError
from model_poller.extract import Limits
from model_poller.install import InstallResult, ModelDir, validate
from model_poller.install import install as install_version
from model_poller.metrics import Metrics
from model_poller.policy import Policy, install_order, removable, version_bytes_bound
from model_poller.report import AlwaysAllow, Problem, RemovalGate, source_problem
from model_poller.sources.base import Source
from model_poller.text import one_line
from model_poller.versions import Artifact, parse_listing

log = logging.getLogger(__name__)


@dataclass
class SyncOutcome:
    """What one sync found and did.

    ``complete``: the policy's versions are on disk (``--once`` exits 0). ``settled``: every
    version the policy wants that is valid at the source is on disk and nothing failed
    (the initial sync is done: ``/readyz``). ``failed``: versions whose install failed for
    a reason worth retrying soon.
    """

    latest: int | None
    wanted: frozenset[int]
    on_disk: tuple[int, ...]
    installed: list[InstallResult] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    finished_at: float = 0.0
    failed: frozenset[int] = frozenset()
    missing_pins: frozenset[int] = frozenset()

    @property
    def complete(self) -> bool:
        return bool(self.wanted) and self.wanted <= set(self.on_disk) and not self.missing_pins

    @property
    def settled(self) -> bool:
        return not self.failed and self.wanted <= set(self.on_disk)

    def reason(self) -> str:
        """One line saying why the sync is not complete ("" when it is)."""
        if self.complete:
            return ""
        if self.problems:
            return "; ".join(p.message for p in self.problems)
        missing = sorted(self.wanted - set(self.on_disk))
        return f"versions {missing} are not installed" if missing else "no valid version at the source"


class Engine:
    def __init__(
        self,
        source: Source,
        model_dir: ModelDir,
        policy: Policy,
        limits: Limits,
        stop: threading.Event,
        metrics: Metrics,
        gate: RemovalGate | None = None,
        storage_limit: int | None = None,
    ) -> None:
        self.source = source
        self.model_dir = model_dir
        self.policy = policy
        self.limits = limits
        self.stop = stop
        self.metrics = metrics
        self.gate: RemovalGate = gate or AlwaysAllow()
        self.storage_limit = storage_limit
        # (version, generation) of each rejected upload -> its reason (and the whole error).
        self.rejected: dict[tuple[int, int], str] = {}
        self._rejections: dict[tuple[int, int], tuple[str, str]] = {}  # (reason, detail): no traceback kept
        self._validated: set[tuple[int, int]] = set()
        self._artifacts: dict[int, Artifact] | None = None
        self._attempt_problems: list[Problem] = []
        self._failed: frozenset[int] = frozenset()
        self._logged: set[str] = set()
        self._on_disk: dict[int, int | None] = {}

    def known(self, version: int, generation: int) -> bool:
        """True if this exact upload is installed, validated or rejected: nothing to do for it."""
        key = (version, generation)
        return self._on_disk.get(version) == generation or key in self.rejected or key in self._validated

    def _once(
        self, key: str, message: str, *args: object, level: int = logging.INFO, exc_info: BaseException | None = None
    ) -> bool:
        """Log ``message`` the first time ``key`` is seen; True if it was logged now."""
        if key in self._logged:
            return False
        self._logged.add(key)
        log.log(level, message, *args, exc_info=exc_info)
        return True

    def _unexpected(self, artifact: Artifact, exc: Exception) -> str:
        """Count and log an error no handler expected (a bug); the version is retried with
        backoff like a failed download. The traceback is logged once per upload and kind of error."""
        self.metrics.failures.inc()
        self.metrics.unexpected_errors.inc()
        what = f"{type(exc).__name__}: {one_line(exc, 200)}"
        key = f"unexpected:{artifact.version}:{artifact.generation}:{type(exc).__qualname__}"
        message = "install of version %d failed with an unexpected error, will retry: %s"
        if not self._once(key, message + " (a bug: please report it with this traceback)",
                          artifact.version, what, level=logging.ERROR, exc_info=exc):
            log.error(message, artifact.version, what)
        return f"version {artifact.version}: unexpected error {what}"

    def set_policy(self, policy: Policy) -> None:
        """A new version policy (``spec.versions`` changed); the next sync applies it."""
        self.policy = policy

    def sync(self, *, relist: bool = True, install: bool = True) -> SyncOutcome:
        """List (unless ``relist`` is False and a listing is at hand: a policy change or
        TF Serving's confirmation needs no new listing), install (unless ``install`` is
        False: only removals that TF Serving's confirmation now allows), remove. Raises
        SourceError if the source cannot be listed, Abandoned if stop was requested
        mid-install; any other failure is in the outcome."""
        if relist or self._artifacts is None:
            self._artifacts = self._list()
            self._forget_gone(self._artifacts)
        artifacts = self._artifacts
        usable = {v: a for v, a in artifacts.items() if (v, a.generation) not in self.rejected}
        on_disk = self.model_dir.installed()
        self._on_disk = dict(on_disk)
        self._warn_changed(usable, on_disk)
        problems: list[Problem] = []
        results: list[InstallResult] = []
        failed: set[int] = set()
        while install:
            wanted = self.policy.wanted(usable)
            todo = [v for v in install_order(wanted, set(on_disk)) if v not in failed]
            if not todo:
                break
            result = self._attempt(usable, usable[todo[0]], failed, problems, install_version)
            if result is not None:
                on_disk[result.version] = result.generation
                self._on_disk[result.version] = result.generation
                self._validated.add((result.version, result.generation))  # still valid once removed
                results.append(result)
        if install:
            self._validate_newest(usable, on_disk, failed, problems)
            self._attempt_problems, self._failed = list(problems), frozenset(failed)
        else:  # what the last installs ran into still holds
            problems, failed = list(self._attempt_problems), set(self._failed)

        wanted = self.policy.wanted(usable)
        missing_pins = self.policy.missing_pins(usable)
        for version in sorted(missing_pins):
            problems.append(
                Problem(
                    ReportReason.PINNED_VERSION_MISSING,
                    f"pinned version {version} is not a valid version at {self.source.uri} (upload it, or change "
                    "the pinned versions); nothing is removed meanwhile",
                )
            )
        # A pinned version missing at the source leaves everything in place (a typo in
        # spec.versions.pinned must not roll the model back).
        removed = [] if missing_pins else self._remove_outside(wanted, on_disk)
        latest = self._latest(usable, on_disk)
        problems.extend(self._rejection_problems(artifacts, latest))

        outcome = SyncOutcome(
            latest=latest,
            wanted=wanted,
            on_disk=tuple(sorted(on_disk)),
            installed=results,
            removed=removed,
            problems=problems,
            finished_at=time.time(),
            failed=frozenset(failed),
            missing_pins=missing_pins,
        )
        self.metrics.versions_installed.set(len(on_disk))
        self.metrics.latest_installed.set(max(on_disk) if on_disk else -1)
        self.metrics.latest_at_source.set(outcome.latest if outcome.latest is not None else -1)
        self.metrics.last_sync.set(outcome.finished_at)
        self.metrics.last_sync_success.set(1 if outcome.complete else 0)
        return outcome

    def _forget_gone(self, artifacts: dict[int, Artifact]) -> None:
        """Drop what is remembered about uploads no longer at the source: a sidecar runs
        for months, and these maps would otherwise grow with every upload ever seen."""
        present = {(v, a.generation) for v, a in artifacts.items()}
        for memory in (self.rejected, self._rejections):
            for key in [k for k in memory if k not in present]:
                del memory[key]
        self._validated &= present

    def _list(self) -> dict[int, Artifact]:
        artifacts, skipped = parse_listing(self.source.list_objects())
        for skip in skipped:
            self._once(f"skip:{skip.name}:{skip.reason}", "ignoring %s%s: %s", self.source.uri, skip.name, skip.reason)
        return artifacts

    def _warn_changed(self, usable: dict[int, Artifact], on_disk: dict[int, int | None]) -> None:
        for version, artifact in usable.items():
            known = on_disk.get(version)
            if known is not None and known != artifact.generation:
                self._once(
                    f"changed:{version}:{artifact.generation}",
                    "version %d changed at the source (generation %d, installed %d); keeping the installed copy: "
                    "TF Serving never reloads a version in place, upload a new version number instead",
                    version,
                    artifact.generation,
                    known,
                    level=logging.WARNING,
                )

    def _attempt(
        self,
        usable: dict[int, Artifact],
        artifact: Artifact,
        failed: set[int],
        problems: list[Problem],
        action: Callable[[Source, Artifact, ModelDir, Limits, threading.Event], InstallResult],
    ) -> InstallResult | None:
        """Install (or validate) one artifact; a failure is recorded, never raised (but
        Abandoned). A rejected artifact leaves ``usable``."""
        where = f"{self.source.uri}{artifact.name}"
        verb = "installing" if action is install_version else "validating (outside the policy, not installed)"
        log.info("%s version %d from %s (%d bytes)", verb, artifact.version, where, artifact.size)
        self.metrics.install_attempts.inc()
        try:
            result = action(self.source, artifact, self.model_dir, self._limits(), self.stop)
        except Abandoned:
            raise
        except Rejected as exc:
            self.rejected[(artifact.version, artifact.generation)] = exc.reason
            self._rejections[(artifact.version, artifact.generation)] = (exc.reason, exc.detail)
            self.metrics.rejections.labels(reason=exc.reason).inc()
            log.error("rejected %s (version %d): %s: %s", where, artifact.version, exc.reason, exc.detail)
            del usable[artifact.version]
            return None
        except SourceError as exc:
            failed.add(artifact.version)
            self.metrics.failures.inc()
            log.error("install of version %d failed, will retry: %s", artifact.version, one_line(exc))
            problem = source_problem(exc)
            problems.append(Problem(problem.reason, f"version {artifact.version}: {one_line(exc)}"))
            return None
        except (ModelDirError, OSError) as exc:
            failed.add(artifact.version)
            self.metrics.failures.inc()
            message = one_line(exc if isinstance(exc, ModelDirError) else f"model dir: {exc}")
            log.error("install of version %d failed, will retry: %s", artifact.version, message)
            problems.append(Problem(ReportReason.INSTALL_FAILED, f"version {artifact.version}: {message}"))
            return None
        except Exception as exc:  # noqa: BLE001 - a bug must cost one version, never the process
            failed.add(artifact.version)
            problems.append(Problem(ReportReason.INSTALL_FAILED, self._unexpected(artifact, exc)))
            return None
        if action is install_version:
            self.metrics.installs.inc()
            self.metrics.install_seconds.observe(result.seconds)
            self.metrics.install_bytes.observe(result.downloaded_bytes)
            self.metrics.downloaded_bytes.inc(result.downloaded_bytes)
        log.info(
            "%s version %d (%d files, %d bytes unpacked, %d downloaded) in %.2fs",
            "installed" if action is install_version else "validated",
            result.version,
            result.files,
            result.unpacked_bytes,
            result.downloaded_bytes,
            result.seconds,
        )
        return result

    def _limits(self) -> Limits:
        """The flags' limits, with ``--max-bytes`` lowered to what fits ``--storage-limit``
        under the current policy (which may change live: hence computed per install)."""
        if self.storage_limit is None:
            return self.limits
        bound = version_bytes_bound(self.storage_limit, self.policy)
        if bound >= self.limits.max_bytes:
            return self.limits
        origin = f"--storage-limit {self.storage_limit} / ({self.policy.describe()} + 2)"
        return replace(self.limits, max_bytes=bound, max_bytes_origin=origin)

    def _validate_newest(
        self, usable: dict[int, Artifact], on_disk: dict[int, int | None], failed: set[int], problems: list[Problem]
    ) -> None:
        """Under a pinned policy, prove the newest upload valid (or reject it) without
        installing it, so ``latest`` and a rejection are reported while rolled back."""
        while self.policy.pinned is not None and usable:
            newest = max(usable)
            artifact = usable[newest]
            key = (newest, artifact.generation)
            if newest in on_disk or newest in failed or key in self._validated:
                return
            if self._attempt(usable, artifact, failed, problems, validate) is not None:
                self._validated.add(key)

    def _remove_outside(self, wanted: frozenset[int], on_disk: dict[int, int | None]) -> list[int]:
        in_place = frozenset(wanted & set(on_disk))
        removed: list[int] = []
        for version in removable(wanted, set(on_disk), allowed=bool(in_place) and self.gate.allows_removal(in_place)):
            try:
                self.model_dir.remove(version)
            except OSError as exc:
                log.error("could not remove version %d: %s", version, one_line(exc))
                continue
            removed.append(version)
            on_disk.pop(version, None)
            self._on_disk.pop(version, None)
            self.metrics.removals.inc()
            log.info("removed version %d (outside the policy: %s)", version, self.policy.describe())
        return removed

    def _latest(self, usable: dict[int, Artifact], on_disk: dict[int, int | None]) -> int | None:
        """The newest version at the source known to be valid: on disk, or installed or
        validated earlier (a version removed by a rollback is still valid at the source)."""
        valid = [v for v, a in usable.items() if v in on_disk or (v, a.generation) in self._validated]
        return max(valid) if valid else None

    def _rejection_problems(self, artifacts: dict[int, Artifact], latest: int | None) -> list[Problem]:
        """Rejected uploads still at the source and newer than every valid version: they
        are what a user is waiting for. Resolved by a newer valid version or a delete."""
        problems = []
        for version, artifact in sorted(artifacts.items(), reverse=True):
            rejection = self._rejections.get((version, artifact.generation))
            if rejection is not None and (latest is None or version > latest):
                reason, detail = rejection
                problems.append(
                    Problem(
                        ReportReason.VERSION_REJECTED,
                        f"version {version} ({self.source.uri}{artifact.name}) rejected: {reason}: {detail}",
                    )
                )
        return problems
