"""Pure status aggregation: what the pollers and the Deployment report -> the CR's status.

Inputs are the snapshots of ``pod_states.py`` (built from the watch streams by
``handlers.py``); outputs are the desired status, the merge patch that gets there from the
current status (empty in steady state, so nothing is written), and the Events worth
posting. The conditions are computed in ``readiness.py`` (Ready) and ``degradation.py``
(Degraded), the pollers' entries read in ``poller_entries.py``; Synced comes from the
reconcile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from model_poller_api import models
from model_poller_api.conditions import Condition, find_condition, set_condition

from model_poller_operator.degradation import degraded_condition, problems
from model_poller_operator.pod_states import Observed
from model_poller_operator.poller_entries import latest_version, live_reports, serving_version
from model_poller_operator.readiness import ready_condition
from model_poller_operator.status_reasons import truncate


@dataclass(frozen=True)
class Synced:
    """The outcome of applying the children, known only to the reconcile handler."""

    generation: int
    ok: bool
    reason: str
    message: str


@dataclass(frozen=True)
class PostedEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def apply_failed_message(message: str, spec_fields: Sequence[str]) -> str:
    """The ApplyFailed message, led by the spec fields behind the fields the API server
    refused (spec.podTemplate.spec.affinity...: what the user wrote, not what was rendered)."""
    if not spec_fields:
        return message
    return f"{', '.join(spec_fields)}: the API server refused the rendered value: {message}"


def desired_status(
    current: Mapping[str, Any],
    observed: Observed,
    *,
    now: str,
    synced: Synced | None = None,
    selector: str,
) -> dict[str, Any]:
    """The full status the operator wants (without ``pollers``, which the pollers own).

    ``synced`` is given by the reconcile of the children; without it (the periodic
    refresh), observedGeneration and the Synced condition are kept as they are.
    """
    reports = live_reports(current, observed.pods)
    serving = serving_version(reports, observed.pods)
    latest = latest_version(reports)
    if latest is None:
        # Nobody reports (e.g. scaled to zero): the source still holds what it held.
        latest = current.get(models.STATUS_LATEST_VERSION)
    generation = synced.generation if synced and synced.ok else current.get(models.STATUS_OBSERVED_GENERATION)

    conditions: list[dict[str, Any]] = [dict(c) for c in current.get(models.STATUS_CONDITIONS) or ()]
    if synced is not None:
        conditions = set_condition(
            conditions,
            Condition(
                models.CONDITION_SYNCED, "True" if synced.ok else "False", synced.reason, truncate(synced.message)
            ),
            now=now,
            observed_generation=synced.generation,
        )
    condition_generation = generation if isinstance(generation, int) else None
    conditions = set_condition(
        conditions, ready_condition(observed, reports, serving), now=now, observed_generation=condition_generation
    )
    conditions = set_condition(
        conditions,
        degraded_condition(problems(observed, reports)),
        now=now,
        observed_generation=condition_generation,
    )
    order = {models.CONDITION_READY: 0, models.CONDITION_SYNCED: 1, models.CONDITION_DEGRADED: 2}
    conditions.sort(key=lambda c: order.get(str(c.get("type")), len(order)))

    return {
        models.STATUS_OBSERVED_GENERATION: generation,
        models.STATUS_MODEL_NAME: observed.spec.model_name,
        models.STATUS_LATEST_VERSION: latest,
        models.STATUS_SERVING_VERSION: serving,
        models.STATUS_REPLICAS: observed.deployment.replicas if observed.deployment else 0,
        models.STATUS_READY_REPLICAS: observed.deployment.ready_replicas if observed.deployment else 0,
        models.STATUS_SELECTOR: selector,
        models.STATUS_CONDITIONS: conditions,
    }


def status_patch(current: Mapping[str, Any], desired: Mapping[str, Any], stale: Sequence[str]) -> dict[str, Any]:
    """A JSON merge patch of ``status`` from ``current`` to ``desired``; {} when in sync.

    A None in ``desired`` removes the field; stale pollers entries are removed by name.
    """
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        if value is None:
            if current.get(key) is not None:
                patch[key] = None
        elif current.get(key) != value:
            patch[key] = value
    if stale:
        patch[models.STATUS_POLLERS] = {name: None for name in stale}
    return patch


def events(current: Mapping[str, Any], desired: Mapping[str, Any], uri: str) -> list[PostedEvent]:
    """Kubernetes Events for what changed between two statuses: versions and problems.

    Degraded posts one Event on each change of its status, reason or message (a second pod
    reporting the same kind of error changes the message); Synced posts one when it turns
    False or changes reason. Nothing is posted while a condition stays the same, so a status
    recomputed again and again posts nothing."""
    posted: list[PostedEvent] = []
    old_latest = current.get(models.STATUS_LATEST_VERSION)
    new_latest = desired.get(models.STATUS_LATEST_VERSION)
    if new_latest is not None and new_latest != old_latest:
        posted.append(PostedEvent("Normal", "NewVersion", f"version {new_latest} is available at {uri}"))
    old_serving = current.get(models.STATUS_SERVING_VERSION)
    new_serving = desired.get(models.STATUS_SERVING_VERSION)
    if new_serving is not None and new_serving != old_serving:
        was = f" (was {old_serving})" if old_serving is not None else ""
        posted.append(
            PostedEvent("Normal", "ServingVersionChanged", f"every ready replica serves version {new_serving}{was}")
        )
    for type_ in (models.CONDITION_DEGRADED, models.CONDITION_SYNCED):
        old = find_condition(current.get(models.STATUS_CONDITIONS) or (), type_) or {}
        new = find_condition(desired.get(models.STATUS_CONDITIONS) or (), type_) or {}
        bad = "True" if type_ == models.CONDITION_DEGRADED else "False"
        # What a change is: Degraded's message names the pods and their errors, so a new one counts.
        keys = ("status", "reason", "message") if type_ == models.CONDITION_DEGRADED else ("status", "reason")
        if new.get("status") == bad and any(old.get(k) != new.get(k) for k in keys):
            posted.append(PostedEvent("Warning", str(new.get("reason")), str(new.get("message"))))
        elif old.get("status") == bad and new.get("status") not in (None, bad):
            posted.append(PostedEvent("Normal", f"{type_}Resolved", f"{type_}: {new.get('reason')}"))
    return posted
