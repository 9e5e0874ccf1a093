"""The spec field behind a rendered field: how an API server's refusal of a child names the
ModelDeployment field the user wrote."""

from __future__ import annotations

import re
from typing import Final

from model_poller_api import models, workload

from model_poller_operator import overrides
from model_poller_operator.render.deployment import volumes
from model_poller_operator.render.ownership import Owner
from model_poller_operator.render.pod_containers import POLLER_CONTAINER, SERVING_CONTAINER

_POD_PATH: Final = "spec.template.spec."
_METADATA_PATH: Final = "spec.template.metadata."
_INDEXED: Final = re.compile(r"^([A-Za-z]+)(?:\[([0-9]+)\])?(.*)$", re.DOTALL)


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
        path = re.sub(r"\[[0-9]+\]", "", rest).lstrip(".") or "fields"
        return f"the {container} container's {path} (spec.{container} or spec.podTemplate.spec.containers[{container}])"
    return None


def spec_fields(owner: Owner, spec: models.ModelDeploymentSpec, kind: str, fields: tuple[str, ...]) -> list[str]:
    """:func:`spec_field` of each, without repeats, in order."""
    found = [f for f in (spec_field(owner, spec, kind, field) for field in fields) if f is not None]
    return list(dict.fromkeys(found))
