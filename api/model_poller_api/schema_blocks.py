"""The building blocks of the workload shape's schema: strings, maps, quantities, container
resources, opaque Kubernetes types and CEL rules.

The workload shape (pod template overrides, the poller's identity, the disruption budget,
TF Serving's flags and monitoring, typed container resources) is part of the ModelDeployment
CRD (``crd.py`` assembles it), one module per spec field: ``container_schema`` (spec.serving,
spec.poller), ``pod_template_schema`` (spec.podTemplate) with ``volume_schema`` and
``container_override_schema``, ``service_account_schema``, ``disruption_budget_schema`` and
``workload_mode_schema`` (what external mode refuses). What the product owns comes from
``workload.py``, which the operator's renderer reads too: the CEL rules refuse an override
of it when a spec is applied, naming the field; the renderer checks again what CEL cannot
express.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

# Kubernetes' resource.Quantity, as its own OpenAPI spells it.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# Bounds that keep the CEL rules' estimated cost within the API server's budget.
MAX_ITEMS = 64
MAX_ARGS = 64
MAX_ARG = 1024
MAX_STRING = 4096


def string_schema(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def cel_rule(
    rule: str, message: str, *, field_path: str | None = None, message_expression: str | None = None
) -> Schema:
    """One CEL rule; ``field_path`` (relative, e.g. ``.name``) is the field the error names."""
    result: Schema = {"rule": rule, "message": message}
    if message_expression:
        result["messageExpression"] = message_expression
    if field_path:
        result["fieldPath"] = field_path
    return result


def cel_list(values: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def string_map(description: str, **extra: Any) -> Schema:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": {"type": "string", "maxLength": MAX_STRING},
        "maxProperties": MAX_ITEMS,
        **extra,
    }


def opaque(description: str) -> Schema:
    """A Kubernetes type too big to copy here: the API server validates it in the rendered
    Deployment (an error there is the Synced condition's, naming the spec field)."""
    return {"type": "object", "description": description, "x-kubernetes-preserve-unknown-fields": True}


def quantity(description: str) -> Schema:
    """resource.Quantity: an integer or a string such as 500m, 4Gi, 1.5."""
    return {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-int-or-string": True,
        "pattern": QUANTITY_PATTERN,
        "maxLength": 64,
        "description": description,
    }


def resources(what: str, extra_description: str = "") -> Schema:
    """A container's compute resources, typed like Kubernetes' ResourceRequirements, so a
    quantity that is not one (``cpu: lots``) is refused naming the field."""
    amounts = {
        "type": "object",
        "additionalProperties": quantity("A quantity: an integer or a string such as 500m, 4Gi."),
        "maxProperties": 16,
    }
    return {
        "type": "object",
        "description": (
            f"Compute resources of the {what} container, as in a Pod's container: requests and limits by resource "
            "name (cpu, memory, ephemeral-storage, extended resources such as nvidia.com/gpu)." + extra_description
        ),
        "properties": {
            "requests": {
                **amounts,
                "description": "Minimum amounts the scheduler reserves, e.g. {cpu: 500m, memory: 1Gi}.",
            },
            "limits": {**amounts, "description": "Maximum amounts, e.g. {memory: 8Gi, nvidia.com/gpu: 1}."},
        },
        "x-kubernetes-validations": [
            cel_rule(
                "!has(self.requests) || !has(self.limits) || self.requests.all(r, !(r in self.limits)"
                " || quantity(string(self.requests[r])).compareTo(quantity(string(self.limits[r]))) <= 0)",
                "a request must not exceed the limit of the same resource (requests.X <= limits.X)",
            )
        ],
    }


def owned_fields(fields: dict[str, str], where: str) -> list[Schema]:
    """CEL rules refusing, by name, fields the product owns."""
    return [
        cel_rule(f"!has(self.{name})", f"{where}.{name} cannot be set: {why}", field_path=f".{name}")
        for name, why in fields.items()
    ]


def cel_any(value: str, method: str, affixes: tuple[str, ...]) -> str:
    """``value`` starts (or ends) with one of ``affixes``, as one CEL disjunction."""
    return " || ".join(f"{value}.{method}('{a}')" for a in affixes)
