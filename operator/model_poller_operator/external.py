"""The pods of external-mode ModelDeployments (spec.workload: external), for their status.

kopf watches pods with the operator's own label selector (its children carry
``app.kubernetes.io/managed-by``), and a label selector cannot say "this label or that
one". The user's pods carry ``modelpoller.dev/model-deployment=<name>`` instead, so they
are watched here: one list-then-watch per namespace that holds an external-mode
ModelDeployment (none at all otherwise), server-side filtered by that label
(``informer.py``). What each pod says about itself becomes a
:class:`~model_poller_operator.pod_states.PodState`, as for the operator's own pods, and every
change calls ``on_change(namespace, name)`` so the status of that ModelDeployment is
recomputed.

A namespace's pods are reported only once its first list is done: status.pollers entries
of pods that are gone are pruned from this view, which must not be a half-filled one.
Changes are coalesced per ModelDeployment for ``settle`` seconds: a workload scaling up
(tens of pods, each changing a few times) costs a few status recomputations, not one per event.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from model_poller_api import names

from model_poller_operator import pod_states
from model_poller_operator.apply import Api
from model_poller_operator.informer import NamespaceWatch

log = logging.getLogger(__name__)

SELECTOR: Final = names.LABEL_MODEL_DEPLOYMENT
OnChange = Callable[[str, str], None]


def model_deployment_of(pod: Mapping[str, Any] | None) -> str | None:
    """The ModelDeployment a pod's label names, if any."""
    if pod is None:
        return None
    value = ((pod.get("metadata") or {}).get("labels") or {}).get(names.LABEL_MODEL_DEPLOYMENT)
    return str(value) if value else None


@dataclass
class ExternalPods:
    """Labelled pods of the namespaces given to :meth:`track`, kept by one watch each."""

    api: Api
    on_change: OnChange
    # Seconds a change waits for the next ones before the status is recomputed.
    settle: float = 0.3
    _watches: dict[str, NamespaceWatch] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pending: set[tuple[str, str]] = field(default_factory=set)

    def track(self, namespaces: set[str]) -> None:
        """Watch exactly these namespaces: start the new ones, stop the others."""
        with self._lock:
            gone = [self._watches.pop(ns) for ns in set(self._watches) - namespaces]
        for watch in gone:
            watch.stop()
            log.info("no external-mode ModelDeployment left: %s is no longer watched", watch.path)
        for namespace in namespaces:
            self.ensure(namespace)

    def ensure(self, namespace: str) -> None:
        """Watch ``namespace`` (if not already)."""
        with self._lock:
            if namespace in self._watches:
                return
            watch = self._watches[namespace] = NamespaceWatch(
                self.api,
                f"/api/v1/namespaces/{namespace}/pods",
                SELECTOR,
                on_event=lambda _name, before, after: self._pod_changed(namespace, before, after),
            )
        watch.start()
        log.info(
            "watching the pods labelled %s in %s (an external-mode ModelDeployment lives there)", SELECTOR, namespace
        )

    def pods(self, namespace: str, name: str, wait: float = 0) -> list[pod_states.PodState] | None:
        """The pods labelled for ModelDeployment ``name``; None until the namespace is
        listed (waiting up to ``wait`` seconds for that)."""
        with self._lock:
            watch = self._watches.get(namespace)
        if watch is None or not watch.listed.wait(wait):
            return None
        return [
            pod_states.PodState.from_object(str(pod["metadata"]["name"]), pod.get("status") or {})
            for pod in watch.items()
            if model_deployment_of(pod) == name
        ]

    def stop(self) -> None:
        self.track(set())

    def _pod_changed(self, namespace: str, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> None:
        for md in {model_deployment_of(before), model_deployment_of(after)} - {None}:
            assert md is not None
            self._changed(namespace, md)

    def _changed(self, namespace: str, name: str) -> None:
        """Call on_change once per ``settle`` seconds at most for a ModelDeployment."""
        key = (namespace, name)
        with self._lock:
            if key in self._pending:
                return
            self._pending.add(key)
        timer = threading.Timer(self.settle, self._fire, args=key)
        timer.daemon = True
        timer.start()

    def _fire(self, namespace: str, name: str) -> None:
        with self._lock:
            self._pending.discard((namespace, name))
        self.on_change(namespace, name)


def deployment_state(pods: list[pod_states.PodState]) -> pod_states.DeploymentState:
    """What the Deployment's status would say, from the pods themselves (the user's
    workload may be a Deployment, a StatefulSet, bare pods...: the operator reads none)."""
    ready = sum(1 for p in pods if p.ready)
    return pod_states.DeploymentState(replicas=len(pods), ready_replicas=ready, updated_replicas=len(pods))
