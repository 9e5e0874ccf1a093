"""The chart's admission webhook objects (`helm template`, no cluster): what the API server is
told to send the webhook, and how each value changes it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from model_poller_api import names

from local_services.binaries import binary

CHART = Path(__file__).resolve().parents[2] / "deploy" / "chart"


def rendered(*values: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(binary("helm")), "template", "mp", str(CHART), "--namespace", "ops", *values],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {d["kind"] for d in docs}


def env(docs: list[dict[str, Any]]) -> dict[str, str]:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    return {e["name"]: e.get("value", "") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_configuration_selects_only_labelled_pods_and_fails_closed() -> None:
    docs = rendered()
    (config,) = [d for d in docs if d["kind"] == "MutatingWebhookConfiguration"]
    (hook,) = config["webhooks"]
    assert hook["objectSelector"] == {"matchExpressions": [{"key": names.LABEL_MODEL_DEPLOYMENT, "operator": "Exists"}]}
    assert hook["namespaceSelector"] == {"matchExpressions": [{
        "key": "kubernetes.io/metadata.name", "operator": "NotIn",
        "values": ["kube-system", "kube-public", "kube-node-lease", "ops"]}]}  # fmt: skip
    assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                              "operations": ["CREATE"], "scope": "Namespaced"}]  # fmt: skip
    assert (hook["failurePolicy"], hook["sideEffects"], hook["timeoutSeconds"]) == ("Fail", "None", 5)
    assert hook["clientConfig"] == {"service": {"name": "mp-model-poller-operator-webhook", "namespace": "ops",
                                                "path": "/mutate", "port": 443}}  # fmt: skip
    (service,) = [d for d in docs if d["kind"] == "Service"]
    assert service["spec"]["ports"] == [{"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}]
    settings = env(docs)
    assert settings["MODEL_POLLER_OPERATOR_WEBHOOK_PORT"] == "9443"
    assert settings["MODEL_POLLER_OPERATOR_WEBHOOK_SECRET"] == "ops/mp-model-poller-operator-webhook-tls"
    assert settings["MODEL_POLLER_OPERATOR_WEBHOOK_CONFIGURATION"] == config["metadata"]["name"]
    assert "mp-model-poller-operator-webhook.ops.svc" in settings["MODEL_POLLER_OPERATOR_WEBHOOK_HOSTS"].split(",")
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    assert "data" not in secret, "created empty: the operator writes it, helm upgrade keeps it"


def test_watched_namespaces_narrow_the_configuration() -> None:
    (config,) = [
        d for d in rendered("--set", "watch.namespaces={ml,team-a}") if d["kind"] == "MutatingWebhookConfiguration"
    ]
    expressions = config["webhooks"][0]["namespaceSelector"]["matchExpressions"]
    assert {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["ml", "team-a"]} in expressions
    # Patterns cannot be label values: the webhook then sees every namespace (but the excluded ones).
    docs = rendered("--set", "rbac.create=false", "--set", "watch.namespaces={ml-*}")
    (config,) = [d for d in docs if d["kind"] == "MutatingWebhookConfiguration"]
    assert [e["operator"] for e in config["webhooks"][0]["namespaceSelector"]["matchExpressions"]] == ["NotIn"]


def test_webhook_off_leaves_no_trace() -> None:
    docs = rendered("--set", "webhook.enabled=false")
    assert not kinds(docs) & {"MutatingWebhookConfiguration", "Service", "Secret", "Role"}
    assert not [k for k in env(docs) if k.startswith("MODEL_POLLER_OPERATOR_WEBHOOK_")]
    for doc in docs:
        for rule in doc.get("rules") or ():
            assert "mutatingwebhookconfigurations" not in rule["resources"] and "secrets" not in rule["resources"]


@pytest.mark.parametrize("issuer", [[], ["--set", "webhook.certManager.issuerRef.kind=ClusterIssuer",
                                          "--set", "webhook.certManager.issuerRef.name=corp-ca"]], ids=["own", "given"])  # fmt: skip
def test_cert_manager_replaces_the_operators_certificate(issuer: list[str]) -> None:
    docs = rendered("--set", "webhook.certManager.enabled=true", *issuer)
    (certificate,) = [d for d in docs if d["kind"] == "Certificate"]
    assert certificate["spec"]["secretName"] == "mp-model-poller-operator-webhook-tls"
    assert "mp-model-poller-operator-webhook.ops.svc" in certificate["spec"]["dnsNames"]
    assert ("Issuer" in kinds(docs)) == (not issuer)
    (config,) = [d for d in docs if d["kind"] == "MutatingWebhookConfiguration"]
    assert config["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "ops/mp-model-poller-operator-webhook"
    }
    settings = env(docs)
    assert settings["MODEL_POLLER_OPERATOR_WEBHOOK_CERT_DIR"] == "/etc/model-poller/webhook-tls"
    assert "MODEL_POLLER_OPERATOR_WEBHOOK_SECRET" not in settings
    # The operator then touches neither the Secret nor the configuration.
    assert "Secret" not in kinds(docs) and "Role" not in kinds(docs)
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    assert all("mutatingwebhookconfigurations" not in rule["resources"] for rule in cluster_role["rules"])
