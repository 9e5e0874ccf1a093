"""The PodDisruptionBudget of the model's pods (spec.disruptionBudget)."""

from __future__ import annotations

from model_poller_api import models

from model_poller_operator.render import Obj
from model_poller_operator.render.ownership import Owner, child_metadata, selector_labels
from model_poller_operator.render.pod_containers import SERVING_CONTAINER


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
        "metadata": child_metadata(owner, owner.name, SERVING_CONTAINER),
        "spec": pdb_spec,
    }
