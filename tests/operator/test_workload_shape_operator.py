"""The workload shape through the real operator (its console script, under the chart's RBAC
and admission policy): the optional child (PodDisruptionBudget) is applied when its field is
set and deleted when it is unset, TF Serving's monitoring config is in the pod template (an
annotation, its downwardAPI volume, the mount and the flag) exactly while its field is set; an override
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


def _monitoring(deployment: dict[str, Any] | None) -> dict[str, Any]:
    """What spec.serving.monitoring puts in the Deployment's pod template (None: absent)."""
    assert deployment is not None
    template = deployment["spec"]["template"]
    serving = next(c for c in template["spec"]["containers"] if c["name"] == workload.SERVING_CONTAINER)
    flags = [a for a in serving["args"] if a.startswith("--monitoring_config_file")]
    return {
        "annotation": (template["metadata"].get("annotations") or {}).get(workload.MONITORING_CONFIG_ANNOTATION),
        "volume": next(
            (v for v in template["spec"].get("volumes") or () if v["name"] == workload.MONITORING_VOLUME), None
        ),
        "mount": next((m for m in serving.get("volumeMounts") or () if m["name"] == workload.MONITORING_VOLUME), None),
        "flag": flags[0] if flags else None,
    }


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


def test_the_budget_exists_and_the_monitoring_config_is_in_the_pod_template_while_their_fields_are_set(
    operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str
) -> None:
    spec = {"source": SOURCE, "disruptionBudget": {"minAvailable": 1}, "serving": {"monitoring": True}}
    md = cluster.create_md(namespace, "m", spec)
    pdb = kit.wait_for("the PodDisruptionBudget", lambda: _pdb(cluster, namespace, "m"))
    assert _owned_by(pdb, md)
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == {"matchLabels": {names.LABEL_NAME: names.APP_NAME, names.LABEL_INSTANCE: "m"}}
    assert (kit.wait_for("Synced", lambda: _synced(cluster, namespace, "m")))["status"] == "True"
    # The monitoring config: the operator's annotation, projected into the file the flag names.
    monitoring = _monitoring(cluster.child("Deployment", namespace, "m"))
    assert monitoring["annotation"] == 'prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }'
    assert monitoring["volume"]["downwardAPI"]["items"] == [
        {
            "path": "monitoring_config.txt",
            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.annotations['modelpoller.dev/monitoring-config']"},
        }
    ]
    assert monitoring["mount"] == {"name": "tf-serving-monitoring", "mountPath": "/etc/tf-serving", "readOnly": True}
    assert monitoring["flag"] == "--monitoring_config_file=/etc/tf-serving/monitoring_config.txt"
    service = cluster.child("Service", namespace, "m")
    assert service is not None and [p["name"] for p in service["spec"]["ports"]] == ["grpc", "http", "metrics"]

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

    # Unset: the budget is deleted; the annotation, volume, mount, flag and metrics port are gone.
    cluster.patch_md(namespace, "m", {"spec": {"disruptionBudget": None, "serving": {"monitoring": False}}})
    kit.wait_for("the PodDisruptionBudget deleted", lambda: _pdb(cluster, namespace, "m") is None)
    kit.wait_for(
        "the Service without the metrics port",
        lambda: (
            [p["name"] for p in (cluster.child("Service", namespace, "m") or {"spec": {"ports": []}})["spec"]["ports"]]
            == ["grpc", "http"]
        ),
    )
    synced = kit.wait_for("Synced", lambda: _synced(cluster, namespace, "m"))
    assert (synced["status"], synced["reason"]) == ("True", "ChildrenApplied")
    assert _monitoring(cluster.child("Deployment", namespace, "m")) == dict.fromkeys(
        ("annotation", "volume", "mount", "flag")
    )


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
    """RBAC lets the operator delete PodDisruptionBudgets (its one optional child kind); the
    chart's admission policy narrows that to the ones a ModelDeployment controls."""
    policy = client.PolicyV1Api(cluster.api)
    theirs = {
        "metadata": {"name": "someone-elses"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"a": "b"}}},
    }
    policy.create_namespaced_pod_disruption_budget(namespace, theirs)
    token = kit.service_account_token(kube, kit.OPERATOR_NAMESPACE, kit.OPERATOR_SA)
    as_operator = client.PolicyV1Api(kube.api_client(token))
    with pytest.raises(ApiException) as error:
        as_operator.delete_namespaced_pod_disruption_budget("someone-elses", namespace)
    assert error.value.status == 403 and "may delete only its own optional children" in str(error.value.body)
    assert policy.read_namespaced_pod_disruption_budget("someone-elses", namespace).metadata.uid


def test_a_deployment_event_does_not_restore_a_deployment_bound_to_someone_elses_role(
    operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str
) -> None:
    """The poller's Role m-poller taken from the ModelDeployment (its ownerReference and label
    removed by hand): the reconcile holds the RoleBinding and the Deployment back
    (NameConflict), and so must the drift repair that a Deployment event starts (it renders
    the Deployment alone, whose pods would run as an identity bound to that Role)."""
    cluster.create_md(namespace, "m", {"source": SOURCE})
    kit.wait_for("Synced", lambda: (s := _synced(cluster, namespace, "m")) and s["status"] == "True")
    assert _monitoring(cluster.child("Deployment", namespace, "m"))["annotation"] is None
    taken = {"metadata": {"ownerReferences": None, "labels": {names.LABEL_MANAGED_BY: None}}}
    cluster.rbac.patch_namespaced_role("m-poller", namespace, taken)
    # A change of the spec the Deployment must not get while its Role is someone else's.
    cluster.patch_md(namespace, "m", {"spec": {"serving": {"monitoring": True}}})
    synced = kit.wait_for("Synced=False", lambda: _synced(cluster, namespace, "m"))
    assert (synced["status"], synced["reason"]) == ("False", "NameConflict"), synced

    # A Deployment event (an edit by hand): the repair sees the drift, and holds back.
    apps = client.AppsV1Api(cluster.api)
    apps.patch_namespaced_deployment("m", namespace, {"metadata": {"labels": {"touched": "by-hand"}}})
    kit.wait_for(
        "the repair held back",
        lambda: "not repairing Deployment of ModelDeployment m: it depends on Role m-poller" in operator.log(),
    )
    assert _monitoring(cluster.child("Deployment", namespace, "m"))["annotation"] is None
    role = cluster.child("Role", namespace, "m-poller")
    assert role is not None and not role["metadata"].get("ownerReferences")
    assert "ValidatingAdmissionPolicy" not in operator.log()

    # Its owner deletes the Role: the reconcile's retry makes ours, then the Deployment.
    cluster.rbac.delete_namespaced_role("m-poller", namespace)
    kit.wait_for(
        "Synced=True", lambda: (s := _synced(cluster, namespace, "m")) and s["status"] == "True" and s, timeout=90
    )
    assert _monitoring(cluster.child("Deployment", namespace, "m"))["annotation"] is not None
