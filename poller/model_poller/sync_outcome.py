"""What one sync found and did (``sync.Engine.sync`` returns it; the run loop, the
readiness probe and the report read it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from model_poller.install import InstallResult
from model_poller.report import Problem


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
