"""TF Serving's monitoring config (spec.serving.monitoring) and the ConfigMap that holds it."""

from __future__ import annotations

from model_poller_api import models, workload

from model_poller_operator.render import Obj
from model_poller_operator.render.ownership import Owner, child_metadata
from model_poller_operator.render.pod_containers import SERVING_CONTAINER


def monitoring_config_name(owner: Owner) -> str:
    """Name of the ConfigMap holding TF Serving's monitoring config."""
    return owner.name + workload.MONITORING_SUFFIX


def monitoring_config() -> str:
    """TF Serving's MonitoringConfig (text protobuf): Prometheus metrics on the REST port."""
    return f'prometheus_config {{\n  enable: true,\n  path: "{workload.METRICS_PATH}"\n}}\n'


def render_monitoring_config(owner: Owner, spec: models.ModelDeploymentSpec) -> Obj | None:
    """spec.serving.monitoring: true -> the ConfigMap TF Serving reads its monitoring config
    from (--monitoring_config_file); None (must not exist) otherwise."""
    if spec.external or not spec.serving.monitoring:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(owner, monitoring_config_name(owner), SERVING_CONTAINER),
        "data": {workload.MONITORING_CONFIG_KEY: monitoring_config()},
    }
