"""A real Kubernetes control plane for tests: etcd + a secured kube-apiserver on loopback.

The same approach as controller-runtime's envtest. There is NO kubelet, scheduler or
controller-manager by default: objects are stored and validated (admission, CEL, RBAC, PodSecurity,
subresources, server-side apply and watches are all real), but Deployments never create
ReplicaSets or Pods, and no token controller runs (use the TokenRequest API). A test that
needs a pod creates it from the rendered template, or opts in: ``start_garbage_collector()``
(cascading deletion), ``start_controllers()`` (Deployment and ReplicaSet controllers too, so
Pods are created from the template) with ``services.kubelet.Kubelet`` to run those Pods as
local processes. ``stop_apiserver()``/``start_apiserver()`` make an API server outage.

Admin access is a static token (member of system:masters); service-account tokens are
signed with a generated key, so ServiceAccounts, TokenRequest and RBAC work as in a cluster.
An audit log of every write (level Metadata) lets tests count API writes.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import secrets
import ssl
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from local_services.binaries import binary
from local_services.process import Service, free_port, port_open

log = logging.getLogger("services.kube")

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {"level": "None"},
    ],
}


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def _write_serving_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a loopback serving certificate signed by it: (ca.crt, tls.crt, tls.key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "model-poller-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("kubernetes.default.svc"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.crt", directory / "tls.crt", directory / "tls.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem_key(key))
    return paths


@dataclass
class KubeControlPlane:
    workdir: Path
    url: str = ""
    token: str = ""
    ca_file: Path = Path()
    kubeconfig: Path = Path()
    audit_log: Path = Path()
    _services: list[Service] = field(default_factory=list)

    def start(self) -> KubeControlPlane:
        self.workdir.mkdir(parents=True, exist_ok=True)
        etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
        etcd = Service(
            "etcd",
            [
                str(binary("etcd")),
                "--data-dir",
                str(self.workdir / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",  # test data only; keeps the suite fast on slow disks
                "--log-level",
                "warn",
            ],
            self.workdir / "etcd.log",
        )
        self._services.append(etcd)
        etcd.wait_until(lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health"), 60)

        self.ca_file, tls_crt, tls_key = _write_serving_pki(self.workdir)
        sa_key = self.workdir / "sa.key"
        sa_key.write_bytes(_pem_key(_key()))
        self.token = secrets.token_hex(16)
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(f'{self.token},admin,admin-uid,"system:masters"\n')
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self.audit_log = self.workdir / "audit.log"
        apiserver = Service(
            "kube-apiserver",
            [
                str(binary("kube-apiserver")),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--tls-cert-file={tls_crt}",
                f"--tls-private-key-file={tls_key}",
                f"--token-auth-file={tokens}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--authorization-mode=RBAC",
                "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,PodSecurity,"
                "DefaultStorageClass,ResourceQuota,ValidatingAdmissionPolicy",
                "--anonymous-auth=false",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
                f"--cert-dir={self.workdir / 'certs'}",
                "--v=1",
            ],
            self.workdir / "kube-apiserver.log",
        )
        self._services.append(apiserver)
        self.url = f"https://127.0.0.1:{api_port}"
        apiserver.wait_until(self._ready, 120)
        self.kubeconfig = self.workdir / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump(self.kubeconfig_for("admin", self.token)))
        log.info("kube-apiserver serving at %s (kubeconfig %s)", self.url, self.kubeconfig)
        return self

    def kubeconfig_for(self, user: str, token: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
            "current-context": "test",
        }

    def _ready(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        req = urllib.request.Request(f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
            return bool(resp.status == 200)

    def api_client(self, token: str | None = None) -> Any:
        """A kubernetes.client.ApiClient as admin, or as the holder of ``token``."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        cfg.ssl_ca_cert = str(self.ca_file)
        cfg.api_key = {"authorization": token or self.token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(cfg)

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (kubectl, kopf, the poller) talking to this server."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def start_garbage_collector(self) -> Service:
        """kube-controller-manager running only its garbage collector, for cascade tests.

        Not part of the plane by default (see the module docstring); the caller stops it.
        """
        return self.start_controllers(("garbagecollector",))

    def start_controllers(
        self, controllers: Sequence[str] = ("deployment", "replicaset", "garbagecollector")
    ) -> Service:
        """The real kube-controller-manager running only ``controllers``; the caller stops it.

        With the default set, Deployments get ReplicaSets, ReplicaSets create Pods from the
        template through the API, and the Deployment's status (readyReplicas, ...) is computed
        from the pods' Ready conditions, as in a cluster. Nothing runs those pods: see
        ``services.kubelet.Kubelet``. The controllers act as admin (no per-controller
        ServiceAccounts: no token controller runs here).
        """
        port = free_port()
        kubeconfig = str(self.kubeconfig)
        service = Service(
            f"kube-controller-manager ({','.join(controllers)})",
            [
                str(binary("kube-controller-manager")),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--controllers={','.join(controllers)}",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                "--v=1",
            ],
            self.workdir / "kube-controller-manager.log",
        )
        service.wait_until(lambda: _healthz_ok(port, self.token), 60)
        return service

    def stop_apiserver(self, grace: float = 2) -> None:
        """Stop kube-apiserver only (an outage drill); etcd and its data stay.

        SIGTERM, then SIGKILL after ``grace`` seconds: it stops listening at once, but with
        clients connected its graceful exit can hang for longer than a drill wants to wait.
        Clients see connection refused until ``start_apiserver()``.
        """
        apiserver = self._apiserver()
        if apiserver.proc.poll() is None:
            apiserver.stop(timeout=grace)
            log.info("kube-apiserver stopped (outage drill); etcd keeps running")

    def start_apiserver(self, timeout: float = 120) -> None:
        """Start kube-apiserver again after ``stop_apiserver()``: same port, flags, keys and etcd."""
        old = self._apiserver()
        if old.proc.poll() is None:
            raise RuntimeError("kube-apiserver is already running; call stop_apiserver() first")
        # The argv is the one start() built (Popen keeps it): same port, certificates,
        # service-account keys and token file, so existing tokens and kubeconfigs stay valid.
        args = old.proc.args
        argv = [str(arg) for arg in args] if isinstance(args, (list, tuple)) else [str(args)]
        apiserver = Service(old.name, argv, old.log_path)
        self._services[self._services.index(old)] = apiserver
        apiserver.wait_until(self._ready, timeout)

    def _apiserver(self) -> Service:
        for service in self._services:
            if service.name == "kube-apiserver":
                return service
        raise RuntimeError("kube-apiserver was never started: call start() first")

    def stop(self) -> None:
        for service in reversed(self._services):
            service.stop()
        self._services.clear()


def _healthz_ok(port: int, token: str) -> bool:
    # The controller-manager serves a self-signed certificate of its own.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(f"https://127.0.0.1:{port}/healthz", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
        return bool(resp.status == 200)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return bool(resp.status == 200)


__all__ = ["KubeControlPlane", "port_open"]
