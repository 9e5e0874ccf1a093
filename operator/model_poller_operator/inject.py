"""Pure injection: a labelled pod and its ModelDeployment -> the injected pod, or a refusal.

The admission webhook (``webhook.py``) looks the ModelDeployment and the poller's
ServiceAccount up, then calls :func:`mutation`, which returns the JSON patch that turns the
pod into the injected one (empty when the pod is already injected), or raises
:class:`~model_poller_operator.refusals.Refused` with a message the user can act on. No
API calls here, so every case is unit tested (``tests/operator/test_inject.py``) and the
webhook only does I/O. The serving container's flags are checked and completed in
``serving_flags.py``; the patch itself is computed by ``json_patch.py``.

The poller container, its volumes and the serving readiness probe come from ``render``:
the same functions render the operator's own Deployment, so an injected poller has the same
env, probes, security context and token mount as one the operator runs itself.
"""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from model_poller_api import models, names

from model_poller_operator import overrides
from model_poller_operator.json_patch import json_patch
from model_poller_operator.refusals import RefusalReason, Refused
from model_poller_operator.render import deployment, ownership, pod_containers, rbac
from model_poller_operator.serving_flags import set_flags

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
CREDENTIALS_MODE: Final = 0o444  # the injected credentials Secret's defaultMode (see inject)
_DOCKER_HUB_PREFIXES: Final = ("docker.io/", "index.docker.io/", "registry-1.docker.io/")


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
    set_flags(serving, target.spec)
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
        # World-readable (0444), not the operator's 0440: the user's pod has no fsGroup of
        # ours, so the kubelet writes key.json as root:root and 0440 would lock the poller
        # (a non-root uid) out; at creation only the poller mounts this volume (a user
        # container that mounts it is refused by _check_names). An ephemeral container added
        # later (kubectl debug) could mount it: the webhook sees pod creations only.
        credentials["secret"]["defaultMode"] = CREDENTIALS_MODE
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
    # A mount of a volume the injection is about to add would hand the poller's volumes (its
    # token, the GCS key) to one of the user's containers.
    for container in _containers(spec, "initContainers", "containers", "ephemeralContainers"):
        for mount in container.get("volumeMounts") or ():
            if mount.get("name") in ours:
                raise Refused(
                    RefusalReason.NAME_TAKEN,
                    f"container {container.get('name')!r} mounts volume {mount.get('name')!r}, a name the injection "
                    "uses for the poller's own volume: rename the mount and its volume",
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
