"""The child kinds of a ModelDeployment: one table, in apply order.

Everything that needs to know the children reads :data:`CHILDREN`: the reconcile (what to
render and apply, in which order, what waits for what), the drift-repair watches
(``handlers.py``), the REST paths (``apply.py``). Adding a child kind is one line here
(plus its render function in the ``render`` package, the chart's RBAC and admission policy).

An *optional* child's render function may return None: that child must not exist for this
spec. The reconcile then deletes the live object of that name only if this ModelDeployment
controls it (controller ownerReference with its uid) and it carries the managed-by label; an
object it does not control is never touched (``apply.Api.remove``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from model_poller_api import models

from model_poller_operator.render import budget, deployment, rbac, service
from model_poller_operator.render.ownership import Owner

Obj = dict[str, Any]
Render = Callable[[Owner, models.ModelDeploymentSpec], Obj | None]


@dataclass(frozen=True)
class ChildKind:
    """One kind of child: where it lives in the API, how it is rendered and named."""

    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    render: Render
    # The child's name: an optional child that must not exist has no render to read it from.
    name: Callable[[Owner], str]
    # Rendered in external mode too (spec.workload: external: the user runs the pods).
    external: bool = False
    # The render may return None (this child must not exist for that spec).
    optional: bool = False
    # Kinds whose name, if held by an object the ModelDeployment does not own, hold this
    # one back (see apply.Api.converge_all).
    depends_on: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> tuple[str, str]:
        """(api version, plural) as kopf's decorators take them."""
        return self.api_version, self.plural


def _model_deployment_name(owner: Owner) -> str:
    return owner.name


_RBAC: Final = "rbac.authorization.k8s.io"

# In apply order: the identity exists before the pods that use it. The RoleBinding names
# the poller's Role and ServiceAccount, and the Deployment's pods run as that identity:
# neither is applied while one of those names is held by an object the ModelDeployment
# does not own (the binding would hand our ServiceAccount someone else's Role, the pods
# whatever rights it grants).
# fmt: off
CHILDREN: Final[tuple[ChildKind, ...]] = (
    ChildKind("", "v1", "ServiceAccount", "serviceaccounts", rbac.render_service_account, rbac.poller_identity, external=True),
    ChildKind(_RBAC, "v1", "Role", "roles", rbac.render_role, rbac.poller_identity, external=True),
    ChildKind(_RBAC, "v1", "RoleBinding", "rolebindings", rbac.render_role_binding, rbac.poller_identity, external=True,
              depends_on=("ServiceAccount", "Role")),
    ChildKind("", "v1", "Service", "services", service.render_service, _model_deployment_name),
    ChildKind("apps", "v1", "Deployment", "deployments", deployment.render_deployment, _model_deployment_name,
              depends_on=("ServiceAccount", "Role", "RoleBinding")),
    ChildKind("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", budget.render_disruption_budget,
              _model_deployment_name, optional=True),
)
# fmt: on

BY_KIND: Final = {child.kind: child for child in CHILDREN}
if len(BY_KIND) != len(CHILDREN):
    raise ImportError("children.CHILDREN lists a kind twice")


@dataclass(frozen=True)
class Desired:
    """What one child should be: ``obj`` rendered, or None when it must not exist."""

    child: ChildKind
    owner: Owner
    name: str
    obj: Obj | None

    @property
    def namespace(self) -> str:
        return self.owner.namespace


def kinds_for(spec: models.ModelDeploymentSpec) -> tuple[ChildKind, ...]:
    """The child kinds of this spec's workload mode, in apply order."""
    return tuple(child for child in CHILDREN if child.external or not spec.external)


def render_one(child: ChildKind, owner: Owner, spec: models.ModelDeploymentSpec) -> Desired:
    """One child of the ModelDeployment (raises what the render raises on a bad spec)."""
    obj = child.render(owner, spec)
    if obj is None and not child.optional:
        # A bug, not a bad spec: only an optional kind may be absent.
        raise RuntimeError(f"render of {child.kind} returned None, but {child.kind} is not an optional child")
    return Desired(child=child, owner=owner, name=child.name(owner), obj=obj)


def desired_children(owner: Owner, spec: models.ModelDeploymentSpec) -> list[Desired]:
    """Every child kind of this mode, in apply order, rendered (or None: must not exist)."""
    return [render_one(child, owner, spec) for child in kinds_for(spec)]


def render_children(owner: Owner, spec: models.ModelDeploymentSpec) -> list[Obj]:
    """The children that exist for this spec, in apply order (golden files, tests)."""
    return [d.obj for d in desired_children(owner, spec) if d.obj is not None]
