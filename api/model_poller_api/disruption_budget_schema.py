"""spec.disruptionBudget: the PodDisruptionBudget of the operator's pods."""

from __future__ import annotations

from model_poller_api.schema_blocks import (
    Schema,
    cel_rule,
)

# An int-or-string that is a count or a percentage (PodDisruptionBudget's minAvailable...).
PERCENT_PATTERN = r"^[0-9]+%$"


def _count_or_percent(description: str) -> Schema:
    return {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-int-or-string": True,
        "description": description,
        "x-kubernetes-validations": [
            cel_rule(
                f"type(self) == string ? self.matches('{PERCENT_PATTERN}') && int(self.replace('%', '')) <= 100"
                " : int(self) >= 0",
                "must be a number of pods (0 or more) or a percentage such as 50%",
            )
        ],
    }


def disruption_budget_schema() -> Schema:
    return {
        "type": "object",
        "description": (
            "A PodDisruptionBudget NAME for the pods (spec.workload: operator only): voluntary disruptions (node "
            "drains, upgrades) keep at least minAvailable pods, or take at most maxUnavailable at a time. Exactly "
            "one of the two. Without it, no PodDisruptionBudget (the operator deletes the one it made)."
        ),
        "properties": {
            "minAvailable": _count_or_percent(
                "Pods that must stay available: a number (e.g. 1) or a percentage (e.g. 50%)."
            ),
            "maxUnavailable": _count_or_percent(
                "Pods that may be unavailable at once: a number or a percentage (works with the scale subresource)."
            ),
        },
        "x-kubernetes-validations": [
            cel_rule(
                "has(self.minAvailable) != has(self.maxUnavailable)",
                "spec.disruptionBudget needs exactly one of minAvailable or maxUnavailable",
            )
        ],
    }
