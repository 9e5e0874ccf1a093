"""The admission webhook's TLS: its serving certificate (from the Secret every replica
shares, or a folder cert-manager keeps), reloaded when renewed, and the caBundle of the
MutatingWebhookConfiguration kept equal to its CA."""

from __future__ import annotations

import json
import logging
import shutil
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from kubernetes.client.exceptions import ApiException

from model_poller_operator import certs
from model_poller_operator.apply import Api
from model_poller_operator.webhook_settings import WebhookSettings

log = logging.getLogger(__name__)

MWC_PATH: Final = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


@dataclass
class Tls:
    """The server's SSL context and where its certificate comes from (Secret or folder)."""

    settings: WebhookSettings
    api: Api
    context: ssl.SSLContext = field(init=False)
    _loaded: bytes = b""
    _dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="model-poller-webhook-")))

    def __post_init__(self) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2

    def refresh(self) -> bool:
        """Load the current certificate if it changed, then keep the configuration's caBundle;
        True once a certificate is loaded (a caBundle that cannot be set is only logged: the
        server serves meanwhile, and the next check tries again)."""
        cert, key, ca_bundle = self._current()
        if cert != self._loaded:
            self._load(cert, key)
            log.info("webhook serving certificate loaded (%s)", self.settings.secret or self.settings.cert_dir)
        if ca_bundle is not None and self.settings.configuration:
            try:
                patch_ca_bundle(self.api, self.settings.configuration, ca_bundle)
            except ApiException as error:
                log.error(
                    "cannot set the caBundle of MutatingWebhookConfiguration %s (labelled pods are refused until "
                    "it trusts the webhook's CA): %s",
                    self.settings.configuration,
                    api_error(error),
                )
        return True

    def _current(self) -> tuple[bytes, bytes, str | None]:
        if self.settings.cert_dir:
            folder = Path(self.settings.cert_dir)
            return (folder / certs.CERT_KEY).read_bytes(), (folder / certs.PRIVATE_KEY).read_bytes(), None
        namespace, name = self.settings.secret.split("/")
        bundle = certs.SecretStore(self.api, namespace, name).ensure(self.settings.hosts)
        return bundle.tls_crt, bundle.tls_key, bundle.ca_bundle

    def close(self) -> None:
        """Remove the certificate files."""
        shutil.rmtree(self._dir, ignore_errors=True)

    def _load(self, cert: bytes, key: bytes) -> None:
        # ssl loads certificates from files only: a private folder (0700), key file 0600.
        cert_file, key_file = self._dir / certs.CERT_KEY, self._dir / certs.PRIVATE_KEY
        cert_file.write_bytes(cert)
        key_file.touch(mode=0o600)
        key_file.write_bytes(key)
        # New handshakes use the new certificate; open connections keep theirs.
        self.context.load_cert_chain(cert_file, key_file)
        self._loaded = cert


def api_error(error: ApiException) -> str:
    """``403 Forbidden: <the API server's message>``."""
    try:
        message = json.loads(error.body or "{}").get("message") or error.body
    except (ValueError, AttributeError):
        message = error.body
    return f"{error.status} {error.reason}: {message}"


def patch_ca_bundle(api: Api, configuration: str, ca_bundle: str) -> None:
    """Make every webhook of the MutatingWebhookConfiguration trust ``ca_bundle``; writes
    only when one differs (a JSON patch guarded by each webhook's name)."""
    path = f"{MWC_PATH}/{configuration}"
    try:
        current = api.request("GET", path, timeout=10)
    except ApiException as error:
        if error.status == 404:
            log.warning(
                "MutatingWebhookConfiguration %s does not exist: labelled pods are refused until it does "
                "(the chart creates it)",
                configuration,
            )
            return
        raise
    ops: list[dict[str, Any]] = []
    for i, hook in enumerate(current.get("webhooks") or ()):
        if (hook.get("clientConfig") or {}).get("caBundle") != ca_bundle:
            ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": hook["name"]})
            ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": ca_bundle})
    if ops:
        api.request("PATCH", path, body=ops, content_type="application/json-patch+json", timeout=10)
        log.info("caBundle of MutatingWebhookConfiguration %s set to the webhook CA", configuration)
