"""The pollers' entries under status.pollers: which are live, which are stale, and the
versions they report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from model_poller_api import models

from model_poller_operator.pod_states import PodState


def live_reports(status: Mapping[str, Any], pods: Sequence[PodState]) -> dict[str, models.PollerReport]:
    """The pollers' reports of the pods that still exist."""
    entries = status.get(models.STATUS_POLLERS) or {}
    existing = {p.name for p in pods}
    return {
        name: models.PollerReport.from_status(entry or {})
        for name, entry in sorted(entries.items())
        if name in existing
    }


def stale_pollers(status: Mapping[str, Any], pods: Sequence[PodState]) -> list[str]:
    """Entries under status.pollers whose pod no longer exists."""
    existing = {p.name for p in pods}
    return sorted(name for name in (status.get(models.STATUS_POLLERS) or {}) if name not in existing)


def latest_version(reports: Mapping[str, models.PollerReport]) -> int | None:
    seen = [r.latest for r in reports.values() if r.latest is not None]
    seen += [max(r.versions) for r in reports.values() if r.versions]
    return max(seen) if seen else None


def serving_version(reports: Mapping[str, models.PollerReport], pods: Sequence[PodState]) -> int | None:
    """The version every ready replica serves: the minimum over ready pods that report one."""
    ready = {p.name for p in pods if p.ready}
    serving = [r.serving for name, r in reports.items() if name in ready and r.serving is not None]
    return min(serving) if serving else None


def serves_policy(report: models.PollerReport | None, policy: models.VersionPolicy) -> bool:
    """Whether a poller reports serving a version inside the policy. (A poller reports only
    such versions; a pinned policy is checked here too, for a report not yet updated.)"""
    if report is None or report.serving is None:
        return False
    return not policy.pinned or report.serving in policy.pinned
