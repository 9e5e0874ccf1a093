"""Pure renders: a ModelDeployment's spec -> the plain dicts of its children.

No API calls here. Every function is a function of an :class:`Owner` and a typed
:class:`~model_poller_api.models.ModelDeploymentSpec`, so the output is golden-file tested
(``tests/operator/test_render.py``) and the edge (``apply.py``) only compares and applies.

The version policy (``spec.versions``) is not rendered: the poller reads it from its
ModelDeployment at run time, so a policy change (a rollback) never touches the pod
template and never restarts pods. ``spec.storage.sizeLimit`` reaches the poller as
``--storage-limit``, from which it bounds each version under the live policy.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from kubernetes.utils import parse_quantity

from model_poller_api import models, names

Obj = dict[str, Any]

# Child names. The Deployment and the Service carry the ModelDeployment's name; the poller's
# identity gets a suffix so it never collides with a user's own ServiceAccount of that name.
POLLER_SUFFIX: Final = "-poller"

# Containers and volumes of the pod.
SERVING_CONTAINER: Final = "serving"
POLLER_CONTAINER: Final = "poller"
MODELS_VOLUME: Final = "models"
TMP_VOLUME: Final = "tmp"
TOKEN_VOLUME: Final = "kube-api-access"
CREDENTIALS_VOLUME: Final = "gcs-credentials"

# The credentials secret holds a service-account key under this key (see the CRD's text).
CREDENTIALS_KEY: Final = "key.json"
CREDENTIALS_DIR: Final = "/var/run/secrets/model-poller/gcs"
TOKEN_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_EXPIRATION_SECONDS: Final = 3607

# A fixed non-root identity: the stock tensorflow/serving image has no USER, so
# runAsNonRoot needs a numeric uid; 65532 is the conventional "nonroot" uid.
RUN_AS_USER: Final = 65532
TMP_SIZE_LIMIT: Final = "256Mi"

SERVING_BINARY: Final = "/usr/bin/tensorflow_model_server"
SERVING_URL: Final = f"http://localhost:{names.SERVING_REST_PORT}"
POLLER_PORT_NAME: Final = "poller-http"

# The poller's resources when spec.poller.resources is not given: it is I/O bound, and its
# peak stays under 300 MiB for any upload, so whatever slips past its own limits is
# OOM-killed in the poller's container instead of pressing on the node's other pods.
DEFAULT_POLLER_RESOURCES: Final[Obj] = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "384Mi"}}


# A Service name (and hence a ModelDeployment name) must be an RFC 1035 label.
_DNS1035_LABEL = re.compile(names.NAME_PATTERN)
MAX_NAME_LENGTH: Final = names.MAX_NAME_LENGTH


@dataclass(frozen=True)
class PollerVolumes:
    """The names of the volumes the poller container mounts.

    The operator's own pods use the defaults; the admission webhook (``inject.py``) renders
    the same container into a user's pod under names that do not collide with the pod's
    own volumes, or with the name of a volume the pod already mounts at the models path
    (``models_sub_path``: that mount's subPath, so both containers see the same folder).
    """

    models: str = MODELS_VOLUME
    tmp: str = TMP_VOLUME
    token: str = TOKEN_VOLUME
    credentials: str = CREDENTIALS_VOLUME
    models_sub_path: str | None = None


OPERATOR_VOLUMES: Final = PollerVolumes()


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment that owns the children (for names and ownerReferences)."""

    name: str
    namespace: str
    uid: str


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name the children, or None.

    The CRD rejects such names (a CEL rule on metadata.name); this catches objects stored
    before that rule existed."""
    if len(name) > MAX_NAME_LENGTH:
        return f"metadata.name {name!r} is longer than {MAX_NAME_LENGTH} characters (it names a Service and labels)"
    if not _DNS1035_LABEL.match(name):
        return (
            f"metadata.name {name!r} must be a DNS-1035 label (lower case letters, digits and '-', "
            "starting with a letter) because it names the model's Service"
        )
    return None


def poller_identity(owner: Owner) -> str:
    """Name of the poller's ServiceAccount, Role and RoleBinding."""
    return owner.name + POLLER_SUFFIX


def selector_labels(owner: Owner) -> dict[str, str]:
    return {names.LABEL_NAME: names.APP_NAME, names.LABEL_INSTANCE: owner.name}


def selector_string(owner: Owner) -> str:
    """The label selector of the pods, as the scale subresource wants it (status.selector)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(owner).items()))


def pod_selector(owner: Owner, spec: models.ModelDeploymentSpec) -> str:
    """The label selector of the ModelDeployment's pods (status.selector): the operator's
    own labels, or in external mode the label the user puts on the pods to inject."""
    if spec.external:
        return f"{names.LABEL_MODEL_DEPLOYMENT}={owner.name}"
    return selector_string(owner)


def labels(owner: Owner, component: str) -> dict[str, str]:
    return {
        **selector_labels(owner),
        names.LABEL_MANAGED_BY: names.MANAGER,
        names.LABEL_COMPONENT: component,
    }


def owner_reference(owner: Owner) -> Obj:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(owner: Owner, name: str, component: str) -> Obj:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, component),
        "ownerReferences": [owner_reference(owner)],
    }


def restricted_security_context() -> Obj:
    """The container-level half of the PodSecurity "restricted" profile."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _plain(value: Any) -> Any:
    """A deep copy made of plain dicts and lists (the spec may hold read-only views)."""
    return json.loads(json.dumps(value))


def _env(name: str, value: str) -> Obj:
    return {"name": name, "value": value}


def _field_env(name: str, path: str) -> Obj:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


def model_dir(spec: models.ModelDeploymentSpec) -> str:
    return f"{names.MODELS_MOUNT}/{spec.model_name}"


def storage_limit(spec: models.ModelDeploymentSpec) -> int | None:
    """``spec.storage.sizeLimit`` in bytes (``--storage-limit``), or None without one.

    An emptyDir over its sizeLimit gets the whole pod evicted, so the poller must refuse a
    version too large before that. It holds the versions the policy keeps, the one a new
    version replaces and one staging copy, so it refuses a version over
    ``sizeLimit // (versions kept + 2)``: computed by the poller, because the policy
    changes live without touching the pod template.
    """
    if spec.storage.size_limit is None:
        return None
    try:
        limit = Decimal(parse_quantity(spec.storage.size_limit))  # type: ignore[no-untyped-call]
    except (ValueError, TypeError, InvalidOperation):
        raise ValueError(f"spec.storage.sizeLimit {spec.storage.size_limit!r} is not a quantity (e.g. 20Gi)") from None
    return int(limit)


def poller_env(owner: Owner, spec: models.ModelDeploymentSpec) -> list[Obj]:
    """The poller's flags as MODEL_POLLER_* variables (never the version policy)."""
    env = [
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_NAMESPACE", "metadata.namespace"),
        _env(names.env_name("--source"), spec.source.uri),
        _env(names.env_name("--model-dir"), model_dir(spec)),
        _env(names.env_name("--model-name"), spec.model_name),
        _env(names.env_name("--poll-interval"), str(models.parse_duration(spec.source.poll_interval))),
    ]
    if spec.source.pubsub is not None and spec.source.pubsub.topic:
        env.append(_env(names.env_name("--topic"), spec.source.pubsub.topic))
    if spec.source.pubsub is not None and spec.source.pubsub.subscription:
        env.append(_env(names.env_name("--subscription"), spec.source.pubsub.subscription))
    env += [
        _env(names.env_name("--report-to"), f"{owner.namespace}/{owner.name}"),
        _env(names.env_name("--serving-url"), SERVING_URL),
        _env(names.env_name("--http-port"), str(names.POLLER_HTTP_PORT)),
    ]
    limit = storage_limit(spec)
    if limit is not None:
        env.append(_env(names.env_name("--storage-limit"), str(limit)))
    if spec.source.credentials_secret:
        env.append(_env("GOOGLE_APPLICATION_CREDENTIALS", f"{CREDENTIALS_DIR}/{CREDENTIALS_KEY}"))
    return env


def _http_probe(path: str, *, period: int, failures: int, timeout: int = 2) -> Obj:
    return {
        "httpGet": {"path": path, "port": names.POLLER_HTTP_PORT},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _tcp_probe(port: int, *, period: int, failures: int) -> Obj:
    return {"tcpSocket": {"port": port}, "periodSeconds": period, "failureThreshold": failures}


def poller_container(
    owner: Owner, spec: models.ModelDeploymentSpec, volumes: PollerVolumes = OPERATOR_VOLUMES
) -> Obj:
    """The poller as a native sidecar: the operator's Deployment and the admission webhook
    both render it here, so an injected poller is the same container (env, probes,
    security context, token mount) as in the pods the operator runs itself."""
    models_mount: Obj = {"name": volumes.models, "mountPath": names.MODELS_MOUNT}
    if volumes.models_sub_path:
        models_mount["subPath"] = volumes.models_sub_path
    mounts: list[Obj] = [
        models_mount,
        {"name": volumes.tmp, "mountPath": "/tmp", "subPath": POLLER_CONTAINER},
        {"name": volumes.token, "mountPath": TOKEN_DIR, "readOnly": True},
    ]
    if spec.source.credentials_secret:
        mounts.append({"name": volumes.credentials, "mountPath": CREDENTIALS_DIR, "readOnly": True})
    return {
        "name": POLLER_CONTAINER,
        "image": spec.poller.image,
        # A native sidecar: started before, and kept running alongside, TF Serving.
        "restartPolicy": "Always",
        "env": poller_env(owner, spec),
        "ports": [{"name": POLLER_PORT_NAME, "containerPort": names.POLLER_HTTP_PORT, "protocol": "TCP"}],
        # TF Serving starts only once the initial sync is done (/readyz: every version the
        # policy wants that is valid at the source is on disk, or the source holds none yet):
        # up to 2 s x 1800 = one hour for a first download of a large model.
        "startupProbe": _http_probe(names.PATH_READYZ, period=2, failures=1800),
        "livenessProbe": _http_probe(names.PATH_HEALTHZ, period=10, failures=3),
        "resources": _plain(spec.poller.resources) or copy.deepcopy(DEFAULT_POLLER_RESOURCES),
        "securityContext": restricted_security_context(),
        "volumeMounts": mounts,
    }


def serving_readiness_probe() -> Obj:
    """The serving container's readiness: the poller's /serving-ready (see serving_container)."""
    return _http_probe(names.PATH_SERVING_READY, period=2, failures=2)


def serving_container(spec: models.ModelDeploymentSpec) -> Obj:
    container: Obj = {
        "name": SERVING_CONTAINER,
        "image": spec.serving.image,
        # The stock image's entrypoint adds its own --model_name/--model_base_path from
        # environment variables: call the server directly so ours are the only ones.
        "command": [SERVING_BINARY],
        "args": [
            f"--port={names.SERVING_GRPC_PORT}",
            f"--rest_api_port={names.SERVING_REST_PORT}",
            f"--model_name={spec.model_name}",
            f"--model_base_path={model_dir(spec)}",
            "--file_system_poll_wait_seconds=1",
            # The poller renames only complete, checksummed versions into the base path, so a
            # load failure is the model's own and retrying it (TF Serving's default: 5 times,
            # a minute apart) only delays the LoadFailed report; the old version serves meanwhile.
            "--max_num_load_retries=0",
        ],
        "ports": [
            {"name": "grpc", "containerPort": names.SERVING_GRPC_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": names.SERVING_REST_PORT, "protocol": "TCP"},
        ],
        # TF Serving's own GET /v1/models/<name> answers 200 in every state; the poller's
        # /serving-ready (same network namespace) answers 200 while TF Serving reports a
        # version inside the policy AVAILABLE, or the one it keeps serving during a
        # transition (rollout, rollback, failed load): never every replica unready at once.
        "readinessProbe": serving_readiness_probe(),
        # Loading a large model can take minutes before the REST port opens.
        "startupProbe": _tcp_probe(names.SERVING_REST_PORT, period=5, failures=360),
        "livenessProbe": _tcp_probe(names.SERVING_REST_PORT, period=10, failures=3),
        "securityContext": restricted_security_context(),
        "volumeMounts": [
            {"name": MODELS_VOLUME, "mountPath": names.MODELS_MOUNT, "readOnly": True},
            {"name": TMP_VOLUME, "mountPath": "/tmp", "subPath": SERVING_CONTAINER},
        ],
    }
    if spec.serving.resources:
        container["resources"] = _plain(spec.serving.resources)
    return container


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


def volumes(spec: models.ModelDeploymentSpec) -> list[Obj]:
    result: list[Obj] = [models_volume(spec), tmp_volume(), token_volume()]
    credentials = credentials_volume(spec)
    if credentials is not None:
        result.append(credentials)
    return result


def pod_template(owner: Owner, spec: models.ModelDeploymentSpec) -> Obj:
    return {
        "metadata": {
            "labels": labels(owner, SERVING_CONTAINER),
            "annotations": {"kubectl.kubernetes.io/default-container": SERVING_CONTAINER},
        },
        "spec": {
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
            "volumes": volumes(spec),
        },
    }


def render_deployment(owner: Owner, spec: models.ModelDeploymentSpec) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, owner.name, SERVING_CONTAINER),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(owner)},
            # A new pod must be ready (serving a model) before an old one goes away.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": pod_template(owner, spec),
        },
    }


def render_service(owner: Owner, spec: models.ModelDeploymentSpec) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, owner.name, SERVING_CONTAINER),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner),
            "ports": [
                {
                    "name": "grpc",
                    "port": names.SERVING_GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                },
                {"name": "http", "port": names.SERVING_REST_PORT, "targetPort": "http", "protocol": "TCP"},
            ],
        },
    }


def render_service_account(owner: Owner, spec: models.ModelDeploymentSpec) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(owner, poller_identity(owner), POLLER_CONTAINER),
        # The token is projected into the poller container only (see volumes()).
        "automountServiceAccountToken": False,
    }


def render_role(owner: Owner, spec: models.ModelDeploymentSpec) -> Obj:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(owner, poller_identity(owner), POLLER_CONTAINER),
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
        "metadata": _metadata(owner, poller_identity(owner), POLLER_CONTAINER),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": poller_identity(owner)},
        "subjects": [{"kind": "ServiceAccount", "name": poller_identity(owner), "namespace": owner.namespace}],
    }
