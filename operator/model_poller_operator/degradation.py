"""The Degraded condition: everything that needs a user's attention (the pollers' errors,
the Deployment's failures, overrides the renderer refuses, a missing Secret), most
important first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from model_poller_api import models
from model_poller_api.conditions import Condition

from model_poller_operator import overrides
from model_poller_operator.missing_secret import credentials_secret_problem
from model_poller_operator.pod_states import Observed
from model_poller_operator.status_reasons import (
    REASON_AS_EXPECTED,
    REASON_INVALID_OVERRIDE,
    REASON_POLLER_ERROR,
    REASON_REPLICA_FAILURE,
    REASON_ROLLOUT_STUCK,
    REASON_SECRET_MISSING,
    truncate,
)

# What the user can do about each kind of poller error, appended to the condition's message.
_HINTS: Final[Mapping[models.ReportReason, str]] = {
    models.ReportReason.PINNED_VERSION_MISSING: (
        "upload the pinned version to spec.source.uri or change spec.versions.pinned"
    ),
    models.ReportReason.ACCESS_DENIED: (
        "grant the poller's identity read access to the bucket (roles/storage.objectViewer), "
        "or check the key in spec.source.credentialsSecret"
    ),
    models.ReportReason.SOURCE_NOT_FOUND: "check spec.source.uri (bucket and prefix)",
    models.ReportReason.VERSION_REJECTED: "upload a corrected archive under a new version number",
    models.ReportReason.LOAD_FAILED: (
        "the previous version keeps serving; upload a corrected SavedModel under a new version number"
    ),
}


def error_reason(report: models.PollerReport) -> str:
    """The Degraded reason for a poller's error: its typed reason, never parsed from text."""
    return report.reason.value if report.reason is not None else REASON_POLLER_ERROR


def _rank(reason: str) -> int:
    values = [r.value for r in models.REPORT_REASON_PRIORITY]
    return values.index(reason) if reason in values else len(values)


def problems(observed: Observed, reports: Mapping[str, models.PollerReport]) -> list[tuple[str, str]]:
    """(reason, message) of everything that needs a user's attention, most important first."""
    found: list[tuple[str, str]] = [
        (REASON_INVALID_OVERRIDE, f"{problem}; the children stay as last applied until the spec is fixed")
        for problem in overrides.problems(observed.spec)
    ]
    secret_problem = credentials_secret_problem(observed)
    if secret_problem:
        found.append((REASON_SECRET_MISSING, secret_problem))
    by_reason: dict[str, list[tuple[str, models.PollerReport]]] = {}
    for pod, report in reports.items():
        if report.error:
            by_reason.setdefault(error_reason(report), []).append((pod, report))
    for reason, entries in sorted(by_reason.items(), key=lambda item: _rank(item[0])):
        found.append((reason, _pollers_message(entries)))
    for type_, status_, reason, message in observed.deployment.conditions if observed.deployment else ():
        if type_ == "ReplicaFailure" and status_ == "True":
            found.append((REASON_REPLICA_FAILURE, f"Deployment {observed.name}: {reason}: {message}"))
        if type_ == "Progressing" and status_ == "False" and reason == "ProgressDeadlineExceeded":
            found.append((REASON_ROLLOUT_STUCK, f"Deployment {observed.name}: {message}"))
    found.extend(observed.extra_problems)
    return found


def _pollers_message(entries: Sequence[tuple[str, models.PollerReport]]) -> str:
    """Each pod's error of one reason; pods with the same words are named together, and the
    hint comes once, at the end (the condition's whole message is capped by ``truncate``)."""
    by_error: dict[str, list[str]] = {}
    for pod, report in entries:
        by_error.setdefault(str(report.error), []).append(pod)
    message = "; ".join(f"poller of pod {', '.join(pods)}: {error}" for error, pods in by_error.items())
    first = entries[0][1]
    hint = _HINTS.get(first.reason) if first.reason is not None else None
    return message + (f" ({hint})" if hint else "")


def degraded_condition(found: Sequence[tuple[str, str]]) -> Condition:
    if not found:
        return Condition(models.CONDITION_DEGRADED, "False", REASON_AS_EXPECTED, "")
    reason = found[0][0]
    return Condition(models.CONDITION_DEGRADED, "True", reason, truncate("; ".join(m for _, m in found)))
