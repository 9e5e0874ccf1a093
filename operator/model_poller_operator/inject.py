"""Pure injection: a labelled pod and its ModelDeployment -> the injected pod, or a refusal.

The admission webhook (``webhook.py``) looks the ModelDeployment and the poller's
ServiceAccount up, then calls :func:`mutation`, which returns the JSON patch that turns the
pod into the injected one (empty when the pod is already injected), or raises
:class:`Refused` with a message the user can act on. No API calls here, so every case is
unit tested (``tests/operator/test_inject.py``) and the webhook only does I/O.

The poller container, its volumes and the serving readiness probe come from ``render``:
the same functions render the operator's own Deployment, so an injected poller has the same
env, probes, security context and token mount as one the operator runs itself.
"""

from __future__ import annotations

import copy
import enum
import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from model_poller_api import models, names

from model_poller_operator import overrides
from model_poller_operator.render import deployment, ownership, pod_containers, rbac

Obj = dict[str, Any]

# The injected volumes get names of their own: a user's pod may well have a volume called
# "models" or "tmp" already.
INJECTED_VOLUMES: Final = pod_containers.PollerVolumes(
    models="model-poller-models",
    tmp="model-poller-tmp",
    token="model-poller-token",
    credentials="model-poller-gcs-credentials",
)
# The ServiceAccount admission plugin runs before the webhooks and mounts the token of the
# pod's (then default) ServiceAccount into every container under this volume name prefix.
AUTO_TOKEN_PREFIX: Final = "kube-api-access-"
SERVING_IMAGE: Final = "tensorflow/serving"
_DOCKER_HUB_PREFIXES: Final = ("docker.io/", "index.docker.io/", "registry-1.docker.io/")
_SHELLS: Final = frozenset({"sh", "bash", "ash", "dash", "zsh", "ksh"})
# The stock image's entrypoint runs tensorflow_model_server with
# --model_name=${MODEL_NAME} --model_base_path=${MODEL_BASE_PATH}/${MODEL_NAME} "$@".
ENTRYPOINT: Final = "tf_serving_entrypoint.sh"
ENTRYPOINT_MODEL_NAME: Final = "MODEL_NAME"
ENTRYPOINT_BASE_PATH: Final = "MODEL_BASE_PATH"
FLAG_MODEL_NAME: Final = "--model_name"
FLAG_BASE_PATH: Final = "--model_base_path"
FLAG_REST_PORT: Final = "--rest_api_port"
FLAG_CONFIG_FILE: Final = "--model_config_file"


class RefusalReason(str, enum.Enum):
    """Why a labelled pod is refused (the admission message says it for humans)."""

    MODEL_DEPLOYMENT_NOT_FOUND = "ModelDeploymentNotFound"
    NOT_EXTERNAL = "NotExternalWorkload"
    INVALID_MODEL_DEPLOYMENT = "InvalidModelDeployment"
    IDENTITY_NOT_READY = "IdentityNotReady"
    IDENTITY_CONFLICT = "IdentityConflict"
    FOREIGN_SERVICE_ACCOUNT = "ForeignServiceAccount"
    NO_SERVING_CONTAINER = "NoServingContainer"
    CONTRADICTING_FLAG = "ContradictingFlag"
    UNSUPPORTED_COMMAND = "UnsupportedCommand"
    NAME_TAKEN = "NameTaken"
    UNSUPPORTED_VOLUME = "UnsupportedVolume"
    ROOT_USER = "RootUser"


class Refused(Exception):
    """The pod must not be admitted; ``str()`` is the message shown to the user."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Target:
    """The ModelDeployment a labelled pod names, read and checked."""

    owner: ownership.Owner
    spec: models.ModelDeploymentSpec


# --- the ModelDeployment and the poller's identity ----------------------------------------


def target_of(md: Mapping[str, Any] | None, namespace: str, name: str) -> Target:
    """The ModelDeployment ``name`` of the pod's namespace as an injection target, or Refused."""
    label = f"{names.LABEL_MODEL_DEPLOYMENT}={name}"
    if md is None:
        raise Refused(
            RefusalReason.MODEL_DEPLOYMENT_NOT_FOUND,
            f"pod label {label}: there is no ModelDeployment {name!r} in namespace {namespace!r} (the label names "
            "a ModelDeployment of the pod's own namespace): create it with spec.workload: external, or remove the "
            "label from the pod template",
        )
    meta = md.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        raise Refused(
            RefusalReason.MODEL_DEPLOYMENT_NOT_FOUND,
            f"pod label {label}: ModelDeployment {name!r} in namespace {namespace!r} is being deleted",
        )
    problem = ownership.name_problem(name)
    if problem:
        raise Refused(RefusalReason.INVALID_MODEL_DEPLOYMENT, f"pod label {label}: ModelDeployment {problem}")
    try:
        spec = models.ModelDeploymentSpec.from_object(name, md.get("spec") or {})
        pod_containers.storage_limit(spec)
        overrides.check(spec)  # e.g. a poller resource quantity stored before it had a schema
    except (ValueError, KeyError, TypeError) as error:
        raise Refused(
            RefusalReason.INVALID_MODEL_DEPLOYMENT,
            f"pod label {label}: the spec of ModelDeployment {name!r} cannot be rendered: {error}",
        ) from None
    if not spec.external:
        raise Refused(
            RefusalReason.NOT_EXTERNAL,
            f"pod label {label}: ModelDeployment {name!r} has spec.workload: {spec.workload}, so the operator runs "
            f"its pods itself (Deployment {name}); only a ModelDeployment with spec.workload: external injects the "
            "poller into your own pods: create one (spec.workload cannot be changed), or remove the label",
        )
    return Target(ownership.Owner(name=name, namespace=namespace, uid=str(meta.get("uid", ""))), spec)


def check_identity(account: Mapping[str, Any] | None, target: Target) -> None:
    """The poller's ServiceAccount must exist and be controlled by this ModelDeployment: the
    pod will run under it, with the rights its Role grants."""
    owner = target.owner
    identity = rbac.poller_identity(owner)
    if account is None:
        raise Refused(
            RefusalReason.IDENTITY_NOT_READY,
            f"ServiceAccount {identity!r} does not exist yet in namespace {owner.namespace!r}: the operator creates it "
            f"for ModelDeployment {owner.name!r} (see its Synced condition); the pod's controller retries",
        )
    for ref in (account.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller") and ref.get("kind") == names.KIND and ref.get("uid") == owner.uid:
            return
    raise Refused(
        RefusalReason.IDENTITY_CONFLICT,
        f"ServiceAccount {identity!r} in namespace {owner.namespace!r} is not controlled by ModelDeployment "
        f"{owner.name!r} (a name conflict, see its Synced condition): the pod would run under an identity the "
        "operator does not control",
    )


# --- the pod -------------------------------------------------------------------------------


def mutation(pod: Mapping[str, Any], target: Target) -> list[Obj]:
    """The JSON patch (RFC 6902) that injects the poller into ``pod``; [] if it already has it."""
    return json_patch(pod, inject(pod, target))


def inject(pod: Mapping[str, Any], target: Target) -> Obj:
    """``pod`` with the poller injected (a new dict), or Refused. Idempotent."""
    injected: Obj = copy.deepcopy(dict(pod))
    spec: Obj = injected.setdefault("spec", {})
    _set_service_account(spec, target)  # a foreign ServiceAccount is refused, injected or not
    if _has_our_poller(spec, target.owner):
        return copy.deepcopy(dict(pod))  # already injected (e.g. a re-invocation): unchanged
    _check_not_root(spec)
    serving = _serving_container(injected)
    _check_names(spec, target)
    _set_flags(serving, target.spec)
    volumes = _models_volume(spec, serving, target.spec)
    _drop_auto_token(spec)
    spec.setdefault("volumes", [])
    if volumes.models == INJECTED_VOLUMES.models:
        spec["volumes"].append(deployment.models_volume(target.spec, INJECTED_VOLUMES.models))
        serving.setdefault("volumeMounts", []).append(
            {"name": INJECTED_VOLUMES.models, "mountPath": names.MODELS_MOUNT, "readOnly": True}
        )
    spec["volumes"] += [deployment.tmp_volume(INJECTED_VOLUMES.tmp), deployment.token_volume(INJECTED_VOLUMES.token)]
    credentials = deployment.credentials_volume(target.spec, INJECTED_VOLUMES.credentials)
    if credentials is not None:
        spec["volumes"].append(credentials)
    # Last of the init containers: the pod's own init containers run first; the poller's
    # startup probe then holds the serving container back until the initial sync is done.
    spec.setdefault("initContainers", []).append(pod_containers.poller_container(target.owner, target.spec, volumes))
    if "readinessProbe" not in serving:
        serving["readinessProbe"] = pod_containers.serving_readiness_probe()
    # Only the poller gets an API token (its own volume): none for TF Serving or the
    # pod's other containers, which now run under the poller's ServiceAccount.
    spec["automountServiceAccountToken"] = False
    return injected


def _set_service_account(spec: Obj, target: Target) -> None:
    """Run the pod as the poller's ServiceAccount: its RBAC is bound to that one only."""
    identity = rbac.poller_identity(target.owner)
    current = spec.get("serviceAccountName") or spec.get("serviceAccount") or ""
    if current in ("", "default"):
        spec["serviceAccountName"] = identity
        if "serviceAccount" in spec:
            spec["serviceAccount"] = identity
        return
    if current != identity:
        raise Refused(
            RefusalReason.FOREIGN_SERVICE_ACCOUNT,
            f"the pod runs as ServiceAccount {current!r}, but the poller's rights are bound to ServiceAccount "
            f"{identity!r} (which the operator keeps for ModelDeployment {target.owner.name!r}): remove "
            f"serviceAccountName from the pod template (or set it to {identity!r})",
        )


def _containers(spec: Mapping[str, Any], *keys: str) -> list[Obj]:
    return [c for key in keys for c in spec.get(key) or ()]


def _has_our_poller(spec: Mapping[str, Any], owner: ownership.Owner) -> bool:
    """Whether the pod already holds the poller injected for this ModelDeployment."""
    report_to = names.env_name("--report-to")
    for container in spec.get("initContainers") or ():
        if container.get("name") != pod_containers.POLLER_CONTAINER or container.get("restartPolicy") != "Always":
            continue
        env = {e.get("name"): e.get("value") for e in container.get("env") or ()}
        if env.get(report_to) == f"{owner.namespace}/{owner.name}":
            return True
    return False


def _check_not_root(spec: Mapping[str, Any]) -> None:
    if (spec.get("securityContext") or {}).get("runAsUser") == 0:
        raise Refused(
            RefusalReason.ROOT_USER,
            "the pod's securityContext.runAsUser is 0, which would run the poller as root (it must run as non-root): "
            "set runAsUser on the containers that need it instead of the pod",
        )


def image_repository(image: str) -> str:
    """``docker.io/tensorflow/serving:2.19.0@sha256:...`` -> ``tensorflow/serving``."""
    repository = image.split("@", 1)[0]
    slash = repository.rfind("/")
    colon = repository.rfind(":")
    if colon > slash:
        repository = repository[:colon]
    for prefix in _DOCKER_HUB_PREFIXES:
        if repository.startswith(prefix):
            return repository[len(prefix) :]
    return repository


def _serving_container(pod: Obj) -> Obj:
    """The serving container: named by the annotation, else the one running tensorflow/serving."""
    spec = pod["spec"]
    containers = _containers(spec, "containers")
    wanted = ((pod.get("metadata") or {}).get("annotations") or {}).get(names.ANNOTATION_SERVING_CONTAINER)
    if wanted:
        for container in containers:
            if container.get("name") == wanted:
                return container
        found = ", ".join(str(c.get("name")) for c in containers)
        raise Refused(
            RefusalReason.NO_SERVING_CONTAINER,
            f"annotation {names.ANNOTATION_SERVING_CONTAINER}={wanted} names no container of the pod (containers: {found})",
        )
    serving = [c for c in containers if image_repository(str(c.get("image", ""))) == SERVING_IMAGE]
    if len(serving) == 1:
        return serving[0]
    what = "no container runs" if not serving else f"{len(serving)} containers run"
    raise Refused(
        RefusalReason.NO_SERVING_CONTAINER,
        f"{what} the {SERVING_IMAGE} image: name the serving container with the pod annotation "
        f"{names.ANNOTATION_SERVING_CONTAINER}: <container name>",
    )


def _check_names(spec: Mapping[str, Any], target: Target) -> None:
    """The names and the port the injection adds must be free in the pod."""
    for container in _containers(spec, "initContainers", "containers", "ephemeralContainers"):
        if container.get("name") == pod_containers.POLLER_CONTAINER:
            raise Refused(
                RefusalReason.NAME_TAKEN,
                f"the pod already has a container named {pod_containers.POLLER_CONTAINER!r} (not the poller of ModelDeployment "
                f"{target.owner.name!r}): rename it",
            )
        for port in container.get("ports") or ():
            if port.get("containerPort") == names.POLLER_HTTP_PORT and (port.get("protocol") or "TCP") == "TCP":
                raise Refused(
                    RefusalReason.NAME_TAKEN,
                    f"container {container.get('name')!r} uses port {names.POLLER_HTTP_PORT}, the poller's HTTP port "
                    "(probes, /metrics) in the pod's network namespace: move it to another port",
                )
    ours = {INJECTED_VOLUMES.models, INJECTED_VOLUMES.tmp, INJECTED_VOLUMES.token, INJECTED_VOLUMES.credentials}
    for volume in spec.get("volumes") or ():
        if volume.get("name") in ours:
            raise Refused(
                RefusalReason.NAME_TAKEN,
                f"the pod already has a volume named {volume.get('name')!r}, a name the injection uses: rename it",
            )


def _flags(container: Mapping[str, Any]) -> dict[str, str]:
    """TF Serving's ``--flag=value`` arguments in the container's command and args (the last wins)."""
    found: dict[str, str] = {}
    for arg in [*(container.get("command") or ())[1:], *(container.get("args") or ())]:
        flag, sep, value = str(arg).partition("=")
        if sep and flag.startswith("--"):
            found[flag] = value
    return found


def _set_flags(serving: Obj, spec: models.ModelDeploymentSpec) -> None:
    """Add --model_name, --model_base_path and --rest_api_port when absent; refuse what
    contradicts the spec. (tensorflow_model_server serves no REST API unless
    --rest_api_port is given, and the poller asks TF Serving there which version it
    serves; the stock image's entrypoint gives 8501.)"""
    where = f"container {serving.get('name')!r}"
    command = [str(c) for c in serving.get("command") or ()]
    if command and posixpath.basename(command[0]) in _SHELLS:
        raise Refused(
            RefusalReason.UNSUPPORTED_COMMAND,
            f"{where} runs a shell ({command[0]}): the webhook can neither read nor set TF Serving's flags through "
            "it; run tensorflow_model_server (or the image's entrypoint) directly, with the flags as args",
        )
    base_path = pod_containers.model_dir(spec)
    flags = _flags(serving)
    if FLAG_CONFIG_FILE in flags:
        raise Refused(
            RefusalReason.CONTRADICTING_FLAG,
            f"{where}: {FLAG_CONFIG_FILE}={flags[FLAG_CONFIG_FILE]} serves the models a config file names, but the "
            f"poller fills one model at {base_path}: remove the flag",
        )
    expected = {FLAG_MODEL_NAME: spec.model_name, FLAG_BASE_PATH: base_path}
    for flag, want in expected.items():
        have = flags.get(flag)
        if have is not None and have.rstrip("/") != want:
            raise Refused(
                RefusalReason.CONTRADICTING_FLAG,
                f"{where}: {flag}={have} contradicts the ModelDeployment, which serves model {spec.model_name!r} "
                f"from {base_path}: remove the flag (the webhook sets {flag}={want}) or set it to {want}",
            )
    rest = flags.get(FLAG_REST_PORT)
    if rest is not None and rest != str(names.SERVING_REST_PORT):
        raise Refused(
            RefusalReason.CONTRADICTING_FLAG,
            f"{where}: {FLAG_REST_PORT}={rest}: the poller asks TF Serving which version it serves at "
            f"{pod_containers.SERVING_URL}: remove the flag or set it to {names.SERVING_REST_PORT}",
        )
    if not command or posixpath.basename(command[0]) == ENTRYPOINT:
        _check_entrypoint_env(serving, spec, where)
    expected[FLAG_REST_PORT] = str(names.SERVING_REST_PORT)
    missing = [f"{flag}={want}" for flag, want in expected.items() if flag not in flags]
    if missing:
        serving["args"] = [*(serving.get("args") or ()), *missing]


def _check_entrypoint_env(serving: Mapping[str, Any], spec: models.ModelDeploymentSpec, where: str) -> None:
    """The stock image's entrypoint turns MODEL_NAME and MODEL_BASE_PATH into flags: they
    must not say something else than the ModelDeployment (a contradiction is refused, as
    for flags, rather than silently overridden by the flags the webhook adds)."""
    env = {e.get("name"): e.get("value") for e in serving.get("env") or () if "value" in e}
    expected = {ENTRYPOINT_MODEL_NAME: spec.model_name, ENTRYPOINT_BASE_PATH: names.MODELS_MOUNT}
    for variable, want in expected.items():
        have = env.get(variable)
        if have is not None and str(have).rstrip("/") != want:
            raise Refused(
                RefusalReason.CONTRADICTING_FLAG,
                f"{where}: env {variable}={have} contradicts the ModelDeployment, which serves model "
                f"{spec.model_name!r} from {pod_containers.model_dir(spec)}: remove the variable or set it to {want}",
            )


# Volume types that cannot hold the versions the poller writes.
_READ_ONLY_VOLUMES: Final = ("configMap", "secret", "downwardAPI", "projected", "image")


def _models_volume(spec: Obj, serving: Obj, md_spec: models.ModelDeploymentSpec) -> pod_containers.PollerVolumes:
    """The poller's volume names: share the volume the serving container already mounts at
    the models path (made read-only for TF Serving), else the injected emptyDir's name."""
    where = f"container {serving.get('name')!r}"
    for mount in serving.get("volumeMounts") or ():
        path = posixpath.normpath(str(mount.get("mountPath", "")))
        if path.startswith(names.MODELS_MOUNT + "/"):
            raise Refused(
                RefusalReason.UNSUPPORTED_VOLUME,
                f"{where} mounts volume {mount.get('name')!r} at {path}, inside {names.MODELS_MOUNT} where the poller "
                f"keeps {pod_containers.model_dir(md_spec)}: mount it at {names.MODELS_MOUNT} (it is then shared with the "
                "poller) or elsewhere",
            )
        if path != names.MODELS_MOUNT:
            continue
        volume = next((v for v in spec.get("volumes") or () if v.get("name") == mount.get("name")), None)
        if volume is None or any(kind in volume for kind in _READ_ONLY_VOLUMES) or mount.get("subPathExpr"):
            kind = "a read-only volume type" if volume is not None else "no volume of the pod"
            raise Refused(
                RefusalReason.UNSUPPORTED_VOLUME,
                f"{where} mounts {mount.get('name')!r} at {names.MODELS_MOUNT}, which the poller cannot share "
                f"({'subPathExpr' if mount.get('subPathExpr') else kind}): use an emptyDir (or a writable volume) "
                f"there, or remove the mount and let the webhook add one",
            )
        mount["readOnly"] = True
        return pod_containers.PollerVolumes(
            models=str(mount["name"]),
            tmp=INJECTED_VOLUMES.tmp,
            token=INJECTED_VOLUMES.token,
            credentials=INJECTED_VOLUMES.credentials,
            models_sub_path=mount.get("subPath") or None,
        )
    return INJECTED_VOLUMES


def _drop_auto_token(spec: Obj) -> None:
    """Remove the token the ServiceAccount admission plugin mounted into every container: it
    ran before this webhook, for the default ServiceAccount, and would now hand the
    poller's token to TF Serving and the pod's other containers."""
    auto = {
        str(v.get("name"))
        for v in spec.get("volumes") or ()
        if str(v.get("name", "")).startswith(AUTO_TOKEN_PREFIX)
        and any("serviceAccountToken" in s for s in (v.get("projected") or {}).get("sources") or ())
    }
    if not auto:
        return
    spec["volumes"] = [v for v in spec.get("volumes") or () if v.get("name") not in auto]
    for container in _containers(spec, "initContainers", "containers"):
        if "volumeMounts" in container:
            container["volumeMounts"] = [m for m in container["volumeMounts"] if m.get("name") not in auto]


# --- JSON patch ----------------------------------------------------------------------------


def _pointer(path: str, key: str | int) -> str:
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


def json_patch(old: Any, new: Any, path: str = "") -> list[Obj]:
    """A JSON patch from ``old`` to ``new``: maps key by key, lists item by item when their
    lengths match (else replaced whole), [] when equal."""
    if old == new and type(old) is type(new):
        return []
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        ops: list[Obj] = []
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": _pointer(path, key)})
        for key, value in new.items():
            if key not in old:
                ops.append({"op": "add", "path": _pointer(path, key), "value": copy.deepcopy(value)})
            else:
                ops += json_patch(old[key], value, _pointer(path, key))
        return ops
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            op for i, (a, b) in enumerate(zip(old, new, strict=False)) for op in json_patch(a, b, _pointer(path, i))
        ]
    return [{"op": "replace", "path": path, "value": copy.deepcopy(new)}]


def apply_patch(obj: Any, patch: list[Obj]) -> Any:
    """Apply a patch made by :func:`json_patch` (add, remove, replace) to a copy of ``obj``:
    what the API server does with the webhook's answer, for tests and the benchmark."""
    result = copy.deepcopy(obj)
    for op in patch:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        if not parts:
            result = copy.deepcopy(op["value"])
            continue
        parent = result
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last: Any = int(parts[-1]) if isinstance(parent, list) else parts[-1]
        if op["op"] == "remove":
            del parent[last]
        else:
            parent[last] = copy.deepcopy(op["value"])
    return result


def dumps(patch: list[Obj]) -> bytes:
    return json.dumps(patch, separators=(",", ":")).encode()
