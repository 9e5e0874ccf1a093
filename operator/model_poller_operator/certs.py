"""TLS for the admission webhook: a self-signed CA and serving certificate kept in one Secret.

Several operator replicas serve the webhook behind one Service, so they must present
certificates the same CA bundle trusts. The Secret is the source of truth: a replica reads
it at start, and writes it only when it is empty, unusable (other names, expiring) or
absent, with optimistic concurrency (an update guarded by the resourceVersion read, a
create that loses to another replica's create). The loser of a race re-reads and uses the
winner's certificate. The CA is kept with its key, so a serving certificate is renewed
under the same CA and the CA bundle in the webhook configuration does not change.

The chart creates the (empty) Secret, so the operator needs only ``get`` and ``update`` on
that one name (RBAC cannot narrow ``create`` by name); it creates the Secret itself only
when it may (e.g. run outside the chart).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes.client.exceptions import ApiException
from model_poller_api.formats import rfc3339

from model_poller_operator.apply import Api

log = logging.getLogger(__name__)

CA_KEY: Final = "ca.crt"
CA_PRIVATE_KEY: Final = "ca.key"
CERT_KEY: Final = "tls.crt"
PRIVATE_KEY: Final = "tls.key"
CA_VALIDITY: Final = dt.timedelta(days=3650)
CERT_VALIDITY: Final = dt.timedelta(days=365)
# A certificate with less than this left is renewed (at start, or by the periodic check).
RENEW_BEFORE: Final = dt.timedelta(days=30)
# Clocks of the API server and the operator may disagree a little.
BACKDATE: Final = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Bundle:
    """PEM texts: the CA (certificate and key) and the serving certificate and key."""

    ca_crt: bytes
    ca_key: bytes
    tls_crt: bytes
    tls_key: bytes

    def to_secret_data(self) -> dict[str, str]:
        return {
            CA_KEY: base64.b64encode(self.ca_crt).decode(),
            CA_PRIVATE_KEY: base64.b64encode(self.ca_key).decode(),
            CERT_KEY: base64.b64encode(self.tls_crt).decode(),
            PRIVATE_KEY: base64.b64encode(self.tls_key).decode(),
        }

    @classmethod
    def from_secret_data(cls, data: Mapping[str, Any] | None) -> Bundle | None:
        """The bundle a Secret holds, or None when it holds none (or a partial one)."""
        data = data or {}
        try:
            parts = [
                base64.b64decode(str(data[key]), validate=True)
                for key in (CA_KEY, CA_PRIVATE_KEY, CERT_KEY, PRIVATE_KEY)
            ]
        except (KeyError, ValueError):
            return None
        return cls(*parts)

    @property
    def ca_bundle(self) -> str:
        """The caBundle of a webhook's clientConfig (base64 of the CA's PEM)."""
        return base64.b64encode(self.ca_crt).decode()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def new_ca(now: dt.datetime) -> tuple[bytes, bytes]:
    """A self-signed CA: (certificate PEM, key PEM). P-256 keys: fast handshakes."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("model-poller-operator webhook CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def issue(ca_crt: bytes, ca_key: bytes, hosts: Sequence[str], now: dt.datetime) -> tuple[bytes, bytes]:
    """A serving certificate for ``hosts`` (DNS names or IPs) signed by the CA: (cert PEM, key PEM)."""
    ca = x509.load_pem_x509_certificate(ca_crt)
    signer = serialization.load_pem_private_key(ca_key, password=None)
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise ValueError("the webhook CA key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + CERT_VALIDITY, ca.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def new_bundle(hosts: Sequence[str], now: dt.datetime, ca: tuple[bytes, bytes] | None = None) -> Bundle:
    """A serving certificate for ``hosts``, under ``ca`` (PEM cert, key) or a new CA."""
    ca_crt, ca_key = ca or new_ca(now)
    tls_crt, tls_key = issue(ca_crt, ca_key, hosts, now)
    return Bundle(ca_crt=ca_crt, ca_key=ca_key, tls_crt=tls_crt, tls_key=tls_key)


def problem(bundle: Bundle | None, hosts: Sequence[str], now: dt.datetime) -> str | None:
    """Why ``bundle`` cannot serve ``hosts`` until well after ``now``, or None if it can."""
    if bundle is None:
        return "no certificate yet"
    try:
        ca = x509.load_pem_x509_certificate(bundle.ca_crt)
        cert = x509.load_pem_x509_certificate(bundle.tls_crt)
        serialization.load_pem_private_key(bundle.tls_key, password=None)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound) as error:
        return f"unreadable certificate: {error}"
    if cert.issuer != ca.subject:
        return "the serving certificate is not issued by the CA next to it"
    have = {str(n) for n in sans.get_values_for_type(x509.DNSName)}
    have |= {str(n) for n in sans.get_values_for_type(x509.IPAddress)}
    missing = [h for h in hosts if str(_canonical(h)) not in have]
    if missing:
        return f"the certificate does not name {', '.join(missing)}"
    for what, item in (("CA", ca), ("serving certificate", cert)):
        if item.not_valid_after_utc - now < RENEW_BEFORE:
            return f"the {what} expires at {rfc3339(item.not_valid_after_utc)}"
    return None


def _canonical(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def usable_ca(bundle: Bundle | None, now: dt.datetime) -> tuple[bytes, bytes] | None:
    """The bundle's CA, when it can still sign a full-length serving certificate."""
    if bundle is None:
        return None
    try:
        ca = x509.load_pem_x509_certificate(bundle.ca_crt)
        serialization.load_pem_private_key(bundle.ca_key, password=None)
    except ValueError:
        return None
    if ca.not_valid_after_utc - now < CERT_VALIDITY + RENEW_BEFORE:
        return None
    return bundle.ca_crt, bundle.ca_key


# --- the Secret ------------------------------------------------------------------------------


class CertificateUnavailable(Exception):
    """The Secret can be neither read nor written; the message says what to do."""


@dataclass(frozen=True)
class SecretStore:
    """The webhook's certificate Secret ``namespace/name``."""

    api: Api
    namespace: str
    name: str

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets/{self.name}"

    def read(self) -> tuple[Bundle | None, str | None] | None:
        """(bundle or None, resourceVersion), or None when the Secret does not exist."""
        try:
            secret = self.api.request("GET", self.path, timeout=10)
        except ApiException as error:
            if error.status == 404:
                return None
            raise self._unavailable("read", error) from error
        return Bundle.from_secret_data(secret.get("data")), str(secret["metadata"]["resourceVersion"])

    def ensure(self, hosts: Sequence[str], now: dt.datetime | None = None) -> Bundle:
        """The bundle every replica serves with: the Secret's, or a new one written there."""
        for _attempt in range(5):
            when = now or dt.datetime.now(dt.UTC)
            found = self.read()
            current, version = found if found is not None else (None, None)
            why = problem(current, hosts, when)
            if why is None and current is not None:
                return current
            fresh = new_bundle(hosts, when, usable_ca(current, when))
            log.info("webhook certificate in Secret %s/%s: %s; writing a new one", self.namespace, self.name, why)
            if self._write(fresh, version if found is not None else None, exists=found is not None):
                return fresh
            # Another replica wrote first: use what it wrote.
        raise CertificateUnavailable(f"Secret {self.namespace}/{self.name} kept changing while being written")

    def _write(self, bundle: Bundle, version: str | None, *, exists: bool) -> bool:
        """Write ``bundle``; False if another replica wrote meanwhile (409)."""
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "type": "Opaque",
            "data": bundle.to_secret_data(),
        }
        try:
            if exists:
                body["metadata"]["resourceVersion"] = version
                self.api.request("PUT", self.path, body=body, timeout=10)
            else:
                self.api.request("POST", self.path.rsplit("/", 1)[0], body=body, timeout=10)
        except ApiException as error:
            if error.status == 409:
                return False
            raise self._unavailable("write" if exists else "create", error) from error
        return True

    def _unavailable(self, verb: str, error: ApiException) -> CertificateUnavailable:
        hint = ""
        if error.status in (401, 403):
            hint = (
                ": the chart creates this Secret and grants the operator get/update on it by name "
                "(`helm upgrade`, or `kubectl apply -f deploy/manifests/`, puts it back); outside the chart, "
                "create it empty or grant create on Secrets in that namespace"
            )
        return CertificateUnavailable(
            f"cannot {verb} the webhook certificate Secret {self.namespace}/{self.name}: "
            f"{error.status} {error.reason}{hint}"
        )
