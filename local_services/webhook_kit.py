"""Helpers of the admission webhook's tests, e2e test and benchmark: the chart's webhook
objects on the real API server, pointed at an operator process on loopback.

The objects come from deploy/manifests (the chart rendered with its defaults): the
certificate Secret (empty), the Role that reaches it, and the MutatingWebhookConfiguration,
whose ``clientConfig.service`` is replaced by ``url: https://127.0.0.1:<port>/mutate`` (the
API server here reaches no Service). The operator then runs under the chart's identity
(``operator_testkit.install_operator_identity``) with the chart's webhook settings: it
writes the certificate into the Secret and the CA into the configuration, and the API
server calls it over TLS for every labelled pod.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from model_poller_api import names

from local_services import operator_kit as kit

CONFIGURATION = "model-poller-operator"
SECRET = "model-poller-operator-webhook-tls"
WEBHOOK_NAME = "inject.modelpoller.dev"
SERVING_IMAGE = "tensorflow/serving:2.19.0"
NAMESPACED_KINDS = ("Secret", "Role", "RoleBinding")


def manifest(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(kit.MANIFESTS.read_text()) if d and d["kind"] == kind]
    return dict(doc)


def configuration(port: int) -> dict[str, Any]:
    """The chart's MutatingWebhookConfiguration, calling https://127.0.0.1:<port>/mutate."""
    doc = copy.deepcopy(manifest("MutatingWebhookConfiguration"))
    for hook in doc["webhooks"]:
        hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}/mutate"}
    return doc


def install(kube: Any, workdir: Path, port: int) -> Path:
    """The chart's identity and webhook objects, the configuration pointing at ``port``;
    returns the operator's kubeconfig."""
    kubeconfig: Path = kit.install_operator_identity(kube, workdir)
    api = kube.api_client()
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    create = {
        "Secret": core.create_namespaced_secret,
        "Role": rbac.create_namespaced_role,
        "RoleBinding": rbac.create_namespaced_role_binding,
    }
    for kind in NAMESPACED_KINDS:
        doc = manifest(kind)
        kit.ignore_conflict(lambda: create[kind](kit.OPERATOR_NAMESPACE, doc))  # noqa: B023
    remove_configuration(kube)
    client.AdmissionregistrationV1Api(api).create_mutating_webhook_configuration(configuration(port))
    return kubeconfig


def remove_configuration(kube: Any) -> None:
    with contextlib.suppress(ApiException):
        client.AdmissionregistrationV1Api(kube.api_client()).delete_mutating_webhook_configuration(CONFIGURATION)


def reset_secret(kube: Any) -> None:
    """The certificate Secret back to the chart's empty one (a fresh install)."""
    core = client.CoreV1Api(kube.api_client())
    core.replace_namespaced_secret(SECRET, kit.OPERATOR_NAMESPACE, manifest("Secret"))


def operator_env(port: int, check_interval: float = 1) -> dict[str, str]:
    """The chart's webhook settings (deployment.yaml), with loopback among the certificate's names."""
    return {
        "MODEL_POLLER_OPERATOR_WEBHOOK_PORT": str(port),
        "MODEL_POLLER_OPERATOR_WEBHOOK_ADDRESS": "127.0.0.1",
        "MODEL_POLLER_OPERATOR_WEBHOOK_SECRET": f"{kit.OPERATOR_NAMESPACE}/{SECRET}",
        "MODEL_POLLER_OPERATOR_WEBHOOK_HOSTS": "127.0.0.1,model-poller-operator-webhook.model-poller-system.svc",
        "MODEL_POLLER_OPERATOR_WEBHOOK_CONFIGURATION": CONFIGURATION,
        "MODEL_POLLER_OPERATOR_WEBHOOK_CHECK_INTERVAL": str(check_interval),
    }


@contextlib.contextmanager
def run(kube: Any, workdir: Path, port: int | None = None) -> Iterator[kit.OperatorProcess]:
    """The chart's webhook objects and the operator serving the webhook; waits until the API
    server calls it, removes the configuration at the end (labelled pods of later tests
    must not meet a webhook nobody serves)."""
    port = port or kit.free_port()
    kubeconfig = install(kube, workdir, port)
    try:
        with kit.run_operator(kubeconfig, workdir, env=operator_env(port)) as running:
            wait_serving(kube)
            yield running
    finally:
        remove_configuration(kube)


def ca_bundle(kube: Any) -> str | None:
    hook = client.AdmissionregistrationV1Api(kube.api_client()).read_mutating_webhook_configuration(CONFIGURATION)
    return str(hook.webhooks[0].client_config.ca_bundle or "") or None


def secret_data(kube: Any) -> dict[str, bytes]:
    secret = client.CoreV1Api(kube.api_client()).read_namespaced_secret(SECRET, kit.OPERATOR_NAMESPACE)
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}


def served_certificate(port: int) -> bytes:
    """The certificate (DER) the webhook presents on loopback."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def probe_namespace(kube: Any) -> str:
    ns = "webhook-probe"
    core = client.CoreV1Api(kube.api_client())
    kit.ignore_conflict(lambda: core.create_namespace({"metadata": {"name": ns}}))
    ensure_default_service_account(kube, ns)
    return ns


def wait_serving(kube: Any, timeout: float = 60) -> None:
    """Until the API server reaches the webhook over TLS (the caBundle is in place and the
    server listens): a dry-run labelled pod is refused by the webhook itself."""
    ns = probe_namespace(kube)
    core = client.CoreV1Api(kube.api_client())
    last = ""

    def answered() -> bool:
        nonlocal last
        try:
            core.create_namespaced_pod(ns, user_pod("probe", md_name="no-such-md"), dry_run="All")
        except ApiException as error:
            last = str(error.body)
            return "there is no ModelDeployment" in last
        return False

    deadline = time.monotonic() + timeout
    while not answered():
        if time.monotonic() > deadline:
            raise AssertionError(f"the API server never got an answer from the webhook; last: {last}")
        time.sleep(0.2)


def ensure_default_service_account(kube: Any, namespace: str) -> None:
    """What the serviceaccount controller (not running here) does in every namespace."""
    core = client.CoreV1Api(kube.api_client())
    kit.ignore_conflict(lambda: core.create_namespaced_service_account(namespace, {"metadata": {"name": "default"}}))


def user_pod(name: str | None, md_name: str | None = None, **spec: Any) -> dict[str, Any]:
    """A team's own tensorflow/serving pod (restricted PodSecurity), labelled for ``md_name``."""
    meta: dict[str, Any] = {"labels": {"app": "tf"}}
    if name:
        meta["name"] = name
    else:
        meta["generateName"] = "tf-"
    if md_name:
        meta["labels"][names.LABEL_MODEL_DEPLOYMENT] = md_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "serving",
                    "image": SERVING_IMAGE,
                    "ports": [{"name": "http", "containerPort": 8501}],
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
            **spec,
        },
    }


def create_external_md(cluster: kit.Cluster, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    """An external-mode ModelDeployment, once the operator has created its poller's identity."""
    md = cluster.create_md(namespace, name, {"workload": "external", "source": {"uri": "gs://ml-models/m/"}, **spec})
    kit.wait_for(f"ServiceAccount {name}-poller", lambda: cluster.child("ServiceAccount", namespace, f"{name}-poller"))
    kit.wait_for(f"RoleBinding {name}-poller", lambda: cluster.child("RoleBinding", namespace, f"{name}-poller"))
    return md


def refusal(error: ApiException) -> str:
    """The admission message of a refused create."""
    body = json.loads(error.body or "{}")
    return str(body.get("message", error.body))
