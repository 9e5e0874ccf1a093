"""What the aggregate is a function of: the pods, their containers and Events, and the
Deployment, as plain typed snapshots built from the watch streams (``handlers.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from model_poller_api import models

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
