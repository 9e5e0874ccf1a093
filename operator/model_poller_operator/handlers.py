"""kopf handlers: small, typed, and converging to the same desired state from any cause.

- ``reconcile`` (create/update/resume): render the children, apply what differs, then
  write the status (observedGeneration, Synced, and the aggregate).
- status refresh: on every event of a ModelDeployment (a poller reported), of its
  Deployment and of its pods, and in one operator-wide loop every few seconds. All in
  memory from the indexes (plus, while a pod waits to start and a credentials Secret is
  configured, a cached list of that namespace's FailedMount Events); a write only when the
  status changed. The operator has no access to Secrets: a missing one is what the pods say.
- ``repair_*`` (events of the children): a child edited or deleted by hand is put back.
- a child's name held by an object this ModelDeployment does not control is never written:
  Synced=False NameConflict, an Event, and a retry with backoff until the name is free.
- spec.workload: external: only the poller's identity is rendered; the admission webhook
  (``webhook.py``, its own thread) injects the poller into the user's labelled pods, which
  ``external.py`` watches for the status (kopf's pod watch selects the operator's label only).

There are no per-object timers or daemons, hence no finalizer on ModelDeployments:
owner references delete the children, and a stopped operator never blocks a deletion.

Run it with ``kopf run -m model_poller_operator.handlers --all-namespaces`` (or
``--namespace NS``), or with the ``model-poller-operator`` console script.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Final, Mapping

import kopf
import urllib3
from kubernetes.client.exceptions import ApiException

from model_poller_api import models, names
from model_poller_operator import render
from model_poller_operator import status as st
from model_poller_operator.apply import Api, ApplyError, Conflict, controller_of, in_sync, is_model_deployment_ref
from model_poller_operator.config import OperatorConfig
from model_poller_operator.external import ExternalPods, deployment_state
from model_poller_operator.refresh import Logger, Snapshot, StatusReporter
from model_poller_operator.webhook import Webhook, WebhookSettings

MD: Final = (names.GROUP, names.VERSION, names.PLURAL)
CHILD_SELECTOR: Final = f"{names.LABEL_MANAGED_BY}={names.MANAGER}"
MANAGED: Final = {names.LABEL_MANAGED_BY: names.MANAGER}

# (group, version, plural, kind) of every child kind the operator watches to repair drift.
CHILD_RESOURCES: Final = (
    ("", "v1", "serviceaccounts", "ServiceAccount"),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    ("", "v1", "services", "Service"),
    ("apps", "v1", "deployments", "Deployment"),
)
# Everything watched besides the ModelDeployments is filtered by label on the server side.
_LABELLED: Final = {(g, p) for g, _, p, _ in CHILD_RESOURCES} | {("", "pods")}

CONFIG: Final = OperatorConfig.from_env()
# The admission webhook (spec.workload: external), off unless MODEL_POLLER_OPERATOR_WEBHOOK_PORT is set.
WEBHOOK: Final = WebhookSettings.from_env()

Key = tuple[str | None, str]
MDIndex = kopf.Index[Key, Snapshot]
PodIndex = kopf.Index[Key, st.PodState]
WorkloadIndex = kopf.Index[Key, st.DeploymentState]


@dataclass
class State:
    """The operator-wide objects, kept in kopf's root memo (shared by every object's memo)."""

    api: Api
    config: OperatorConfig
    reporter: StatusReporter
    # Set by the first resource handler: kopf runs those only once every index is filled,
    # so the periodic loop never prunes status.pollers from a half-listed pods index.
    indexes_ready: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Its own thread and event loop: it answers whatever kopf's handlers are doing.
    webhook: Webhook | None = None
    # The labelled pods of external-mode ModelDeployments (kopf's pod watch selects ours only).
    external: ExternalPods | None = None
    _locks: dict[Key, threading.Lock] = field(default_factory=dict)
    _locks_lock: threading.Lock = field(default_factory=threading.Lock)

    def lock(self, key: Key) -> threading.Lock:
        """One lock per ModelDeployment: its reconcile and the repairs of its children take
        turns, so two of them never both see the same drift and both write the fix."""
        with self._locks_lock:
            return self._locks.setdefault(key, threading.Lock())


def _state(memo: Any) -> State:
    state = memo["state"]
    assert isinstance(state, State)
    state.indexes_ready = True
    return state


def _ns(namespace: str | None) -> str:
    if namespace is None:
        raise kopf.PermanentError("ModelDeployments are namespaced; got a cluster-scoped object")
    return namespace


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _is_labelled_resource(resource: kopf.Resource) -> bool:
    return (resource.group, resource.plural) in _LABELLED


class _QuietSuccess(logging.Filter):
    """Drops kopf's "Handler ... succeeded." lines of the frequent status and repair handlers."""

    NOISY: Final = ("'on_model_deployment_event'", "'on_pod_event'", "'repair-")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.endswith(" succeeded.") and any(n in message for n in self.NOISY))


# kopf's handler protocols do not model index kwargs (model_pods, ...): hence the ignores.
@kopf.on.startup()  # type: ignore[arg-type]
async def configure(
    settings: kopf.OperatorSettings,
    memo: Any,
    logger: Logger,
    model_deployments: MDIndex,
    model_pods: PodIndex,
    model_workloads: WorkloadIndex,
    **_: Any,
) -> None:
    settings.persistence.finalizer = names.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.PROGRESS_ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.PROGRESS_ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Under load the watch stream can lag behind kopf's own patches by several seconds; wait
    # for the patched version instead of re-handling a stale one (which re-runs handlers).
    settings.persistence.consistency_timeout = CONFIG.consistency_timeout
    settings.watching.server_timeout = CONFIG.watch_server_timeout
    settings.watching.client_timeout = CONFIG.watch_client_timeout
    settings.watching.connect_timeout = CONFIG.watch_connect_timeout
    settings.watching.label_selectors[_is_labelled_resource] = CHILD_SELECTOR
    settings.posting.reporting_component = names.MANAGER
    settings.execution.max_workers = CONFIG.workers
    api = Api.from_environment()
    state = State(api=api, config=CONFIG, reporter=StatusReporter(api, CONFIG.pod_events_interval))
    memo["state"] = state
    logging.getLogger("kopf.objects").addFilter(_QuietSuccess())
    if WEBHOOK.enabled:
        state.webhook = Webhook(WEBHOOK, Api.from_environment()).start()

    def external_pods_changed(namespace: str, name: str) -> None:
        # Called from that namespace's watch thread, as kopf calls sync handlers from its own.
        try:
            _refresh(state, (namespace, name), model_deployments, model_pods, model_workloads, logger)
        except Exception as error:  # noqa: BLE001 - the watch goes on; the periodic loop tries again
            _log_failure(logger, f"status refresh of {namespace}/{name} after a pod change", error)

    state.external = ExternalPods(api, external_pods_changed)
    state.tasks.append(
        asyncio.create_task(_status_loop(state, model_deployments, model_pods, model_workloads, logger))
    )
    logger.info("model-poller-operator configured: %s", CONFIG)


@kopf.on.cleanup()
async def stop_background(memo: Any, **_: Any) -> None:
    state = memo.get("state")
    for task in state.tasks if isinstance(state, State) else ():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if isinstance(state, State) and state.webhook is not None:
        await asyncio.to_thread(state.webhook.stop)
    if isinstance(state, State) and state.external is not None:
        state.external.stop()


@kopf.on.probe(id="modeldeployments")  # type: ignore[arg-type]
def probe(model_deployments: MDIndex, **_: Any) -> int:
    return len(model_deployments)


# --- indexes: in-memory views of the watched objects --------------------------------


@kopf.index(*MD)
def model_deployments(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, Snapshot]:
    return {(namespace, name): Snapshot.from_object(_plain(dict(body)))}


@kopf.index("v1", "pods", labels={**MANAGED, names.LABEL_INSTANCE: kopf.PRESENT})
def model_pods(namespace: str | None, name: str, labels: kopf.Labels, status: kopf.Status, **_: Any) -> dict[Key, st.PodState]:
    return {(namespace, labels[names.LABEL_INSTANCE]): st.PodState.from_object(name, status)}


@kopf.index("apps", "v1", "deployments", labels=MANAGED)
def model_workloads(
    namespace: str | None, name: str, body: kopf.Body, status: kopf.Status, **_: Any
) -> dict[Key, st.DeploymentState]:
    # Only a Deployment controlled by a ModelDeployment of its name feeds that one's
    # status: a look-alike with our label but another owner is not ours to report.
    ref = controller_of(_plain(dict(body)))
    if ref is None or not is_model_deployment_ref(ref) or ref.get("name") != name:
        return {}
    return {(namespace, name): st.DeploymentState.from_object(status)}


def _first(index: kopf.Index[Key, Any], key: Key) -> Any:
    return next(iter(index.get(key, [])), None)


# --- status --------------------------------------------------------------------------


def _refresh(
    state: State,
    key: Key,
    model_deployments: MDIndex,
    model_pods: PodIndex,
    model_workloads: WorkloadIndex,
    logger: Logger,
    *,
    snapshot: Snapshot | None = None,
    synced: st.Synced | None = None,
) -> None:
    snapshot = snapshot or _first(model_deployments, key)
    if snapshot is None or snapshot.deleting:
        return
    # The reconcile's outcome (synced) must be written: wait a moment for the first list.
    observed = _observed_pods(state, key, snapshot, model_pods, model_workloads, wait=10.0 if synced else 0.0)
    if observed is None:
        if synced is not None:
            raise kopf.TemporaryError(f"the labelled pods of namespace {key[0]} are not listed yet", delay=2)
        return  # the first list of the namespace's labelled pods calls back
    state.reporter.refresh(snapshot, observed[0], observed[1], logger, synced=synced)


def _observed_pods(
    state: State, key: Key, snapshot: Snapshot, model_pods: PodIndex, model_workloads: WorkloadIndex, wait: float = 0.0
) -> tuple[list[st.PodState], st.DeploymentState | None] | None:
    """The pods and Deployment state a status is computed from: the operator's own
    (kopf's indexes), or in external mode the labelled pods (None until they are listed)."""
    if not spec_external(snapshot.spec):
        return list(model_pods.get(key, [])), _first(model_workloads, key)
    if state.external is None:
        return None
    state.external.ensure(snapshot.namespace)
    pods = state.external.pods(snapshot.namespace, snapshot.name, wait=wait)
    return None if pods is None else (pods, deployment_state(pods))


async def _status_loop(
    state: State, mds: MDIndex, pods: PodIndex, workloads: WorkloadIndex, logger: Logger
) -> None:
    """Every status_interval: recompute every status (in memory) and write what changed.

    This is what notices a credentials Secret that was created or deleted, and it is the
    safety net for any missed event. The snapshot of the indexes is taken in the event
    loop's thread; the (rare) API calls run in a worker thread.
    """
    while True:
        await asyncio.sleep(state.config.status_interval)
        if not state.indexes_ready:
            continue
        snapshots = [(key, snapshot) for key, store in list(mds.items()) for snapshot in list(store)[:1]]
        if state.external is not None:
            state.external.track({s.namespace for _, s in snapshots if spec_external(s.spec) and not s.deleting})
        work = [
            (snapshot, *observed)
            for key, snapshot in snapshots
            if (observed := _observed_pods(state, key, snapshot, pods, workloads)) is not None
        ]
        try:
            await asyncio.to_thread(_refresh_all, state, work, logger)
        except Exception as error:  # noqa: BLE001 - the loop must outlive any one failure
            _log_failure(logger, f"periodic status refresh (next in {state.config.status_interval}s)", error)


def _log_failure(logger: Logger, what: str, error: Exception) -> None:
    """An unreachable API server (an outage, a restart) is expected: one line, no
    traceback; anything else is a bug worth its traceback."""
    unreachable = isinstance(error, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)) or (
        isinstance(error, ApiException) and (error.status or 0) in (0, 429, 500, 502, 503, 504)
    )
    if unreachable:
        logger.warning("%s failed, the API server is unreachable: %s", what, type(error).__name__)
    else:
        logger.error("%s failed", what, exc_info=error)


def _refresh_all(state: State, work: list[tuple[Snapshot, list[st.PodState], st.DeploymentState | None]], logger: Logger) -> None:
    for snapshot, pods, deployment in work:
        if not snapshot.deleting:
            state.reporter.refresh(snapshot, pods, deployment, logger)


@kopf.on.resume(*MD)
@kopf.on.create(*MD)
@kopf.on.update(*MD)  # type: ignore[arg-type]
def reconcile(
    body: kopf.Body,
    name: str,
    namespace: str | None,
    spec: kopf.Spec,
    memo: Any,
    retry: int,
    logger: Logger,
    model_deployments: MDIndex,
    model_pods: PodIndex,
    model_workloads: WorkloadIndex,
    **_: Any,
) -> None:
    """Apply the rendered children (only those that differ), then record the outcome."""
    state = _state(memo)
    snapshot = Snapshot.from_object(_plain(dict(body)))
    key = (_ns(namespace), name)
    indexes = (model_deployments, model_pods, model_workloads, logger)
    problem = render.name_problem(name)
    if problem:
        # Retrying cannot help: a name cannot change. Say so in the status, and stop.
        message = f"{problem}; delete it and create it again under a valid name"
        synced = st.Synced(snapshot.generation, False, st.REASON_INVALID_NAME, message)
        _refresh(state, key, *indexes, snapshot=snapshot, synced=synced)
        logger.error(message)
        return
    try:
        children = render.render_children(snapshot.owner, models.ModelDeploymentSpec.from_object(name, spec))
    except (ValueError, KeyError, TypeError) as error:
        # Something the CRD schema let through but the operator cannot render: say so, and
        # wait for the next spec change (retrying the same spec cannot help).
        message = f"spec cannot be rendered: {error}"
        synced = st.Synced(snapshot.generation, False, st.REASON_INVALID_SPEC, message)
        _refresh(state, key, *indexes, snapshot=snapshot, synced=synced)
        logger.error(message)
        return
    try:
        with state.lock(key):
            outcome = state.api.converge_all(children, render.DEPENDS_ON)
    except ApplyError as error:
        synced = st.Synced(snapshot.generation, False, st.REASON_APPLY_FAILED, str(error))
        _refresh(state, key, *indexes, snapshot=snapshot, synced=synced)
        raise kopf.TemporaryError(f"applying the children failed: {error}", delay=_backoff(state, retry)) from error
    for change in outcome.changes:
        logger.info("%s %s %s", "created" if change.created else "updated", change.kind, change.name)
    if outcome.conflicts:
        # Someone else's objects hold our children's names: report, never overwrite, and
        # look again later (their deletion makes no event the operator watches).
        message = outcome.conflict_message(key[0])
        synced = st.Synced(snapshot.generation, False, st.REASON_NAME_CONFLICT, message)
        _refresh(state, key, *indexes, snapshot=snapshot, synced=synced)
        raise kopf.TemporaryError(f"name conflict: {message}", delay=_backoff(state, retry))
    message = f"Deployment, Service, ServiceAccount, Role and RoleBinding match generation {snapshot.generation}"
    if spec_external(spec):
        message = (
            f"ServiceAccount, Role and RoleBinding match generation {snapshot.generation} (spec.workload: external: "
            f"pods labelled {names.LABEL_MODEL_DEPLOYMENT}={name} get the poller injected)"
        )
    synced = st.Synced(snapshot.generation, True, st.REASON_APPLIED, message)
    _refresh(state, key, *indexes, snapshot=snapshot, synced=synced)


def spec_external(spec: Mapping[str, Any]) -> bool:
    return bool(spec.get("workload") == names.WORKLOAD_EXTERNAL)


def _backoff(state: State, retry: int) -> float:
    return float(min(300.0, state.config.retry_delay * 2 ** min(retry, 5)))


@kopf.on.event(*MD)  # type: ignore[arg-type]
def on_model_deployment_event(
    event: kopf.RawEvent,
    name: str,
    namespace: str | None,
    memo: Any,
    logger: Logger,
    model_deployments: MDIndex,
    model_pods: PodIndex,
    model_workloads: WorkloadIndex,
    **_: Any,
) -> None:
    """A poller reported (or anything else changed): recompute the aggregate."""
    if event.get("type") == "DELETED":
        return
    _refresh(_state(memo), (namespace, name), model_deployments, model_pods, model_workloads, logger)


@kopf.on.event("v1", "pods", labels={**MANAGED, names.LABEL_INSTANCE: kopf.PRESENT})  # type: ignore[arg-type]
def on_pod_event(
    namespace: str | None,
    labels: kopf.Labels,
    memo: Any,
    logger: Logger,
    model_deployments: MDIndex,
    model_pods: PodIndex,
    model_workloads: WorkloadIndex,
    **_: Any,
) -> None:
    """A pod came, went or changed readiness: servingVersion, readiness and pruning follow."""
    key = (namespace, labels[names.LABEL_INSTANCE])
    _refresh(_state(memo), key, model_deployments, model_pods, model_workloads, logger)


# --- drift repair ----------------------------------------------------------------------


def _controller(meta: kopf.Meta) -> Mapping[str, Any] | None:
    ref = controller_of({"metadata": _plain(dict(meta))})
    return ref if ref is not None and is_model_deployment_ref(ref) else None


def _make_repair_handler(kind: str) -> Any:
    def repair_child(
        event: kopf.RawEvent,
        body: kopf.Body,
        name: str,
        namespace: str | None,
        meta: kopf.Meta,
        memo: Any,
        logger: Logger,
        model_deployments: MDIndex,
        model_pods: PodIndex,
        model_workloads: WorkloadIndex,
        **_: Any,
    ) -> None:
        """A child changed or went away: if it no longer matches its render, put it back."""
        state = _state(memo)
        owner_ref = _controller(meta)
        if owner_ref is None:
            return
        key = (namespace, str(owner_ref["name"]))
        snapshot: Snapshot | None = _first(model_deployments, key)
        if snapshot is None or snapshot.uid != owner_ref.get("uid") or snapshot.deleting:
            return  # the owner is gone or going: garbage collection takes the child
        if kind == "Deployment":
            # The Deployment's status (replicas, readiness, failures) feeds the aggregate.
            _refresh(state, key, model_deployments, model_pods, model_workloads, logger, snapshot=snapshot)
        if render.name_problem(snapshot.name):
            return
        spec = models.ModelDeploymentSpec.from_object(snapshot.name, snapshot.spec)
        desired = [
            c for c in render.render_children(snapshot.owner, spec) if c["kind"] == kind and c["metadata"]["name"] == name
        ]
        if not desired:
            return
        if event.get("type") != "DELETED" and in_sync(desired[0], _plain(dict(body))):
            return
        try:
            with state.lock(key):
                change = state.api.converge(desired[0])
        except ApplyError as error:
            logger.warning("could not repair %s %s: %s", kind, name, error)
            raise kopf.TemporaryError(str(error), delay=state.config.retry_delay) from error
        if isinstance(change, Conflict):
            # Deleted, and the name taken by someone else meanwhile: the reconcile's retry
            # reports it; nothing is written here.
            logger.warning("not repairing %s: its name is now held by %s", name, change.describe())
            return
        if change is not None:
            what = "recreated" if change.created else "restored"
            logger.info("%s %s %s of ModelDeployment %s", what, kind, name, snapshot.name)

    repair_child.__name__ = f"repair_{kind.lower()}"
    return repair_child


for _group, _version, _plural, _kind in CHILD_RESOURCES:
    _resource = (f"{_group}/{_version}", _plural) if _group else (_version, _plural)
    kopf.on.event(*_resource, labels=MANAGED, id=f"repair-{_plural}")(_make_repair_handler(_kind))
