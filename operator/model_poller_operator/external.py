"""The pods of external-mode ModelDeployments (spec.workload: external), for their status.

kopf watches pods with the operator's own label selector (its children carry
``app.kubernetes.io/managed-by``), and a label selector cannot say "this label or that
one". The user's pods carry ``modelpoller.dev/model-deployment=<name>`` instead, so they
are watched here: one list-then-watch per namespace that holds an external-mode
ModelDeployment (none at all otherwise), server-side filtered by that label. What each
pod says about itself is kept in memory (:class:`~model_poller_operator.status.PodState`,
as for the operator's own pods), and every change calls ``on_change(namespace, name)`` so
the status of that ModelDeployment is recomputed.

A namespace's pods are reported only once its first list is done: status.pollers entries
of pods that are gone are pruned from this view, which must not be a half-filled one.
Changes are coalesced per ModelDeployment for ``settle`` seconds: a workload scaling up
(tens of pods, each changing a few times) costs a few status recomputations, not one per event.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Final, Mapping

import kubernetes
from kubernetes.client.exceptions import ApiException

from model_poller_api import names

from model_poller_operator import status as st
from model_poller_operator.apply import Api

log = logging.getLogger(__name__)

SELECTOR: Final = names.LABEL_MODEL_DEPLOYMENT
OnChange = Callable[[str, str], None]


@dataclass
class _Namespace:
    """One namespace's labelled pods: pod name -> (ModelDeployment name, state)."""

    pods: dict[str, tuple[str, st.PodState]] = field(default_factory=dict)
    listed: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)


@dataclass
class ExternalPods:
    """Labelled pods of the namespaces given to :meth:`track`, kept by one thread each."""

    api: Api
    on_change: OnChange
    # Seconds of one watch request (then it is renewed from the last resourceVersion).
    watch_seconds: int = 300
    # Seconds a change waits for the next ones before the status is recomputed.
    settle: float = 0.3
    _namespaces: dict[str, _Namespace] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pending: set[tuple[str, str]] = field(default_factory=set)

    def track(self, namespaces: set[str]) -> None:
        """Watch exactly these namespaces: start the new ones, stop the others."""
        with self._lock:
            for namespace in set(self._namespaces) - namespaces:
                self._namespaces.pop(namespace).stop.set()
                log.info("no external-mode ModelDeployment left in %s: its labelled pods are no longer watched", namespace)
        for namespace in namespaces:
            self.ensure(namespace)

    def ensure(self, namespace: str) -> None:
        """Watch ``namespace`` (if not already)."""
        with self._lock:
            if namespace in self._namespaces:
                return
            tracked = self._namespaces[namespace] = _Namespace()
        threading.Thread(target=self._run, args=(namespace, tracked), name=f"pods {namespace}", daemon=True).start()
        log.info("watching the pods labelled %s in %s (an external-mode ModelDeployment lives there)", SELECTOR, namespace)

    def pods(self, namespace: str, name: str, wait: float = 0) -> list[st.PodState] | None:
        """The pods labelled for ModelDeployment ``name``; None until the namespace is
        listed (waiting up to ``wait`` seconds for that)."""
        with self._lock:
            tracked = self._namespaces.get(namespace)
        if tracked is None or not tracked.listed.wait(wait):
            return None
        with self._lock:
            return [state for md, state in tracked.pods.values() if md == name]

    def stop(self) -> None:
        self.track(set())

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

    # --- one namespace -------------------------------------------------------------------------

    def _run(self, namespace: str, tracked: _Namespace) -> None:
        delay = 1.0
        while not tracked.stop.is_set():
            try:
                version = self._list(namespace, tracked)
                delay = 1.0
                while not tracked.stop.is_set():
                    version = self._watch(namespace, tracked, version)
            except ApiException as error:
                if error.status != 410:  # 410: the resourceVersion is too old: list again at once
                    log.warning("watching the labelled pods of %s: %s %s; retrying", namespace, error.status, error.reason)
                    tracked.stop.wait(delay)
                    delay = min(delay * 2, 30.0)
            except Exception as error:  # noqa: BLE001 - a lost connection must not end the thread
                log.warning("watching the labelled pods of %s: %s; retrying", namespace, error)
                tracked.stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def _core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.api.client)

    def _list(self, namespace: str, tracked: _Namespace) -> str:
        found = self.api.request("GET", f"/api/v1/namespaces/{namespace}/pods", query=[("labelSelector", SELECTOR)])
        entries = [_entry(item) for item in found.get("items") or ()]
        pods = {entry[1].name: entry for entry in entries if entry is not None}
        with self._lock:
            before = {md for md, _ in tracked.pods.values()}
            tracked.pods = pods
            tracked.listed.set()
        for md in before | {md for md, _ in tracked.pods.values()}:
            self._changed(namespace, md)
        return str(found["metadata"]["resourceVersion"])

    def _watch(self, namespace: str, tracked: _Namespace, version: str) -> str:
        """One watch request from ``version``; returns the last resourceVersion seen."""
        watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        stream = watch.stream(  # type: ignore[no-untyped-call]
            self._core().list_namespaced_pod,
            namespace,
            label_selector=SELECTOR,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_seconds,
            _request_timeout=(10, self.watch_seconds + 30),
            deserialize=False,
        )
        for event in stream:
            if tracked.stop.is_set():
                watch.stop()  # type: ignore[no-untyped-call]
                break
            obj: Mapping[str, Any] = event.get("object") or {}
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                self._apply(namespace, tracked, str(event["type"]), obj)
        return version

    def _apply(self, namespace: str, tracked: _Namespace, kind: str, obj: Mapping[str, Any]) -> None:
        name = str(obj["metadata"]["name"])
        entry = None if kind == "DELETED" else _entry(obj)
        with self._lock:
            old = tracked.pods.pop(name, None)
            if entry is not None:
                tracked.pods[name] = entry
        for md in {e[0] for e in (old, entry) if e is not None}:
            self._changed(namespace, md)


def _entry(pod: Mapping[str, Any]) -> tuple[str, st.PodState] | None:
    meta = pod.get("metadata") or {}
    md = (meta.get("labels") or {}).get(names.LABEL_MODEL_DEPLOYMENT)
    if not md:
        return None
    return str(md), st.PodState.from_object(str(meta["name"]), pod.get("status") or {})


def deployment_state(pods: list[st.PodState]) -> st.DeploymentState:
    """What the Deployment's status would say, from the pods themselves (the user's
    workload may be a Deployment, a StatefulSet, bare pods...: the operator reads none)."""
    ready = sum(1 for p in pods if p.ready)
    return st.DeploymentState(replicas=len(pods), ready_replicas=ready, updated_replicas=len(pods))
