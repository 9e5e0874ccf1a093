"""Pure: the user's shape of the pods (spec.podTemplate, spec.serving.args, resources) checked
and merged over what the operator renders.

The CRD's CEL rules refuse the overrides of what the product owns (``model_poller_api.workload``
lists it) when a spec is applied. This module checks the same lists again, for what CEL
cannot express (a mount path spelled ``/models/../models``, a mount of a volume that does
not exist, quantities of objects stored before the resources had a schema) and for objects
stored before a rule existed: such a spec raises :class:`InvalidOverride`, which names the
field; the operator leaves the children as they are and reports ``Degraded=True``
``InvalidOverride``.

Merging follows the Prometheus operator's containers: by name over the rendered one; args,
env and volumeMounts appended, resources merged by resource name (the override wins).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from kubernetes.utils import parse_quantity
from model_poller_api import models, workload

Obj = dict[str, Any]
PODTEMPLATE = "spec.podTemplate"
CONTAINERS = f"{PODTEMPLATE}.spec.containers"


class InvalidOverride(ValueError):
    """An override of something the product owns, or one the pods cannot run with.

    ``field`` is the spec field (``spec.podTemplate.spec.volumes[0].name``); ``str()`` is
    the message for humans, starting with that field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _plain(value: Any) -> Any:
    """A deep copy made of plain dicts and lists (the spec may hold read-only views)."""
    return json.loads(json.dumps(value))


def quantity(value: Any) -> Decimal:
    """A resource quantity (``500m``, ``4Gi``, ``2``) as a number; ValueError if it is none."""
    try:
        return Decimal(parse_quantity(value))  # type: ignore[no-untyped-call]
    except (ValueError, TypeError, InvalidOperation):
        raise ValueError(f"{value!r} is not a quantity (e.g. 500m, 4Gi, 1)") from None


# --- checks --------------------------------------------------------------------------------


def problems(spec: models.ModelDeploymentSpec) -> list[InvalidOverride]:
    """Every override in ``spec`` the operator refuses, in spec order. In external mode only
    the resources and the ServiceAccount's annotations (the CRD refuses the pod overrides
    there, and the poller's ServiceAccount is rendered in both modes)."""
    found = list(_resource_problems(spec))
    found += _merged_resource_problems(spec)
    for key in spec.service_account_annotations:
        if key.startswith(workload.OWNED_KEY_PREFIX):
            found.append(InvalidOverride("spec.serviceAccount.annotations", f"{key} is the operator's"))
    if spec.external:
        return found
    template = spec.pod_template
    found += _metadata_problems(template)
    found += _pod_problems(template)
    found += _args_problems("spec.serving.args", spec.serving.args)
    for index, container in enumerate(template.containers):
        found += _container_problems(f"{CONTAINERS}[{index}]", container, template)
    return found


def check(spec: models.ModelDeploymentSpec) -> None:
    """Raise the first of :func:`problems`, if any."""
    found = problems(spec)
    if found:
        raise found[0]


def _resource_problems(spec: models.ModelDeploymentSpec) -> Iterator[InvalidOverride]:
    layers: list[tuple[str, Mapping[str, Any]]] = [
        ("spec.serving.resources", spec.serving.resources),
        ("spec.poller.resources", spec.poller.resources),
    ]
    layers += [(f"{CONTAINERS}[{i}].resources", c.resources) for i, c in enumerate(spec.pod_template.containers)]
    for where, resources in layers:
        for section in ("requests", "limits"):
            for name, value in (resources.get(section) or {}).items():
                try:
                    quantity(value)
                except ValueError as error:
                    yield InvalidOverride(f"{where}.{section}.{name}", str(error))


def _merged_resource_problems(spec: models.ModelDeploymentSpec) -> Iterator[InvalidOverride]:
    """A request above the limit of the same resource once the layers are merged (each layer
    alone passes the CRD's rule: spec.serving.resources asks 2Gi, the template's serving
    container limits to 1Gi). The API server would refuse the Deployment naming no spec field."""
    overrides = {
        c.name: (f"{CONTAINERS}[{i}].resources", c.resources) for i, c in enumerate(spec.pod_template.containers)
    }
    bases = {
        workload.SERVING_CONTAINER: ("spec.serving.resources", spec.serving.resources),
        workload.POLLER_CONTAINER: ("spec.poller.resources", spec.poller.resources),
    }
    for container, base in bases.items():
        layers = [base, overrides[container]] if container in overrides else [base]
        yield from _request_over_limit(layers)


def _request_over_limit(layers: list[tuple[str, Mapping[str, Any]]]) -> Iterator[InvalidOverride]:
    """Each request of the merged ``layers`` (later ones win) that exceeds its limit, naming
    the field each amount comes from."""
    source: dict[tuple[str, str], tuple[str, Any]] = {}
    for where, resources in layers:
        for section in ("requests", "limits"):
            for name, value in (resources.get(section) or {}).items():
                source[(section, name)] = (f"{where}.{section}.{name}", value)
    for (section, name), (request_field, request) in source.items():
        if section != "requests" or ("limits", name) not in source:
            continue
        limit_field, limit = source[("limits", name)]
        try:
            over = quantity(request) > quantity(limit)
        except ValueError:
            continue  # not a quantity: _resource_problems names it
        if over:
            yield InvalidOverride(
                request_field,
                f"the request {request} exceeds the limit {limit} of {limit_field} (the two are merged into one "
                f"container, whose requests.{name} must not exceed limits.{name})",
            )


def _metadata_problems(template: models.PodTemplate) -> Iterator[InvalidOverride]:
    for key in template.labels:
        if workload.owned_label(key):
            yield InvalidOverride(
                f"{PODTEMPLATE}.metadata.labels",
                f"label {key} is the operator's (the Deployment's selector and the operator's watches use it)",
            )
    for key in template.annotations:
        if workload.owned_annotation(key):
            yield InvalidOverride(
                f"{PODTEMPLATE}.metadata.annotations",
                f"annotation {key} is the operator's (its own keys, and the AppArmor and seccomp profiles of the "
                "restricted security context)",
            )


def _pod_problems(template: models.PodTemplate) -> Iterator[InvalidOverride]:
    for field in template.pod:
        if field in workload.OWNED_POD_FIELDS:
            yield InvalidOverride(f"{PODTEMPLATE}.spec.{field}", f"cannot be set: {workload.OWNED_POD_FIELDS[field]}")
        elif field not in (*workload.POD_FIELDS, "volumes"):
            yield InvalidOverride(f"{PODTEMPLATE}.spec.{field}", "is not a field spec.podTemplate.spec takes")
    for index, volume in enumerate(template.pod.get("volumes") or ()):
        yield from _volume_problems(f"{PODTEMPLATE}.spec.volumes[{index}]", volume)


def _volume_problems(where: str, volume: Mapping[str, Any]) -> Iterator[InvalidOverride]:
    name = str(volume.get("name", ""))
    if name in workload.OWNED_VOLUMES:
        yield InvalidOverride(f"{where}.name", f"volume name {name} is the operator's: choose another name")
    sources = [key for key in volume if key != "name"]
    if len(sources) != 1 or sources[0] not in workload.VOLUME_SOURCES:
        yield InvalidOverride(
            where,
            f"volume {name} has source {', '.join(sources) or 'none'}; a volume needs exactly one of "
            f"{', '.join(workload.VOLUME_SOURCES)} (Secret, hostPath and persistent volumes are refused)",
        )
        return
    size = (volume.get("emptyDir") or {}).get("sizeLimit")
    if size is not None:
        # The API server refuses a bad quantity while decoding, naming no field at all.
        try:
            quantity(size)
        except ValueError as error:
            yield InvalidOverride(f"{where}.emptyDir.sizeLimit", str(error))
    for index, source in enumerate((volume.get("projected") or {}).get("sources") or ()):
        refused = [key for key in source if key not in workload.PROJECTED_SOURCES]
        if refused:
            yield InvalidOverride(
                f"{where}.projected.sources[{index}]",
                f"{', '.join(refused)} is refused in a projected volume (allowed: "
                f"{', '.join(workload.PROJECTED_SOURCES)}): Secrets reach the pods only as "
                "spec.source.credentialsSecret, and the API token is the poller's alone",
            )


def _args_problems(where: str, args: Sequence[str]) -> Iterator[InvalidOverride]:
    for arg in args:
        if workload.owned_flag(arg):
            yield InvalidOverride(
                where, f"{arg} is set by the operator (model name, base path, ports, monitoring config): remove it"
            )


def _container_problems(
    where: str, container: models.ContainerOverride, template: models.PodTemplate
) -> Iterator[InvalidOverride]:
    if container.name not in workload.CONTAINERS:
        yield InvalidOverride(
            f"{where}.name", f"{container.name!r} is not a container: use one of {', '.join(workload.CONTAINERS)}"
        )
        return
    allowed = workload.CONTAINER_FIELDS[container.name]
    given = {"args": container.args, "env": container.env, "volumeMounts": container.volume_mounts}
    for field in [f for f, value in given.items() if value and f not in allowed] + list(container.other):
        why = (
            "the containers' security context is the operator's"
            if field == "securityContext"
            else (f"the {container.name} container takes only {', '.join(allowed)}")
        )
        yield InvalidOverride(f"{where}.{field}", f"cannot be set: {why}")
    yield from _args_problems(f"{where}.args", container.args)
    yield from _env_problems(f"{where}.env", container)
    yield from _mount_problems(f"{where}.volumeMounts", container, template)


def _env_problems(where: str, container: models.ContainerOverride) -> Iterator[InvalidOverride]:
    for index, env in enumerate(container.env):
        name = str(env.get("name", ""))
        if container.name == workload.POLLER_CONTAINER and workload.owned_env(name):
            yield InvalidOverride(
                f"{where}[{index}].name",
                f"{name} is the operator's (the poller's flags, identity and where its credentials go)",
            )
        if "secretKeyRef" in (env.get("valueFrom") or {}):
            yield InvalidOverride(
                f"{where}[{index}].valueFrom.secretKeyRef",
                "is refused: Secrets reach the pods only as spec.source.credentialsSecret, mounted into the poller",
            )


def _mount_problems(
    where: str, container: models.ContainerOverride, template: models.PodTemplate
) -> Iterator[InvalidOverride]:
    extra = {str(v.get("name")) for v in template.pod.get("volumes") or ()}
    for index, mount in enumerate(container.volume_mounts):
        name, path = str(mount.get("name", "")), str(mount.get("mountPath", ""))
        if name in workload.OWNED_VOLUMES:
            yield InvalidOverride(f"{where}[{index}].name", f"volume {name} is the operator's")
        elif name not in extra:
            yield InvalidOverride(
                f"{where}[{index}].name", f"no volume {name!r} in {PODTEMPLATE}.spec.volumes: add it there first"
            )
        # CEL compares the text; the kubelet mounts the normalized path.
        normal = posixpath.normpath("/" + path.lstrip("/"))
        for owned in workload.OWNED_MOUNT_PATHS:
            if normal == owned or normal.startswith(owned + "/"):
                yield InvalidOverride(
                    f"{where}[{index}].mountPath", f"{path} is at or under {owned}, which the operator mounts"
                )


# --- merging -------------------------------------------------------------------------------


def merge_resources(*layers: Mapping[str, Any]) -> Obj:
    """Resources merged by section (requests, limits) and resource name; later layers win."""
    merged: Obj = {}
    for layer in layers:
        for section, amounts in _plain(dict(layer)).items():
            merged.setdefault(section, {}).update(amounts or {})
    return {section: amounts for section, amounts in merged.items() if amounts}


def with_defaults(defaults: Mapping[str, Any], user: Mapping[str, Any]) -> Obj:
    """``user`` over ``defaults``, kept valid: a default that contradicts what the user set
    gives way (a default request above the user's limit comes down to it; a default limit
    below the user's request goes up to it), so a default never makes the pod invalid."""
    merged = merge_resources(defaults, user)
    requests, limits = merged.get("requests", {}), merged.get("limits", {})
    user_requests, user_limits = user.get("requests") or {}, user.get("limits") or {}
    for name in set(requests) & set(limits):
        if quantity(requests[name]) <= quantity(limits[name]):
            continue
        if name in user_limits and name not in user_requests:
            requests[name] = limits[name]
        elif name in user_requests and name not in user_limits:
            limits[name] = requests[name]
    return merged


def merge_container(base: Obj, override: models.ContainerOverride | None) -> Obj:
    """``override`` merged over the rendered container ``base`` (a new dict)."""
    merged: Obj = _plain(base)
    if override is None:
        return merged
    if override.args:
        merged["args"] = [*merged.get("args", []), *override.args]
    if override.env:
        merged["env"] = [*merged.get("env", []), *_plain(list(override.env))]
    if override.volume_mounts:
        merged["volumeMounts"] = [*merged.get("volumeMounts", []), *_plain(list(override.volume_mounts))]
    return merged


def pod_fields(spec: models.ModelDeploymentSpec) -> Obj:
    """The pod-level fields of spec.podTemplate.spec the operator passes through."""
    return {
        k: _plain(v)
        for k, v in spec.pod_template.pod.items()
        if k in workload.POD_FIELDS and v not in (None, "", [], {})
    }


def extra_volumes(spec: models.ModelDeploymentSpec) -> list[Obj]:
    return [_plain(dict(v)) for v in spec.pod_template.pod.get("volumes") or ()]
