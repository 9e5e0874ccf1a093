"""spec.serving and spec.poller: the image, resources and flags of the two containers."""

from __future__ import annotations

from model_poller_api import models, names, workload
from model_poller_api.defaults import default_poller_image
from model_poller_api.schema_blocks import (
    MAX_ARG,
    MAX_ARGS,
    Schema,
    cel_rule,
    resources,
    string_schema,
)


def serving_args(where: str) -> Schema:
    flags = ", ".join("--" + f for f in workload.OWNED_SERVING_FLAGS)
    return {
        "type": "array",
        "maxItems": MAX_ARGS,
        "items": {"type": "string", "maxLength": MAX_ARG},
        "description": (
            "TF Serving flags appended to the rendered ones, e.g. [--enable_batching=true, "
            "--batching_parameters_file=/etc/batching/batching.config]. Refused: " + flags + " (the model name, the "
            "base path the poller fills, the ports the Service and the probes use; monitoring is "
            "spec.serving.monitoring)."
        ),
        "x-kubernetes-validations": [
            cel_rule(
                f"self.all(a, !a.matches('{workload.OWNED_FLAG_PATTERN}'))",
                f"{where} may not set {flags}: the operator sets them",
                message_expression=(
                    f"self.filter(a, a.matches('{workload.OWNED_FLAG_PATTERN}'))[0] + ' is set by the operator "
                    "(model name, base path, ports, monitoring config): remove it from " + where + "'"
                ),
            )
        ],
    }


def _container(what: str, default_image: str, **extra: Schema) -> Schema:
    return {
        "type": "object",
        "description": f"Overrides for the {what} container.",
        "properties": {
            "image": string_schema(f"Image of the {what} container (default {default_image}).", minLength=1),
            **extra,
        },
    }


def serving_schema() -> Schema:
    schema = _container(
        "tensorflow/serving",
        models.DEFAULT_SERVING_IMAGE,
        resources=resources("tensorflow/serving"),
        args=serving_args("spec.serving.args"),
        monitoring={
            "type": "boolean",
            "default": False,
            "description": (
                "Expose TF Serving's Prometheus metrics: the operator writes TF Serving's monitoring config "
                f'(prometheus_config {{ enable: true, path: "{workload.METRICS_PATH}" }}) into the pod-template '
                f"annotation {workload.MONITORING_CONFIG_ANNOTATION}, projects it into a file with a downwardAPI "
                "volume, passes that file with --monitoring_config_file, and adds a "
                f"port named metrics ({workload.METRICS_SERVICE_PORT}) to the Service, which forwards to TF Serving's REST "
                f"port {names.SERVING_REST_PORT} where the metrics are served."
            ),
        },
    )
    return schema


def poller_schema() -> Schema:
    return _container(
        "model-poller sidecar",
        default_poller_image(),
        resources=resources(
            "poller",
            " Unset amounts keep their defaults (requests cpu 50m, memory 64Mi; limits memory 384Mi, raised to "
            "the memory request if that is higher), so the poller always has a memory limit.",
        ),
    )
