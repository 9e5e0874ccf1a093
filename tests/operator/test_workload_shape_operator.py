"""The workload shape through the real operator (its console script, under the chart's RBAC
and admission policy): the optional children (PodDisruptionBudget, TF Serving's monitoring
ConfigMap) are applied when their field is set and deleted when it is unset; an override
the API server cannot refuse is Degraded InvalidOverride with the field named, and the
children stay as they were; a pod field the API server refuses in the Deployment is named
by its spec field; the poller's ServiceAccount carries its annotations in both modes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from model_poller_api import names, workload

from local_services import operator_kit as kit

pytestmark = pytest.mark.kube

SOURCE = {"uri": "gs://ml-models/faster_rcnn/"}
IDENTITY = {"iam.gke.io/gcp-service-account": "model-poller@my-project.iam.gserviceaccount.com"}


def _pdb(cluster: kit.Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    return cluster.raw_get(f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/{name}")


def _config_map(cluster: kit.Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    return cluster.raw_get(f"/api/v1/namespaces/{namespace}/configmaps/{name}-monitoring")


def _synced(cluster: kit.Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    """The Synced condition once it reports the current generation."""
    md = cluster.get_md(namespace, name)
    synced = next((c for c in (md.get("status") or {}).get("conditions") or () if c["type"] == "Synced"), None)
    return synced if synced and synced.get("observedGeneration") == md["metadata"]["generation"] else None


def _template_hash(cluster: kit.Cluster, namespace: str, name: str) -> str:
    deployment = cluster.child("Deployment", namespace, name)
    assert deployment is not None
    return hashlib.sha256(json.dumps(deployment["spec"]["template"], sort_keys=True).encode()).hexdigest()


def _owned_by(child: dict[str, Any], md: dict[str, Any]) -> bool:
    refs = child["metadata"].get("ownerReferences") or []
    return [(r["kind"], r["uid"], r.get("controller")) for r in refs] == [(names.KIND, md["metadata"]["uid"], True)]


def test_the_budget_and_the_monitoring_config_exist_while_their_fields_are_set(
    operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str
) -> None:
    spec = {"source": SOURCE, "disruptionBudget": {"minAvailable": 1}, "serving": {"monitoring": True}}
    md = cluster.create_md(namespace, "m", spec)
    pdb = kit.wait_for("the PodDisruptionBudget", lambda: _pdb(cluster, namespace, "m"))
    config = kit.wait_for("the monitoring ConfigMap", lambda: _config_map(cluster, namespace, "m"))
    assert _owned_by(pdb, md) and _owned_by(config, md)
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == {"matchLabels": {names.LABEL_NAME: names.APP_NAME, names.LABEL_INSTANCE: "m"}}
    assert 'path: "/monitoring/prometheus/metrics"' in config["data"]["monitoring_config.txt"]
    service = kit.wait_for("the Service", lambda: cluster.child("Service", namespace, "m"))
    assert [p["name"] for p in service["spec"]["ports"]] == ["grpc", "http", "metrics"]
    assert (kit.wait_for("Synced", lambda: _synced(cluster, namespace, "m")))["status"] == "True"

    # A change of the budget is applied in place.
    cluster.patch_md(namespace, "m", {"spec": {"disruptionBudget": {"minAvailable": None, "maxUnavailable": "50%"}}})
    kit.wait_for(
        "maxUnavailable 50%",
        lambda: (
            (p := _pdb(cluster, namespace, "m"))
            and p["spec"].get("maxUnavailable") == "50%"
            and "minAvailable" not in p["spec"]
        ),
    )

    # Unset: both are deleted, and the metrics port is gone.
    cluster.patch_md(namespace, "m", {"spec": {"disruptionBudget": None, "serving": {"monitoring": False}}})
    kit.wait_for("the PodDisruptionBudget deleted", lambda: _pdb(cluster, namespace, "m") is None)
    kit.wait_for("the monitoring ConfigMap deleted", lambda: _config_map(cluster, namespace, "m") is None)
    kit.wait_for(
        "the Service without the metrics port",
        lambda: (
            [p["name"] for p in (cluster.child("Service", namespace, "m") or {"spec": {"ports": []}})["spec"]["ports"]]
            == ["grpc", "http"]
        ),
    )
    synced = kit.wait_for("Synced", lambda: _synced(cluster, namespace, "m"))
    assert (synced["status"], synced["reason"]) == ("True", "ChildrenApplied")
    deployment = cluster.child("Deployment", namespace, "m")
    assert deployment is not None
    assert not any("monitoring" in a for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"])


def test_a_deleted_budget_is_put_back(operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str) -> None:
    cluster.create_md(namespace, "m", {"source": SOURCE, "disruptionBudget": {"maxUnavailable": 1}})
    first = kit.wait_for("the PodDisruptionBudget", lambda: _pdb(cluster, namespace, "m"))
    cluster.api.call_api(
        *cluster.api.param_serialize(
            "DELETE", f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/m", auth_settings=["BearerToken"]
        )
    ).read()
    again = kit.wait_for(
        "the PodDisruptionBudget recreated",
        lambda: (p := _pdb(cluster, namespace, "m")) and p["metadata"]["uid"] != first["metadata"]["uid"] and p,
    )
    assert again["spec"]["maxUnavailable"] == 1


def test_an_override_only_the_operator_can_refuse_is_degraded_invalid_override(
    operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str
) -> None:
    """A mount of a volume the template does not declare: CEL does not relate the two lists,
    so the API server stores it; the operator refuses it by name and changes nothing."""
    cluster.create_md(namespace, "m", {"source": SOURCE})
    cluster.wait_observed(namespace, "m")
    before = _template_hash(cluster, namespace, "m")
    mount = {"name": "serving", "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}
    cluster.patch_md(namespace, "m", {"spec": {"podTemplate": {"spec": {"containers": [mount]}}}})
    field = "spec.podTemplate.spec.containers[0].volumeMounts[0].name"
    synced = kit.wait_for("Synced=False", lambda: _synced(cluster, namespace, "m"))
    assert (synced["status"], synced["reason"]) == ("False", "InvalidOverride")
    assert synced["message"].startswith(f"{field}: no volume 'cache'"), synced["message"]
    degraded = kit.wait_for(
        "Degraded InvalidOverride",
        lambda: (c := cluster.condition(namespace, "m", "Degraded")).get("reason") == "InvalidOverride" and c,
    )
    assert degraded["status"] == "True" and degraded["message"].startswith(f"{field}: "), degraded
    assert _template_hash(cluster, namespace, "m") == before
    kit.wait_for(
        "the InvalidOverride Event",
        lambda: any(e["reason"] == "InvalidOverride" for e in cluster.events(namespace, "m")),
    )

    # Fixed (the volume declared): applied, and Degraded clears.
    volumes = [{"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}}]
    cluster.patch_md(namespace, "m", {"spec": {"podTemplate": {"spec": {"volumes": volumes}}}})
    synced = kit.wait_for(
        "Synced=True", lambda: (s := _synced(cluster, namespace, "m")) and s["status"] == "True" and s
    )
    assert synced["reason"] == "ChildrenApplied"
    kit.wait_for("Degraded cleared", lambda: cluster.condition(namespace, "m", "Degraded").get("status") == "False")
    serving = (cluster.child("Deployment", namespace, "m") or {})["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "cache", "mountPath": "/cache"} in serving["volumeMounts"]


def test_a_pod_field_the_api_server_refuses_is_named_by_its_spec_field(
    operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str
) -> None:
    """affinity is opaque to the CRD (a Kubernetes type too big to copy): the API server
    validates it in the Deployment, and Synced names spec.podTemplate.spec.affinity."""
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    cluster.create_md(namespace, "m", {"source": SOURCE, "podTemplate": {"spec": {"affinity": affinity}}})
    synced = kit.wait_for("Synced=False", lambda: _synced(cluster, namespace, "m"))
    assert (synced["status"], synced["reason"]) == ("False", "ApplyFailed")
    field = (
        "spec.podTemplate.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms"
    )
    assert synced["message"].startswith(f"{field}: "), synced["message"]
    assert "must have at least one node selector term" in synced["message"]


@pytest.mark.parametrize("workload", [names.WORKLOAD_OPERATOR, names.WORKLOAD_EXTERNAL])
def test_the_pollers_service_account_carries_its_annotations(
    operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str, workload: str
) -> None:
    cluster.create_md(
        namespace, "m", {"source": SOURCE, "workload": workload, "serviceAccount": {"annotations": IDENTITY}}
    )
    account = kit.wait_for(
        "the annotated ServiceAccount",
        lambda: (
            (a := cluster.child("ServiceAccount", namespace, "m-poller"))
            and (a["metadata"].get("annotations") or {}).get("iam.gke.io/gcp-service-account")
            and a
        ),
    )
    assert (
        account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
        == IDENTITY["iam.gke.io/gcp-service-account"]
    )
    # Removed from the spec: removed from the ServiceAccount.
    cluster.patch_md(namespace, "m", {"spec": {"serviceAccount": None}})
    kit.wait_for(
        "the annotation removed",
        lambda: (
            "iam.gke.io/gcp-service-account"
            not in (
                (cluster.child("ServiceAccount", namespace, "m-poller") or {"metadata": {}})["metadata"].get(
                    "annotations"
                )
                or {}
            )
        ),
    )


def test_the_operator_may_delete_only_its_own_optional_children(
    operator: kit.OperatorProcess, kube: Any, cluster: kit.Cluster, namespace: str
) -> None:
    """RBAC lets the operator delete ConfigMaps and PodDisruptionBudgets; the chart's
    admission policy narrows that to the ones a ModelDeployment controls."""
    cluster.core.create_namespaced_config_map(namespace, {"metadata": {"name": "someone-elses"}, "data": {"a": "b"}})
    token = kit.service_account_token(kube, kit.OPERATOR_NAMESPACE, kit.OPERATOR_SA)
    as_operator = kit.Cluster(kube)
    as_operator.api = kube.api_client(token)
    with pytest.raises(ApiException) as error:
        as_operator.core.delete_namespaced_config_map("someone-elses", namespace)
    assert error.value.status == 403 and "may delete only its own optional children" in str(error.value.body)
    with pytest.raises(ApiException) as error:
        as_operator.core.create_namespaced_config_map(
            namespace,
            {
                "metadata": {
                    "name": "m-monitoring",
                    "labels": {names.LABEL_MANAGED_BY: names.MANAGER},
                    "ownerReferences": [
                        {
                            "apiVersion": names.API_VERSION,
                            "kind": names.KIND,
                            "name": "m",
                            "uid": "x",
                            "controller": True,
                        }
                    ],
                },
                "data": {"script.sh": "curl evil"},
            },
        )
    assert error.value.status == 403 and "monitoring_config.txt" in str(error.value.body)


def _mounts_monitoring(deployment: dict[str, Any] | None) -> bool:
    assert deployment is not None
    volumes = deployment["spec"]["template"]["spec"].get("volumes") or []
    return any(v["name"] == workload.MONITORING_VOLUME for v in volumes)


def test_a_deployment_event_does_not_restore_a_deployment_that_would_mount_someone_elses_config_map(
    operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str
) -> None:
    """monitoring: true while someone else's ConfigMap holds m-monitoring: the reconcile holds
    the Deployment back (NameConflict), and so must the drift repair that a Deployment event
    starts (it renders the Deployment alone, with the mount of that ConfigMap)."""
    cluster.create_md(namespace, "m", {"source": SOURCE})
    kit.wait_for("Synced", lambda: (s := _synced(cluster, namespace, "m")) and s["status"] == "True")
    assert not _mounts_monitoring(cluster.child("Deployment", namespace, "m"))
    theirs = {"metadata": {"name": "m-monitoring"}, "data": {"monitoring_config.txt": "theirs"}}
    cluster.core.create_namespaced_config_map(namespace, theirs)
    cluster.patch_md(namespace, "m", {"spec": {"serving": {"monitoring": True}}})
    synced = kit.wait_for("Synced=False", lambda: _synced(cluster, namespace, "m"))
    assert (synced["status"], synced["reason"]) == ("False", "NameConflict"), synced

    # A Deployment event (an edit by hand): the repair sees the drift, and holds back.
    apps = client.AppsV1Api(cluster.api)
    apps.patch_namespaced_deployment("m", namespace, {"metadata": {"labels": {"touched": "by-hand"}}})
    kit.wait_for(
        "the repair held back",
        lambda: "not repairing Deployment of ModelDeployment m: it depends on ConfigMap m-monitoring" in operator.log(),
    )
    assert not _mounts_monitoring(cluster.child("Deployment", namespace, "m"))
    assert (_config_map(cluster, namespace, "m") or {})["data"] == theirs["data"]
    assert "ValidatingAdmissionPolicy" not in operator.log()

    # Its owner deletes the ConfigMap: the reconcile's retry makes ours, then the Deployment.
    cluster.core.delete_namespaced_config_map("m-monitoring", namespace)
    kit.wait_for(
        "Synced=True", lambda: (s := _synced(cluster, namespace, "m")) and s["status"] == "True" and s, timeout=90
    )
    assert _mounts_monitoring(cluster.child("Deployment", namespace, "m"))
