"""The admission webhook against the real API server, which calls it over TLS on loopback.

The operator runs as a subprocess under the chart's identity and webhook settings
(tests/operator/webhook_kit.py): it writes its certificate into the chart's Secret and the
CA into the chart's MutatingWebhookConfiguration, and the API server sends it every
labelled pod. The pods are created through the API as a user or a ReplicaSet would.
"""

from __future__ import annotations

import base64
import copy
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from model_poller_api import models, names
from model_poller_operator import inject
from model_poller_operator.compare import is_subset
from model_poller_operator.render import ownership, pod_containers

from local_services import operator_kit as kit
from local_services import webhook_kit as wk

pytestmark = pytest.mark.kube

NAME = "resnet"


@pytest.fixture(scope="module")
def webhook(kube: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[kit.OperatorProcess]:
    with wk.run(kube, tmp_path_factory.mktemp("webhook")) as running:
        yield running
        assert running.process.poll() is None, f"the operator died:\n{running.log()[-5000:]}"
        assert "Traceback" not in running.log(), running.log()[-5000:]


@pytest.fixture
def ns(kube: Any, namespace: str) -> str:
    wk.ensure_default_service_account(kube, namespace)
    return namespace


def create_pod(cluster: kit.Cluster, namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
    created = cluster.core.create_namespaced_pod(namespace, pod)
    return dict(cluster.api.sanitize_for_serialization(created))


def refused(cluster: kit.Cluster, namespace: str, pod: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as caught:
        cluster.core.create_namespaced_pod(namespace, pod)
    assert caught.value.status == 403, caught.value.body
    message = wk.refusal(caught.value)
    assert f'admission webhook "{wk.WEBHOOK_NAME}" denied the request' in message, message
    return message


def webhook_calls(kube: Any, since: int, pod_name: str) -> list[dict[str, Any]]:
    """What the audit log says our webhook did to the creation of ``pod_name``: one entry
    per call (``mutated`` true or false), none when it was never called."""
    calls = []
    with open(kube.audit_log, "rb") as fh:
        fh.seek(since)
        for line in fh.read().splitlines():
            entry = json.loads(line)
            ref = entry.get("objectRef") or {}
            if entry.get("stage") != "ResponseComplete" or ref.get("resource") != "pods" or ref.get("name") != pod_name:
                continue
            for key, value in (entry.get("annotations") or {}).items():
                if key.startswith("mutation.webhook.admission.k8s.io/"):
                    detail = json.loads(value)
                    if detail.get("webhook") == wk.WEBHOOK_NAME:
                        calls.append(detail)
    return calls


def test_labelled_pod_is_injected_and_an_unlabelled_one_is_never_sent(
    kube: Any, webhook: kit.OperatorProcess, cluster: kit.Cluster, ns: str
) -> None:
    md = wk.create_external_md(cluster, ns, NAME, modelName="resnet_v2")
    owner = ownership.Owner(NAME, ns, md["metadata"]["uid"])
    spec = models.ModelDeploymentSpec.from_object(NAME, md["spec"])
    since = kit.audit_offset(kube.audit_log)

    pod = create_pod(cluster, ns, wk.user_pod("labelled", NAME))["spec"]
    (poller,) = pod["initContainers"]
    # Exactly the rendered container, plus what the API server defaults (the operator's own comparison).
    assert is_subset(pod_containers.poller_container(owner, spec, inject.INJECTED_VOLUMES), poller), poller
    (serving,) = pod["containers"]
    assert serving["args"] == ["--model_name=resnet_v2", "--model_base_path=/models/resnet_v2", "--rest_api_port=8501"]
    assert serving["volumeMounts"] == [{"name": "model-poller-models", "mountPath": "/models", "readOnly": True}]
    assert serving["readinessProbe"]["httpGet"]["path"] == names.PATH_SERVING_READY
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(volumes) == {"model-poller-models", "model-poller-tmp", "model-poller-token"}, "plugin token removed"
    assert "emptyDir" in volumes["model-poller-models"]
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == (f"{NAME}-poller", False)

    sent = wk.user_pod("unlabelled")
    created = create_pod(cluster, ns, copy.deepcopy(sent))
    reference = cluster.api.sanitize_for_serialization(
        cluster.core.create_namespaced_pod(
            wk.probe_namespace(kube), {**copy.deepcopy(sent), "metadata": {"name": "u"}}, dry_run="All"
        )  # fmt: skip
    )
    assert _same_token_name(created["spec"]) == _same_token_name(reference["spec"]), (
        "the unlabelled pod is exactly what the API server makes of it without the webhook"
    )
    assert "initContainers" not in created["spec"]

    assert [c["mutated"] for c in webhook_calls(kube, since, "labelled")] == [True]
    assert webhook_calls(kube, since, "unlabelled") == [], "the webhook was called for an unlabelled pod"


def _same_token_name(spec: dict[str, Any]) -> dict[str, Any]:
    """The pod spec with the ServiceAccount plugin's random token volume suffix removed."""
    text = json.dumps(spec)
    for volume in spec.get("volumes") or ():
        if volume["name"].startswith("kube-api-access-"):
            text = text.replace(f'"{volume["name"]}"', '"kube-api-access-*"')
    return dict(json.loads(text))


def test_an_already_injected_pod_is_unchanged(
    kube: Any, webhook: kit.OperatorProcess, cluster: kit.Cluster, ns: str
) -> None:
    wk.create_external_md(cluster, ns, NAME)
    first = create_pod(cluster, ns, wk.user_pod("first", NAME))
    again = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "again", "labels": first["metadata"]["labels"]},
             "spec": {k: v for k, v in first["spec"].items() if k != "nodeName"}}  # fmt: skip
    since = kit.audit_offset(kube.audit_log)
    second = create_pod(cluster, ns, copy.deepcopy(again))
    assert second["spec"] == first["spec"]
    assert [c["mutated"] for c in webhook_calls(kube, since, "again")] == [False]


def test_pods_of_a_deployment_template_are_injected(
    kube: Any, webhook: kit.OperatorProcess, cluster: kit.Cluster, ns: str
) -> None:
    """No controllers here: the pods are created from the template as the ReplicaSet does."""
    wk.create_external_md(cluster, ns, NAME)
    template = wk.user_pod(None, NAME)
    deployment = cluster.apps.create_namespaced_deployment(ns, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "tf-serving"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "tf"}},
                 "template": {"metadata": template["metadata"], "spec": template["spec"]}},
    })  # fmt: skip
    stored = cluster.api.sanitize_for_serialization(deployment)["spec"]["template"]
    assert "initContainers" not in stored["spec"], "the Deployment itself is not touched"
    for _ in range(2):
        pod = create_pod(
            cluster, ns, {"metadata": {**stored["metadata"], "generateName": "tf-serving-"}, "spec": stored["spec"]}
        )
        assert [c["name"] for c in pod["spec"]["initContainers"]] == ["poller"]
        assert pod["spec"]["serviceAccountName"] == f"{NAME}-poller"


def test_injected_pod_is_admitted_under_restricted_pod_security(
    kube: Any, webhook: kit.OperatorProcess, cluster: kit.Cluster, ns: str
) -> None:
    cluster.core.patch_namespace(ns, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    wk.create_external_md(cluster, ns, NAME, source={"uri": "gs://ml-models/m/", "credentialsSecret": "gcs-key"})
    pod = create_pod(cluster, ns, wk.user_pod("restricted", NAME))
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["poller"]
    # The same pod without the restricted settings is refused by PodSecurity, not by us.
    loose = wk.user_pod("loose", NAME)
    del loose["spec"]["securityContext"]
    with pytest.raises(ApiException) as caught:
        cluster.core.create_namespaced_pod(ns, loose)
    assert "violates PodSecurity" in str(caught.value.body)


# --- refusals ------------------------------------------------------------------------------


def test_pod_naming_a_missing_model_deployment_is_refused(
    webhook: kit.OperatorProcess, cluster: kit.Cluster, ns: str
) -> None:
    message = refused(cluster, ns, wk.user_pod("orphan", "nowhere"))
    assert f"there is no ModelDeployment 'nowhere' in namespace '{ns}'" in message
    assert "spec.workload: external" in message


def test_pod_naming_a_model_deployment_of_another_namespace_is_refused(
    kube: Any, webhook: kit.OperatorProcess, cluster: kit.Cluster, ns: str
) -> None:
    """The label names a ModelDeployment of the pod's own namespace: one that exists only in
    namespace A (whose pods are injected) gives a pod of namespace B no poller."""
    wk.create_external_md(cluster, ns, NAME)
    create_pod(cluster, ns, wk.user_pod("home", NAME))  # injected in A (A is now watched)
    other = f"t-{uuid.uuid4().hex[:10]}"
    cluster.core.create_namespace({"metadata": {"name": other}})
    try:
        wk.ensure_default_service_account(kube, other)
        message = refused(cluster, other, wk.user_pod("abroad", NAME))
        assert f"there is no ModelDeployment '{NAME}' in namespace '{other}'" in message, message
        assert "the pod's own namespace" in message, message
        assert cluster.core.list_namespaced_pod(other).items == [], "nothing was admitted in namespace B"
    finally:
        cluster.core.delete_namespace(other)


def test_pod_naming_an_operator_mode_model_deployment_is_refused(
    webhook: kit.OperatorProcess, cluster: kit.Cluster, ns: str
) -> None:
    cluster.create_md(ns, NAME, {"source": {"uri": "gs://ml-models/m/"}})
    message = refused(cluster, ns, wk.user_pod("stolen-label", NAME))
    assert f"ModelDeployment '{NAME}' has spec.workload: operator" in message


def test_pod_with_a_foreign_service_account_is_refused(
    kube: Any, webhook: kit.OperatorProcess, cluster: kit.Cluster, ns: str
) -> None:
    wk.create_external_md(cluster, ns, NAME)
    cluster.core.create_namespaced_service_account(ns, {"metadata": {"name": "payments"}})
    message = refused(cluster, ns, wk.user_pod("foreign", NAME, serviceAccountName="payments"))
    assert "ServiceAccount 'payments'" in message and f"'{NAME}-poller'" in message


def test_pod_with_a_contradicting_base_path_is_refused(
    webhook: kit.OperatorProcess, cluster: kit.Cluster, ns: str
) -> None:
    wk.create_external_md(cluster, ns, NAME)
    pod = wk.user_pod("elsewhere", NAME)
    pod["spec"]["containers"][0]["args"] = ["--model_base_path=/srv/models/resnet"]
    message = refused(cluster, ns, pod)
    assert "--model_base_path=/srv/models/resnet contradicts the ModelDeployment" in message
    assert "/models/resnet" in message


# --- the certificate -------------------------------------------------------------------------


def test_certificate_is_the_secrets_and_the_configuration_trusts_its_ca(
    kube: Any, webhook: kit.OperatorProcess
) -> None:
    from cryptography import x509

    data = wk.secret_data(kube)
    served = x509.load_der_x509_certificate(wk.served_certificate(_port(webhook)))
    assert served == x509.load_pem_x509_certificate(data["tls.crt"])
    assert wk.ca_bundle(kube) is not None
    assert x509.load_pem_x509_certificate(base64.b64decode(wk.ca_bundle(kube) or "")) == (
        x509.load_pem_x509_certificate(data["ca.crt"])
    )


def test_caBundle_is_put_back_when_someone_removes_it(kube: Any, webhook: kit.OperatorProcess) -> None:
    expected = wk.ca_bundle(kube)
    admission = client.AdmissionregistrationV1Api(kube.api_client())
    admission.patch_mutating_webhook_configuration(
        wk.CONFIGURATION, [{"op": "remove", "path": "/webhooks/0/clientConfig/caBundle"}]
    )
    kit.wait_for("the caBundle to be put back", lambda: wk.ca_bundle(kube) == expected, timeout=15)
    wk.wait_serving(kube)


def _port(running: kit.OperatorProcess) -> int:
    for line in running.log().splitlines():
        if "admission webhook listening on https://" in line:
            return int(line.rsplit(":", 1)[1].split("/")[0])
    raise AssertionError("the operator never said where the webhook listens")


def test_unready_service_account_is_refused_until_the_operator_made_it(
    kube: Any, webhook: kit.OperatorProcess, cluster: kit.Cluster, ns: str, tmp_path: Path
) -> None:
    """A pod created the moment its ModelDeployment is: refused (its controller retries)
    until the poller's identity exists, then injected."""
    cluster.create_md(ns, NAME, {"workload": "external", "source": {"uri": "gs://ml-models/m/"}})
    started = time.monotonic()
    messages = []
    while True:
        try:
            pod = create_pod(cluster, ns, wk.user_pod(None, NAME))
            break
        except ApiException as error:
            messages.append(wk.refusal(error))
            assert time.monotonic() - started < 30, messages[-1]
            time.sleep(0.05)
    assert pod["spec"]["serviceAccountName"] == f"{NAME}-poller"
    assert all("does not exist yet" in m or "not found" in m for m in messages), messages


# --- status from the labelled pods --------------------------------------------------------------


def test_status_follows_the_labelled_pods(
    kube: Any, webhook: kit.OperatorProcess, cluster: kit.Cluster, ns: str
) -> None:
    """No kubelet here: the pods' readiness is written as a kubelet would, the pollers'
    entries as the pollers would (tests/e2e/test_external.py runs them for real)."""
    wk.create_external_md(cluster, ns, NAME)
    kit.wait_for("Ready NoLabelledPods", lambda: cluster.condition(ns, NAME, "Ready").get("reason") == "NoLabelledPods")
    pods = [create_pod(cluster, ns, wk.user_pod(None, NAME))["metadata"]["name"] for _ in range(2)]
    for pod in pods:
        cluster.core.patch_namespaced_pod_status(pod, ns, {"status": {
            "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})  # fmt: skip
        entry = {"versions": [1, 2], "serving": 2, "latest": 2, "lastSync": "2026-01-01T00:00:00Z", "error": None}
        cluster.custom.patch_namespaced_custom_object_status(
            names.GROUP, names.VERSION, ns, names.PLURAL, NAME, {"status": {"pollers": {pod: entry}}}
        )

    def serving() -> dict[str, Any] | None:
        status = cluster.get_md(ns, NAME).get("status") or {}
        ok = (status.get("replicas"), status.get("readyReplicas"), status.get("servingVersion")) == (2, 2, 2)
        return status if ok and cluster.condition(ns, NAME, "Ready").get("reason") == "AllReplicasServing" else None

    status = kit.wait_for("2 ready replicas serving version 2", serving, timeout=30)
    assert status["selector"] == f"{names.LABEL_MODEL_DEPLOYMENT}={NAME}"
    assert cluster.condition(ns, NAME, "Synced")["reason"] == "ChildrenApplied"

    cluster.core.delete_namespaced_pod(pods[0], ns, grace_period_seconds=0)
    kit.wait_for("the gone pod's entry pruned", lambda: set((cluster.get_md(ns, NAME).get("status") or {})
                 .get("pollers") or {}) == {pods[1]} and cluster.get_md(ns, NAME)["status"]["replicas"] == 1)  # fmt: skip


def test_the_external_examples_work_together(
    kube: Any, webhook: kit.OperatorProcess, cluster: kit.Cluster, ns: str
) -> None:
    """deploy/examples/external-md.yaml and external-deployment.yaml, as a user applies them."""
    import yaml

    examples = Path(__file__).resolve().parents[2] / "deploy" / "examples"
    md = yaml.safe_load((examples / "external-md.yaml").read_text())
    deployment = yaml.safe_load((examples / "external-deployment.yaml").read_text())
    name = md["metadata"]["name"]
    wk.create_external_md(cluster, ns, name, **{k: v for k, v in md["spec"].items() if k != "workload"})
    created = cluster.apps.create_namespaced_deployment(ns, deployment)
    template = cluster.api.sanitize_for_serialization(created)["spec"]["template"]
    pod = create_pod(cluster, ns, {"metadata": {**template["metadata"], "generateName": "resnet-serving-"},
                                   "spec": template["spec"]})["spec"]  # fmt: skip
    (serving,) = pod["containers"]
    assert serving["name"] == "tf-serving"
    assert serving["args"] == ["--model_name=resnet_v2", "--model_base_path=/models/resnet_v2", "--rest_api_port=8501"]
    assert serving["readinessProbe"]["httpGet"]["path"] == names.PATH_SERVING_READY
    assert [c["name"] for c in pod["initContainers"]] == ["poller"]
    assert pod["serviceAccountName"] == f"{name}-poller"
    assert pod["nodeSelector"] == deployment["spec"]["template"]["spec"]["nodeSelector"], "the rest is the team's"


def test_workload_is_validated_and_immutable(cluster: kit.Cluster, namespace: str) -> None:
    with pytest.raises(ApiException) as caught:
        cluster.create_md(namespace, "bad", {"workload": "sidecar", "source": {"uri": "gs://ml-models/m/"}})
    assert caught.value.status == 422 and "spec.workload" in str(caught.value.body)
    cluster.create_md(namespace, "m", {"workload": "external", "source": {"uri": "gs://ml-models/m/"}})
    with pytest.raises(ApiException) as caught:
        cluster.patch_md(namespace, "m", {"spec": {"workload": "operator"}})
    assert "spec.workload is immutable" in str(caught.value.body)
    defaulted = cluster.create_md(namespace, "d", {"source": {"uri": "gs://ml-models/m/"}})
    assert defaulted["spec"]["workload"] == "operator"


def test_lookups_follow_changes_of_the_model_deployment(
    kube: Any, webhook: kit.OperatorProcess, cluster: kit.Cluster, ns: str
) -> None:
    """Once a pod was injected in a namespace the webhook keeps that namespace's
    ModelDeployments and ServiceAccounts by watch: a change, a deletion or a new one is
    seen by the next pod, within a moment."""
    wk.create_external_md(cluster, ns, NAME)
    create_pod(cluster, ns, wk.user_pod(None, NAME))  # the namespace is now watched

    cluster.patch_md(ns, NAME, {"spec": {"source": {"uri": "gs://ml-models/moved/"}}})

    def source_of_a_new_pod() -> str:
        pod = create_pod(cluster, ns, wk.user_pod(None, NAME))["spec"]["initContainers"][0]
        return str({e["name"]: e.get("value") for e in pod["env"]}[names.env_name("--source")])

    kit.wait_for("a new pod with the new source", lambda: source_of_a_new_pod() == "gs://ml-models/moved/", timeout=5)

    wk.create_external_md(cluster, ns, "newcomer")
    assert create_pod(cluster, ns, wk.user_pod(None, "newcomer"))["spec"]["serviceAccountName"] == "newcomer-poller"

    cluster.custom.delete_namespaced_custom_object(names.GROUP, names.VERSION, ns, names.PLURAL, NAME)

    def refused_now() -> bool:
        try:
            create_pod(cluster, ns, wk.user_pod(None, NAME))
        except ApiException as error:
            return "there is no ModelDeployment" in wk.refusal(error) or "is being deleted" in wk.refusal(error)
        return False

    kit.wait_for("pods of the deleted ModelDeployment refused", refused_now, timeout=5)
