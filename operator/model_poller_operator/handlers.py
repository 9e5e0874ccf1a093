"""kopf handlers: small, typed, and converging to the same desired state from any cause.

- ``reconcile`` (create/update/resume): render the children, apply what differs (delete an
  optional child that must no longer exist), then write the outcome into the status once
  (observedGeneration, Synced, and the aggregate).
- status refresh: on every event of a ModelDeployment (a poller reported), of its
  Deployment and of its pods, and in one operator-wide loop every few seconds. All in
  memory from the indexes (plus, while a pod waits to start and a credentials Secret is
  configured, a cached list of that namespace's FailedMount Events); a write only when the
  status changed (``refresh.py``). The operator has no access to Secrets: a missing one is
  what the pods say.
- ``repair_*`` (events of the children, one watch per kind of ``children.CHILDREN``): a
  child edited or deleted by hand is put back.
- a child's name held by an object this ModelDeployment does not control is never written:
  Synced=False NameConflict, an Event, and a retry with backoff until the name is free.
- spec.workload: external: only the poller's identity is rendered; the admission webhook
  (``webhook.py``, its own thread) injects the poller into the user's labelled pods, which
  ``external.py`` watches for the status (kopf's pod watch selects the operator's label only).

There are no per-object timers or daemons, hence no finalizer on ModelDeployments:
owner references delete the children, and a stopped operator never blocks a deletion.

Run it with ``kopf run -m model_poller_operator.handlers --all-namespaces`` (or
``--namespace NS``), or with the ``model-poller-operator`` console script. Settings are
read by the startup handler (``configure``): a bad one stops the operator with one line
naming the variable, exit code 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Final, Mapping

import kopf
import urllib3
from kubernetes.client.exceptions import ApiException

from model_poller_api import models, names
from model_poller_operator import children, render
from model_poller_operator import status as st
from model_poller_operator.apply import Api, ApplyError, Conflict, controller_of, in_sync, is_model_deployment_ref
from model_poller_operator.children import ChildKind
from model_poller_operator.config import EXIT_BAD_SETTING, OperatorConfig, SettingsError
from model_poller_operator.external import ExternalPods, deployment_state
from model_poller_operator.overrides import InvalidOverride
from model_poller_operator.refresh import Logger, PodEventsCache, Snapshot, StatusWriter
from model_poller_operator.webhook import Webhook, WebhookSettings

MD: Final = (names.GROUP, names.VERSION, names.PLURAL)
CHILD_SELECTOR: Final = f"{names.LABEL_MANAGED_BY}={names.MANAGER}"
MANAGED: Final = {names.LABEL_MANAGED_BY: names.MANAGER}

# Everything watched besides the ModelDeployments is filtered by label on the server side.
_LABELLED: Final = {(c.group, c.plural) for c in children.CHILDREN} | {("", "pods")}

Key = tuple[str | None, str]
MDIndex = kopf.Index[Key, Snapshot]
PodIndex = kopf.Index[Key, st.PodState]
WorkloadIndex = kopf.Index[Key, st.DeploymentState]
Observation = tuple[list[st.PodState], st.DeploymentState | None]


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


def _ns(namespace: str | None) -> str:
    if namespace is None:
        raise kopf.PermanentError("ModelDeployments are namespaced; got a cluster-scoped object")
    return namespace


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _first(index: kopf.Index[Key, Any], key: Key) -> Any:
    return next(iter(index.get(key, [])), None)


def _is_labelled_resource(resource: kopf.Resource) -> bool:
    return (resource.group, resource.plural) in _LABELLED


def spec_external(spec: Mapping[str, Any]) -> bool:
    return bool(spec.get("workload") == names.WORKLOAD_EXTERNAL)


class _QuietSuccess(logging.Filter):
    """Drops kopf's "Handler ... succeeded." lines of the frequent status and repair handlers."""

    NOISY: Final = ("'on_model_deployment_event'", "'on_pod_event'", "'deployment-status'", "'repair-")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.endswith(" succeeded.") and any(n in message for n in self.NOISY))


# --- startup and cleanup -----------------------------------------------------------------


def read_settings(logger: Logger) -> tuple[OperatorConfig, WebhookSettings]:
    """The settings, or exit 2 with one line naming the bad variable (the console script
    checks them before kopf starts; this is for ``kopf run``)."""
    try:
        return OperatorConfig.from_env(), WebhookSettings.from_env()
    except SettingsError as error:
        logger.error("%s", error)
        # kopf's tasks that never started would each warn "coroutine ... was never awaited":
        # noise under the one line that matters.
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
        # SystemExit passes through kopf (it catches Exception) and ends `kopf run` with 2.
        raise SystemExit(EXIT_BAD_SETTING) from None


def _configure_kopf(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    settings.persistence.finalizer = names.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.PROGRESS_ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.PROGRESS_ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Under load the watch stream can lag behind kopf's own patches by several seconds; wait
    # for the patched version instead of re-handling a stale one (which re-runs handlers).
    settings.persistence.consistency_timeout = config.consistency_timeout
    settings.watching.server_timeout = config.watch_server_timeout
    settings.watching.client_timeout = config.watch_client_timeout
    settings.watching.connect_timeout = config.watch_connect_timeout
    settings.watching.label_selectors[_is_labelled_resource] = CHILD_SELECTOR
    settings.posting.reporting_component = names.MANAGER
    settings.execution.max_workers = config.workers


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
    config, webhook = read_settings(logger)
    _configure_kopf(settings, config)
    api = Api.from_environment()
    state = State(
        api=api,
        config=config,
        status=StatusWriter(api, PodEventsCache(api, config.pod_events_interval)),
        indexes=Indexes(model_deployments, model_pods, model_workloads),
    )
    memo["state"] = state
    logging.getLogger("kopf.objects").addFilter(_QuietSuccess())
    if webhook.enabled:
        state.webhook = Webhook(webhook, Api.from_environment()).start()

    def external_pods_changed(namespace: str, name: str) -> None:
        # Called from that namespace's watch thread, as kopf calls sync handlers from its own.
        try:
            _refresh(state, (namespace, name), logger)
        except Exception as error:  # noqa: BLE001 - the watch goes on; the periodic loop tries again
            _log_failure(logger, f"status refresh of {namespace}/{name} after a pod change", error)

    state.external = ExternalPods(api, external_pods_changed)
    state.tasks.append(asyncio.create_task(_status_loop(state, logger)))
    logger.info("model-poller-operator configured: %s", config)


@kopf.on.cleanup()
async def stop_background(memo: Any, **_: Any) -> None:
    state = memo.get("state")
    if not isinstance(state, State):
        return  # the startup handler did not get that far
    for task in state.tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if state.webhook is not None:
        await asyncio.to_thread(state.webhook.stop)
    if state.external is not None:
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


# --- status --------------------------------------------------------------------------


def _refresh(
    state: State, key: Key, logger: Logger, *, snapshot: Snapshot | None = None, synced: st.Synced | None = None
) -> None:
    """Recompute the status of ModelDeployment ``key`` and write it if it changed."""
    snapshot = snapshot or state.indexes.snapshot(key)
    if snapshot is None or snapshot.deleting:
        return
    # The reconcile's outcome (synced) must be written: wait a moment for the first list.
    observed = state.observe(key, snapshot, wait=10.0 if synced else 0.0)
    if observed is None:
        if synced is not None:
            raise kopf.TemporaryError(f"the labelled pods of namespace {key[0]} are not listed yet", delay=2)
        return  # the first list of the namespace's labelled pods calls back
    state.status.write_if_changed(snapshot, *observed, logger, synced=synced)


async def _status_loop(state: State, logger: Logger) -> None:
    """Every status_interval: recompute every status (in memory) and write what changed.

    This is what notices a credentials Secret that was created or deleted, and it is the
    safety net for any missed event. The snapshot of the indexes is taken in the event
    loop's thread; the (rare) API calls run in a worker thread.
    """
    while True:
        await asyncio.sleep(state.config.status_interval)
        if not state.indexes_listed:
            continue
        snapshots = state.indexes.snapshots()
        if state.external is not None:
            state.external.track({s.namespace for s in snapshots if spec_external(s.spec) and not s.deleting})
        work = []
        for snapshot in (s for s in snapshots if not s.deleting):
            observed = state.observe((snapshot.namespace, snapshot.name), snapshot)
            if observed is not None:  # None: the namespace's labelled pods are not listed yet
                work.append((snapshot, observed))
        try:
            await asyncio.to_thread(_write_all, state, work, logger)
        except Exception as error:  # noqa: BLE001 - the loop must outlive any one failure
            _log_failure(logger, f"periodic status refresh (next in {state.config.status_interval}s)", error)


def _write_all(state: State, work: list[tuple[Snapshot, Observation]], logger: Logger) -> None:
    for snapshot, observed in work:
        state.status.write_if_changed(snapshot, *observed, logger)


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


@kopf.on.event(*MD)
def on_model_deployment_event(
    event: kopf.RawEvent, name: str, namespace: str | None, memo: Any, logger: Logger, **_: Any
) -> None:
    """A poller reported (or anything else changed): recompute the aggregate."""
    if event.get("type") == "DELETED":
        return
    _refresh(resource_handler_state(memo), (namespace, name), logger)


@kopf.on.event("v1", "pods", labels={**MANAGED, names.LABEL_INSTANCE: kopf.PRESENT})
def on_pod_event(namespace: str | None, labels: kopf.Labels, memo: Any, logger: Logger, **_: Any) -> None:
    """A pod came, went or changed readiness: servingVersion, readiness and pruning follow."""
    _refresh(resource_handler_state(memo), (namespace, labels[names.LABEL_INSTANCE]), logger)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED, id="deployment-status")
def on_deployment_event(namespace: str | None, meta: kopf.Meta, memo: Any, logger: Logger, **_: Any) -> None:
    """The Deployment's status (replicas, readiness, failures) feeds the aggregate."""
    state = resource_handler_state(memo)
    snapshot = _owner_snapshot(state, namespace, meta)
    if snapshot is not None:
        _refresh(state, (namespace, snapshot.name), logger, snapshot=snapshot)


# --- reconcile ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reconciled:
    """The outcome of one reconcile, computed once and then written once (the status) by
    :func:`reconcile`: Flux's deferred summarize-and-patch."""

    synced: st.Synced
    # Retry with backoff after the status write (kopf.TemporaryError with this message).
    retry: str | None = None
    # Log it as an error: only a new spec (or name) can help.
    error: bool = False


@kopf.on.resume(*MD)
@kopf.on.create(*MD)
@kopf.on.update(*MD)
def reconcile(body: kopf.Body, name: str, namespace: str | None, memo: Any, retry: int, logger: Logger, **_: Any) -> None:
    """Apply the rendered children (only those that differ), then record the outcome."""
    state = resource_handler_state(memo)
    snapshot = Snapshot.from_object(_plain(dict(body)))
    key = (_ns(namespace), name)
    outcome = _converge(state, key, snapshot, logger)
    _refresh(state, key, logger, snapshot=snapshot, synced=outcome.synced)
    if outcome.error:
        logger.error(outcome.synced.message)
    if outcome.retry is not None:
        raise kopf.TemporaryError(outcome.retry, delay=_backoff(state, retry))


def _converge(state: State, key: Key, snapshot: Snapshot, logger: Logger) -> Reconciled:
    """Render and apply the children; what happened, as the Synced condition says it."""
    generation = snapshot.generation

    def failed(reason: str, message: str, *, retry: str | None = None) -> Reconciled:
        return Reconciled(st.Synced(generation, False, reason, message), retry=retry, error=retry is None)

    problem = render.name_problem(snapshot.name)
    if problem:
        # Retrying cannot help: a name cannot change. Say so in the status, and stop.
        return failed(st.REASON_INVALID_NAME, f"{problem}; delete it and create it again under a valid name")
    try:
        spec = models.ModelDeploymentSpec.from_object(snapshot.name, snapshot.spec)
        desired = children.desired_children(snapshot.owner, spec)
    except InvalidOverride as error:
        return failed(st.REASON_INVALID_OVERRIDE, str(error))  # names the field; Degraded says it too
    except (ValueError, KeyError, TypeError) as error:
        # Something the CRD schema let through but the operator cannot render: say so, and
        # wait for the next spec change (retrying the same spec cannot help).
        return failed(st.REASON_INVALID_SPEC, f"spec cannot be rendered: {error}")
    try:
        with state.lock(key):
            outcome = state.api.converge_all(desired)
    except ApplyError as error:
        message = st.apply_failed_message(str(error), render.spec_fields(snapshot.owner, spec, error.kind, error.fields))
        return failed(st.REASON_APPLY_FAILED, message, retry=f"applying the children failed: {error}")
    for change in outcome.changes:
        logger.info("%s %s %s", change.action, change.kind, change.name)
    if outcome.conflicts:
        # Someone else's objects hold our children's names: report, never overwrite, and
        # look again later (their deletion makes no event the operator watches).
        message = outcome.conflict_message(key[0] or "")
        return failed(st.REASON_NAME_CONFLICT, message, retry=f"name conflict: {message}")
    return Reconciled(st.Synced(generation, True, st.REASON_APPLIED, _applied_message(snapshot, desired)))


def _applied_message(snapshot: Snapshot, desired: list[children.Desired]) -> str:
    kinds = [d.child.kind for d in reversed(desired) if d.obj is not None]
    listed = ", ".join(kinds[:-1]) + f" and {kinds[-1]}" if len(kinds) > 1 else "".join(kinds)
    message = f"{listed} match generation {snapshot.generation}"
    if spec_external(snapshot.spec):
        message += (
            f" (spec.workload: external: pods labelled {names.LABEL_MODEL_DEPLOYMENT}={snapshot.name} "
            "get the poller injected)"
        )
    return message


def _backoff(state: State, retry: int) -> float:
    return float(min(300.0, state.config.retry_delay * 2 ** min(retry, 5)))


# --- drift repair ----------------------------------------------------------------------


def _owner_snapshot(state: State, namespace: str | None, meta: kopf.Meta) -> Snapshot | None:
    """The live ModelDeployment that controls a child (by uid), unless it is going away."""
    ref = controller_of({"metadata": _plain(dict(meta))})
    if ref is None or not is_model_deployment_ref(ref):
        return None
    snapshot = state.indexes.snapshot((namespace, str(ref["name"])))
    if snapshot is None or snapshot.uid != ref.get("uid") or snapshot.deleting:
        return None  # the owner is gone or going: garbage collection takes the child
    return snapshot


def _desired_child(child: ChildKind, snapshot: Snapshot, name: str) -> children.Desired | None:
    """What the child ``name`` of kind ``child`` should be, rendered alone; None when
    this ModelDeployment renders no such child (another mode, another name, or a name
    that cannot name children)."""
    if render.name_problem(snapshot.name):
        return None
    spec = models.ModelDeploymentSpec.from_object(snapshot.name, snapshot.spec)
    if child not in children.kinds_for(spec) or child.name(snapshot.owner) != name:
        return None
    try:
        return children.render_one(child, snapshot.owner, spec)
    except (ValueError, KeyError, TypeError):
        return None  # a spec that cannot be rendered: the reconcile reports it, nothing to restore


def _make_repair_handler(child: ChildKind) -> Any:
    def repair_child(
        event: kopf.RawEvent,
        body: kopf.Body,
        name: str,
        namespace: str | None,
        meta: kopf.Meta,
        memo: Any,
        logger: Logger,
        **_: Any,
    ) -> None:
        """A child changed or went away: if it no longer matches its render, put it back.
        (An optional child that must not exist is the reconcile's to delete.)"""
        state = resource_handler_state(memo)
        snapshot = _owner_snapshot(state, namespace, meta)
        desired = _desired_child(child, snapshot, name) if snapshot is not None else None
        if snapshot is None or desired is None or desired.obj is None:
            return
        if event.get("type") != "DELETED" and in_sync(desired.obj, _plain(dict(body))):
            return
        _restore(state, snapshot, desired.obj, logger)

    repair_child.__name__ = f"repair_{child.kind.lower()}"
    return repair_child


def _restore(state: State, snapshot: Snapshot, desired: Mapping[str, Any], logger: Logger) -> None:
    kind, name = desired["kind"], desired["metadata"]["name"]
    try:
        with state.lock((snapshot.namespace, snapshot.name)):
            change = state.api.converge(desired)
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


for _child in children.CHILDREN:
    kopf.on.event(*_child.resource, labels=MANAGED, id=f"repair-{_child.plural}")(_make_repair_handler(_child))
