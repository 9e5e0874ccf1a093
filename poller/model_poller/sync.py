"""One sync: list the source, install what the policy wants, remove what it no longer does.

The engine is single-threaded by design: notifications and the poll timer only wake the
loop that calls ``sync()``, so two installs of one version can never run at once.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from model_poller_api.models import PollerReport

from model_poller.errors import Abandoned, ModelDirError, Rejected, SourceError
from model_poller.extract import Limits
from model_poller.install import InstallResult, ModelDir, install
from model_poller.metrics import Metrics
from model_poller.policy import Policy, install_order, removable
from model_poller.report import AlwaysAllow, RemovalGate
from model_poller.sources.base import Source
from model_poller.text import one_line
from model_poller.versions import Artifact, parse_listing

log = logging.getLogger(__name__)


@dataclass
class SyncOutcome:
    """What one sync found and did; ``complete`` means the policy's versions are on disk,
    ``failed`` are versions whose install failed for a reason worth retrying soon."""

    latest: int | None
    wanted: frozenset[int]
    on_disk: tuple[int, ...]
    installed: list[InstallResult] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    finished_at: float = 0.0
    problems_block: bool = False
    failed: frozenset[int] = frozenset()

    @property
    def complete(self) -> bool:
        return bool(self.wanted) and self.wanted <= set(self.on_disk) and not self.problems_block

    def reason(self) -> str:
        """One line saying why the sync is not complete ("" when it is)."""
        if self.complete:
            return ""
        if self.problems:
            return "; ".join(self.problems)
        missing = sorted(self.wanted - set(self.on_disk))
        return f"versions {missing} are not installed" if missing else "no valid version at the source"

    def report(self) -> PollerReport:
        return PollerReport(
            versions=self.on_disk,
            last_sync=datetime.fromtimestamp(self.finished_at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            error=None if self.complete else self.reason(),
            latest=self.latest,
        )


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
    ) -> None:
        self.source = source
        self.model_dir = model_dir
        self.policy = policy
        self.limits = limits
        self.stop = stop
        self.metrics = metrics
        self.gate: RemovalGate = gate or AlwaysAllow()
        self.rejected: dict[tuple[int, int], str] = {}
        self._logged: set[str] = set()
        self._on_disk: dict[int, int | None] = {}

    def known(self, version: int, generation: int) -> bool:
        """True if this exact upload is installed or was rejected: nothing to do for it."""
        return self._on_disk.get(version) == generation or (version, generation) in self.rejected

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

    def sync(self) -> SyncOutcome:
        """List, install, remove. Raises SourceError if the source cannot be listed,
        Abandoned if stop was requested mid-install; any other failure is in the outcome."""
        objects = self.source.list_objects()
        artifacts, skipped = parse_listing(objects)
        for skip in skipped:
            self._once(f"skip:{skip.name}:{skip.reason}", "ignoring %s%s: %s", self.source.uri, skip.name, skip.reason)
        usable: dict[int, Artifact] = {
            v: a for v, a in artifacts.items() if (v, a.generation) not in self.rejected
        }
        on_disk = self.model_dir.installed()
        self._on_disk = dict(on_disk)
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
        problems: list[str] = []
        results: list[InstallResult] = []
        failed: set[int] = set()
        while True:
            wanted = self.policy.wanted(usable)
            todo = [v for v in install_order(wanted, set(on_disk)) if v not in failed]
            if not todo:
                break
            artifact = usable[todo[0]]
            where = f"{self.source.uri}{artifact.name}"
            log.info("installing version %d from %s (%d bytes)", artifact.version, where, artifact.size)
            self.metrics.install_attempts.inc()
            try:
                result = install(self.source, artifact, self.model_dir, self.limits, self.stop)
            except Abandoned:
                raise
            except Rejected as exc:
                self.rejected[(artifact.version, artifact.generation)] = exc.reason
                self.metrics.rejections.labels(reason=exc.reason).inc()
                log.error("rejected %s (version %d): %s: %s", where, artifact.version, exc.reason, exc.detail)
                del usable[artifact.version]
                if self.policy.pinned is not None:
                    problems.append(f"pinned version {artifact.version} rejected: {exc.reason}")
                continue
            except (SourceError, ModelDirError, OSError) as exc:
                failed.add(artifact.version)
                self.metrics.failures.inc()
                message = one_line(exc if isinstance(exc, (SourceError, ModelDirError)) else f"model dir: {exc}")
                log.error("install of version %d failed, will retry: %s", artifact.version, message)
                problems.append(f"version {artifact.version}: {message}")
                continue
            except Exception as exc:  # noqa: BLE001 - a bug must cost one version, never the process
                failed.add(artifact.version)
                problems.append(self._unexpected(artifact, exc))
                continue
            on_disk[artifact.version] = artifact.generation
            self._on_disk[artifact.version] = artifact.generation
            results.append(result)
            self.metrics.installs.inc()
            self.metrics.install_seconds.observe(result.seconds)
            self.metrics.install_bytes.observe(result.downloaded_bytes)
            self.metrics.downloaded_bytes.inc(result.downloaded_bytes)
            log.info(
                "installed version %d (%d files, %d bytes unpacked, %d downloaded) in %.2fs",
                result.version,
                result.files,
                result.unpacked_bytes,
                result.downloaded_bytes,
                result.seconds,
            )

        wanted = self.policy.wanted(usable)
        missing_pins = self.policy.missing_pins(usable)
        for version in sorted(missing_pins):
            if not any(p.startswith(f"pinned version {version} ") for p in problems):
                problems.append(f"pinned version {version} is not a valid version at {self.source.uri}")
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
        if not usable:
            problems.append(f"no valid version at {self.source.uri}")

        outcome = SyncOutcome(
            latest=max(usable) if usable else None,
            wanted=wanted,
            on_disk=tuple(sorted(on_disk)),
            installed=results,
            removed=removed,
            problems=problems,
            finished_at=time.time(),
            problems_block=bool(missing_pins) or not usable,
            failed=frozenset(failed),
        )
        self.metrics.versions_installed.set(len(on_disk))
        self.metrics.latest_installed.set(max(on_disk) if on_disk else -1)
        self.metrics.latest_at_source.set(outcome.latest if outcome.latest is not None else -1)
        self.metrics.last_sync.set(outcome.finished_at)
        self.metrics.last_sync_success.set(1 if outcome.complete else 0)
        return outcome
