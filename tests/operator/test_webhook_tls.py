"""The webhook's certificate, its configuration and its failure mode, on the real API server.

- Replicas share one certificate: the Secret is the source of truth, written once.
- The operator's token reaches that one Secret and may change only the caBundle of its
  MutatingWebhookConfiguration (RBAC by name, plus the chart's admission policy).
- With the webhook stopped, unlabelled pods are admitted at once and labelled pods refused.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from model_poller_operator import certs
from model_poller_operator.apply import Api

from local_services import operator_kit as kit
from local_services import webhook_kit as wk

pytestmark = pytest.mark.kube

HOSTS = ("model-poller-operator-webhook.model-poller-system.svc", "127.0.0.1")


@pytest.fixture(scope="module")
def operator_token(kube: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The chart's identity and webhook objects (no operator running)."""
    wk.install(kube, tmp_path_factory.mktemp("tls"), kit.free_port())
    return kit.service_account_token(kube, kit.OPERATOR_NAMESPACE, kit.OPERATOR_SA)


def operator_api(kube: Any, token: str) -> Api:
    return Api(kube.api_client(token))


def secret_writes(kube: Any, since: int) -> list[int]:
    """Response codes of the operator's writes to the certificate Secret."""
    return [
        int(w.get("responseStatus", {}).get("code", 0))
        for w in kit.audit_writes(kube.audit_log, since)
        if (w.get("objectRef") or {}).get("resource") == "secrets"
    ]


def test_replicas_racing_at_first_start_share_one_certificate(kube: Any, operator_token: str) -> None:
    wk.reset_secret(kube)
    since = kit.audit_offset(kube.audit_log)
    stores = [
        certs.SecretStore(operator_api(kube, operator_token), kit.OPERATOR_NAMESPACE, wk.SECRET) for _ in range(4)
    ]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        bundles = list(pool.map(lambda store: store.ensure(HOSTS), stores))
    assert len({b.tls_crt for b in bundles}) == 1, "every replica serves the same certificate"
    assert wk.secret_data(kube)["tls.crt"] == bundles[0].tls_crt
    codes = secret_writes(kube, since)
    assert codes.count(200) == 1 and set(codes) <= {200, 409}, codes
    # A later start reads it and writes nothing.
    since = kit.audit_offset(kube.audit_log)
    assert stores[0].ensure(HOSTS) == bundles[0]
    assert secret_writes(kube, since) == []


def test_an_expiring_certificate_is_renewed_under_the_same_ca(kube: Any, operator_token: str) -> None:
    store = certs.SecretStore(operator_api(kube, operator_token), kit.OPERATOR_NAMESPACE, wk.SECRET)
    current = store.ensure(HOSTS)
    later = dt.datetime.now(dt.UTC) + certs.CERT_VALIDITY - dt.timedelta(days=10)
    renewed = store.ensure(HOSTS, now=later)
    assert renewed.tls_crt != current.tls_crt
    assert renewed.ca_crt == current.ca_crt, "the caBundle stays valid"
    # New names (another Service name): a new certificate, same CA.
    assert store.ensure((*HOSTS, "other.svc")).ca_crt == current.ca_crt


def test_the_operator_reaches_only_its_own_secret(kube: Any, operator_token: str) -> None:
    core = client.CoreV1Api(kube.api_client(operator_token))
    core.read_namespaced_secret(wk.SECRET, kit.OPERATOR_NAMESPACE)
    admin = client.CoreV1Api(kube.api_client())
    kit.ignore_conflict(lambda: admin.create_namespaced_secret(
        kit.OPERATOR_NAMESPACE, {"metadata": {"name": "someone-elses"}, "stringData": {"k": "v"}}))  # fmt: skip
    for attempt in (
        lambda: core.read_namespaced_secret("someone-elses", kit.OPERATOR_NAMESPACE),
        lambda: core.list_namespaced_secret(kit.OPERATOR_NAMESPACE),
        lambda: core.list_secret_for_all_namespaces(),
        lambda: core.create_namespaced_secret(kit.OPERATOR_NAMESPACE, {"metadata": {"name": "minted"}}),
        lambda: core.delete_namespaced_secret(wk.SECRET, kit.OPERATOR_NAMESPACE),
    ):
        with pytest.raises(ApiException) as caught:
            attempt()
        assert caught.value.status == 403


def test_without_the_secret_the_message_says_what_to_do(kube: Any, operator_token: str) -> None:
    core = client.CoreV1Api(kube.api_client())
    core.delete_namespaced_secret(wk.SECRET, kit.OPERATOR_NAMESPACE)
    try:
        store = certs.SecretStore(operator_api(kube, operator_token), kit.OPERATOR_NAMESPACE, wk.SECRET)
        with pytest.raises(certs.CertificateUnavailable) as caught:
            store.ensure(HOSTS)
        assert f"cannot create the webhook certificate Secret {kit.OPERATOR_NAMESPACE}/{wk.SECRET}: 403" in str(
            caught.value
        )
        assert "helm upgrade" in str(caught.value)
        # With the right to create (outside the chart), the operator creates it itself.
        created = certs.SecretStore(Api(kube.api_client()), kit.OPERATOR_NAMESPACE, wk.SECRET).ensure(HOSTS)
        assert wk.secret_data(kube)["tls.crt"] == created.tls_crt
    finally:
        kit.ignore_conflict(lambda: core.create_namespaced_secret(kit.OPERATOR_NAMESPACE, wk.manifest("Secret")))


@pytest.mark.parametrize(
    "patch",
    [
        [{"op": "replace", "path": "/webhooks/0/clientConfig/url", "value": "https://attacker.example/mutate"}],
        [{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}],
        [{"op": "remove", "path": "/webhooks/0/objectSelector"}],
        [{"op": "add", "path": "/webhooks/0/rules/0/resources/-", "value": "deployments"}],
    ],
    ids=["url", "failure-policy", "object-selector", "rules"],
)
def test_the_operator_may_change_only_the_caBundle(kube: Any, operator_token: str, patch: list[dict[str, Any]]) -> None:
    admission = client.AdmissionregistrationV1Api(kube.api_client(operator_token))
    with pytest.raises(ApiException) as caught:
        admission.patch_mutating_webhook_configuration(wk.CONFIGURATION, patch)
    assert "may change only the caBundle" in str(caught.value.body), caught.value.body
    bundle = certs.new_bundle(HOSTS, dt.datetime.now(dt.UTC)).ca_bundle
    admission.patch_mutating_webhook_configuration(
        wk.CONFIGURATION, [{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": bundle}]
    )
    assert wk.ca_bundle(kube) == bundle
    # Nor any other configuration (RBAC: this one by name).
    other = client.AdmissionregistrationV1Api(kube.api_client())
    kit.ignore_conflict(lambda: other.create_mutating_webhook_configuration({"metadata": {"name": "someone-elses"}}))
    with pytest.raises(ApiException) as caught:
        admission.patch_mutating_webhook_configuration("someone-elses", {"metadata": {"labels": {"x": "y"}}})
    assert caught.value.status == 403


# --- the webhook stopped ----------------------------------------------------------------------


def test_webhook_stopped_unlabelled_pods_admitted_at_once_labelled_refused(
    kube: Any, operator_token: str, cluster: kit.Cluster, namespace: str, tmp_path: Path
) -> None:
    wk.ensure_default_service_account(kube, namespace)
    with wk.run(kube, tmp_path) as running:
        wk.create_external_md(cluster, namespace, "resnet")
        injected = cluster.core.create_namespaced_pod(namespace, wk.user_pod("before", "resnet"))
        assert [c.name for c in injected.spec.init_containers] == ["poller"]
        running.process.terminate()
        running.process.wait(30)

        took = []
        for i in range(5):
            started = time.monotonic()
            cluster.core.create_namespaced_pod(namespace, wk.user_pod(f"plain-{i}"))
            took.append(time.monotonic() - started)
        assert max(took) < 1.0, f"unlabelled pods waited for the stopped webhook: {took}"

        started = time.monotonic()
        with pytest.raises(ApiException) as caught:
            cluster.core.create_namespaced_pod(namespace, wk.user_pod("after", "resnet"))
        assert f'failed calling webhook "{wk.WEBHOOK_NAME}"' in wk.refusal(caught.value), caught.value.body
        assert time.monotonic() - started < 6, "refused within the configuration's timeoutSeconds"
        with pytest.raises(ApiException):
            cluster.core.read_namespaced_pod("after", namespace)


# --- cert-manager mode: a certificate folder kept by someone else ---------------------------


def test_a_certificate_folder_is_served_and_reloaded_when_it_changes(kube: Any, tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from model_poller_operator.webhook import Webhook
    from model_poller_operator.webhook_settings import WebhookSettings

    folder = tmp_path / "tls"
    folder.mkdir()

    def write(bundle: certs.Bundle) -> None:
        (folder / "tls.key").write_bytes(bundle.tls_key)
        (folder / "tls.crt").write_bytes(bundle.tls_crt)

    def served() -> bytes:
        return x509.load_der_x509_certificate(wk.served_certificate(port)).public_bytes(serialization.Encoding.PEM)

    now = dt.datetime.now(dt.UTC)
    first, second = certs.new_bundle(HOSTS, now), certs.new_bundle(HOSTS, now)
    write(first)
    port = kit.free_port()
    settings = WebhookSettings(port=port, address="127.0.0.1", cert_dir=str(folder), check_interval=0.2)
    hook = Webhook(settings, Api(kube.api_client())).start()
    try:
        assert hook.listening.wait(15), "the webhook never listened"
        assert served() == first.tls_crt
        write(second)  # cert-manager renewed it
        kit.wait_for("the renewed certificate to be served", lambda: served() == second.tls_crt, timeout=10)
    finally:
        hook.stop()


def test_webhook_settings_name_the_variable_that_is_wrong() -> None:
    from model_poller_operator.webhook_settings import WebhookSettings

    assert not WebhookSettings.from_env({}).enabled
    prefix = "MODEL_POLLER_OPERATOR_WEBHOOK_"
    with pytest.raises(ValueError, match=f"{prefix}SECRET.*{prefix}CERT_DIR"):
        WebhookSettings.from_env({prefix + "PORT": "9443"})
    with pytest.raises(ValueError, match=f"{prefix}SECRET='x' must be NAMESPACE/NAME"):
        WebhookSettings.from_env({prefix + "PORT": "9443", prefix + "SECRET": "x", prefix + "HOSTS": "a"})
    with pytest.raises(ValueError, match=f"{prefix}HOSTS"):
        WebhookSettings.from_env({prefix + "PORT": "9443", prefix + "SECRET": "ns/x"})
    with pytest.raises(ValueError, match=prefix):
        WebhookSettings.from_env({prefix + "PORT": "many"})
