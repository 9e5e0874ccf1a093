"""The operator-wide state the kopf handlers share: clients, settings, kopf's indexes, locks.

Kept in kopf's root memo by the startup handler (``handlers.configure``); a resource
handler gets it with :func:`resource_handler_state`.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from model_poller_api import names

from model_poller_operator import pod_states
from model_poller_operator.apply import Api
from model_poller_operator.config import OperatorConfig
from model_poller_operator.external import ExternalPods, deployment_state
from model_poller_operator.refresh import Snapshot, StatusWriter
from model_poller_operator.webhook import Webhook

Key = tuple[str | None, str]
MDIndex = kopf.Index[Key, Snapshot]
PodIndex = kopf.Index[Key, pod_states.PodState]
WorkloadIndex = kopf.Index[Key, pod_states.DeploymentState]
Observation = tuple[list[pod_states.PodState], pod_states.DeploymentState | None]


@dataclass(frozen=True)
class Indexes:
    """kopf's in-memory views of the watched objects (see the ``@kopf.index`` functions).

    kopf keeps one Index object per index for the operator's lifetime, so the startup
    handler's are the ones every handler would get: kept here, not passed around."""

    model_deployments: MDIndex
    pods: PodIndex
    workloads: WorkloadIndex

    def snapshot(self, key: Key) -> Snapshot | None:
        snapshot: Snapshot | None = _first(self.model_deployments, key)
        return snapshot

    def snapshots(self) -> list[Snapshot]:
        """Every ModelDeployment (taken in the event loop's thread: the indexes are its)."""
        return [snapshot for _, store in list(self.model_deployments.items()) for snapshot in list(store)[:1]]

    def own_pods(self, key: Key) -> Observation:
        """The operator's own pods and Deployment state of a ModelDeployment."""
        return list(self.pods.get(key, [])), _first(self.workloads, key)


@dataclass
class State:
    """The operator-wide objects, kept in kopf's root memo (shared by every object's memo)."""

    api: Api
    config: OperatorConfig
    status: StatusWriter
    indexes: Indexes
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Its own thread and event loop: it answers whatever kopf's handlers are doing.
    webhook: Webhook | None = None
    # The labelled pods of external-mode ModelDeployments (kopf's pod watch selects ours only).
    external: ExternalPods | None = None
    # Whether every index has done its first full list (see resource_handler_state).
    indexes_listed: bool = False
    # Repairs held back by a dependency someone else owns, already logged (reconcile.restore):
    # (ModelDeployment, child kind, dependency kind).
    repairs_held_back: set[tuple[Key, str, str]] = field(default_factory=set)
    _locks: dict[Key, threading.Lock] = field(default_factory=dict)
    _locks_lock: threading.Lock = field(default_factory=threading.Lock)

    def lock(self, key: Key) -> threading.Lock:
        """One lock per ModelDeployment: its reconcile and the repairs of its children take
        turns, so two of them never both see the same drift and both write the fix."""
        with self._locks_lock:
            return self._locks.setdefault(key, threading.Lock())

    def observe(self, key: Key, snapshot: Snapshot, wait: float = 0.0) -> Observation | None:
        """The pods and Deployment state a status is computed from: the operator's own
        (kopf's indexes), or in external mode the labelled pods (None until they are listed,
        waiting up to ``wait`` seconds)."""
        if not spec_external(snapshot.spec):
            return self.indexes.own_pods(key)
        if self.external is None:
            return None
        self.external.ensure(snapshot.namespace)
        pods = self.external.pods(snapshot.namespace, snapshot.name, wait=wait)
        return None if pods is None else (pods, deployment_state(pods))


def resource_handler_state(memo: Any) -> State:
    """The State, from a resource handler (an event, create, update or resume handler).

    kopf calls resource handlers only once every index has done its first full list. So
    the first call of one is the moment the indexes are complete: it is recorded here, and
    the periodic status loop waits for it (a half-listed pods index would make it prune
    status.pollers entries of pods that exist)."""
    state = memo["state"]
    assert isinstance(state, State)
    state.indexes_listed = True
    return state


def spec_external(spec: Mapping[str, Any]) -> bool:
    return bool(spec.get("workload") == names.WORKLOAD_EXTERNAL)


def plain(value: Any) -> Any:
    """A kopf body (or any view of one) as plain dicts and lists."""
    return json.loads(json.dumps(value))


def _first(index: kopf.Index[Key, Any], key: Key) -> Any:
    return next(iter(index.get(key, [])), None)
