"""kopf handlers: small, typed, and converging to the same desired state from any cause.

- ``reconcile`` (create/update/resume): render the children, apply what differs (delete an
  optional child that must no longer exist), then write the outcome into the status once
  (observedGeneration, Synced, and the aggregate); the work itself is ``reconcile.py``.
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

What the handlers share (clients, settings, kopf's indexes, locks) is one ``state.State``
in kopf's memo. There are no per-object timers or daemons, hence no finalizer on
ModelDeployments: owner references delete the children, and a stopped operator never
blocks a deletion.

Run it with ``kopf run -m model_poller_operator.handlers --all-namespaces`` (or
``--namespace NS``), or with the ``model-poller-operator`` console script. Settings are
read by the startup handler (``configure``): a bad one stops the operator with one line
naming the variable, exit code 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from typing import Any, Final

import kopf
import urllib3
from kubernetes.client.exceptions import ApiException
from model_poller_api import names

from model_poller_operator import children, pod_states
from model_poller_operator import status as st
from model_poller_operator.apply import Api
from model_poller_operator.children import ChildKind
from model_poller_operator.compare import controller_of, in_sync, is_model_deployment_ref
from model_poller_operator.config import EXIT_BAD_SETTING, OperatorConfig, SettingsError
from model_poller_operator.external import ExternalPods
from model_poller_operator.reconcile import backoff, converge, desired_child, owner_snapshot, restore
from model_poller_operator.refresh import Logger, PodEventsCache, Snapshot, StatusWriter
from model_poller_operator.state import (
    Indexes,
    Key,
    MDIndex,
    Observation,
    PodIndex,
    State,
    WorkloadIndex,
    plain,
    resource_handler_state,
    spec_external,
)
from model_poller_operator.webhook import Webhook
from model_poller_operator.webhook_settings import WebhookSettings

MD: Final = (names.GROUP, names.VERSION, names.PLURAL)
CHILD_SELECTOR: Final = f"{names.LABEL_MANAGED_BY}={names.MANAGER}"
MANAGED: Final = {names.LABEL_MANAGED_BY: names.MANAGER}

# kopf's retries of a failed API request (its watches' lists included). kopf's default
# (1, 1, 2, 3, 5, 8, 13, 21) leaves up to 13 s between two attempts after a 20 s outage, and
# the indexes the status is computed from stay stale until the watches are back: the status
# caught up 9-11 s after the API server's return (tests/e2e/test_loop.py's outage drill).
# Capped at 2 s, it catches up in 1.0-1.6 s; kopf still gives up after the same ~55 s.
API_RETRY_BACKOFFS: Final = (0.5, 1.0, 1.0, *([2.0] * 26))

# Everything watched besides the ModelDeployments is filtered by label on the server side.
_LABELLED: Final = {(c.group, c.plural) for c in children.CHILDREN} | {("", "pods")}


def _ns(namespace: str | None) -> str:
    if namespace is None:
        raise kopf.PermanentError("ModelDeployments are namespaced; got a cluster-scoped object")
    return namespace


def _is_labelled_resource(resource: kopf.Resource) -> bool:
    return (resource.group, resource.plural) in _LABELLED


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
    settings.networking.error_backoffs = API_RETRY_BACKOFFS
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
    return {(namespace, name): Snapshot.from_object(plain(dict(body)))}


@kopf.index("v1", "pods", labels={**MANAGED, names.LABEL_INSTANCE: kopf.PRESENT})
def model_pods(
    namespace: str | None, name: str, labels: kopf.Labels, status: kopf.Status, **_: Any
) -> dict[Key, pod_states.PodState]:
    return {(namespace, labels[names.LABEL_INSTANCE]): pod_states.PodState.from_object(name, status)}


@kopf.index("apps", "v1", "deployments", labels=MANAGED)
def model_workloads(
    namespace: str | None, name: str, body: kopf.Body, status: kopf.Status, **_: Any
) -> dict[Key, pod_states.DeploymentState]:
    # Only a Deployment controlled by a ModelDeployment of its name feeds that one's
    # status: a look-alike with our label but another owner is not ours to report.
    ref = controller_of(plain(dict(body)))
    if ref is None or not is_model_deployment_ref(ref) or ref.get("name") != name:
        return {}
    return {(namespace, name): pod_states.DeploymentState.from_object(status)}


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
    snapshot = owner_snapshot(state, namespace, meta)
    if snapshot is not None:
        _refresh(state, (namespace, snapshot.name), logger, snapshot=snapshot)


# --- reconcile ---------------------------------------------------------------------------


@kopf.on.resume(*MD)
@kopf.on.create(*MD)
@kopf.on.update(*MD)
def reconcile(
    body: kopf.Body, name: str, namespace: str | None, memo: Any, retry: int, logger: Logger, **_: Any
) -> None:
    """Apply the rendered children (only those that differ), then record the outcome."""
    state = resource_handler_state(memo)
    snapshot = Snapshot.from_object(plain(dict(body)))
    key = (_ns(namespace), name)
    outcome = converge(state, key, snapshot, logger)
    _refresh(state, key, logger, snapshot=snapshot, synced=outcome.synced)
    if outcome.error:
        logger.error(outcome.synced.message)
    if outcome.retry is not None:
        raise kopf.TemporaryError(outcome.retry, delay=backoff(state, retry))


# --- drift repair ----------------------------------------------------------------------


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
        snapshot = owner_snapshot(state, namespace, meta)
        desired = desired_child(child, snapshot, name) if snapshot is not None else None
        if snapshot is None or desired is None or desired.obj is None:
            return
        if event.get("type") != "DELETED" and in_sync(desired.obj, plain(dict(body))):
            return
        restore(state, snapshot, desired.obj, logger)

    repair_child.__name__ = f"repair_{child.kind.lower()}"
    return repair_child


for _child in children.CHILDREN:
    kopf.on.event(*_child.resource, labels=MANAGED, id=f"repair-{_child.plural}")(_make_repair_handler(_child))
