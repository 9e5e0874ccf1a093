"""TF Serving's monitoring config (spec.serving.monitoring): the pod-template annotation that
holds it, the downwardAPI volume that projects it into a file, and where that file is.

No ConfigMap: a ConfigMap child would have kopf watch ConfigMaps in every namespace the
operator serves (cluster-wide by default), so its token could read all of them. The annotation is under the API
group, which spec.podTemplate may not set (workload.OWNED_ANNOTATION_PREFIXES), and the
volume's name is one the operator owns (workload.OWNED_VOLUMES): a user can neither replace
the config nor shadow the volume.
"""

from __future__ import annotations

from typing import Final

from model_poller_api import models, workload

from model_poller_operator.render import Obj

# The file TF Serving reads (--monitoring_config_file), in the serving container.
CONFIG_PATH: Final = f"{workload.MONITORING_DIR}/{workload.MONITORING_CONFIG_FILE}"


def monitoring_config() -> str:
    """TF Serving's MonitoringConfig (text protobuf): Prometheus metrics on the REST port."""
    return f'prometheus_config {{ enable: true, path: "{workload.METRICS_PATH}" }}'


def monitoring_annotations(spec: models.ModelDeploymentSpec) -> dict[str, str]:
    """The pod-template annotation holding the config (spec.serving.monitoring), or none."""
    if not spec.serving.monitoring:
        return {}
    return {workload.MONITORING_CONFIG_ANNOTATION: monitoring_config()}


def monitoring_volume() -> Obj:
    """The annotation as the one file of a read-only volume (the kubelet writes it). The
    apiVersion is spelled out as the API server would default it, so the live Deployment
    compares equal to the rendered one."""
    field_path = f"metadata.annotations['{workload.MONITORING_CONFIG_ANNOTATION}']"
    return {
        "name": workload.MONITORING_VOLUME,
        "downwardAPI": {
            "items": [
                {"path": workload.MONITORING_CONFIG_FILE, "fieldRef": {"apiVersion": "v1", "fieldPath": field_path}}
            ],
        },
    }
