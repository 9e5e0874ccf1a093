"""The table of child kinds (children.CHILDREN), and optional children against a real API server.

An optional child's render may return None: that child must not exist. The reconcile then
deletes the live object of that name if this ModelDeployment controls it (and it carries the
managed-by label), and never touches one it does not control. The delete path is exercised here through the generic code
(``Api.converge_all``) with a real kind, as an optional kind would run it.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import Any

import pytest
from kubernetes import client
from model_poller_api import models, names
from model_poller_operator import children
from model_poller_operator.apply import Api
from model_poller_operator.children import ChildKind, Desired
from model_poller_operator.compare import Change
from model_poller_operator.render import ownership, rbac

from local_services import operator_kit as kit

OWNER = ownership.Owner("m", "ml", "00000000-0000-4000-8000-000000000000")


def _spec(body: dict[str, Any], name: str = OWNER.name) -> models.ModelDeploymentSpec:
    return models.ModelDeploymentSpec.from_object(name, body)


def test_each_kind_renders_its_own_api_version_kind_and_name(cases: dict[str, dict[str, Any]]) -> None:
    for case, body in cases.items():
        for child in children.kinds_for(_spec(body)):
            obj = child.render(OWNER, _spec(body))
            if obj is None:  # an optional kind this spec does not ask for
                assert child.optional, f"{case}: {child.kind}"
                continue
            assert (obj["apiVersion"], obj["kind"]) == (child.api_version, child.kind), case
            # The name an absent optional child is deleted under is the name it is rendered under.
            assert obj["metadata"]["name"] == child.name(OWNER), f"{case}: {child.kind}"


def test_external_mode_renders_only_the_kinds_marked_external(cases: dict[str, dict[str, Any]]) -> None:
    external = _spec({**cases["minimal"], "workload": names.WORKLOAD_EXTERNAL})
    assert [c["kind"] for c in children.render_children(OWNER, external)] == ["ServiceAccount", "Role", "RoleBinding"]
    assert [c.kind for c in children.kinds_for(_spec(cases["minimal"]))] == [c.kind for c in children.CHILDREN]


def test_a_kind_depends_only_on_kinds_applied_before_it() -> None:
    order = [c.kind for c in children.CHILDREN]
    for child in children.CHILDREN:
        for needed in child.depends_on:
            assert order.index(needed) < order.index(child.kind), f"{child.kind} depends on {needed}"


def test_only_an_optional_kind_may_render_nothing(cases: dict[str, dict[str, Any]]) -> None:
    service = children.BY_KIND["Service"]
    nothing = dataclasses.replace(service, render=lambda owner, spec: None)
    with pytest.raises(RuntimeError, match="Service is not an optional child"):
        children.render_one(nothing, OWNER, _spec(cases["minimal"]))
    optional = dataclasses.replace(nothing, optional=True)
    absent = children.render_one(optional, OWNER, _spec(cases["minimal"]))
    assert (absent.obj, absent.name, absent.namespace) == (None, OWNER.name, OWNER.namespace)


# --- the optional-child path on a real API server ------------------------------------------


def _optional_service_account(present: bool) -> ChildKind:
    """The poller's ServiceAccount kind, made optional: rendered, or absent."""
    kind = children.BY_KIND["ServiceAccount"]
    if present:
        return dataclasses.replace(kind, optional=True)
    return dataclasses.replace(kind, optional=True, render=lambda owner, spec: None)


def _desired(kind: ChildKind, owner: ownership.Owner, spec: models.ModelDeploymentSpec) -> list[Desired]:
    return [children.render_one(kind, owner, spec)]


@pytest.mark.kube
def test_an_optional_child_is_created_then_deleted_when_it_must_not_exist(
    cluster: kit.Cluster, namespace: str, cases: dict[str, dict[str, Any]]
) -> None:
    md = cluster.create_md(namespace, "opt", cases["minimal"])
    owner = ownership.Owner("opt", namespace, md["metadata"]["uid"])
    spec, api = _spec(cases["minimal"], "opt"), Api(cluster.api)
    name = rbac.poller_identity(owner)

    created = api.converge_all(_desired(_optional_service_account(True), owner, spec))
    assert created.changes == (Change("ServiceAccount", name, "created"),)
    assert cluster.core.read_namespaced_service_account(name, namespace).metadata.owner_references[0].uid == owner.uid

    deleted = api.converge_all(_desired(_optional_service_account(False), owner, spec))
    assert deleted.changes == (Change("ServiceAccount", name, "deleted"),) and not deleted.conflicts
    assert cluster.core.list_namespaced_service_account(namespace, field_selector=f"metadata.name={name}").items == []

    again = api.converge_all(_desired(_optional_service_account(False), owner, spec))
    assert again.changes == () and again.conflicts == ()


@pytest.mark.kube
@pytest.mark.parametrize("controller", ["none", "earlier"])
def test_an_optional_child_it_does_not_control_is_never_touched(
    cluster: kit.Cluster, namespace: str, cases: dict[str, dict[str, Any]], controller: str
) -> None:
    md = cluster.create_md(namespace, "opt", cases["minimal"])
    owner = ownership.Owner("opt", namespace, md["metadata"]["uid"])
    name = rbac.poller_identity(owner)
    meta: dict[str, Any] = {"name": name, "labels": {"team": "payments"}}
    if controller == "earlier":  # a leftover of an earlier ModelDeployment of the same name
        meta["ownerReferences"] = [{**ownership.owner_reference(owner), "uid": str(uuid.uuid4())}]
    theirs = cluster.core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=meta))

    outcome = Api(cluster.api).converge_all(
        _desired(_optional_service_account(False), owner, _spec(cases["minimal"], "opt"))
    )

    assert outcome.changes == () and outcome.conflicts == ()
    live = cluster.core.read_namespaced_service_account(name, namespace)
    assert live.metadata.uid == theirs.metadata.uid
    assert live.metadata.resource_version == theirs.metadata.resource_version


@pytest.mark.kube
def test_an_optional_child_whose_label_was_removed_is_not_deleted_and_reported_once(
    cluster: kit.Cluster, namespace: str, cases: dict[str, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """The admission policy lets the operator delete only labelled children: an unlabelled
    one is left (a DELETE would be refused on every reconcile), and said once."""
    md = cluster.create_md(namespace, "opt", cases["minimal"])
    owner = ownership.Owner("opt", namespace, md["metadata"]["uid"])
    spec, api = _spec(cases["minimal"], "opt"), Api(cluster.api)
    name = rbac.poller_identity(owner)
    api.converge_all(_desired(_optional_service_account(True), owner, spec))
    cluster.core.patch_namespaced_service_account(
        name, namespace, [{"op": "remove", "path": "/metadata/labels/app.kubernetes.io~1managed-by"}]
    )
    unlabelled = cluster.core.read_namespaced_service_account(name, namespace)

    with caplog.at_level(logging.WARNING, logger="model_poller_operator.apply"):
        for _ in range(2):
            outcome = api.converge_all(_desired(_optional_service_account(False), owner, spec))
            assert outcome.changes == () and outcome.conflicts == ()

    live = cluster.core.read_namespaced_service_account(name, namespace)
    assert live.metadata.uid == unlabelled.metadata.uid
    reports = [r.getMessage() for r in caplog.records if "not deleting" in r.getMessage()]
    assert len(reports) == 1, reports
    assert f"ServiceAccount {namespace}/{name}" in reports[0] and names.LABEL_MANAGED_BY in reports[0]
