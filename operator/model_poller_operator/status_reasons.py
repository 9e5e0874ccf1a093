"""What a ModelDeployment's conditions say: the reasons the operator sets, the kubelet's
reasons the Ready condition passes on, and the cap on a condition's message."""

from __future__ import annotations

from typing import Final

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


def truncate(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."
