"""A missing spec.source.credentialsSecret, as the pods tell it (the operator may not read
Secrets)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from model_poller_api import models

from model_poller_operator.pod_states import Observed, PodEvent, PodState

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
