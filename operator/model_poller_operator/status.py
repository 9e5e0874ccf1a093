"""Pure status aggregation: what the pollers and the Deployment report -> the CR's status.

Inputs are plain typed snapshots (built from the watch streams by ``handlers.py``); outputs
are the desired status, the merge patch that gets there from the current status (empty in
steady state, so nothing is written), and the Events worth posting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from model_poller_api import models, names
from model_poller_api.conditions import Condition, find_condition, set_condition

from model_poller_operator import overrides

# Reasons of the Ready condition.
REASON_ALL_SERVING: Final = "AllReplicasServing"
REASON_SCALED_TO_ZERO: Final = "ScaledToZero"
REASON_INITIAL_SYNC: Final = "WaitingForInitialSync"
REASON_NO_VERSION: Final = "NoVersionAtSource"
REASON_NOT_READY: Final = "ReplicasNotReady"
REASON_NOT_SERVING: Final = "ReplicasNotServingPolicy"
REASON_NOT_REPORTING: Final = "PollerNotReporting"
REASON_PODS_REFUSED: Final = "PodsRefused"
# spec.workload: external, and no pod carries the injection label yet.
REASON_NO_PODS: Final = "NoLabelledPods"
# Reasons of the Synced condition (set by the reconcile of the children only).
REASON_APPLIED: Final = "ChildrenApplied"
REASON_APPLY_FAILED: Final = "ApplyFailed"
REASON_INVALID_NAME: Final = "InvalidName"
REASON_INVALID_SPEC: Final = "InvalidSpec"
REASON_NAME_CONFLICT: Final = "NameConflict"
# Reasons of the Degraded condition.
REASON_AS_EXPECTED: Final = "AsExpected"
REASON_SECRET_MISSING: Final = "CredentialsSecretMissing"
# An override in spec.podTemplate (or spec.serving.args, resources...) of something the
# product owns, that the CRD's CEL rules could not refuse (overrides.InvalidOverride): the
# reconcile applies nothing until the spec is fixed (Synced=False, same reason).
REASON_INVALID_OVERRIDE: Final = "InvalidOverride"
# A poller's error: its typed reason (models.ReportReason: VersionRejected, LoadFailed,
# SourceUnreachable, AccessDenied, SourceNotFound, PinnedVersionMissing, InstallFailed) is
# the condition's reason as it is; an error without a known reason (a newer poller) is this.
REASON_POLLER_ERROR: Final = "PollerError"
REASON_REPLICA_FAILURE: Final = "ReplicaFailure"
REASON_ROLLOUT_STUCK: Final = "RolloutStuck"

MAX_MESSAGE: Final = 1024

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
# The kubelet's waiting reasons that mean a container will not start by itself.
POD_FAILURE_REASONS: Final = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


ContainerPhase = Literal["waiting", "running", "terminated", "unknown"]


@dataclass(frozen=True)
class ContainerState:
    """One container of a pod (init containers included), as the kubelet reports it."""

    name: str
    init: bool = False
    state: ContainerPhase = "unknown"
    # The current state's reason and message: ImagePullBackOff, ErrImagePull,
    # CrashLoopBackOff, CreateContainerConfigError, ContainerCreating, PodInitializing...
    reason: str = ""
    message: str = ""
    ready: bool = False
    restart_count: int = 0
    # Why the previous run ended (OOMKilled, Error...), from lastState.terminated.
    last_termination_reason: str = ""

    @classmethod
    def from_status(cls, entry: Mapping[str, Any], *, init: bool) -> ContainerState:
        current = entry.get("state") or {}
        phase: ContainerPhase = "unknown"
        detail: Mapping[str, Any] = {}
        if current.get("waiting") is not None:
            phase, detail = "waiting", current["waiting"]
        elif current.get("running") is not None:
            phase, detail = "running", current["running"]
        elif current.get("terminated") is not None:
            phase, detail = "terminated", current["terminated"]
        last = (entry.get("lastState") or {}).get("terminated") or {}
        return cls(
            name=str(entry.get("name", "")),
            init=init,
            state=phase,
            reason=str(detail.get("reason") or ""),
            message=str(detail.get("message") or ""),
            ready=bool(entry.get("ready")),
            restart_count=int(entry.get("restartCount") or 0),
            last_termination_reason=str(last.get("reason") or ""),
        )


@dataclass(frozen=True)
class PodCondition:
    """One of the pod's own conditions (PodScheduled, Initialized, ContainersReady, Ready...)."""

    type: str
    status: str
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class PodState:
    """One pod of a ModelDeployment, as the pods watch sees it: what the pod itself says."""

    name: str
    ready: bool = False
    phase: str = ""
    # Pod-level reason and message (e.g. Evicted: "The node was low on resource: ...").
    reason: str = ""
    message: str = ""
    conditions: tuple[PodCondition, ...] = ()
    containers: tuple[ContainerState, ...] = ()

    @classmethod
    def from_object(cls, name: str, status: Mapping[str, Any]) -> PodState:
        conditions = tuple(
            PodCondition(
                type=str(c.get("type", "")),
                status=str(c.get("status", "")),
                reason=str(c.get("reason") or ""),
                message=str(c.get("message") or ""),
            )
            for c in status.get("conditions") or ()
        )
        containers = tuple(
            ContainerState.from_status(entry, init=init)
            for key, init in (("initContainerStatuses", True), ("containerStatuses", False))
            for entry in status.get(key) or ()
        )
        return cls(
            name=name,
            ready=any(c.type == "Ready" and c.status == "True" for c in conditions),
            phase=str(status.get("phase") or ""),
            reason=str(status.get("reason") or ""),
            message=str(status.get("message") or ""),
            conditions=conditions,
            containers=containers,
        )

    @property
    def waiting(self) -> tuple[ContainerState, ...]:
        """The containers that wait, with the kubelet's reason (ImagePullBackOff...)."""
        return tuple(c for c in self.containers if c.state == "waiting")

    @property
    def started(self) -> bool:
        """Whether any container has run: the pod got past volume mounts and config."""
        return any(c.state in ("running", "terminated") or c.restart_count for c in self.containers)


@dataclass(frozen=True)
class PodEvent:
    """A Kubernetes Event about one pod (the operator lists them, read-only)."""

    pod: str
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class DeploymentState:
    """What the Deployment's status says, reduced to what the aggregate needs."""

    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    # (type, status, reason, message) of the Deployment's conditions.
    conditions: tuple[tuple[str, str, str, str], ...] = ()

    @classmethod
    def from_object(cls, status: Mapping[str, Any] | None) -> DeploymentState:
        status = status or {}
        return cls(
            replicas=int(status.get("replicas") or 0),
            ready_replicas=int(status.get("readyReplicas") or 0),
            updated_replicas=int(status.get("updatedReplicas") or 0),
            conditions=tuple(
                (
                    str(c.get("type", "")),
                    str(c.get("status", "")),
                    str(c.get("reason", "")),
                    str(c.get("message", "")),
                )
                for c in status.get("conditions") or ()
            ),
        )


@dataclass(frozen=True)
class Observed:
    """Everything the aggregate is a function of (besides the current status itself)."""

    name: str
    namespace: str
    spec: models.ModelDeploymentSpec
    deployment: DeploymentState | None
    pods: tuple[PodState, ...]
    # Events about the pods that have not started (FailedMount...): see pod_events_needed().
    pod_events: tuple[PodEvent, ...] = ()
    extra_problems: tuple[tuple[str, str], ...] = field(default=())


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


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def error_reason(report: models.PollerReport) -> str:
    """The Degraded reason for a poller's error: its typed reason, never parsed from text."""
    return report.reason.value if report.reason is not None else REASON_POLLER_ERROR


def _rank(reason: str) -> int:
    values = [r.value for r in models.REPORT_REASON_PRIORITY]
    return values.index(reason) if reason in values else len(values)


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


# The kubelet's words for a Secret that does not exist, in a container's waiting message
# (CreateContainerConfigError) and in a FailedMount Event. The operator may not read
# Secrets, so what the pods say is how it learns that one is missing.
POD_EVENT_REASONS: Final = ("FailedMount",)


def _secret_not_found(secret: str) -> str:
    return f'secret "{secret}" not found'


def pod_events_needed(spec: models.ModelDeploymentSpec, pods: Sequence[PodState]) -> bool:
    """Whether the pods' Events are worth listing: a credentials Secret is configured and a
    pod has not started (a missing Secret volume shows only in a FailedMount Event)."""
    return bool(spec.source.credentials_secret) and any(not p.started and not p.ready for p in pods)


def missing_secret_evidence(secret: str, pods: Sequence[PodState], events: Sequence[PodEvent]) -> list[tuple[str, str]]:
    """(pod, what it says) for each pod that reports ``secret`` as not found.

    Only pods that have not started count: once the Secret exists the kubelet mounts it and
    the containers run, so older FailedMount Events of such a pod are history."""
    needle = _secret_not_found(secret)
    evidence: list[tuple[str, str]] = []
    for pod in pods:
        if pod.ready:
            continue
        said = next((f"{c.reason}: {c.message}" for c in pod.waiting if needle in c.message), None)
        if said is None and not pod.started:
            said = next((f"{e.reason}: {e.message}" for e in events if e.pod == pod.name and needle in e.message), None)
        if said is not None:
            evidence.append((pod.name, said))
    return evidence


def credentials_secret_problem(observed: Observed) -> str | None:
    """The Degraded message when the pods say spec.source.credentialsSecret is missing."""
    secret = observed.spec.source.credentials_secret
    if not secret:
        return None
    evidence = missing_secret_evidence(secret, observed.pods, observed.pod_events)
    if not evidence:
        return None
    pods = ", ".join(pod for pod, _ in evidence)
    return (
        f"Secret {secret!r} (spec.source.credentialsSecret) does not exist in namespace "
        f"{observed.namespace!r}; the pods cannot start until it does (pod {pods}: {evidence[0][1]}): "
        f"kubectl -n {observed.namespace} create secret generic {secret} "
        "--from-file=key.json=<service-account key file>"
    )


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
        pods = ", ".join(pod for pod, _ in entries)
        first = entries[0][1]
        hint = _HINTS.get(first.reason) if first.reason is not None else None
        message = f"poller of pod {pods}: {first.error}" + (f" ({hint})" if hint else "")
        found.append((reason, message))
    for type_, status_, reason, message in observed.deployment.conditions if observed.deployment else ():
        if type_ == "ReplicaFailure" and status_ == "True":
            found.append((REASON_REPLICA_FAILURE, f"Deployment {observed.name}: {reason}: {message}"))
        if type_ == "Progressing" and status_ == "False" and reason == "ProgressDeadlineExceeded":
            found.append((REASON_ROLLOUT_STUCK, f"Deployment {observed.name}: {message}"))
    found.extend(observed.extra_problems)
    return found


def serves_policy(report: models.PollerReport | None, policy: models.VersionPolicy) -> bool:
    """Whether a poller reports serving a version inside the policy. (A poller reports only
    such versions; a pinned policy is checked here too, for a report not yet updated.)"""
    if report is None or report.serving is None:
        return False
    return not policy.pinned or report.serving in policy.pinned


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


def apply_failed_message(message: str, spec_fields: Sequence[str]) -> str:
    """The ApplyFailed message, led by the spec fields behind the fields the API server
    refused (spec.podTemplate.spec.affinity...: what the user wrote, not what was rendered)."""
    if not spec_fields:
        return message
    return f"{', '.join(spec_fields)}: the API server refused the rendered value: {message}"


def degraded_condition(found: Sequence[tuple[str, str]]) -> Condition:
    if not found:
        return Condition(models.CONDITION_DEGRADED, "False", REASON_AS_EXPECTED, "")
    reason = found[0][0]
    return Condition(models.CONDITION_DEGRADED, "True", reason, _truncate("; ".join(m for _, m in found)))


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
                models.CONDITION_SYNCED, "True" if synced.ok else "False", synced.reason, _truncate(synced.message)
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
    """Kubernetes Events for what changed between two statuses: versions and problems."""
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
        if new.get("status") == bad and (old.get("status"), old.get("reason")) != (bad, new.get("reason")):
            posted.append(PostedEvent("Warning", str(new.get("reason")), str(new.get("message"))))
        elif old.get("status") == bad and new.get("status") not in (None, bad):
            posted.append(PostedEvent("Normal", f"{type_}Resolved", f"{type_}: {new.get('reason')}"))
    return posted
