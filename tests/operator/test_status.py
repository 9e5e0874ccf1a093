"""Unit tests of the pure status aggregation (no cluster)."""

from __future__ import annotations

from typing import Any

from model_poller_api import models
from model_poller_api.conditions import find_condition
from model_poller_operator import degradation, missing_secret, pod_states, poller_entries, status_reasons
from model_poller_operator import status as st

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"
SELECTOR = "app.kubernetes.io/instance=m,app.kubernetes.io/name=model-poller"


def spec(**overrides: Any) -> models.ModelDeploymentSpec:
    raw: dict[str, Any] = {"replicas": 2, "source": {"uri": "gs://b/m/"}}
    raw.update(overrides)
    return models.ModelDeploymentSpec.from_object("m", raw)


def observed(
    pods: tuple[pod_states.PodState, ...] = (),
    ready: int = 0,
    want: int = 2,
    pod_events: tuple[pod_states.PodEvent, ...] = (),
    conditions: tuple[tuple[str, str, str, str], ...] = (),
    **spec_overrides: Any,
) -> pod_states.Observed:
    return pod_states.Observed(
        name="m",
        namespace="ml",
        spec=spec(replicas=want, **spec_overrides),
        deployment=pod_states.DeploymentState(
            replicas=want, ready_replicas=ready, updated_replicas=want, conditions=conditions
        ),
        pods=pods,
        pod_events=pod_events,
    )


def entry(
    versions: list[int],
    serving: int | None,
    latest: int | None = None,
    error: str | None = None,
    reason: models.ReportReason | None = None,
) -> dict[str, Any]:
    return models.PollerReport(
        versions=tuple(versions), serving=serving, latest=latest, error=error, reason=reason, last_sync=NOW
    ).to_status()


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    found = find_condition(status[models.STATUS_CONDITIONS], type_)
    assert found is not None, f"no {type_} condition in {status}"
    return dict(found)


def test_aggregates_versions_over_existing_pods() -> None:
    pods = (
        pod_states.PodState("m-a", ready=True),
        pod_states.PodState("m-b", ready=True),
        pod_states.PodState("m-c", ready=False),
    )
    current = {
        "pollers": {
            "m-a": entry([2, 3], 3, latest=3),
            "m-b": entry([1, 2], 2, latest=3),
            "m-c": entry([], None, latest=4),  # not ready: does not lower servingVersion
            "m-gone": entry([9], 9, latest=9),  # pod deleted: ignored and pruned
        }
    }
    desired = st.desired_status(current, observed(pods, ready=2), now=NOW, selector=SELECTOR)
    assert desired[models.STATUS_LATEST_VERSION] == 4
    assert desired[models.STATUS_SERVING_VERSION] == 2
    assert desired[models.STATUS_READY_REPLICAS] == 2
    assert desired[models.STATUS_REPLICAS] == 2
    assert desired[models.STATUS_SELECTOR] == SELECTOR
    assert desired[models.STATUS_MODEL_NAME] == "m"
    assert cond(desired, "Ready")["status"] == "True"
    assert cond(desired, "Ready")["reason"] == status_reasons.REASON_ALL_SERVING
    assert cond(desired, "Degraded")["status"] == "False"
    assert poller_entries.stale_pollers(current, pods) == ["m-gone"]
    patch = st.status_patch(current, desired, poller_entries.stale_pollers(current, pods))
    assert patch["pollers"] == {"m-gone": None}


def test_steady_state_makes_an_empty_patch() -> None:
    pods = (pod_states.PodState("m-a", ready=True),)
    current: dict[str, Any] = {"pollers": {"m-a": entry([3], 3, latest=3)}}
    obs = observed(pods, ready=1, want=1)
    synced = st.Synced(generation=3, ok=True, reason=status_reasons.REASON_APPLIED, message="applied")
    first = st.desired_status(current, obs, now=NOW, synced=synced, selector=SELECTOR)
    stored = {**current, **{k: v for k, v in first.items() if v is not None}}
    again = st.desired_status(stored, obs, now=LATER, selector=SELECTOR)
    assert st.status_patch(stored, again, poller_entries.stale_pollers(stored, pods)) == {}
    # The reconcile of the same generation does not change anything either.
    again = st.desired_status(stored, obs, now=LATER, synced=synced, selector=SELECTOR)
    assert st.status_patch(stored, again, []) == {}


def test_last_transition_time_moves_only_with_status() -> None:
    pods = (pod_states.PodState("m-a", ready=False),)
    current: dict[str, Any] = {"pollers": {"m-a": entry([3], None, latest=3)}}
    first = st.desired_status(current, observed(pods, ready=0), now=NOW, selector=SELECTOR)
    assert cond(first, "Ready")["lastTransitionTime"] == NOW
    stored = {**current, **first}
    ready_pods = (pod_states.PodState("m-a", ready=True), pod_states.PodState("m-b", ready=True))
    stored["pollers"]["m-b"] = entry([3], 3, latest=3)
    stored["pollers"]["m-a"] = entry([3], 3, latest=3)
    second = st.desired_status(stored, observed(ready_pods, ready=2), now=LATER, selector=SELECTOR)
    assert cond(second, "Ready")["status"] == "True"
    assert cond(second, "Ready")["lastTransitionTime"] == LATER
    assert cond(second, "Degraded")["lastTransitionTime"] == NOW


def test_ready_reasons_tell_the_user_what_to_do() -> None:
    waiting = st.desired_status({}, observed(), now=NOW, selector=SELECTOR)
    assert cond(waiting, "Ready")["reason"] == status_reasons.REASON_INITIAL_SYNC
    assert "gs://b/m/" in cond(waiting, "Ready")["message"]
    pods = (pod_states.PodState("m-a"),)
    empty = st.desired_status({"pollers": {"m-a": entry([], None)}}, observed(pods), now=NOW, selector=SELECTOR)
    assert cond(empty, "Ready")["reason"] == status_reasons.REASON_NO_VERSION
    assert "gs://b/m/1.zip" in cond(empty, "Ready")["message"]
    partial = st.desired_status(
        {"pollers": {"m-a": entry([1], 1, latest=1)}},
        observed((pod_states.PodState("m-a", True),), ready=1),
        now=NOW,
        selector=SELECTOR,
    )
    assert cond(partial, "Ready")["reason"] == status_reasons.REASON_NOT_READY
    assert "1/2 replicas ready" in cond(partial, "Ready")["message"]
    assert "describe deployment m" in cond(partial, "Ready")["message"]
    zero = st.desired_status({}, observed(want=0), now=NOW, selector=SELECTOR)
    assert cond(zero, "Ready")["reason"] == status_reasons.REASON_SCALED_TO_ZERO
    assert zero[models.STATUS_SERVING_VERSION] is None


# What a kubelet writes for a pod whose credentials Secret volume cannot be mounted: the
# pod stays Pending, every container waits, and the reason is only in a FailedMount Event.
PENDING_ON_MOUNT: dict[str, Any] = {
    "phase": "Pending",
    "conditions": [
        {"type": "PodReadyToStartContainers", "status": "False"},
        {
            "type": "Initialized",
            "status": "False",
            "reason": "ContainersNotInitialized",
            "message": "containers with incomplete status: [poller]",
        },
        {
            "type": "Ready",
            "status": "False",
            "reason": "ContainersNotReady",
            "message": "containers with unready status: [poller serving]",
        },
        {"type": "PodScheduled", "status": "True"},
    ],
    "initContainerStatuses": [
        {
            "name": "poller",
            "ready": False,
            "restartCount": 0,
            "started": False,
            "image": "p",
            "imageID": "",
            "state": {"waiting": {"reason": "PodInitializing"}},
        },
    ],
    "containerStatuses": [
        {
            "name": "serving",
            "ready": False,
            "restartCount": 0,
            "started": False,
            "image": "s",
            "imageID": "",
            "state": {"waiting": {"reason": "PodInitializing"}},
        },
    ],
}
FAILED_MOUNT = pod_states.PodEvent(
    pod="m-a",
    type="Warning",
    reason="FailedMount",
    message='MountVolume.SetUp failed for volume "gcs-credentials" : secret "gcs-key" not found',
)
# A Secret consumed through the environment instead: the container itself says it.
CONFIG_ERROR: dict[str, Any] = {
    "phase": "Pending",
    "containerStatuses": [
        {
            "name": "serving",
            "ready": False,
            "restartCount": 0,
            "state": {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "gcs-key" not found'}},
        },
    ],
}
RUNNING: dict[str, Any] = {
    "phase": "Running",
    "conditions": [{"type": "Ready", "status": "False"}],
    "initContainerStatuses": [
        {"name": "poller", "ready": True, "restartCount": 0, "state": {"running": {"startedAt": NOW}}}
    ],
    "containerStatuses": [
        {"name": "serving", "ready": False, "restartCount": 0, "state": {"running": {"startedAt": NOW}}}
    ],
}
WITH_SECRET = {"source": {"uri": "gs://b/m/", "credentialsSecret": "gcs-key"}}


def test_missing_secret_volume_is_degraded_from_the_pods_failed_mount_event() -> None:
    pods = (pod_states.PodState.from_object("m-a", PENDING_ON_MOUNT),)
    assert missing_secret.pod_events_needed(spec(**WITH_SECRET), pods)
    desired = st.desired_status(
        {}, observed(pods, pod_events=(FAILED_MOUNT,), **WITH_SECRET), now=NOW, selector=SELECTOR
    )
    degraded = cond(desired, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", status_reasons.REASON_SECRET_MISSING)
    assert "spec.source.credentialsSecret" in degraded["message"]
    assert "m-a" in degraded["message"] and 'secret "gcs-key" not found' in degraded["message"]
    assert "kubectl -n ml create secret generic gcs-key" in degraded["message"]
    events = st.events({}, desired, "gs://b/m/")
    assert st.PostedEvent("Warning", status_reasons.REASON_SECRET_MISSING, degraded["message"]) in events


def test_missing_secret_is_degraded_from_a_containers_waiting_message() -> None:
    pods = (pod_states.PodState.from_object("m-a", CONFIG_ERROR),)
    desired = st.desired_status({}, observed(pods, **WITH_SECRET), now=NOW, selector=SELECTOR)
    assert cond(desired, "Degraded")["reason"] == status_reasons.REASON_SECRET_MISSING
    assert "CreateContainerConfigError" in cond(desired, "Degraded")["message"]


def test_secret_is_not_reported_missing_without_evidence_from_this_secret_or_once_the_pod_runs() -> None:
    pending = (pod_states.PodState.from_object("m-a", PENDING_ON_MOUNT),)
    other_pod = pod_states.PodEvent("m-zzz", "Warning", "FailedMount", FAILED_MOUNT.message)
    other_secret = pod_states.PodEvent(
        "m-a", "Warning", "FailedMount", 'MountVolume.SetUp failed: secret "other" not found'
    )
    running = (pod_states.PodState.from_object("m-a", RUNNING),)
    for pods, pod_events in ((pending, ()), (pending, (other_pod, other_secret)), (running, (FAILED_MOUNT,))):
        desired = st.desired_status(
            {}, observed(pods, pod_events=pod_events, **WITH_SECRET), now=NOW, selector=SELECTOR
        )
        assert cond(desired, "Degraded")["status"] == "False", (pods, pod_events)
    # Without a credentials Secret, or once the pods run, no Event is worth listing.
    assert not missing_secret.pod_events_needed(spec(), pending)
    assert not missing_secret.pod_events_needed(spec(**WITH_SECRET), running)


def test_poller_errors_become_degraded_reasons_by_type_not_text() -> None:
    R = models.ReportReason
    pods = (pod_states.PodState("m-a", True), pod_states.PodState("m-b", True), pod_states.PodState("m-c", True))
    current = {
        "pollers": {
            "m-a": entry(
                [2],
                2,
                latest=2,
                error="pinned version 7 is not a valid version at gs://b/m/",
                reason=R.PINNED_VERSION_MISSING,
            ),
            # The words do not matter: only the typed reason does.
            "m-b": entry([2], 2, latest=2, error="something forbidden happened", reason=R.VERSION_REJECTED),
            "m-c": entry([2], 2, latest=2, error="caller lacks storage.objects.list", reason=R.ACCESS_DENIED),
        }
    }
    desired = st.desired_status(current, observed(pods, ready=3, want=3), now=NOW, selector=SELECTOR)
    degraded = cond(desired, "Degraded")
    assert degraded["status"] == "True"
    assert degraded["reason"] == "AccessDenied"
    assert degraded["message"].startswith("poller of pod m-c: caller lacks storage.objects.list")
    assert "roles/storage.objectViewer" in degraded["message"]
    assert "poller of pod m-a: pinned version 7" in degraded["message"]
    assert "poller of pod m-b: something forbidden happened" in degraded["message"]
    # Each typed reason is the condition's reason as it is; an untyped error is PollerError.
    for reason in R:
        assert degradation.error_reason(models.PollerReport(error="x", reason=reason)) == reason.value
    assert degradation.error_reason(models.PollerReport(error="x")) == status_reasons.REASON_POLLER_ERROR
    assert models.ReportReason.parse("SomethingNewer") is None


def test_deployment_failures_are_degraded() -> None:
    obs = observed(
        conditions=(
            ("ReplicaFailure", "True", "FailedCreate", 'pods "m-x" is forbidden: violates PodSecurity "restricted"'),
        )
    )
    desired = st.desired_status({}, obs, now=NOW, selector=SELECTOR)
    assert cond(desired, "Degraded")["reason"] == status_reasons.REASON_REPLICA_FAILURE
    assert "PodSecurity" in cond(desired, "Degraded")["message"]


def test_synced_and_observed_generation_come_from_the_reconcile_only() -> None:
    failed = st.Synced(
        generation=2, ok=False, reason=status_reasons.REASON_APPLY_FAILED, message="Deployment m: 422 Invalid"
    )
    desired = st.desired_status(
        {models.STATUS_OBSERVED_GENERATION: 1}, observed(), now=NOW, synced=failed, selector=SELECTOR
    )
    assert desired[models.STATUS_OBSERVED_GENERATION] == 1
    assert cond(desired, "Synced")["status"] == "False"
    assert cond(desired, "Synced")["observedGeneration"] == 2
    refreshed = st.desired_status({**desired}, observed(), now=LATER, selector=SELECTOR)
    assert cond(refreshed, "Synced") == cond(desired, "Synced")
    assert [c["type"] for c in refreshed[models.STATUS_CONDITIONS]] == ["Ready", "Synced", "Degraded"]


def test_events_on_version_changes() -> None:
    before = {models.STATUS_LATEST_VERSION: 2, models.STATUS_SERVING_VERSION: 2, models.STATUS_CONDITIONS: []}
    after = {models.STATUS_LATEST_VERSION: 3, models.STATUS_SERVING_VERSION: 3, models.STATUS_CONDITIONS: []}
    assert st.events(before, after, "gs://b/m/") == [
        st.PostedEvent("Normal", "NewVersion", "version 3 is available at gs://b/m/"),
        st.PostedEvent("Normal", "ServingVersionChanged", "every ready replica serves version 3 (was 2)"),
    ]
    assert st.events(after, after, "gs://b/m/") == []


def test_latest_version_is_kept_when_nobody_reports() -> None:
    desired = st.desired_status({models.STATUS_LATEST_VERSION: 5}, observed(want=0), now=NOW, selector=SELECTOR)
    assert desired[models.STATUS_LATEST_VERSION] == 5


def test_status_patch_clears_fields_that_became_unknown() -> None:
    current = {models.STATUS_SERVING_VERSION: 3, models.STATUS_REPLICAS: 1}
    desired = {models.STATUS_SERVING_VERSION: None, models.STATUS_REPLICAS: 1, models.STATUS_LATEST_VERSION: None}
    assert st.status_patch(current, desired, []) == {models.STATUS_SERVING_VERSION: None}


def test_pod_and_deployment_state_from_objects() -> None:
    assert pod_states.PodState.from_object("p", {"conditions": [{"type": "Ready", "status": "True"}]}).ready
    assert not pod_states.PodState.from_object("p", {}).ready
    d = pod_states.DeploymentState.from_object({"replicas": 2, "readyReplicas": 1})
    assert (d.replicas, d.ready_replicas, d.updated_replicas) == (2, 1, 0)
    assert pod_states.DeploymentState.from_object(None) == pod_states.DeploymentState()


def test_pod_state_keeps_what_the_pod_itself_says() -> None:
    status = {
        "phase": "Running",
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "ContainersNotReady",
                "message": "containers with unready status: [serving]",
            }
        ],
        "initContainerStatuses": [
            {
                "name": "poller",
                "ready": False,
                "restartCount": 4,
                "state": {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": "back-off 1m20s restarting failed container=poller",
                    }
                },
                "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
            },
        ],
        "containerStatuses": [
            {
                "name": "serving",
                "ready": False,
                "restartCount": 0,
                "state": {
                    "waiting": {
                        "reason": "ImagePullBackOff",
                        "message": 'Back-off pulling image "tensorflow/serving:nope"',
                    }
                },
            },
        ],
    }
    pod = pod_states.PodState.from_object("m-a", status)
    assert pod == pod_states.PodState(
        name="m-a",
        ready=False,
        phase="Running",
        conditions=(
            pod_states.PodCondition(
                "Ready", "False", "ContainersNotReady", "containers with unready status: [serving]"
            ),
        ),
        containers=(
            pod_states.ContainerState(
                "poller",
                init=True,
                state="waiting",
                reason="CrashLoopBackOff",
                message="back-off 1m20s restarting failed container=poller",
                restart_count=4,
                last_termination_reason="OOMKilled",
            ),
            pod_states.ContainerState(
                "serving",
                init=False,
                state="waiting",
                reason="ImagePullBackOff",
                message='Back-off pulling image "tensorflow/serving:nope"',
            ),
        ),
    )
    assert [c.reason for c in pod.waiting] == ["CrashLoopBackOff", "ImagePullBackOff"]
    assert pod.started  # the poller has run (and crashed) before
    assert not pod_states.PodState.from_object("m-b", PENDING_ON_MOUNT).started
    assert pod_states.PodState.from_object("m-c", RUNNING).started
    evicted = pod_states.PodState.from_object(
        "m-d", {"phase": "Failed", "reason": "Evicted", "message": "ephemeral storage"}
    )
    assert (evicted.phase, evicted.reason, evicted.message) == ("Failed", "Evicted", "ephemeral storage")


def test_degraded_message_lists_each_pods_problem() -> None:
    R = models.ReportReason
    pods = tuple(pod_states.PodState(f"m-{x}", True) for x in "abc")
    current = {
        "pollers": {
            "m-a": entry(
                [1], 1, latest=2, error="version 2 (gs://b/m/2.zip) rejected: unsafe_path", reason=R.VERSION_REJECTED
            ),
            "m-b": entry(
                [1], 1, latest=3, error="version 3 (gs://b/m/3.zip) rejected: too_big", reason=R.VERSION_REJECTED
            ),
            "m-c": entry(
                [1], 1, latest=2, error="version 2 (gs://b/m/2.zip) rejected: unsafe_path", reason=R.VERSION_REJECTED
            ),
        }
    }
    desired = st.desired_status(current, observed(pods, ready=3, want=3), now=NOW, selector=SELECTOR)
    degraded = cond(desired, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "VersionRejected")
    # Pods with the same words are named together, every other pod's words follow, one hint.
    assert degraded["message"] == (
        "poller of pod m-a, m-c: version 2 (gs://b/m/2.zip) rejected: unsafe_path; "
        "poller of pod m-b: version 3 (gs://b/m/3.zip) rejected: too_big "
        "(upload a corrected archive under a new version number)"
    )
    # Bounded: many pods with long errors still fit the condition's cap.
    many = {
        f"m-{i:03d}": entry([1], 1, error=f"version {i} rejected: " + "x" * 200, reason=R.VERSION_REJECTED)
        for i in range(50)
    }
    crowd = tuple(pod_states.PodState(name, True) for name in many)
    desired = st.desired_status({"pollers": many}, observed(crowd, ready=50, want=50), now=NOW, selector=SELECTOR)
    message = cond(desired, "Degraded")["message"]
    assert len(message) == status_reasons.MAX_MESSAGE and message.startswith("poller of pod m-000: version 0")


def test_an_event_on_each_change_of_degraded_and_none_without_one() -> None:
    R = models.ReportReason
    pods = (pod_states.PodState("m-a", True), pod_states.PodState("m-b", True))
    obs = observed(pods, ready=2)
    rejected = "version 3 (gs://b/m/3.zip) rejected: unsafe_path"

    def step(before: dict[str, Any], pollers: dict[str, Any], now: str) -> tuple[dict[str, Any], list[st.PostedEvent]]:
        desired = st.desired_status({**before, "pollers": pollers}, obs, now=now, selector=SELECTOR)
        after = {**desired, "pollers": pollers}
        return after, [
            e for e in st.events(before, after, "gs://b/m/") if e.reason not in ("NewVersion", "ServingVersionChanged")
        ]

    clean = {"m-a": entry([1], 1, latest=1), "m-b": entry([1], 1, latest=1)}
    status, posted = step({}, clean, NOW)
    assert posted == []
    one = {**clean, "m-a": entry([1], 1, latest=1, error=rejected, reason=R.VERSION_REJECTED)}
    status, posted = step(status, one, NOW)
    assert posted == [st.PostedEvent("Warning", "VersionRejected", cond(status, "Degraded")["message"])]
    assert "m-a" in posted[0].message and "m-b" not in posted[0].message
    # The same reason, a new message (the second pod reports it too): one more Event.
    both = {**one, "m-b": entry([1], 1, latest=1, error=rejected, reason=R.VERSION_REJECTED)}
    status, posted = step(status, both, LATER)
    assert posted == [st.PostedEvent("Warning", "VersionRejected", cond(status, "Degraded")["message"])]
    assert "poller of pod m-a, m-b:" in posted[0].message
    assert cond(status, "Degraded")["lastTransitionTime"] == NOW  # the status did not change
    # Nothing changed: no Event, however often the status is recomputed.
    for _ in range(3):
        status, posted = step(status, both, LATER)
        assert posted == []
    # Cleared: DegradedResolved, once.
    status, posted = step(status, clean, LATER)
    assert cond(status, "Degraded")["status"] == "False"
    assert posted == [st.PostedEvent("Normal", "DegradedResolved", "Degraded: AsExpected")]
    status, posted = step(status, clean, LATER)
    assert posted == []
