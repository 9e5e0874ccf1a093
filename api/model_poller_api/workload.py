"""The shape of the operator's pods: what a user may shape, and what the product owns.

``spec.podTemplate``, ``spec.serving.args`` and the container overrides let teams shape the
pods (GPU nodes, tolerations, extra volumes, TF Serving flags), the way the Prometheus
operator's ``spec.containers`` and KServe's predictor do. A few things the product must
own: the shared model volume and its path, the poller's identity and API token, the
restricted security context, the labels its selectors use, the env and flags that wire the
poller and TF Serving together. The CRD's CEL rules (``crd.py``) and the operator's
renderer (which re-checks what CEL cannot express, and objects stored before a rule
existed) both read the lists below, so the two never disagree.
"""

from __future__ import annotations

import re
from typing import Final

from model_poller_api import names

# Containers of the operator's pods; spec.podTemplate.spec.containers names one of them.
SERVING_CONTAINER: Final = "serving"
POLLER_CONTAINER: Final = "poller"
CONTAINERS: Final = (SERVING_CONTAINER, POLLER_CONTAINER)

# Volumes the operator renders (the injected ones of external mode have names of their own).
MODELS_VOLUME: Final = "models"
TMP_VOLUME: Final = "tmp"
TOKEN_VOLUME: Final = "kube-api-access"
CREDENTIALS_VOLUME: Final = "gcs-credentials"
MONITORING_VOLUME: Final = "tf-serving-monitoring"
OWNED_VOLUMES: Final = (MODELS_VOLUME, TMP_VOLUME, TOKEN_VOLUME, CREDENTIALS_VOLUME, MONITORING_VOLUME)

# TF Serving's monitoring (spec.serving.monitoring): its config is the text of a pod-template
# annotation, which a downwardAPI volume projects into the file MONITORING_CONFIG_FILE (no
# ConfigMap child: to watch one, the operator would need to read every ConfigMap it can see).
# The annotation is under the API group, so spec.podTemplate cannot set or replace it. The
# metrics are served on the REST port at METRICS_PATH. Prometheus' service discovery picks a
# Service port by name, hence a second Service port ("metrics") that forwards to the same
# container port as "http".
MONITORING_CONFIG_ANNOTATION: Final = f"{names.GROUP}/monitoring-config"
MONITORING_CONFIG_FILE: Final = "monitoring_config.txt"
METRICS_PATH: Final = "/monitoring/prometheus/metrics"
METRICS_PORT_NAME: Final = "metrics"
METRICS_SERVICE_PORT: Final = 9090

# Where they are mounted. A user's mount at (or under) one of these would hide or replace
# the product's: TF Serving would read another model dir, or the poller's config.
TMP_MOUNT: Final = "/tmp"
MONITORING_DIR: Final = "/etc/tf-serving"
OWNED_MOUNT_PATHS: Final = (names.MODELS_MOUNT, TMP_MOUNT, MONITORING_DIR)

# Volume sources a user's extra volume may use. No Secret (Secrets reach a pod only as
# spec.source.credentialsSecret, mounted into the poller: the chart's admission policy
# holds the operator to that), no hostPath (refused by the restricted PodSecurity level and
# by the policy), no PersistentVolumeClaim or network volumes (the model lives in the
# emptyDir; the policy lets the operator mount nothing that outlives the pod).
VOLUME_SOURCES: Final = ("emptyDir", "configMap", "downwardAPI", "projected")
# Projected volumes: no Secret, and no ServiceAccount token (the API token is the poller's).
PROJECTED_SOURCES: Final = ("configMap", "downwardAPI", "clusterTrustBundle")

# Pod-level fields of spec.podTemplate.spec the operator passes through as given.
POD_FIELDS: Final = (
    "nodeSelector",
    "tolerations",
    "affinity",
    "topologySpreadConstraints",
    "priorityClassName",
    "imagePullSecrets",
    "runtimeClassName",
)
# Pod-level fields the operator owns: the CRD lists them only to refuse them by name.
OWNED_POD_FIELDS: Final = {
    "securityContext": "the pod's security context is the operator's (the restricted PodSecurity baseline)",
    "serviceAccountName": "the pods run as the poller's ServiceAccount NAME-poller, the only one its RBAC is bound to",
    "serviceAccount": "the pods run as the poller's ServiceAccount NAME-poller, the only one its RBAC is bound to",
    "automountServiceAccountToken": "the API token is projected into the poller container only",
    "initContainers": "the poller is the pod's one init container (a native sidecar)",
}
# What a container override may set, per container.
CONTAINER_FIELDS: Final = {
    SERVING_CONTAINER: ("args", "env", "resources", "volumeMounts"),
    POLLER_CONTAINER: ("env", "resources"),
}

# Labels the operator sets: the Deployment's and the Service's selectors, the operator's
# own watches, and the external mode's injection label (an operator-mode pod carrying it
# would be sent to the admission webhook, which refuses it).
OWNED_LABELS: Final = (
    names.LABEL_NAME,
    names.LABEL_INSTANCE,
    names.LABEL_MANAGED_BY,
    names.LABEL_COMPONENT,
)
# Every label and annotation under the API group is the product's (the injection label, the
# serving-container annotation, the applied-hash annotation...).
OWNED_KEY_PREFIX: Final = f"{names.GROUP}/"
DEFAULT_CONTAINER_ANNOTATION: Final = "kubectl.kubernetes.io/default-container"
OWNED_ANNOTATIONS: Final = (DEFAULT_CONTAINER_ANNOTATION,)
# The pod annotations that set a container's AppArmor or seccomp profile (the older way,
# before the securityContext fields): `container.apparmor.security.beta.kubernetes.io/serving:
# unconfined` would take TF Serving out of the restricted baseline in a namespace that does
# not enforce `restricted`. The security context is the product's, so these are too. The
# chart's admission policy refuses them in the operator's Deployments as well.
SECURITY_PROFILE_ANNOTATION_PREFIXES: Final = (
    "container.apparmor.security.beta.kubernetes.io/",
    "seccomp.security.alpha.kubernetes.io/",
    "container.seccomp.security.alpha.kubernetes.io/",
)
OWNED_ANNOTATION_PREFIXES: Final = (OWNED_KEY_PREFIX, *SECURITY_PROFILE_ANNOTATION_PREFIXES)

# Environment variables of the poller the product owns. Every MODEL_POLLER_* is a poller
# flag; the proof of concept's PROJECT_ID, SUBSCRIPTION and SAVE_DIR are flags too (under
# other names). The others would send the poller's credentials (its API token, its Google
# access tokens) somewhere else, or run other code with them: the Kubernetes API's address
# (KUBERNETES_SERVICE_*), a proxy (*_PROXY, any case: Python reads http_proxy too), a Google
# emulator (*_EMULATOR_HOST: the client libraries then skip authentication, but Pub/Sub's and
# GCS's traffic goes there), the metadata server that hands out Workload Identity tokens
# (GCE_METADATA_*), a key file (GOOGLE_APPLICATION_CREDENTIALS), Python's own (PYTHONPATH,
# PYTHONSTARTUP...). Names are compared upper-cased.
OWNED_ENV_PREFIX: Final = names.ENV_PREFIX
OWNED_ENV_PREFIXES: Final = (OWNED_ENV_PREFIX, "KUBERNETES_SERVICE_", "GCE_METADATA_", "PYTHON")
OWNED_ENV_SUFFIXES: Final = ("_PROXY", "_EMULATOR_HOST")
OWNED_ENV: Final = (
    "POD_NAME",
    "POD_NAMESPACE",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "PROJECT_ID",
    "SUBSCRIPTION",
    "SAVE_DIR",
)

# TF Serving flags that would contradict the model name, the base path the poller fills, or
# the ports the Service, the probes and the poller (--serving-url) use. The monitoring
# config file is spec.serving.monitoring's.
OWNED_SERVING_FLAGS: Final = (
    "model_name",
    "model_base_path",
    "model_config_file",
    "port",
    "rest_api_port",
    "monitoring_config_file",
)
# TF Serving parses `--flag=value`, `--flag value` and (as gflags do) a single dash.
OWNED_FLAG_PATTERN: Final = r"^--?(" + "|".join(OWNED_SERVING_FLAGS) + r")(=.*)?$"
_OWNED_FLAG: Final = re.compile(OWNED_FLAG_PATTERN, re.DOTALL)


def owned_flag(arg: str) -> bool:
    """Whether ``arg`` sets one of the TF Serving flags the product owns."""
    return bool(_OWNED_FLAG.match(arg))


def owned_label(key: str) -> bool:
    return key in OWNED_LABELS or key.startswith(OWNED_KEY_PREFIX)


def owned_annotation(key: str) -> bool:
    return key in OWNED_ANNOTATIONS or key.startswith(OWNED_ANNOTATION_PREFIXES)


def owned_env(name: str) -> bool:
    """Whether ``name`` is a poller variable the product owns (compared upper-cased)."""
    upper = name.upper()
    return upper in OWNED_ENV or upper.startswith(OWNED_ENV_PREFIXES) or upper.endswith(OWNED_ENV_SUFFIXES)
