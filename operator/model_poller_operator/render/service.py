"""The Service of the model's pods (gRPC, REST, and the metrics port with monitoring)."""

from __future__ import annotations

from model_poller_api import models, names, workload

from model_poller_operator.render import Obj
from model_poller_operator.render.ownership import Owner, child_metadata, selector_labels
from model_poller_operator.render.pod_containers import SERVING_CONTAINER


def render_service(owner: Owner, spec: models.ModelDeploymentSpec) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(owner, owner.name, SERVING_CONTAINER),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner),
            "ports": [
                {
                    "name": "grpc",
                    "port": names.SERVING_GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                },
                {"name": "http", "port": names.SERVING_REST_PORT, "targetPort": "http", "protocol": "TCP"},
                *_metrics_port(spec),
            ],
        },
    }


def _metrics_port(spec: models.ModelDeploymentSpec) -> list[Obj]:
    """TF Serving serves its Prometheus metrics on the REST port (spec.serving.monitoring):
    a Service port of their own, by name, for Prometheus' service discovery."""
    if not spec.serving.monitoring:
        return []
    return [
        {
            "name": workload.METRICS_PORT_NAME,
            "port": workload.METRICS_SERVICE_PORT,
            "targetPort": "http",
            "protocol": "TCP",
        }
    ]
