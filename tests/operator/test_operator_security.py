"""Issue 7: the operator is not a master key, and never a confused deputy.

Everything here runs against the real API server with the chart's RBAC and its
ValidatingAdmissionPolicy installed (from deploy/manifests, which test_helm.py proves is
`helm template` of the chart), using the operator's OWN ServiceAccount token, as a thief
of that token would. Each attack is one the chart's old ClusterRole allowed; each must
now be refused, by RBAC (Secrets, ConfigMaps) or by the policy (the rest: the error says so, which
proves RBAC let it through). The normal reconcile still works under the same policy:
every other integration test runs the operator under it too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from model_poller_api import models, names, workload
from model_poller_operator import children
from model_poller_operator.apply import Api, ApplyError
from model_poller_operator.render import ownership

from local_services import operator_kit as kit

pytestmark = pytest.mark.kube

FAKE_UID = "00000000-0000-4000-8000-00000000beef"


@pytest.fixture(scope="module")
def operator_token(kube: Any, operator_kubeconfig: Any) -> str:
    """A fresh TokenRequest token of the chart's ServiceAccount (policy already in force)."""
    return kit.service_account_token(kube, kit.OPERATOR_NAMESPACE, kit.OPERATOR_SA)


def rendered(namespace: str, name: str = "victim", monitoring: bool = False) -> dict[str, dict[str, Any]]:
    """The children the operator would render for a ModelDeployment ``name`` (by kind)."""
    owner = ownership.Owner(name=name, namespace=namespace, uid=FAKE_UID)
    body = {"source": {"uri": f"gs://bkt/{name}/"}, "serving": {"monitoring": monitoring}}
    spec = models.ModelDeploymentSpec.from_object(name, body)
    return {child["kind"]: child for child in children.render_children(owner, spec)}


def refused_by_policy(call: Callable[[], Any], *words: str) -> str:
    """Run ``call``; it must be refused by the ValidatingAdmissionPolicy (not by RBAC)."""
    with pytest.raises((ApiException, ApplyError)) as caught:
        call()
    text = str(getattr(caught.value, "body", None) or caught.value)
    assert "ValidatingAdmissionPolicy" in text and "model-poller-operator" in text, text
    for word in words:
        assert word in text, text
    return text


def test_operator_token_cannot_read_secrets(
    kube: Any, operator_token: str, cluster: kit.Cluster, namespace: str
) -> None:
    cluster.core.create_namespaced_secret(
        namespace, {"metadata": {"name": "db"}, "stringData": {"password": "hunter2"}}
    )
    thief = client.CoreV1Api(kube.api_client(operator_token))
    for call in (
        lambda: thief.read_namespaced_secret("db", namespace),
        lambda: thief.list_namespaced_secret(namespace),
        lambda: thief.list_secret_for_all_namespaces(),
    ):
        with pytest.raises(ApiException) as error:
            call()
        assert error.value.status == 403
    review = client.V1SelfSubjectRulesReview(spec=client.V1SelfSubjectRulesReviewSpec(namespace=namespace))
    rules = client.AuthorizationV1Api(kube.api_client(operator_token)).create_self_subject_rules_review(review)
    assert not [r for r in rules.status.resource_rules if "secrets" in r.resources or "*" in r.resources]


def test_operator_token_cannot_read_config_maps(
    kube: Any, operator_token: str, cluster: kit.Cluster, namespace: str
) -> None:
    """TF Serving's monitoring config is a projected pod annotation, not a ConfigMap child:
    the operator needs no ConfigMap rights, so its token reads none, in no namespace."""
    cluster.core.create_namespaced_config_map(namespace, {"metadata": {"name": "settings"}, "data": {"dsn": "x"}})
    thief = client.CoreV1Api(kube.api_client(operator_token))
    for call in (
        lambda: thief.read_namespaced_config_map("settings", namespace),
        lambda: thief.list_namespaced_config_map(namespace),
        lambda: thief.list_config_map_for_all_namespaces(),
        lambda: thief.delete_namespaced_config_map("settings", namespace),
    ):
        with pytest.raises(ApiException) as error:
            call()
        assert error.value.status == 403 and "configmaps" in str(error.value.body)
    review = client.V1SelfSubjectRulesReview(spec=client.V1SelfSubjectRulesReviewSpec(namespace=namespace))
    rules = client.AuthorizationV1Api(kube.api_client(operator_token)).create_self_subject_rules_review(review)
    assert not [r for r in rules.status.resource_rules if "configmaps" in r.resources or "*" in r.resources]


def _monitoring_volume(deployment: dict[str, Any]) -> dict[str, Any]:
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    volume: dict[str, Any] = next(v for v in volumes if v["name"] == workload.MONITORING_VOLUME)
    return volume


@pytest.mark.parametrize(
    "source",
    [
        {"downwardAPI": {"items": [{"path": "monitoring_config.txt", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
        {"configMap": {"name": "someone-elses", "items": [{"key": "k", "path": "monitoring_config.txt"}]}},
    ],
    ids=["other-field", "config-map"],
)
def test_the_monitoring_volume_projects_only_the_operators_annotation(
    kube: Any, operator_token: str, namespace: str, source: dict[str, Any]
) -> None:
    apps = client.AppsV1Api(kube.api_client(operator_token))
    # The control: the rendered Deployment with spec.serving.monitoring is admitted (dry run).
    apps.create_namespaced_deployment(namespace, rendered(namespace, monitoring=True)["Deployment"], dry_run="All")
    deployment = copy.deepcopy(rendered(namespace, monitoring=True)["Deployment"])
    volume = _monitoring_volume(deployment)
    del volume["downwardAPI"]
    volume.update(source)
    refused_by_policy(
        lambda: apps.create_namespaced_deployment(namespace, deployment),
        workload.MONITORING_VOLUME,
        workload.MONITORING_CONFIG_ANNOTATION,
    )


def _with_host_path(deployment: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    pod["containers"][0]["volumeMounts"].append({"name": "host", "mountPath": "/host"})


def _escalation(deployment: dict[str, Any]) -> None:
    # (privileged: true is refused by this API server itself: --allow-privileged=false.)
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True


def _added_capability(deployment: dict[str, Any]) -> None:
    deployment["spec"]["template"]["spec"]["initContainers"][0]["securityContext"]["capabilities"]["add"] = [
        "SYS_ADMIN"
    ]


def _host_network(deployment: dict[str, Any]) -> None:
    deployment["spec"]["template"]["spec"]["hostNetwork"] = True


def _other_identity(deployment: dict[str, Any]) -> None:
    deployment["spec"]["template"]["spec"]["serviceAccountName"] = "default"


def _unlabelled(deployment: dict[str, Any]) -> None:
    del deployment["metadata"]["labels"][names.LABEL_MANAGED_BY]


def _no_owner(deployment: dict[str, Any]) -> None:
    del deployment["metadata"]["ownerReferences"]


def _other_secret_volume(deployment: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    pod["volumes"].append({"name": "loot", "secret": {"secretName": "payments-db"}})
    pod["containers"][0]["volumeMounts"].append({"name": "loot", "mountPath": "/loot"})


def _projected_secret(deployment: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    pod["volumes"].append({"name": "loot", "projected": {"sources": [{"secret": {"name": "payments-db"}}]}})


def _secret_env(deployment: dict[str, Any]) -> None:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container.setdefault("env", []).append(
        {"name": "LOOT", "valueFrom": {"secretKeyRef": {"name": "payments-db", "key": "password"}}}
    )


def _credentials_in_serving(deployment: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    pod["volumes"].append({"name": "gcs-credentials", "secret": {"secretName": "gcs-key"}})
    pod["containers"][0]["volumeMounts"].append({"name": "gcs-credentials", "mountPath": "/creds"})


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (_other_secret_volume, ["gcs-credentials"]),
        (_projected_secret, ["projected"]),
        (_secret_env, ["secretKeyRef"]),
        (_credentials_in_serving, ["only into the poller"]),
        (_with_host_path, ["hostPath"]),
        (_escalation, ["allowPrivilegeEscalation"]),
        (_added_capability, ["capabilities"]),
        (_host_network, ["hostNetwork"]),
        (_other_identity, ["ServiceAccount victim-poller"]),
        (_unlabelled, ["labelled"]),
        (_no_owner, ["controlled by"]),
    ],
    ids=[
        "secret-volume",
        "projected-secret",
        "secret-env",
        "credentials-in-serving",
        "hostPath",
        "escalation",
        "capability",
        "hostNetwork",
        "serviceAccount",
        "unlabelled",
        "not-owned",
    ],
)
def test_deployments_only_in_the_rendered_shape(
    kube: Any, operator_token: str, namespace: str, mutate: Callable[[dict[str, Any]], None], words: list[str]
) -> None:
    apps = client.AppsV1Api(kube.api_client(operator_token))
    deployment = copy.deepcopy(rendered(namespace)["Deployment"])
    mutate(deployment)
    refused_by_policy(lambda: apps.create_namespaced_deployment(namespace, deployment), *words)
    # The control: exactly the rendered Deployment is admitted (server-side dry run).
    apps.create_namespaced_deployment(namespace, rendered(namespace)["Deployment"], dry_run="All")


def test_nothing_in_kube_system(kube: Any, operator_token: str) -> None:
    apps = client.AppsV1Api(kube.api_client(operator_token))
    core = client.CoreV1Api(kube.api_client(operator_token))
    children = rendered("kube-system")
    refused_by_policy(lambda: apps.create_namespaced_deployment("kube-system", children["Deployment"]), "kube-system")
    refused_by_policy(
        lambda: core.create_namespaced_service_account("kube-system", children["ServiceAccount"]), "kube-system"
    )


def test_server_side_apply_cannot_take_over_an_unlabelled_deployment(
    kube: Any, operator_token: str, cluster: kit.Cluster, namespace: str
) -> None:
    theirs = {
        "metadata": {"name": "payments", "labels": {"app": "payments"}},
        "spec": {
            "selector": {"matchLabels": {"app": "payments"}},
            "template": {
                "metadata": {"labels": {"app": "payments"}},
                "spec": {"containers": [{"name": "app", "image": "registry.example.com/payments:1"}]},
            },
        },
    }
    cluster.apps.create_namespaced_deployment(namespace, theirs)
    # The operator's own apply path, with the operator's token: a forced server-side apply
    # that changes only the image (the selector is immutable, so an attacker leaves it out),
    # with the label and a controller reference that would make the object look like ours.
    thief = Api(kube.api_client(operator_token))
    meta = rendered(namespace, "payments")["Deployment"]["metadata"]
    re_image = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {k: meta[k] for k in ("name", "namespace", "labels", "ownerReferences")},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "evil.example.com/miner:1"}]}}},
    }
    refused_by_policy(lambda: thief.apply(re_image), "take over")
    live = cluster.apps.read_namespaced_deployment("payments", namespace)
    assert live.spec.template.spec.containers[0].image == "registry.example.com/payments:1"
    assert names.LABEL_MANAGED_BY not in (live.metadata.labels or {})


def test_services_stay_cluster_internal(kube: Any, operator_token: str, namespace: str) -> None:
    core = client.CoreV1Api(kube.api_client(operator_token))
    external_ips = copy.deepcopy(rendered(namespace)["Service"])
    external_ips["spec"]["externalIPs"] = ["203.0.113.10"]
    refused_by_policy(lambda: core.create_namespaced_service(namespace, external_ips), "externalIPs")
    load_balancer = copy.deepcopy(rendered(namespace)["Service"])
    load_balancer["spec"]["type"] = "LoadBalancer"
    refused_by_policy(lambda: core.create_namespaced_service(namespace, load_balancer), "ClusterIP")
    core.create_namespaced_service(namespace, rendered(namespace)["Service"], dry_run="All")


def test_roles_and_bindings_cannot_hand_out_the_operators_rights(
    kube: Any, operator_token: str, cluster: kit.Cluster, namespace: str
) -> None:
    rbac = client.RbacAuthorizationV1Api(kube.api_client(operator_token))
    children = rendered(namespace)
    # Rules the operator holds itself, so RBAC's escalation check lets them through.
    broad = copy.deepcopy(children["Role"])
    broad["rules"] = [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create", "patch"]}]
    refused_by_policy(lambda: rbac.create_namespaced_role(namespace, broad), "Roles granting")
    every_md = copy.deepcopy(children["Role"])
    del every_md["rules"][0]["resourceNames"]
    refused_by_policy(lambda: rbac.create_namespaced_role(namespace, every_md), "resourceNames")

    cluster.rbac.create_namespaced_role(namespace, children["Role"])  # the poller's Role exists
    to_everyone = copy.deepcopy(children["RoleBinding"])
    to_everyone["subjects"] = [
        {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:authenticated"}
    ]
    refused_by_policy(lambda: rbac.create_namespaced_role_binding(namespace, to_everyone), "no groups")
    cluster_role = copy.deepcopy(children["RoleBinding"])
    cluster_role["roleRef"] = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": kit.OPERATOR_SA}
    refused_by_policy(lambda: rbac.create_namespaced_role_binding(namespace, cluster_role), "not a ClusterRole")
    other_namespace = copy.deepcopy(children["RoleBinding"])
    other_namespace["subjects"][0]["namespace"] = "kube-system"
    refused_by_policy(lambda: rbac.create_namespaced_role_binding(namespace, other_namespace), "same namespace")
    rbac.create_namespaced_role_binding(namespace, children["RoleBinding"], dry_run="All")


def _wait_condition(
    cluster: kit.Cluster, namespace: str, name: str, type_: str, reason: str, timeout: float = 60
) -> dict[str, Any]:
    found: dict[str, Any] = kit.wait_for(
        f"{type_}={reason} on {namespace}/{name}",
        lambda: (c := cluster.condition(namespace, name, type_)).get("reason") == reason and c,
        timeout,
    )
    return found


def test_a_model_deployment_never_overwrites_objects_it_does_not_own(
    operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str
) -> None:
    cluster.core.create_namespaced_service(
        namespace,
        {"metadata": {"name": "payments"}, "spec": {"selector": {"app": "payments-legacy"}, "ports": [{"port": 80}]}},
    )
    cluster.rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "payments-poller"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
        },
    )
    service_before = cluster.child("Service", namespace, "payments")
    role_before = cluster.child("Role", namespace, "payments-poller")
    assert service_before and role_before

    cluster.create_md(namespace, "payments", {"source": {"uri": "gs://bkt/payments/"}})
    synced = _wait_condition(cluster, namespace, "payments", "Synced", "NameConflict")
    assert synced["status"] == "False"
    message = synced["message"]
    assert "Service payments (not controlled by any owner)" in message
    assert "Role payments-poller (not controlled by any owner)" in message
    assert (
        f"If they are leftovers, delete them (kubectl -n {namespace} delete role/payments-poller service/payments)"
        in message
    )
    assert "did not apply RoleBinding payments-poller, Deployment payments either" in message
    # The Event follows the status write that set the condition: wait for it, not race it.
    kit.wait_for(
        "the NameConflict Warning Event",
        lambda: any(
            e["reason"] == "NameConflict" and e["type"] == "Warning" for e in cluster.events(namespace, "payments")
        ),
    )
    # Safe children are applied; what conflicts is untouched; the RoleBinding (it would bind
    # the poller to someone else's Role) and the Deployment (whose pods would run with that
    # Role's rights) are held back.
    kit.wait_for("the poller's ServiceAccount", lambda: cluster.child("ServiceAccount", namespace, "payments-poller"))
    assert cluster.child("RoleBinding", namespace, "payments-poller") is None
    assert cluster.child("Deployment", namespace, "payments") is None
    for kind, name, before in (("Service", "payments", service_before), ("Role", "payments-poller", role_before)):
        now = cluster.child(kind, namespace, name)
        assert now is not None and now["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], kind
    assert (cluster.child("Service", namespace, "payments") or {})["spec"]["selector"] == {"app": "payments-legacy"}

    # The owner of those objects removes them: the operator converges by itself.
    cluster.core.delete_namespaced_service("payments", namespace)
    cluster.rbac.delete_namespaced_role("payments-poller", namespace)
    _wait_condition(cluster, namespace, "payments", "Synced", "ChildrenApplied", timeout=120)
    md = cluster.get_md(namespace, "payments")
    for kind, name in (
        ("Service", "payments"),
        ("Role", "payments-poller"),
        ("RoleBinding", "payments-poller"),
        ("Deployment", "payments"),
    ):
        child = cluster.child(kind, namespace, name)
        assert child is not None, kind
        assert child["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"], kind
    assert (cluster.child("Service", namespace, "payments") or {})["spec"]["selector"] == ownership.selector_labels(
        ownership.Owner("payments", namespace, md["metadata"]["uid"])
    )


def test_a_child_whose_label_was_removed_by_hand_is_repaired_under_the_policy(
    operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str
) -> None:
    cluster.create_md(namespace, "m", {"source": {"uri": "gs://bkt/m/"}})
    kit.wait_for("the Service", lambda: cluster.child("Service", namespace, "m"))
    cluster.wait_observed(namespace, "m")
    # The live object is then unlabelled but still controlled by the ModelDeployment: the
    # policy lets the operator take back its own child (and only that).
    cluster.core.patch_namespaced_service(
        "m", namespace, [{"op": "remove", "path": "/metadata/labels/app.kubernetes.io~1managed-by"}]
    )
    kit.wait_for(
        "the label to be restored",
        lambda: (
            (cluster.child("Service", namespace, "m") or {})["metadata"]["labels"].get(names.LABEL_MANAGED_BY)
            == names.MANAGER
        ),
    )
    assert "ValidatingAdmissionPolicy" not in operator.log()


def test_operator_token_cannot_rewrite_a_model_deployments_spec(
    kube: Any, operator_token: str, cluster: kit.Cluster, namespace: str
) -> None:
    """A stolen token rewriting spec.source or spec.poller.image would have the operator
    deploy the thief's model or image itself: only metadata (kopf's annotations) may change."""
    cluster.create_md(namespace, "target", {"source": {"uri": "gs://bkt/target/"}})
    custom = client.CustomObjectsApi(kube.api_client(operator_token))

    def patch(body: dict[str, Any]) -> Any:
        return custom.patch_namespaced_custom_object(
            names.GROUP, names.VERSION, namespace, names.PLURAL, "target", body
        )

    refused_by_policy(lambda: patch({"spec": {"source": {"uri": "gs://attacker/model/"}}}), "never its spec")
    refused_by_policy(lambda: patch({"spec": {"poller": {"image": "attacker/image:1"}}}), "never its spec")
    patch({"metadata": {"annotations": {"modelpoller.dev/probe": "ok"}}})  # what kopf does is admitted
    assert cluster.get_md(namespace, "target")["spec"]["source"]["uri"] == "gs://bkt/target/"
