"""The status edge: every write of a ModelDeployment's status happens here (:class:`StatusWriter`),
recomputed from what was observed and written only when it changed.

Called from the reconcile (with the outcome of applying the children), from the events of
the ModelDeployment, its Deployment and its pods, and from one operator-wide periodic loop.
While a pod waits to start and a credentials Secret is configured, the namespace's
FailedMount Events are listed too (:class:`PodEventsCache`): that is how a missing Secret
is seen, since the operator has no access to Secrets. Every write is a merge patch of ``status``
guarded by the resourceVersion it was computed from, so concurrent callers never undo each
other: a loser of the race drops its result (the object's next event recomputes), except
the reconcile, which re-reads and retries so its Synced outcome is never lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from model_poller_api import models
from model_poller_api.conditions import find_condition
from model_poller_api.formats import rfc3339

from model_poller_operator import missing_secret, pod_states, poller_entries
from model_poller_operator import status as st
from model_poller_operator.apply import Api, StatusConflict
from model_poller_operator.render import ownership

Logger = logging.Logger | logging.LoggerAdapter[Any]


@dataclass(frozen=True)
class Snapshot:
    """A ModelDeployment as last seen by the watch (the value of the ModelDeployment index)."""

    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    deleting: bool = False

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Snapshot:
        meta = obj.get("metadata") or {}
        return cls(
            namespace=str(meta.get("namespace")),
            name=str(meta.get("name")),
            uid=str(meta.get("uid")),
            generation=int(meta.get("generation") or 0),
            resource_version=str(meta.get("resourceVersion")),
            spec=obj.get("spec") or {},
            status=obj.get("status") or {},
            deleting=bool(meta.get("deletionTimestamp")),
        )

    @property
    def owner(self) -> ownership.Owner:
        return ownership.Owner(name=self.name, namespace=self.namespace, uid=self.uid)


def now() -> str:
    return rfc3339()


@dataclass
class PodEventsCache:
    """The FailedMount Events of a namespace's pods, listed at most once per ``interval``
    seconds per namespace, and only while they can say something (see :meth:`get`)."""

    api: Api
    interval: float
    _events: dict[str, tuple[float, tuple[pod_states.PodEvent, ...]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(
        self, namespace: str, spec: models.ModelDeploymentSpec, pods: Sequence[pod_states.PodState], logger: Logger
    ) -> tuple[pod_states.PodEvent, ...]:
        """The Events about pods of ``namespace`` worth reading, when needed: only while a
        pod waits to start with a credentials Secret configured (a steady state lists nothing)."""
        if not missing_secret.pod_events_needed(spec, pods):
            return ()
        with self._lock:
            cached = self._events.get(namespace)
        if cached and time.monotonic() - cached[0] < self.interval:
            return cached[1]
        events = tuple(
            event for reason in missing_secret.POD_EVENT_REASONS for event in self._list(namespace, reason, logger)
        )
        with self._lock:
            self._events[namespace] = (time.monotonic(), events)
        return events

    def _list(self, namespace: str, reason: str, logger: Logger) -> list[pod_states.PodEvent]:
        items = self.api.list_events(namespace, f"involvedObject.kind=Pod,reason={reason}")
        if items is None:
            logger.warning("not allowed to list Events in %s: a missing Secret will not be reported", namespace)
            return []
        return [
            pod_states.PodEvent(
                pod=str((item.get("involvedObject") or {}).get("name", "")),
                type=str(item.get("type") or ""),
                reason=str(item.get("reason") or ""),
                message=str(item.get("message") or ""),
            )
            for item in items
        ]


def reconciled(snapshot: Snapshot) -> bool:
    """Whether the reconcile of the current generation has run (successfully or not)."""
    if snapshot.status.get(models.STATUS_OBSERVED_GENERATION) == snapshot.generation:
        return True
    synced = find_condition(snapshot.status.get(models.STATUS_CONDITIONS) or (), models.CONDITION_SYNCED)
    return synced is not None and synced.get("observedGeneration") == snapshot.generation


@dataclass
class StatusWriter:
    """Writes ModelDeployments' status: every status write of the operator happens here."""

    api: Api
    pod_events: PodEventsCache

    def write_if_changed(
        self,
        snapshot: Snapshot,
        pods: Sequence[pod_states.PodState],
        deployment: pod_states.DeploymentState | None,
        logger: Logger,
        *,
        synced: st.Synced | None = None,
    ) -> bool:
        """Recompute the status and write it if it changed; True if something was written.

        ``synced`` (the reconcile's outcome) is never dropped: on a conflicting write the
        object is read again and the status recomputed from it; any other caller's result
        is dropped instead (the object's next event recomputes it)."""
        if synced is None and not reconciled(snapshot):
            return False  # the reconcile of this generation comes next and writes the status
        observed = self._observed(snapshot, pods, deployment, logger)
        current, resource_version = snapshot.status, snapshot.resource_version
        for _attempt in range(5):
            desired = st.desired_status(
                current,
                observed,
                now=now(),
                synced=synced,
                selector=ownership.pod_selector(snapshot.owner, observed.spec),
            )
            patch = st.status_patch(current, desired, poller_entries.stale_pollers(current, observed.pods))
            if not patch:
                return False
            try:
                self.api.patch_status(snapshot.namespace, snapshot.name, resource_version, patch)
            except StatusConflict:
                fresh = self.api.get_model_deployment(snapshot.namespace, snapshot.name) if synced else None
                if fresh is None:
                    return False
                current, resource_version = fresh.get("status") or {}, str(fresh["metadata"]["resourceVersion"])
                continue
            self._written(snapshot, observed.spec, current, desired, patch, logger)
            return True
        raise RuntimeError(f"status of {snapshot.namespace}/{snapshot.name} kept changing while being written")

    def _observed(
        self,
        snapshot: Snapshot,
        pods: Sequence[pod_states.PodState],
        deployment: pod_states.DeploymentState | None,
        logger: Logger,
    ) -> pod_states.Observed:
        spec = models.ModelDeploymentSpec.from_object(snapshot.name, snapshot.spec)
        return pod_states.Observed(
            name=snapshot.name,
            namespace=snapshot.namespace,
            spec=spec,
            deployment=deployment,
            pods=tuple(sorted(pods, key=lambda p: p.name)),
            pod_events=self.pod_events.get(snapshot.namespace, spec, pods, logger),
        )

    def _written(
        self,
        snapshot: Snapshot,
        spec: models.ModelDeploymentSpec,
        before: Mapping[str, Any],
        after: Mapping[str, Any],
        patch: Mapping[str, Any],
        logger: Logger,
    ) -> None:
        """Log the pruned entries and post the Events of what changed."""
        if patch.get(models.STATUS_POLLERS):
            logger.info("pruned status.pollers entries of deleted pods: %s", ", ".join(patch[models.STATUS_POLLERS]))
        for event in st.events(before, after, spec.source.uri):
            self.api.post_event(snapshot.owner, event.type, event.reason, event.message)
