"""A ModelDeployment and its poller's own identity on the real API server, without an operator.

The poller's ServiceAccount, Role and RoleBinding are exactly what the operator renders
(``render_service_account``/``render_role``/``render_role_binding``), minus the
ownerReferences: nothing here garbage-collects children, and a RoleBinding deleted by a
test must stay deleted. The poller gets a TokenRequest token for that ServiceAccount in a
kubeconfig of its own: never the admin token, so RBAC is what a pod would meet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client
from model_poller_api import models, names
from model_poller_operator.render import ownership, rbac

from local_services.kube import KubeControlPlane

TOKEN_SECONDS = 3600


def custom(kube: KubeControlPlane) -> client.CustomObjectsApi:
    """The admin's view of ModelDeployments."""
    return client.CustomObjectsApi(kube.api_client())


def create_md(kube: KubeControlPlane, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {"apiVersion": names.API_VERSION, "kind": names.KIND, "metadata": {"name": name}, "spec": spec}
    created = custom(kube).create_namespaced_custom_object(names.GROUP, names.VERSION, namespace, names.PLURAL, body)
    return cast(dict[str, Any], created)


def get_md(kube: KubeControlPlane, namespace: str, name: str) -> dict[str, Any]:
    obj = custom(kube).get_namespaced_custom_object(names.GROUP, names.VERSION, namespace, names.PLURAL, name)
    return cast(dict[str, Any], obj)


def patch_md(kube: KubeControlPlane, namespace: str, name: str, body: dict[str, Any], *, status: bool = False) -> None:
    """A JSON merge patch as admin (``status``: through the status subresource, as the operator writes)."""
    api = custom(kube)
    call = api.patch_namespaced_custom_object_status if status else api.patch_namespaced_custom_object
    call(names.GROUP, names.VERSION, namespace, names.PLURAL, name, body, _content_type="application/merge-patch+json")


def delete_md(kube: KubeControlPlane, namespace: str, name: str) -> None:
    custom(kube).delete_namespaced_custom_object(names.GROUP, names.VERSION, namespace, names.PLURAL, name)


def pollers(kube: KubeControlPlane, namespace: str, name: str) -> dict[str, dict[str, Any]]:
    """``status.pollers`` of the ModelDeployment as stored."""
    entries: dict[str, dict[str, Any]] = (get_md(kube, namespace, name).get("status") or {}).get(
        models.STATUS_POLLERS
    ) or {}
    return entries


def _owner(md: dict[str, Any]) -> ownership.Owner:
    meta = md["metadata"]
    return ownership.Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


def rendered_identity(md: dict[str, Any]) -> list[dict[str, Any]]:
    """The poller's ServiceAccount, Role and RoleBinding as the operator renders them,
    without ownerReferences (no operator or garbage collector runs in these tests)."""
    owner = _owner(md)
    spec = models.ModelDeploymentSpec.from_object(owner.name, md["spec"])
    objects = []
    for fn in (rbac.render_service_account, rbac.render_role, rbac.render_role_binding):
        obj: dict[str, Any] = json.loads(json.dumps(fn(owner, spec)))
        obj["metadata"].pop("ownerReferences", None)
        objects.append(obj)
    return objects


def identity_name(md: dict[str, Any]) -> str:
    return rbac.poller_identity(_owner(md))


def poller_user(md: dict[str, Any]) -> str:
    """The username the API server (and its audit log) gives the poller's token."""
    return f"system:serviceaccount:{md['metadata']['namespace']}:{identity_name(md)}"


def apply_identity(kube: KubeControlPlane, md: dict[str, Any]) -> None:
    namespace = md["metadata"]["namespace"]
    core = client.CoreV1Api(kube.api_client())
    rbac_api = client.RbacAuthorizationV1Api(kube.api_client())
    for obj in rendered_identity(md):
        body = cast(Any, obj)  # a plain dict is sent as it is
        if obj["kind"] == "ServiceAccount":
            core.create_namespaced_service_account(namespace, body)
        elif obj["kind"] == "Role":
            rbac_api.create_namespaced_role(namespace, body)
        elif obj["kind"] == "RoleBinding":
            rbac_api.create_namespaced_role_binding(namespace, body)
        else:
            raise AssertionError(f"unexpected kind {obj['kind']}")


def create_role_binding(kube: KubeControlPlane, md: dict[str, Any]) -> None:
    (binding,) = [obj for obj in rendered_identity(md) if obj["kind"] == "RoleBinding"]
    client.RbacAuthorizationV1Api(kube.api_client()).create_namespaced_role_binding(
        md["metadata"]["namespace"], cast(Any, binding)
    )


def delete_role_binding(kube: KubeControlPlane, md: dict[str, Any]) -> None:
    client.RbacAuthorizationV1Api(kube.api_client()).delete_namespaced_role_binding(
        identity_name(md), md["metadata"]["namespace"]
    )


def poller_kubeconfig(kube: KubeControlPlane, md: dict[str, Any], path: Path) -> Path:
    """A kubeconfig holding a TokenRequest token of the poller's ServiceAccount."""
    namespace = md["metadata"]["namespace"]
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=TOKEN_SECONDS)
    )
    answer = client.CoreV1Api(kube.api_client()).create_namespaced_service_account_token(
        identity_name(md), namespace, request
    )
    assert answer.status is not None and answer.status.token
    path.write_text(yaml.safe_dump(kube.kubeconfig_for(poller_user(md), str(answer.status.token))))
    path.chmod(0o600)
    return path


def audit_status_patches(audit_log: Path, user: str, namespace: str, name: str, since: int = 0) -> list[dict[str, Any]]:
    """PATCH requests by ``user`` to ``modeldeployments/<name>/status`` in ``namespace``,
    answered (any code), logged after byte offset ``since`` of the audit log."""
    with open(audit_log, "rb") as fh:
        fh.seek(since)
        data = fh.read()
    found = []
    for line in data.splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        ref = entry.get("objectRef") or {}
        if (
            entry.get("stage") == "ResponseComplete"
            and entry.get("verb") == "patch"
            and (entry.get("user") or {}).get("username") == user
            and ref.get("resource") == names.PLURAL
            and ref.get("subresource") == "status"
            and ref.get("namespace") == namespace
            and ref.get("name") == name
        ):
            found.append(entry)
    return found


def audit_size(audit_log: Path) -> int:
    return audit_log.stat().st_size if audit_log.exists() else 0
