"""The Ready condition: every desired replica ready and serving a version inside the
policy, or the most specific reason why not."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from model_poller_api import models, names
from model_poller_api.conditions import Condition

from model_poller_operator.missing_secret import credentials_secret_problem
from model_poller_operator.pod_states import Observed, PodState
from model_poller_operator.poller_entries import latest_version, serves_policy
from model_poller_operator.status_reasons import (
    POD_FAILURE_REASONS,
    REASON_ALL_SERVING,
    REASON_INITIAL_SYNC,
    REASON_NO_PODS,
    REASON_NO_VERSION,
    REASON_NOT_READY,
    REASON_NOT_REPORTING,
    REASON_NOT_SERVING,
    REASON_PODS_REFUSED,
    REASON_SCALED_TO_ZERO,
    REASON_SECRET_MISSING,
)


def pod_failure(pod: PodState) -> tuple[str, str] | None:
    """(kubelet reason, message) when a container of ``pod`` will not start by itself."""
    for container in pod.waiting:
        if container.reason in POD_FAILURE_REASONS:
            detail = f": {container.message}" if container.message else ""
            return container.reason, f"pod {pod.name}, container {container.name}: {container.reason}{detail}"
    return None


def ready_condition(observed: Observed, reports: Mapping[str, models.PollerReport], serving: int | None) -> Condition:
    """Ready=True (AllReplicasServing) only when every desired replica is ready and every
    ready replica's poller reports a version inside the policy AVAILABLE in TF Serving.
    Otherwise the reason says why, from the most specific witness: the pods' own words
    (image pull, crash loop, missing Secret), a refused pod, then the pollers' reports."""
    # External mode: the user's workload decides how many pods there are; each labelled pod
    # is a desired replica (``observed.deployment`` is then computed from those pods).
    external = observed.spec.external
    desired = (observed.deployment.replicas if observed.deployment else 0) if external else observed.spec.replicas
    ready = observed.deployment.ready_replicas if observed.deployment else 0
    if desired == 0:
        return _nothing_desired(observed)
    counts = f"{ready}/{desired} replicas ready"
    ready_pods = [p for p in observed.pods if p.ready]
    policy = observed.spec.versions
    off_policy = [p.name for p in ready_pods if p.name in reports and not serves_policy(reports[p.name], policy)]
    silent = [p.name for p in ready_pods if p.name not in reports]
    if ready >= desired and not off_policy and not silent and serving is not None:
        return Condition("Ready", "True", REASON_ALL_SERVING, f"{counts}, serving version {serving}")
    return (
        _workload_problem(observed, reports, counts)
        or _report_problem(observed, reports, counts, off_policy, silent)
        or _not_ready(observed, counts)
    )


def _nothing_desired(observed: Observed) -> Condition:
    if observed.spec.external:
        return Condition(
            "Ready",
            "False",
            REASON_NO_PODS,
            f"no pod labelled {names.LABEL_MODEL_DEPLOYMENT}={observed.name} in namespace {observed.namespace} "
            "(spec.workload: external): label the pod template of your tensorflow/serving workload",
        )
    return Condition("Ready", "True", REASON_SCALED_TO_ZERO, "spec.replicas is 0: nothing to serve")


def _workload_problem(observed: Observed, reports: Mapping[str, models.PollerReport], counts: str) -> Condition | None:
    """What the pods and the Deployment say: a container that will not start, a missing
    credentials Secret, pods the ReplicaSet could not create."""
    for pod in observed.pods:
        failure = pod_failure(pod)
        if failure is not None and pod.name not in reports:
            return Condition("Ready", "False", failure[0], f"{counts}; {failure[1]}")
    secret = credentials_secret_problem(observed)
    if secret is not None:
        return Condition("Ready", "False", REASON_SECRET_MISSING, f"{counts}; {secret}")
    for type_, status_, reason, message in observed.deployment.conditions if observed.deployment else ():
        if type_ == "ReplicaFailure" and status_ == "True":
            return Condition("Ready", "False", REASON_PODS_REFUSED, f"{counts}; pods not created: {reason}: {message}")
    return None


def _report_problem(
    observed: Observed,
    reports: Mapping[str, models.PollerReport],
    counts: str,
    off_policy: Sequence[str],
    silent: Sequence[str],
) -> Condition | None:
    """What the pollers' entries say (or their silence)."""
    policy, uri = observed.spec.versions, observed.spec.source.uri
    if off_policy:
        wanted = f"pinned {list(policy.pinned)}" if policy.pinned else f"keep {policy.keep}"
        what = ", ".join(f"{name} serves {reports[name].serving}" for name in off_policy)
        return Condition(
            "Ready",
            "False",
            REASON_NOT_SERVING,
            f"{counts}; not yet serving a version inside the policy ({wanted}): {what}",
        )
    if not reports:
        return Condition(
            "Ready",
            "False",
            REASON_INITIAL_SYNC,
            f"{counts}: waiting for the pollers' first report (initial sync from {uri})",
        )
    if latest_version(reports) is None and not any(r.error for r in reports.values()):
        return Condition(
            "Ready",
            "False",
            REASON_NO_VERSION,
            f"{counts}: no valid model version at {uri} yet; upload e.g. {uri}1.zip, or a {uri}1/ "
            "folder with saved_model.pb and a _READY marker",
        )
    if silent:
        return Condition(
            "Ready",
            "False",
            REASON_NOT_REPORTING,
            f"{counts}; the poller of pod {', '.join(silent)} has not reported into status.pollers "
            f"(kubectl -n {observed.namespace} logs {silent[0]} -c poller)",
        )
    return None


def _not_ready(observed: Observed, counts: str) -> Condition:
    see = f"describe deployment {observed.name}"
    if observed.spec.external:
        see = f"get pods -l {names.LABEL_MODEL_DEPLOYMENT}={observed.name}"
    return Condition("Ready", "False", REASON_NOT_READY, f"{counts}; see kubectl -n {observed.namespace} {see}")
