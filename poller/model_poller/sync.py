"""One sync: list the source, install what the policy wants, remove what it no longer does.

``sync()`` is four steps: ``plan`` (pure, ``sync_plan.py``: the listing, minus rejected
uploads, under the policy), install what is missing, remove what left the policy, record
the metrics; it returns a ``sync_outcome.SyncOutcome``.

The engine is single-threaded by design: notifications and the poll timer only wake the
loop that calls ``sync()``, so two installs of one version can never run at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from model_poller_api.models import ReportReason

from model_poller.errors import Abandoned, ModelDirError, Rejected, SourceError
from model_poller.extract import Limits
from model_poller.install import InstallResult, validate
from model_poller.install import install as install_version
from model_poller.metrics import Metrics
from model_poller.model_dir import ModelDir
from model_poller.policy import Policy, removable, version_bytes_bound
from model_poller.removal import RemovalPolicy, RemoveWhenOnDisk
from model_poller.report import Problem, source_problem
from model_poller.stores.base import Store
from model_poller.sync_outcome import SyncOutcome
from model_poller.sync_plan import Plan, plan
from model_poller.text import one_line
from model_poller.versions import Artifact, parse_listing

log = logging.getLogger(__name__)


@dataclass
class _Attempts:
    """What one sync's installs ran into."""

    installed: list[InstallResult] = field(default_factory=list)
    failed: set[int] = field(default_factory=set)
    problems: list[Problem] = field(default_factory=list)

    def carried_over(self) -> _Attempts:
        """For a sync that installs nothing: the failures still hold, nothing was installed."""
        return _Attempts(failed=set(self.failed), problems=list(self.problems))


Action = Callable[[Store, Artifact, ModelDir, Limits, threading.Event], InstallResult]


class Engine:
    def __init__(
        self,
        store: Store,
        model_dir: ModelDir,
        policy: Policy,
        limits: Limits,
        stop: threading.Event,
        metrics: Metrics,
        removal: RemovalPolicy | None = None,
        storage_limit: int | None = None,
    ) -> None:
        self.store = store
        self.model_dir = model_dir
        self.policy = policy
        self.limits = limits
        self.stop = stop
        self.metrics = metrics
        self.removal: RemovalPolicy = removal or RemoveWhenOnDisk()
        self.storage_limit = storage_limit
        # What is remembered about uploads is keyed by (version, generation) and dropped
        # once the upload leaves the source (``_forget_gone``): a sidecar runs for months.
        self.rejected: dict[tuple[int, int], str] = {}  # -> its reason
        self._rejections: dict[tuple[int, int], tuple[str, str]] = {}  # (reason, detail): no traceback kept
        self._validated: set[tuple[int, int]] = set()
        self._logged: set[tuple[int, int, str]] = set()  # (version, generation, what) logged once
        self._skips: set[tuple[str, str]] = set()  # (name, reason) of the last listing's ignored names
        self._artifacts: dict[int, Artifact] | None = None
        self._last = _Attempts()
        self._on_disk: dict[int, int | None] = {}

    def known(self, version: int, generation: int) -> bool:
        """True if this exact upload is installed, validated or rejected: nothing to do for it."""
        key = (version, generation)
        return self._on_disk.get(version) == generation or key in self.rejected or key in self._validated

    def set_policy(self, policy: Policy) -> None:
        """A new version policy (``spec.versions`` changed); the next sync applies it."""
        self.policy = policy

    def sync(self, *, relist: bool = True, install: bool = True) -> SyncOutcome:
        """List (unless ``relist`` is False and a listing is at hand: a policy change or
        TF Serving's confirmation needs no new listing), install (unless ``install`` is
        False: only removals that TF Serving's confirmation now allows), remove. Raises
        SourceError if the source cannot be listed, Abandoned if stop was requested
        mid-install; any other failure is in the outcome."""
        artifacts = self._listing(relist)
        on_disk = self._read_disk(plan(artifacts, self.rejected, self.policy))
        attempts = self._install_missing(artifacts, on_disk) if install else self._last.carried_over()
        final = plan(artifacts, self.rejected, self.policy)
        # A pinned version missing at the source leaves everything in place (a typo in
        # spec.versions.pinned must not roll the model back).
        removed = [] if final.missing_pins else self._remove_outside(final.wanted, on_disk)
        outcome = self._outcome(artifacts, final, on_disk, attempts, removed)
        self._record(outcome)
        return outcome

    # -- the listing --------------------------------------------------------------------------

    def _listing(self, relist: bool) -> dict[int, Artifact]:
        if relist or self._artifacts is None:
            self._artifacts = self._list()
            self._forget_gone(self._artifacts)
        return self._artifacts

    def _list(self) -> dict[int, Artifact]:
        artifacts, skipped = parse_listing(self.store.list_objects())
        skips = {(skip.name, skip.reason) for skip in skipped}
        for name, reason in sorted(skips - self._skips):  # each once while it stays at the source
            log.info("ignoring %s%s: %s", self.store.uri, name, reason)
        self._skips = skips
        return artifacts

    def _forget_gone(self, artifacts: dict[int, Artifact]) -> None:
        """Drop what is remembered about uploads no longer at the source: a sidecar runs
        for months, and these maps would otherwise grow with every upload ever seen."""
        present = {(v, a.generation) for v, a in artifacts.items()}
        for memory in (self.rejected, self._rejections):
            for key in [k for k in memory if k not in present]:
                del memory[key]
        self._validated &= present
        self._logged = {entry for entry in self._logged if entry[:2] in present}

    def _read_disk(self, current: Plan) -> dict[int, int | None]:
        """``{version: generation}`` on disk; warns (once) of versions re-uploaded since."""
        on_disk = self.model_dir.installed()
        self._on_disk = dict(on_disk)
        for version, artifact in current.usable.items():
            known = on_disk.get(version)
            if known is not None and known != artifact.generation:
                self._once(
                    (version, artifact.generation, "changed"),
                    "version %d changed at the source (generation %d, installed %d); keeping the installed copy: "
                    "TF Serving never reloads a version in place, upload a new version number instead",
                    version,
                    artifact.generation,
                    known,
                    level=logging.WARNING,
                )
        return on_disk

    # -- installing ---------------------------------------------------------------------------

    def _install_missing(self, artifacts: dict[int, Artifact], on_disk: dict[int, int | None]) -> _Attempts:
        """Install the wanted versions not on disk, newest first; a rejected one leaves the
        plan, so the next older valid version is wanted in its place."""
        attempts = _Attempts()
        while (
            artifact := plan(artifacts, self.rejected, self.policy).next_install(on_disk, attempts.failed)
        ) is not None:
            result = self._attempt(artifact, attempts, install_version)
            if result is not None:
                on_disk[result.version] = result.generation
                self._on_disk[result.version] = result.generation
                self._validated.add((result.version, result.generation))  # still valid once removed
                attempts.installed.append(result)
        self._validate_newest(artifacts, on_disk, attempts)
        self._last = attempts
        return attempts

    def _validate_newest(
        self, artifacts: dict[int, Artifact], on_disk: dict[int, int | None], attempts: _Attempts
    ) -> None:
        """Under a pinned policy, prove the newest upload valid (or reject it) without
        installing it, so ``latest`` and a rejection are reported while rolled back."""
        while self.policy.pinned is not None:
            usable = plan(artifacts, self.rejected, self.policy).usable
            if not usable:
                return
            artifact = usable[max(usable)]
            key = (artifact.version, artifact.generation)
            if artifact.version in on_disk or artifact.version in attempts.failed or key in self._validated:
                return
            if self._attempt(artifact, attempts, validate) is not None:
                self._validated.add(key)

    def _attempt(self, artifact: Artifact, attempts: _Attempts, action: Action) -> InstallResult | None:
        """Install (or validate) one artifact; a failure is recorded in ``attempts`` (or,
        for a rejection, in ``rejected``), never raised (but Abandoned)."""
        where = f"{self.store.uri}{artifact.name}"
        verb = "installing" if action is install_version else "validating (outside the policy, not installed)"
        log.info("%s version %d from %s (%d bytes)", verb, artifact.version, where, artifact.size)
        self.metrics.install_attempts.inc()
        try:
            result = action(self.store, artifact, self.model_dir, self._limits(), self.stop)
        except Abandoned:
            raise
        except Rejected as exc:
            self._reject(artifact, exc, where)
            return None
        except Exception as exc:  # noqa: BLE001 - a bug must cost one version, never the process
            attempts.failed.add(artifact.version)
            self.metrics.failures.inc()
            attempts.problems.append(self._failure(artifact, exc))
            return None
        self._count_success(result, installed=action is install_version)
        return result

    def _reject(self, artifact: Artifact, exc: Rejected, where: str) -> None:
        key = (artifact.version, artifact.generation)
        self.rejected[key] = exc.reason
        self._rejections[key] = (exc.reason, exc.detail)
        self.metrics.rejections.labels(reason=exc.reason).inc()
        log.error("rejected %s (version %d): %s: %s", where, artifact.version, exc.reason, exc.detail)

    def _failure(self, artifact: Artifact, exc: Exception) -> Problem:
        """Log a failed install (retried with backoff); the problem the report shows."""
        version = artifact.version
        if isinstance(exc, SourceError):
            log.error("install of version %d failed, will retry: %s", version, one_line(exc))
            return Problem(source_problem(exc).reason, f"version {version}: {one_line(exc)}")
        if isinstance(exc, (ModelDirError, OSError)):
            message = one_line(exc if isinstance(exc, ModelDirError) else f"model dir: {exc}")
            log.error("install of version %d failed, will retry: %s", version, message)
            return Problem(ReportReason.INSTALL_FAILED, f"version {version}: {message}")
        return Problem(ReportReason.INSTALL_FAILED, self._unexpected(artifact, exc))

    def _unexpected(self, artifact: Artifact, exc: Exception) -> str:
        """Count and log an error no handler expected (a bug); the version is retried with
        backoff like a failed download. The traceback is logged once per upload and kind of error."""
        self.metrics.unexpected_errors.inc()
        what = f"{type(exc).__name__}: {one_line(exc, 200)}"
        key = (artifact.version, artifact.generation, f"unexpected:{type(exc).__qualname__}")
        message = "install of version %d failed with an unexpected error, will retry: %s"
        if not self._once(
            key,
            message + " (a bug: please report it with this traceback)",
            artifact.version,
            what,
            level=logging.ERROR,
            exc_info=exc,
        ):
            log.error(message, artifact.version, what)
        return f"version {artifact.version}: unexpected error {what}"

    def _count_success(self, result: InstallResult, *, installed: bool) -> None:
        if installed:
            self.metrics.installs.inc()
            self.metrics.install_seconds.observe(result.seconds)
            self.metrics.install_bytes.observe(result.downloaded_bytes)
            self.metrics.downloaded_bytes.inc(result.downloaded_bytes)
        log.info(
            "%s version %d (%d files, %d bytes unpacked, %d downloaded) in %.2fs",
            "installed" if installed else "validated",
            result.version,
            result.files,
            result.unpacked_bytes,
            result.downloaded_bytes,
            result.seconds,
        )

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

    # -- removing -----------------------------------------------------------------------------

    def _remove_outside(self, wanted: frozenset[int], on_disk: dict[int, int | None]) -> list[int]:
        in_place = frozenset(wanted & set(on_disk))
        allowed = bool(in_place) and self.removal.allows_removal(in_place)
        removed: list[int] = []
        for version in removable(wanted, set(on_disk), allowed=allowed):
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

    # -- the outcome ----------------------------------------------------------------------------

    def _outcome(
        self,
        artifacts: dict[int, Artifact],
        final: Plan,
        on_disk: dict[int, int | None],
        attempts: _Attempts,
        removed: list[int],
    ) -> SyncOutcome:
        latest = self._latest(final.usable, on_disk)
        problems = [
            *attempts.problems,
            *self._pin_problems(final.missing_pins),
            *self._rejection_problems(artifacts, latest),
        ]
        return SyncOutcome(
            latest=latest,
            wanted=final.wanted,
            on_disk=tuple(sorted(on_disk)),
            installed=attempts.installed,
            removed=removed,
            problems=problems,
            finished_at=time.time(),
            failed=frozenset(attempts.failed),
            missing_pins=final.missing_pins,
        )

    def _record(self, outcome: SyncOutcome) -> None:
        self.metrics.versions_installed.set(len(outcome.on_disk))
        self.metrics.latest_installed.set(max(outcome.on_disk) if outcome.on_disk else -1)
        self.metrics.latest_at_source.set(outcome.latest if outcome.latest is not None else -1)
        self.metrics.last_sync.set(outcome.finished_at)
        self.metrics.last_sync_success.set(1 if outcome.complete else 0)

    def _latest(self, usable: Mapping[int, Artifact], on_disk: dict[int, int | None]) -> int | None:
        """The newest version at the source known to be valid: on disk, or installed or
        validated earlier (a version removed by a rollback is still valid at the source)."""
        valid = [v for v, a in usable.items() if v in on_disk or (v, a.generation) in self._validated]
        return max(valid) if valid else None

    def _pin_problems(self, missing_pins: frozenset[int]) -> list[Problem]:
        return [
            Problem(
                ReportReason.PINNED_VERSION_MISSING,
                f"pinned version {version} is not a valid version at {self.store.uri} (upload it, or change "
                "the pinned versions); nothing is removed meanwhile",
            )
            for version in sorted(missing_pins)
        ]

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
                        f"version {version} ({self.store.uri}{artifact.name}) rejected: {reason}: {detail}",
                    )
                )
        return problems

    def _once(
        self,
        key: tuple[int, int, str],
        message: str,
        *args: object,
        level: int = logging.INFO,
        exc_info: BaseException | None = None,
    ) -> bool:
        """Log ``message`` the first time ``key`` (an upload and what about it) is seen;
        True if it was logged now."""
        if key in self._logged:
            return False
        self._logged.add(key)
        log.log(level, message, *args, exc_info=exc_info)
        return True
