"""spec.workload: the fields that apply to operator mode only, refused in external mode."""

from __future__ import annotations

from model_poller_api import names
from model_poller_api.schema_blocks import (
    Schema,
    cel_rule,
)


def operator_mode_only_rules() -> list[Schema]:
    external = f"has(self.workload) && self.workload == '{names.WORKLOAD_EXTERNAL}'"
    why = "shape your own workload (spec.workload: external: the operator renders no Deployment)"
    return [
        cel_rule(
            f"!({external}) || !has(self.podTemplate)",
            f"spec.podTemplate applies to operator mode only: {why}",
            field_path=".podTemplate",
        ),
        cel_rule(
            f"!({external}) || !has(self.disruptionBudget)",
            "spec.disruptionBudget applies to operator mode only: give your own workload a PodDisruptionBudget",
            field_path=".disruptionBudget",
        ),
        cel_rule(
            f"!({external}) || !has(self.serving) || !has(self.serving.args)",
            f"spec.serving.args applies to operator mode only: {why}",
            field_path=".serving.args",
        ),
        cel_rule(
            f"!({external}) || !has(self.serving) || !has(self.serving.monitoring) || !self.serving.monitoring",
            f"spec.serving.monitoring applies to operator mode only: {why}",
            field_path=".serving.monitoring",
        ),
    ]
