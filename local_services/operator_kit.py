"""Run the operator and talk to the API: used by the operator and end-to-end tests, the
benchmarks and ``make demo``. No mocks: a real kube-apiserver (local_services/kube.py), the real
operator as a subprocess under its own ServiceAccount with the chart's ClusterRole and
under the chart's ValidatingAdmissionPolicy (so every integration test also proves that
normal reconciles pass the policy).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from model_poller_api import names

from local_services.process import free_port, wait_for

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "deploy" / "manifests" / "model-poller-operator.yaml"
OPERATOR_NAMESPACE = "model-poller-system"
OPERATOR_SA = "model-poller-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})

T = TypeVar("T")


def ignore_conflict(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except ApiException as error:
        if error.status != 409:
            raise


CLUSTER_SCOPED = ("ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


def install_operator_identity(kube: Any, workdir: Path) -> Path:
    """The chart's ServiceAccount, ClusterRole, ClusterRoleBinding and admission policy (from
    deploy/manifests, which is `helm template` of the chart), and a kubeconfig holding that
    ServiceAccount's token. Returns the kubeconfig path once the policy is in force."""
    api = kube.api_client()
    core = client.CoreV1Api(api)
    ignore_conflict(
        lambda: core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=OPERATOR_NAMESPACE)))
    )
    for doc in yaml.safe_load_all(MANIFESTS.read_text()):
        if doc and doc["kind"] == "ServiceAccount":
            ignore_conflict(lambda: core.create_namespaced_service_account(OPERATOR_NAMESPACE, doc))
        elif doc and doc["kind"] in CLUSTER_SCOPED:
            create_cluster_object(kube, doc)
    token = service_account_token(kube, OPERATOR_NAMESPACE, OPERATOR_SA)
    wait_for_policy(kube, token)
    path = workdir / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(kube.kubeconfig_for(OPERATOR_USER, token)))
    return path


def create_cluster_object(kube: Any, doc: dict[str, Any]) -> None:
    """Create one cluster-scoped object of the chart (already there: left as it is)."""
    api = kube.api_client()
    rbac = client.RbacAuthorizationV1Api(api)
    admission = client.AdmissionregistrationV1Api(api)
    create = {
        "ClusterRole": rbac.create_cluster_role,
        "ClusterRoleBinding": rbac.create_cluster_role_binding,
        "ValidatingAdmissionPolicy": admission.create_validating_admission_policy,
        "ValidatingAdmissionPolicyBinding": admission.create_validating_admission_policy_binding,
    }[doc["kind"]]
    ignore_conflict(lambda: create(doc))


def policy_refusal(kube: Any, token: str, namespace: str = "default") -> str | None:
    """The admission policy's refusal of a known-bad request by the holder of ``token`` (an
    unlabelled ServiceAccount, server-side dry run: nothing is stored), or None if allowed."""
    core = client.CoreV1Api(kube.api_client(token))
    try:
        core.create_namespaced_service_account(namespace, {"metadata": {"name": "policy-probe"}}, dry_run="All")
    except ApiException as error:
        if "ValidatingAdmissionPolicy" in str(error.body):
            return str(error.body)
        raise
    return None


def wait_for_policy(kube: Any, token: str, namespace: str = "default") -> None:
    """Policies take effect asynchronously: wait until a known-bad request is refused."""
    wait_for(
        "the ValidatingAdmissionPolicy to be in force",
        lambda: policy_refusal(kube, token, namespace),
        timeout=60,
        interval=0.5,
    )


def service_account_token(kube: Any, namespace: str, name: str, seconds: int = 4 * 3600) -> str:
    core = client.CoreV1Api(kube.api_client())
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds)
    )
    response = core.create_namespaced_service_account_token(name, namespace, request)
    assert response.status is not None
    return str(response.status.token)


@dataclass
class OperatorProcess:
    """The operator running as a subprocess (the console script or ``kopf run``)."""

    process: subprocess.Popen[bytes]
    log_path: Path
    health_url: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.health_url, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def rss_kib(self) -> int:
        """Resident set size of the operator process (VmRSS), in KiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def peak_rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0


@contextlib.contextmanager
def run_operator(
    kubeconfig: Path,
    workdir: Path,
    *,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[OperatorProcess]:
    """Start the operator, wait until its liveness endpoint answers, stop it with SIGTERM."""
    port = free_port()
    health = f"http://127.0.0.1:{port}/healthz"
    argv = command or [str(Path(sys.executable).parent / "model-poller-operator"), "--all-namespaces"]
    argv = [*argv, f"--liveness={health}"]
    log_path = workdir / f"operator-{port}.log"
    full_env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "MODEL_POLLER_OPERATOR_STATUS_INTERVAL": "1",
        "MODEL_POLLER_OPERATOR_POD_EVENTS_INTERVAL": "1",
        "MODEL_POLLER_OPERATOR_RETRY_DELAY": "1",
        **(env or {}),
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    running = OperatorProcess(process=process, log_path=log_path, health_url=health)
    try:
        deadline = time.monotonic() + 60
        while not running.healthy():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"operator did not become healthy; log:\n{running.log()[-5000:]}")
            time.sleep(0.2)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class Cluster:
    """Admin access to the test API server, with ModelDeployment shortcuts."""

    kube: Any
    api: Any = field(init=False)

    def __post_init__(self) -> None:
        self.api = self.kube.api_client()

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def rbac(self) -> client.RbacAuthorizationV1Api:
        return client.RbacAuthorizationV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def create_md(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": names.API_VERSION, "kind": names.KIND, "metadata": {"name": name}, "spec": spec}
        created = self.custom.create_namespaced_custom_object(names.GROUP, names.VERSION, namespace, names.PLURAL, body)
        return cast(dict[str, Any], created)

    def get_md(self, namespace: str, name: str) -> dict[str, Any]:
        md = self.custom.get_namespaced_custom_object(names.GROUP, names.VERSION, namespace, names.PLURAL, name)
        return cast(dict[str, Any], md)

    def patch_md(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        md = self.custom.patch_namespaced_custom_object(
            names.GROUP, names.VERSION, namespace, names.PLURAL, name, patch
        )
        return cast(dict[str, Any], md)

    def observed(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The MD once its status reports its current generation, else None."""
        md = self.get_md(namespace, name)
        status = md.get("status") or {}
        return md if status.get("observedGeneration") == md["metadata"]["generation"] else None

    def wait_observed(self, namespace: str, name: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(f"{namespace}/{name} observedGeneration", lambda: self.observed(namespace, name), timeout)

    def condition(self, namespace: str, name: str, type_: str) -> dict[str, Any]:
        for c in (self.get_md(namespace, name).get("status") or {}).get("conditions") or []:
            if c["type"] == type_:
                return dict(c)
        return {}

    def raw_get(self, path: str, accept: str = "application/json") -> dict[str, Any] | None:
        try:
            response = self.api.call_api(
                *self.api.param_serialize("GET", path, header_params={"Accept": accept}, auth_settings=["BearerToken"])
            )
            response.read()
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        if response.status == 404:
            return None
        data: dict[str, Any] = json.loads(response.data)
        return data

    def child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        paths = {
            "ServiceAccount": f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}",
            "Service": f"/api/v1/namespaces/{namespace}/services/{name}",
            "Deployment": f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
            "Role": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles/{name}",
            "RoleBinding": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings/{name}",
        }
        return self.raw_get(paths[kind])

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        found = self.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
        return [{"type": e.type, "reason": e.reason, "message": e.message} for e in found.items]


def audit_offset(audit_log: Path) -> int:
    return audit_log.stat().st_size if audit_log.exists() else 0


def audit_writes(
    audit_log: Path, since: int = 0, user: str = OPERATOR_USER, end: int | None = None
) -> list[dict[str, Any]]:
    """Write requests (create/update/patch/delete) made by ``user`` between two byte offsets."""
    with open(audit_log, "rb") as fh:
        fh.seek(since)
        data = fh.read() if end is None else fh.read(end - since)
    writes = []
    for line in data.splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        if entry.get("stage") != "ResponseComplete" or entry.get("verb") not in WRITE_VERBS:
            continue
        if entry.get("user", {}).get("username") != user:
            continue
        writes.append(entry)
    return writes


def describe_writes(writes: list[dict[str, Any]]) -> list[str]:
    out = []
    for w in writes:
        ref = w.get("objectRef", {})
        sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
        out.append(f"{w['verb']} {ref.get('resource')}{sub} {ref.get('namespace')}/{ref.get('name')}")
    return out
