"""The ModelDeployment that owns the children: its name, their labels, selectors and
ownerReferences."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from model_poller_api import models, names

from model_poller_operator.render import Obj

# A Service name (and hence a ModelDeployment name) must be an RFC 1035 label.
_DNS1035_LABEL = re.compile(names.NAME_PATTERN)
MAX_NAME_LENGTH: Final = names.MAX_NAME_LENGTH


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


def child_metadata(owner: Owner, name: str, component: str) -> Obj:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, component),
        "ownerReferences": [owner_reference(owner)],
    }
