"""Unit tests of the comparison (compare.py) that keeps the steady state free of writes, and of the REST paths (no cluster)."""

from __future__ import annotations

import copy
from typing import Any

from model_poller_operator import apply, compare


def test_defaults_added_by_the_server_are_ignored() -> None:
    desired = {"spec": {"ports": [{"name": "http", "port": 8501}], "type": "ClusterIP"}}
    live = {
        "spec": {
            "ports": [{"name": "http", "port": 8501, "protocol": "TCP"}],
            "type": "ClusterIP",
            "clusterIP": "10.0.0.1",
        }
    }
    assert compare.is_subset(desired, live)


def test_changed_or_missing_fields_are_seen() -> None:
    desired = {"spec": {"replicas": 2, "template": {"image": "a"}}}
    assert not compare.is_subset(desired, {"spec": {"replicas": 3, "template": {"image": "a"}}})
    assert not compare.is_subset(desired, {"spec": {"template": {"image": "a"}}})
    assert not compare.is_subset({"args": ["--a", "--b"]}, {"args": ["--a"]})
    assert not compare.is_subset({"args": ["--a"]}, {"args": ["--a", "--b"]})
    assert not compare.is_subset({"x": True}, {"x": "true"})


def test_named_lists_match_by_name() -> None:
    desired = {"env": [{"name": "A", "value": "1"}]}
    assert compare.is_subset(desired, {"env": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}]})
    assert not compare.is_subset(desired, {"env": [{"name": "B", "value": "2"}, {"name": "A", "value": "0"}]})


def test_quantities_compare_by_value() -> None:
    assert compare.is_subset({"cpu": "1000m", "memory": 5000000000}, {"cpu": "1", "memory": "5G"})
    assert not compare.is_subset({"cpu": "100m"}, {"cpu": "1"})
    assert not compare.is_subset({"image": "a:1"}, {"image": "a:2"})


def test_empty_maps_equal_absent_ones() -> None:
    assert compare.is_subset({"emptyDir": {}}, {"emptyDir": {}})
    assert compare.is_subset({"metadata": {"annotations": {}}}, {"metadata": {}})


def test_in_sync_needs_the_hash_of_this_render() -> None:
    desired: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {"a": 1, "b": 2},
    }
    live = compare.with_hash(desired)
    assert compare.in_sync(desired, live)
    assert compare.HASH_ANNOTATION not in desired["metadata"].get("annotations", {})
    smaller = copy.deepcopy(desired)
    del smaller["spec"]["b"]  # a field the operator stopped rendering: must be applied
    assert compare.is_subset(smaller, live) and not compare.in_sync(smaller, live)
    assert not compare.in_sync(desired, None)


def test_object_paths() -> None:
    assert apply.object_path("v1", "Service", "ns", "m") == "/api/v1/namespaces/ns/services/m"
    assert apply.object_path("apps/v1", "Deployment", "ns", "m") == "/apis/apps/v1/namespaces/ns/deployments/m"
    assert (
        apply.object_path("modelpoller.dev/v1alpha1", "ModelDeployment", "ns")
        == "/apis/modelpoller.dev/v1alpha1/namespaces/ns/modeldeployments"
    )


def _child(kind: str, name: str, owner: dict[str, Any] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns"}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": kind, "metadata": meta}


def _md_ref(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "modelpoller.dev/v1alpha1",
        "kind": "ModelDeployment",
        "name": name,
        "uid": uid,
        "controller": True,
    }


def test_a_live_object_not_controlled_by_this_model_deployment_is_a_conflict() -> None:
    desired = _child("Service", "payments", _md_ref("payments", "uid-1"))
    assert compare.Conflict.of(desired, _child("Service", "payments", _md_ref("payments", "uid-1"))) is None
    assert compare.Conflict.of(desired, _child("Service", "payments", None)) == compare.Conflict(
        "Service", "payments", ""
    )
    earlier = compare.Conflict.of(desired, _child("Service", "payments", _md_ref("payments", "uid-0")))
    assert earlier is not None and "earlier ModelDeployment payments (uid uid-0)" in earlier.describe()
    foreign = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "uid-1", "controller": True}
    other = compare.Conflict.of(desired, _child("Service", "payments", foreign))
    assert other is not None and other.describe() == "Service payments (controlled by ReplicaSet rs)"
    # An owner that is not the controller does not make the object ours.
    not_controller = {**_md_ref("payments", "uid-1"), "controller": False}
    assert compare.Conflict.of(desired, _child("Service", "payments", not_controller)) is not None


def test_conflict_message_names_the_objects_and_what_to_do() -> None:
    outcome = compare.Outcome(
        conflicts=(
            compare.Conflict("Service", "payments"),
            compare.Conflict("Role", "payments-poller", "Deployment x"),
        ),
        held_back=(("Deployment", "payments"),),
    )
    message = outcome.conflict_message("shop")
    assert message.startswith(
        "Service payments (not controlled by any owner), Role payments-poller (controlled by Deployment x) already exist"
    )
    assert "did not apply Deployment payments either" in message
    assert "kubectl -n shop delete service/payments role/payments-poller" in message
    assert "If they are leftovers, delete them" in message and "another name" in message
    single = compare.Outcome(conflicts=(compare.Conflict("Service", "payments"),)).conflict_message("shop")
    assert "already exists in namespace 'shop' and is not owned by this ModelDeployment" in single
    assert "If it is a leftover, delete it" in single and "either" not in single
