"""The edge: read each child, apply only what differs, delete only what is ours.

Every child is read before it is written, and a live object that is not controlled by
this ModelDeployment (no controller ownerReference with its uid) is never written: that
is a name conflict, reported, not an overwrite (a ModelDeployment ``payments`` must not
take over someone's Service ``payments``). The chart's ValidatingAdmissionPolicy refuses
such writes too, should one slip through (e.g. an object created between the read and
the write). The comparison itself is pure (``compare.py``).

Writes are server-side apply (``PATCH application/apply-patch+yaml``) with the field
manager ``model-poller-operator`` and ``force=true``: a field a user edited by hand is
taken back, a field the operator stopped rendering is removed. Nothing is written when
the live object is in sync with the render, so a steady state makes zero writes.

An optional child that must not exist for the current spec (``children.py``) is deleted, and
only when this ModelDeployment controls it and it carries the managed-by label (as the
admission policy requires); otherwise the operator deletes nothing (owner references do).
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Mapping
from typing import Any, Final

import kubernetes
from kubernetes.client.exceptions import ApiException
from model_poller_api import names
from model_poller_api.formats import rfc3339

from model_poller_operator import __version__
from model_poller_operator.children import BY_KIND, Desired
from model_poller_operator.compare import Change, Conflict, Outcome, controlled_by, in_sync, with_hash

Obj = dict[str, Any]

USER_AGENT: Final = f"{names.MANAGER}/{__version__}"

# Plural of every kind the operator reads or writes besides its children (children.CHILDREN
# holds theirs).
PLURALS: Final = {
    "Event": "events",
    names.KIND: names.PLURAL,
}

log = logging.getLogger(__name__)


class ApplyError(Exception):
    """A child could not be read or applied; the message says which and why."""

    def __init__(self, obj: Mapping[str, Any], error: ApiException) -> None:
        self.status = int(error.status or 0)
        self.kind = str(obj.get("kind"))
        # The fields of the child the API server refused (its Status causes), e.g.
        # spec.template.spec.affinity...: the reconcile names the spec field behind them.
        self.fields = _api_fields(error)
        detail = _api_message(error)
        super().__init__(f"{obj.get('kind')} {obj['metadata'].get('name')}: {self.status} {error.reason}: {detail}")


def _api_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message") or error.body)
    except (ValueError, AttributeError):
        return str(error.body)


def _api_fields(error: ApiException) -> tuple[str, ...]:
    try:
        causes = (json.loads(error.body or "{}").get("details") or {}).get("causes") or ()
        return tuple(str(c["field"]) for c in causes if isinstance(c, dict) and c.get("field"))
    except (ValueError, AttributeError, TypeError):
        return ()


def _managed(obj: Mapping[str, Any]) -> bool:
    """Whether ``obj`` carries the label of the operator's children."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(names.LABEL_MANAGED_BY) == names.MANAGER)


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    plural = PLURALS[kind] if kind in PLURALS else BY_KIND[kind].plural
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


class StatusConflict(Exception):
    """The ModelDeployment changed since it was read; recompute from the new version."""


class Api:
    """A small synchronous REST client over kubernetes' ApiClient (thread-safe)."""

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self.client = client
        self.client.user_agent = USER_AGENT
        # uids of the unlabelled optional children already reported (see remove).
        self._unlabelled_reported: set[str] = set()

    @classmethod
    def from_environment(cls) -> Api:
        """In-cluster credentials when in a pod, else $KUBECONFIG / ~/.kube/config."""
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return cls(kubernetes.client.ApiClient(configuration))

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        timeout: float = 30,
    ) -> Obj:
        method, url, headers, body, _post = self.client.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": accept},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.client.call_api(method, url, header_params=headers, body=body, _request_timeout=timeout)
        response.read()  # type: ignore[no-untyped-call]
        if not 200 <= int(response.status) < 300:
            raise ApiException(http_resp=response)
        data: Obj = json.loads(response.data or b"{}")
        return data

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> Obj:
        """One API call by path (the webhook's lookups, Secret and configuration; the
        external pods' list); raises ApiException."""
        return self._call(method, path, body=body, query=query, content_type=content_type, timeout=timeout)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return self._call("GET", object_path(api_version, kind, namespace, name))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def apply(self, obj: Mapping[str, Any]) -> Obj:
        meta = obj["metadata"]
        return self._call(
            "PATCH",
            object_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"]),
            body=obj,
            query=[("fieldManager", names.MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    def list_events(self, namespace: str, field_selector: str, limit: int = 500) -> list[Obj] | None:
        """Events of ``namespace`` matching ``field_selector``; None when not allowed to list them."""
        try:
            found = self._call(
                "GET",
                object_path("v1", "Event", namespace),
                query=[("fieldSelector", field_selector), ("limit", str(limit))],
            )
        except ApiException as error:
            if error.status in (401, 403):
                return None
            raise
        return list(found.get("items") or [])

    def get_model_deployment(self, namespace: str, name: str) -> Obj | None:
        return self.get(names.API_VERSION, names.KIND, namespace, name)

    def patch_status(self, namespace: str, name: str, resource_version: str, status: Mapping[str, Any]) -> Obj:
        """Merge-patch a ModelDeployment's status, only if it is still at ``resource_version``."""
        try:
            return self._call(
                "PATCH",
                object_path(names.API_VERSION, names.KIND, namespace, name) + "/status",
                body={"metadata": {"resourceVersion": resource_version}, "status": dict(status)},
                content_type="application/merge-patch+json",
            )
        except ApiException as error:
            if error.status == 409:
                raise StatusConflict(f"{namespace}/{name} changed since resourceVersion {resource_version}") from error
            raise

    def post_event(self, owner: Any, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the ModelDeployment ``owner`` (a render.Owner); failures only logged."""
        stamp = rfc3339()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{owner.name}.", "namespace": owner.namespace},
            "involvedObject": {
                "apiVersion": names.API_VERSION,
                "kind": names.KIND,
                "name": owner.name,
                "namespace": owner.namespace,
                "uid": owner.uid,
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": names.MANAGER},
            "reportingComponent": names.MANAGER,
            "reportingInstance": socket.gethostname()[:128],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self._call("POST", object_path("v1", "Event", owner.namespace), body=event)
        except ApiException as error:
            log.warning("could not post Event %s on %s/%s: %s", reason, owner.namespace, owner.name, error.status)

    def converge(self, desired: Mapping[str, Any]) -> Change | Conflict | None:
        """Apply one child if the live object differs from ``desired``; None if in sync.

        The live object is always read first: one not controlled by the owner that
        ``desired`` names is left alone and returned as a :class:`Conflict`.
        """
        meta = desired["metadata"]
        try:
            live = self.get(desired["apiVersion"], desired["kind"], meta["namespace"], meta["name"])
            if live is not None:
                conflict = Conflict.of(desired, live)
                if conflict is not None:
                    return conflict
            if in_sync(desired, live):
                return None
            self.apply(with_hash(desired))
        except ApiException as error:
            raise ApplyError(desired, error) from error
        return Change(kind=desired["kind"], name=meta["name"], action="created" if live is None else "updated")

    def remove(self, absent: Desired) -> Change | None:
        """Delete an optional child that must not exist, only if this ModelDeployment
        controls it (its uid) and it carries the managed-by label; None when there is
        nothing of ours to delete.

        An object of that name that someone else controls is not ours: left untouched,
        and not a conflict either (the ModelDeployment wants nothing under that name). One
        whose label was removed by hand is left too, and reported once: the chart's
        admission policy lets the operator delete only labelled children, so trying would
        fail on every reconcile."""
        child = absent.child
        try:
            live = self.get(child.api_version, child.kind, absent.namespace, absent.name)
            if live is None or not controlled_by(live, absent.owner.uid):
                return None
            if not _managed(live):
                self._report_unlabelled(absent, live)
                return None
            # The precondition makes sure the object deleted is the one just checked.
            options = {"preconditions": {"uid": live["metadata"]["uid"]}, "propagationPolicy": "Background"}
            self._call(
                "DELETE", object_path(child.api_version, child.kind, absent.namespace, absent.name), body=options
            )
        except ApiException as error:
            if error.status in (404, 409):
                return None  # gone already, or replaced meanwhile: the next reconcile looks again
            raise ApplyError({"kind": child.kind, "metadata": {"name": absent.name}}, error) from error
        return Change(kind=child.kind, name=absent.name, action="deleted")

    def _report_unlabelled(self, absent: Desired, live: Mapping[str, Any]) -> None:
        uid = str(live["metadata"].get("uid"))
        if uid in self._unlabelled_reported:
            return
        self._unlabelled_reported.add(uid)
        log.warning(
            "not deleting %s %s/%s, which ModelDeployment %s no longer wants: its label %s=%s was removed, and the "
            "operator deletes only objects that carry it; delete it yourself (kubectl -n %s delete %s/%s)",
            absent.child.kind,
            absent.namespace,
            absent.name,
            absent.owner.name,
            names.LABEL_MANAGED_BY,
            names.MANAGER,
            absent.namespace,
            absent.child.kind.lower(),
            absent.name,
        )

    def converge_all(self, children: list[Desired]) -> Outcome:
        """Converge every child in order: apply those rendered, remove those that must not
        exist. A child whose name is taken by an object this ModelDeployment does not own
        is skipped, and so is every child that depends on a skipped kind (its
        ``depends_on``), transitively; the others are still applied."""
        changes: list[Change] = []
        conflicts: list[Conflict] = []
        held_back: list[tuple[str, str]] = []
        for child in children:
            blocked = {c.kind for c in conflicts} | {k for k, _ in held_back}
            if child.obj is not None and blocked & set(child.child.depends_on):
                held_back.append((child.child.kind, child.name))
                continue
            result = self.converge(child.obj) if child.obj is not None else self.remove(child)
            if isinstance(result, Conflict):
                conflicts.append(result)
            elif result is not None:
                changes.append(result)
        return Outcome(changes=tuple(changes), conflicts=tuple(conflicts), held_back=tuple(held_back))
