"""Names of the ModelDeployment API and of the operator/poller contract."""

from typing import Final

GROUP: Final = "modelpoller.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "ModelDeployment"
LIST_KIND: Final = "ModelDeploymentList"
PLURAL: Final = "modeldeployments"
SINGULAR: Final = "modeldeployment"
SHORT_NAMES: Final = ("md", "mdep")
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

# Finalizer and kopf progress storage live under our own group, not kopf's defaults.
FINALIZER: Final = f"{GROUP}/finalizer"
PROGRESS_ANNOTATION_PREFIX: Final = GROUP

# Labels the operator puts on every child; the first two select a ModelDeployment's pods.
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
APP_NAME: Final = "model-poller"
MANAGER: Final = "model-poller-operator"

# External workloads (spec.workload: external): a pod labelled with the name of a
# ModelDeployment of its namespace gets the poller injected by the operator's admission
# webhook; the annotation names its serving container when the image does not tell.
LABEL_MODEL_DEPLOYMENT: Final = f"{GROUP}/model-deployment"
ANNOTATION_SERVING_CONTAINER: Final = f"{GROUP}/serving-container"
WORKLOAD_OPERATOR: Final = "operator"
WORKLOAD_EXTERNAL: Final = "external"

# The poller: every flag has an environment variable ENV_PREFIX + FLAG (dashes to underscores).
ENV_PREFIX: Final = "MODEL_POLLER_"
POLLER_HTTP_PORT: Final = 8080
PATH_HEALTHZ: Final = "/healthz"
PATH_READYZ: Final = "/readyz"
PATH_SERVING_READY: Final = "/serving-ready"
PATH_METRICS: Final = "/metrics"

# TF Serving.
SERVING_GRPC_PORT: Final = 8500
SERVING_REST_PORT: Final = 8501
MODELS_MOUNT: Final = "/models"

# Source URI schemes.
SCHEME_GCS: Final = "gs://"
SCHEME_FILE: Final = "file:///"


def env_name(flag: str) -> str:
    """`--poll-interval` -> `MODEL_POLLER_POLL_INTERVAL`."""
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


# A ModelDeployment's name names its Service, so it must be an RFC 1035 label. The CRD
# rejects other names; the operator checks again for objects stored before that rule.
NAME_PATTERN: Final = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_NAME_LENGTH: Final = 63
