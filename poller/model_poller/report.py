"""What the poller says about itself: typed problems, and the report of its pod's
``status.pollers`` entry (a pure function of the last sync and of TF Serving's answer).

The report's ``reason`` comes from the problem's type (set where the exception was
caught), never from its message: the operator maps it to a condition without parsing text.
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Protocol

from model_poller_api.formats import rfc3339
from model_poller_api.models import REPORT_REASON_PRIORITY, PollerReport, ReportReason

from model_poller.errors import SourceAccessDenied, SourceError, SourceNotFound
from model_poller.serving import ServingStatus, load_failures, serving_version


@dataclass(frozen=True)
class Problem:
    """Something wrong that the pod's status entry shows: a typed reason, a message for humans."""

    reason: ReportReason
    message: str


def source_problem(exc: SourceError) -> Problem:
    """The typed problem of a failed listing or download."""
    if isinstance(exc, SourceAccessDenied):
        return Problem(ReportReason.ACCESS_DENIED, str(exc))
    if isinstance(exc, SourceNotFound):
        return Problem(ReportReason.SOURCE_NOT_FOUND, str(exc))
    return Problem(ReportReason.SOURCE_UNREACHABLE, str(exc))


def first_problem(problems: Sequence[Problem]) -> Problem | None:
    if not problems:
        return None
    return min(problems, key=lambda p: REPORT_REASON_PRIORITY.index(p.reason))


def build_report(
    *,
    on_disk: Sequence[int],
    latest: int | None,
    wanted: AbstractSet[int],
    problems: Sequence[Problem],
    finished_at: float,
    serving: ServingStatus | None,
    confirms: bool,
) -> PollerReport:
    """The pod's entry. ``serving``: with TF Serving's confirmation (``confirms``), the
    highest version inside the policy it reports AVAILABLE, and its load failures become
    problems; without it, the highest version inside the policy on disk (which TF Serving's
    default policy serves)."""
    problems = list(problems)
    if confirms:
        serving_now = serving_version(serving, wanted)
        for version, message in sorted(load_failures(serving, wanted).items()):
            problems.append(
                Problem(ReportReason.LOAD_FAILED, f"TF Serving failed to load version {version}: {message}")
            )
    else:
        in_place = set(wanted) & set(on_disk)
        serving_now = max(in_place) if in_place else None
    problem = first_problem(problems)
    return PollerReport(
        versions=tuple(sorted(on_disk)),
        serving=serving_now,
        latest=latest,
        last_sync=rfc3339(finished_at),
        error=problem.message if problem else None,
        reason=problem.reason if problem else None,
    )


class EntryWriter(Protocol):
    """Where the pod's ``status.pollers`` entry goes (``entry_writer.PodEntryWriter`` with
    ``--report-to``)."""

    def write_entry(self, report: PollerReport) -> None:
        """Called after every sync and every change TF Serving reports; must not raise."""
        ...


class NoEntryWriter:
    """Without ``--report-to``: the entry goes nowhere."""

    def write_entry(self, report: PollerReport) -> None:
        pass
