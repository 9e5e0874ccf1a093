"""What a reconcile and a drift repair do, apart from kopf's wiring (``handlers.py``).

:func:`converge` renders and applies the children and returns the outcome as a
:class:`Reconciled`, which the reconcile handler writes into the status once. A repair
renders one child (:func:`desired_child`) and puts it back (:func:`restore`), unless a child
it depends on is held by someone else's object (the reconcile holds it back too, and
reports the conflict).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from model_poller_api import models, names

from model_poller_operator import children, status_reasons
from model_poller_operator import status as st
from model_poller_operator.apply import ApplyError
from model_poller_operator.children import ChildKind
from model_poller_operator.compare import Conflict, controller_of, is_model_deployment_ref
from model_poller_operator.overrides import InvalidOverride
from model_poller_operator.refresh import Logger, Snapshot
from model_poller_operator.render import ownership, spec_paths
from model_poller_operator.state import Key, State, plain, spec_external


@dataclass(frozen=True)
class Reconciled:
    """The outcome of one reconcile, computed once and then written once (the status) by
    the reconcile handler (``handlers.reconcile``): Flux's deferred summarize-and-patch."""

    synced: st.Synced
    # Retry with backoff after the status write (kopf.TemporaryError with this message).
    retry: str | None = None
    # Log it as an error: only a new spec (or name) can help.
    error: bool = False


def converge(state: State, key: Key, snapshot: Snapshot, logger: Logger) -> Reconciled:
    """Render and apply the children; what happened, as the Synced condition says it."""
    generation = snapshot.generation

    def failed(reason: str, message: str, *, retry: str | None = None) -> Reconciled:
        return Reconciled(st.Synced(generation, False, reason, message), retry=retry, error=retry is None)

    problem = ownership.name_problem(snapshot.name)
    if problem:
        # Retrying cannot help: a name cannot change. Say so in the status, and stop.
        return failed(
            status_reasons.REASON_INVALID_NAME, f"{problem}; delete it and create it again under a valid name"
        )
    try:
        spec = models.ModelDeploymentSpec.from_object(snapshot.name, snapshot.spec)
        desired = children.desired_children(snapshot.owner, spec)
    except InvalidOverride as error:
        return failed(status_reasons.REASON_INVALID_OVERRIDE, str(error))  # names the field; Degraded says it too
    except (ValueError, KeyError, TypeError) as error:
        # Something the CRD schema let through but the operator cannot render: say so, and
        # wait for the next spec change (retrying the same spec cannot help).
        return failed(status_reasons.REASON_INVALID_SPEC, f"spec cannot be rendered: {error}")
    try:
        with state.lock(key):
            outcome = state.api.converge_all(desired)
    except ApplyError as error:
        message = st.apply_failed_message(
            str(error), spec_paths.spec_fields(snapshot.owner, spec, error.kind, error.fields)
        )
        return failed(status_reasons.REASON_APPLY_FAILED, message, retry=f"applying the children failed: {error}")
    for change in outcome.changes:
        logger.info("%s %s %s", change.action, change.kind, change.name)
    if outcome.conflicts:
        # Someone else's objects hold our children's names: report, never overwrite, and
        # look again later (their deletion makes no event the operator watches).
        message = outcome.conflict_message(key[0] or "")
        return failed(status_reasons.REASON_NAME_CONFLICT, message, retry=f"name conflict: {message}")
    return Reconciled(st.Synced(generation, True, status_reasons.REASON_APPLIED, applied_message(snapshot, desired)))


def applied_message(snapshot: Snapshot, desired: list[children.Desired]) -> str:
    kinds = [d.child.kind for d in reversed(desired) if d.obj is not None]
    listed = ", ".join(kinds[:-1]) + f" and {kinds[-1]}" if len(kinds) > 1 else "".join(kinds)
    message = f"{listed} match generation {snapshot.generation}"
    if spec_external(snapshot.spec):
        message += (
            f" (spec.workload: external: pods labelled {names.LABEL_MODEL_DEPLOYMENT}={snapshot.name} "
            "get the poller injected)"
        )
    return message


def backoff(state: State, retry: int) -> float:
    return float(min(300.0, state.config.retry_delay * 2 ** min(retry, 5)))


# --- drift repair ----------------------------------------------------------------------


def owner_snapshot(state: State, namespace: str | None, meta: kopf.Meta) -> Snapshot | None:
    """The live ModelDeployment that controls a child (by uid), unless it is going away."""
    ref = controller_of({"metadata": plain(dict(meta))})
    if ref is None or not is_model_deployment_ref(ref):
        return None
    snapshot = state.indexes.snapshot((namespace, str(ref["name"])))
    if snapshot is None or snapshot.uid != ref.get("uid") or snapshot.deleting:
        return None  # the owner is gone or going: garbage collection takes the child
    return snapshot


def desired_child(child: ChildKind, snapshot: Snapshot, name: str) -> children.Desired | None:
    """What the child ``name`` of kind ``child`` should be, rendered alone; None when
    this ModelDeployment renders no such child (another mode, another name, or a name
    that cannot name children)."""
    if ownership.name_problem(snapshot.name):
        return None
    spec = models.ModelDeploymentSpec.from_object(snapshot.name, snapshot.spec)
    if child not in children.kinds_for(spec) or child.name(snapshot.owner) != name:
        return None
    try:
        return children.render_one(child, snapshot.owner, spec)
    except (ValueError, KeyError, TypeError):
        return None  # a spec that cannot be rendered: the reconcile reports it, nothing to restore


def foreign_dependency(state: State, snapshot: Snapshot, kind: str) -> Conflict | None:
    """The first child that ``kind`` depends on (``ChildKind.depends_on``) whose name is held
    by an object this ModelDeployment does not control, as ``converge_all`` would find it:
    the Deployment must not run as an identity bound to someone else's Role. Dependencies
    this spec does not render are not looked at."""
    spec = models.ModelDeploymentSpec.from_object(snapshot.name, snapshot.spec)
    kinds = children.kinds_for(spec)
    for dependency in (children.BY_KIND[k] for k in children.BY_KIND[kind].depends_on):
        if dependency not in kinds:
            continue
        rendered = children.render_one(dependency, snapshot.owner, spec).obj
        if rendered is None:
            continue  # an optional child this spec does not want: nothing is mounted or bound
        try:
            live = state.api.get(
                dependency.api_version, dependency.kind, snapshot.namespace, dependency.name(snapshot.owner)
            )
        except ApiException as error:
            raise ApplyError(rendered, error) from error
        conflict = Conflict.of(rendered, live) if live is not None else None
        if conflict is not None:
            return conflict
    return None


def _held_back(state: State, snapshot: Snapshot, kind: str, logger: Logger) -> bool:
    """Whether the repair of ``kind`` waits for a dependency someone else holds (logged once
    while it lasts: a Deployment has many events)."""
    key = (snapshot.namespace, snapshot.name)
    conflict = foreign_dependency(state, snapshot, kind)
    if conflict is None:
        for dependency in children.BY_KIND[kind].depends_on:  # one call each: other threads share the set
            state.repairs_held_back.discard((key, kind, dependency))
        return False
    memory = (key, kind, conflict.kind)
    if memory not in state.repairs_held_back:
        state.repairs_held_back.add(memory)
        logger.warning(
            "not repairing %s of ModelDeployment %s: it depends on %s, which the ModelDeployment does not control "
            "(the reconcile reports the conflict)",
            kind,
            snapshot.name,
            conflict.describe(),
        )
    return True


def restore(state: State, snapshot: Snapshot, desired: Mapping[str, Any], logger: Logger) -> None:
    kind, name = desired["kind"], desired["metadata"]["name"]
    try:
        with state.lock((snapshot.namespace, snapshot.name)):
            if _held_back(state, snapshot, kind, logger):
                return
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
