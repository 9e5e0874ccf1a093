"""The poller's identity: its ServiceAccount, and the Role and RoleBinding that let it read
its ModelDeployment and write its own status entry."""

from __future__ import annotations

from typing import Final

from model_poller_api import models, names

from model_poller_operator.render import Obj
from model_poller_operator.render.ownership import Owner, child_metadata
from model_poller_operator.render.pod_containers import POLLER_CONTAINER

# Child names. The Deployment and the Service carry the ModelDeployment's name; the poller's
# identity gets a suffix so it never collides with a user's own ServiceAccount of that name.
POLLER_SUFFIX: Final = "-poller"


def poller_identity(owner: Owner) -> str:
    """Name of the poller's ServiceAccount, Role and RoleBinding."""
    return owner.name + POLLER_SUFFIX


def render_service_account(owner: Owner, spec: models.ModelDeploymentSpec) -> Obj:
    metadata = child_metadata(owner, poller_identity(owner), POLLER_CONTAINER)
    if spec.service_account_annotations:
        # e.g. iam.gke.io/gcp-service-account: GKE Workload Identity's Google identity.
        metadata["annotations"] = dict(spec.service_account_annotations)
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata,
        # The token is projected into the poller container only (see deployment.volumes()).
        "automountServiceAccountToken": False,
    }


def render_role(owner: Owner, spec: models.ModelDeploymentSpec) -> Obj:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": child_metadata(owner, poller_identity(owner), POLLER_CONTAINER),
        "rules": [
            # Read its own ModelDeployment (the version policy); a watch restricted by
            # resourceNames must carry fieldSelector=metadata.name=<name>.
            {
                "apiGroups": [names.GROUP],
                "resources": [names.PLURAL],
                "resourceNames": [owner.name],
                "verbs": ["get", "watch"],
            },
            # Write its own entry under status.pollers.
            {
                "apiGroups": [names.GROUP],
                "resources": [f"{names.PLURAL}/status"],
                "resourceNames": [owner.name],
                "verbs": ["patch"],
            },
        ],
    }


def render_role_binding(owner: Owner, spec: models.ModelDeploymentSpec) -> Obj:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": child_metadata(owner, poller_identity(owner), POLLER_CONTAINER),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": poller_identity(owner)},
        "subjects": [{"kind": "ServiceAccount", "name": poller_identity(owner), "namespace": owner.namespace}],
    }
