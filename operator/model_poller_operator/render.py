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

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from kubernetes.utils import parse_quantity
from model_poller_api import models, names, workload

from model_poller_operator import overrides

Obj = dict[str, Any]

# Child names. The Deployment and the Service carry the ModelDeployment's name; the poller's
# identity gets a suffix so it never collides with a user's own ServiceAccount of that name.
POLLER_SUFFIX: Final = "-poller"

# Containers and volumes of the pod (model_poller_api.workload lists what the product owns).
SERVING_CONTAINER: Final = workload.SERVING_CONTAINER
POLLER_CONTAINER: Final = workload.POLLER_CONTAINER
MODELS_VOLUME: Final = workload.MODELS_VOLUME
TMP_VOLUME: Final = workload.TMP_VOLUME
TOKEN_VOLUME: Final = workload.TOKEN_VOLUME
CREDENTIALS_VOLUME: Final = workload.CREDENTIALS_VOLUME
MONITORING_VOLUME: Final = workload.MONITORING_VOLUME

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

# The poller's resources under spec.poller.resources (merged by resource name): it is I/O
# bound, and its peak stays under 300 MiB for any upload, so whatever slips past its own
# limits is OOM-killed in the poller's container instead of pressing on the node's other
# pods. The memory limit stays unless the user sets one.
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


def poller_container(owner: Owner, spec: models.ModelDeploymentSpec, volumes: PollerVolumes = OPERATOR_VOLUMES) -> Obj:
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
    override = spec.pod_template.container(POLLER_CONTAINER)
    container: Obj = {
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
        "resources": poller_resources(spec),
        "securityContext": restricted_security_context(),
        "volumeMounts": mounts,
    }
    return overrides.merge_container(container, override)


def poller_resources(spec: models.ModelDeploymentSpec) -> Obj:
    """The defaults, under spec.poller.resources, under the podTemplate's poller override."""
    override = spec.pod_template.container(POLLER_CONTAINER)
    user = overrides.merge_resources(spec.poller.resources, override.resources if override else {})
    return overrides.with_defaults(DEFAULT_POLLER_RESOURCES, user)


def serving_readiness_probe() -> Obj:
    """The serving container's readiness: the poller's /serving-ready (see serving_container)."""
    return _http_probe(names.PATH_SERVING_READY, period=2, failures=2)


def serving_args(spec: models.ModelDeploymentSpec) -> list[str]:
    """TF Serving's flags: the operator's, then the monitoring config, then spec.serving.args
    (the podTemplate's come last, see merge_container). TF Serving takes the last value of a
    flag given twice, so a user's flag overrides one of the operator's tuning flags; the flags
    that wire the pod together are refused (model_poller_api.workload.OWNED_SERVING_FLAGS)."""
    args = [
        f"--port={names.SERVING_GRPC_PORT}",
        f"--rest_api_port={names.SERVING_REST_PORT}",
        f"--model_name={spec.model_name}",
        f"--model_base_path={model_dir(spec)}",
        "--file_system_poll_wait_seconds=1",
        # The poller renames only complete, checksummed versions into the base path, so a
        # load failure is the model's own and retrying it (TF Serving's default: 5 times,
        # a minute apart) only delays the LoadFailed report; the old version serves meanwhile.
        "--max_num_load_retries=0",
    ]
    if spec.serving.monitoring:
        args.append(f"--monitoring_config_file={workload.MONITORING_DIR}/{workload.MONITORING_CONFIG_KEY}")
    return [*args, *spec.serving.args]


def serving_container(spec: models.ModelDeploymentSpec) -> Obj:
    container: Obj = {
        "name": SERVING_CONTAINER,
        "image": spec.serving.image,
        # The stock image's entrypoint adds its own --model_name/--model_base_path from
        # environment variables: call the server directly so ours are the only ones.
        "command": [SERVING_BINARY],
        "args": serving_args(spec),
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
            {"name": TMP_VOLUME, "mountPath": workload.TMP_MOUNT, "subPath": SERVING_CONTAINER},
        ],
    }
    if spec.serving.monitoring:
        container["volumeMounts"].append(
            {"name": MONITORING_VOLUME, "mountPath": workload.MONITORING_DIR, "readOnly": True}
        )
    override = spec.pod_template.container(SERVING_CONTAINER)
    resources = overrides.merge_resources(spec.serving.resources, override.resources if override else {})
    if resources:
        container["resources"] = resources
    return overrides.merge_container(container, override)


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


def monitoring_volume(owner: Owner) -> Obj:
    """TF Serving's monitoring config (spec.serving.monitoring), from its ConfigMap."""
    return {
        "name": MONITORING_VOLUME,
        "configMap": {
            "name": monitoring_config_name(owner),
            "items": [{"key": workload.MONITORING_CONFIG_KEY, "path": workload.MONITORING_CONFIG_KEY}],
        },
    }


def volumes(owner: Owner, spec: models.ModelDeploymentSpec) -> list[Obj]:
    """The operator's volumes, then the user's extra ones (spec.podTemplate.spec.volumes)."""
    result: list[Obj] = [models_volume(spec), tmp_volume(), token_volume()]
    credentials = credentials_volume(spec)
    if credentials is not None:
        result.append(credentials)
    if spec.serving.monitoring:
        result.append(monitoring_volume(owner))
    return result + overrides.extra_volumes(spec)


def pod_template(owner: Owner, spec: models.ModelDeploymentSpec) -> Obj:
    """The pods: the operator's fields, with spec.podTemplate's labels, annotations and pod
    fields added (raises InvalidOverride for an override of what the product owns)."""
    overrides.check(spec)
    template = spec.pod_template
    return {
        "metadata": {
            "labels": {**template.labels, **labels(owner, SERVING_CONTAINER)},
            "annotations": {**template.annotations, workload.DEFAULT_CONTAINER_ANNOTATION: SERVING_CONTAINER},
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
                *_metrics_port(spec),
            ],
        },
    }


def _metrics_port(spec: models.ModelDeploymentSpec) -> list[Obj]:
    """TF Serving serves its Prometheus metrics on the REST port (spec.serving.monitoring):
    a Service port of their own, by name, for Prometheus' service discovery."""
    if not spec.serving.monitoring:
        return []
    return [
        {
            "name": workload.METRICS_PORT_NAME,
            "port": workload.METRICS_SERVICE_PORT,
            "targetPort": "http",
            "protocol": "TCP",
        }
    ]


def render_service_account(owner: Owner, spec: models.ModelDeploymentSpec) -> Obj:
    metadata = _metadata(owner, poller_identity(owner), POLLER_CONTAINER)
    if spec.service_account_annotations:
        # e.g. iam.gke.io/gcp-service-account: GKE Workload Identity's Google identity.
        metadata["annotations"] = dict(spec.service_account_annotations)
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata,
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


def monitoring_config_name(owner: Owner) -> str:
    """Name of the ConfigMap holding TF Serving's monitoring config."""
    return owner.name + workload.MONITORING_SUFFIX


def monitoring_config() -> str:
    """TF Serving's MonitoringConfig (text protobuf): Prometheus metrics on the REST port."""
    return f'prometheus_config {{\n  enable: true,\n  path: "{workload.METRICS_PATH}"\n}}\n'


def render_monitoring_config(owner: Owner, spec: models.ModelDeploymentSpec) -> Obj | None:
    """spec.serving.monitoring: true -> the ConfigMap TF Serving reads its monitoring config
    from (--monitoring_config_file); None (must not exist) otherwise."""
    if spec.external or not spec.serving.monitoring:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, monitoring_config_name(owner), SERVING_CONTAINER),
        "data": {workload.MONITORING_CONFIG_KEY: monitoring_config()},
    }


def render_disruption_budget(owner: Owner, spec: models.ModelDeploymentSpec) -> Obj | None:
    """spec.disruptionBudget -> a PodDisruptionBudget of the pods; None (must not exist)
    without one, and in external mode (the user's workload is theirs to budget)."""
    budget = spec.disruption_budget
    if spec.external or budget is None:
        return None
    pdb_spec: Obj = {"selector": {"matchLabels": selector_labels(owner)}}
    if budget.min_available is not None:
        pdb_spec["minAvailable"] = budget.min_available
    else:
        pdb_spec["maxUnavailable"] = budget.max_unavailable
    # A pod that never became ready (a bad image, a model that does not load) serves nothing:
    # let a node drain evict it instead of waiting on a budget it can never help meet.
    pdb_spec["unhealthyPodEvictionPolicy"] = "AlwaysAllow"
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, owner.name, SERVING_CONTAINER),
        "spec": pdb_spec,
    }


# --- the spec field behind a rendered field ---------------------------------------------------

_POD_PATH: Final = "spec.template.spec."
_METADATA_PATH: Final = "spec.template.metadata."
_INDEXED: Final = re.compile(r"^([A-Za-z]+)(?:\[(\d+)\])?(.*)$", re.DOTALL)


def spec_field(owner: Owner, spec: models.ModelDeploymentSpec, kind: str, field: str) -> str | None:
    """The ModelDeployment spec field behind ``field`` of the rendered ``kind``, as the API
    server names it when it refuses the child (``spec.template.spec.affinity.nodeAffinity``
    -> ``spec.podTemplate.spec.affinity.nodeAffinity``); None for a field the operator
    renders itself. Pod fields the CRD keeps opaque (affinity, topology spread constraints,
    volume sources) are validated only there."""
    if kind != "Deployment":
        return None
    if field.startswith(_METADATA_PATH):
        return "spec.podTemplate.metadata." + field[len(_METADATA_PATH) :]
    match = _INDEXED.match(field[len(_POD_PATH) :]) if field.startswith(_POD_PATH) else None
    if match is None:
        return None
    head, index, rest = match.group(1), match.group(2), match.group(3)
    position = f"[{index}]" if index is not None else ""
    if head in workload.POD_FIELDS:
        return f"spec.podTemplate.spec.{head}{position}{rest}"
    if head == "volumes" and index is not None:
        own = len(volumes(owner, spec)) - len(overrides.extra_volumes(spec))
        return f"spec.podTemplate.spec.volumes[{int(index) - own}]{rest}" if int(index) >= own else None
    container = {"containers": SERVING_CONTAINER, "initContainers": POLLER_CONTAINER}.get(head)
    if container is not None:
        # Which item of a merged list (env, volumeMounts) is the user's is not worth guessing.
        path = re.sub(r"\[\d+\]", "", rest).lstrip(".") or "fields"
        return f"the {container} container's {path} (spec.{container} or spec.podTemplate.spec.containers[{container}])"
    return None


def spec_fields(owner: Owner, spec: models.ModelDeploymentSpec, kind: str, fields: tuple[str, ...]) -> list[str]:
    """:func:`spec_field` of each, without repeats, in order."""
    found = [f for f in (spec_field(owner, spec, kind, field) for field in fields) if f is not None]
    return list(dict.fromkeys(found))
