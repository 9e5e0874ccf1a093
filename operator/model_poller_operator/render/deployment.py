"""The pod's volumes, the pod template and the Deployment that runs it."""

from __future__ import annotations

from typing import Final

from model_poller_api import models, workload

from model_poller_operator import overrides
from model_poller_operator.render import Obj
from model_poller_operator.render.monitoring import monitoring_annotations, monitoring_volume
from model_poller_operator.render.ownership import Owner, child_metadata, labels, selector_labels
from model_poller_operator.render.pod_containers import (
    CREDENTIALS_VOLUME,
    MODELS_VOLUME,
    SERVING_CONTAINER,
    TMP_VOLUME,
    TOKEN_VOLUME,
    poller_container,
    serving_container,
)
from model_poller_operator.render.rbac import poller_identity

TOKEN_EXPIRATION_SECONDS: Final = 3607

# A fixed non-root identity: the stock tensorflow/serving image has no USER, so
# runAsNonRoot needs a numeric uid; 65532 is the conventional "nonroot" uid.
RUN_AS_USER: Final = 65532
TMP_SIZE_LIMIT: Final = "256Mi"


def models_volume(spec: models.ModelDeploymentSpec, name: str = MODELS_VOLUME) -> Obj:
    """The emptyDir the poller fills and TF Serving reads (spec.storage)."""
    models_dir: Obj = {}
    if spec.storage.medium:
        models_dir["medium"] = spec.storage.medium
    if spec.storage.size_limit is not None:
        models_dir["sizeLimit"] = spec.storage.size_limit
    return {"name": name, "emptyDir": models_dir}


def tmp_volume(name: str = TMP_VOLUME) -> Obj:
    return {"name": name, "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}}


def token_volume(name: str = TOKEN_VOLUME) -> Obj:
    """What automountServiceAccountToken would mount, but for the poller only: TF Serving
    gets no API credentials at all."""
    return {
        "name": name,
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_EXPIRATION_SECONDS}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {
                    "downwardAPI": {
                        "items": [
                            {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
                        ]
                    }
                },
            ],
        },
    }


def credentials_volume(spec: models.ModelDeploymentSpec, name: str = CREDENTIALS_VOLUME) -> Obj | None:
    """spec.source.credentialsSecret as a volume (mounted by the poller only), or None."""
    if not spec.source.credentials_secret:
        return None
    return {"name": name, "secret": {"secretName": spec.source.credentials_secret, "defaultMode": 0o440}}


def volumes(owner: Owner, spec: models.ModelDeploymentSpec) -> list[Obj]:
    """The operator's volumes, then the user's extra ones (spec.podTemplate.spec.volumes)."""
    result: list[Obj] = [models_volume(spec), tmp_volume(), token_volume()]
    credentials = credentials_volume(spec)
    if credentials is not None:
        result.append(credentials)
    if spec.serving.monitoring:
        result.append(monitoring_volume())
    return result + overrides.extra_volumes(spec)


def pod_template(owner: Owner, spec: models.ModelDeploymentSpec) -> Obj:
    """The pods: the operator's fields, with spec.podTemplate's labels, annotations and pod
    fields added (raises InvalidOverride for an override of what the product owns)."""
    overrides.check(spec)
    template = spec.pod_template
    return {
        "metadata": {
            "labels": {**template.labels, **labels(owner, SERVING_CONTAINER)},
            "annotations": {
                **template.annotations,
                workload.DEFAULT_CONTAINER_ANNOTATION: SERVING_CONTAINER,
                **monitoring_annotations(spec),
            },
        },
        "spec": {
            **overrides.pod_fields(spec),
            "serviceAccountName": poller_identity(owner),
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUN_AS_USER,
                "runAsGroup": RUN_AS_USER,
                "fsGroup": RUN_AS_USER,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "initContainers": [poller_container(owner, spec)],
            "containers": [serving_container(spec)],
            "volumes": volumes(owner, spec),
        },
    }


def render_deployment(owner: Owner, spec: models.ModelDeploymentSpec) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(owner, owner.name, SERVING_CONTAINER),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(owner)},
            # A new pod must be ready (serving a model) before an old one goes away.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": pod_template(owner, spec),
        },
    }
