"""The pod's two containers: the poller (a native sidecar, also injected by the admission
webhook) and TF Serving, with the volume names they mount."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Final

from kubernetes.utils import parse_quantity
from model_poller_api import models, names, workload

from model_poller_operator import overrides
from model_poller_operator.render import Obj
from model_poller_operator.render.ownership import Owner

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

SERVING_BINARY: Final = "/usr/bin/tensorflow_model_server"
SERVING_URL: Final = f"http://localhost:{names.SERVING_REST_PORT}"
POLLER_PORT_NAME: Final = "poller-http"

# The poller's resources under spec.poller.resources (merged by resource name): it is I/O
# bound, and its peak stays under 300 MiB for any upload, so whatever slips past its own
# limits is OOM-killed in the poller's container instead of pressing on the node's other
# pods. The memory limit stays unless the user sets one.
DEFAULT_POLLER_RESOURCES: Final[Obj] = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "384Mi"}}


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
        args.append(f"--monitoring_config_file={workload.MONITORING_DIR}/{workload.MONITORING_CONFIG_FILE}")
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
