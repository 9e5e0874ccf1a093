"""The schema of the workload shape: pod template overrides, the poller's identity, the
disruption budget, TF Serving's flags and monitoring, typed container resources.

Part of the ModelDeployment CRD (``crd.py`` assembles it). What the product owns comes from
``workload.py``, which the operator's renderer reads too: the CEL rules here refuse an
override of it when a spec is applied, naming the field; the renderer checks again what CEL
cannot express.
"""

from __future__ import annotations

from typing import Any

from model_poller_api import models, names, workload
from model_poller_api.defaults import default_poller_image

Schema = dict[str, Any]

# Kubernetes' resource.Quantity, as its own OpenAPI spells it.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# An int-or-string that is a count or a percentage (PodDisruptionBudget's minAvailable...).
PERCENT_PATTERN = r"^[0-9]+%$"
# Bounds that keep the CEL rules' estimated cost within the API server's budget.
MAX_ITEMS = 64
MAX_ARGS = 64
MAX_ARG = 1024
MAX_STRING = 4096


def string_schema(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def _rule(rule: str, message: str, *, field_path: str | None = None, message_expression: str | None = None) -> Schema:
    """One CEL rule; ``field_path`` (relative, e.g. ``.name``) is the field the error names."""
    result: Schema = {"rule": rule, "message": message}
    if message_expression:
        result["messageExpression"] = message_expression
    if field_path:
        result["fieldPath"] = field_path
    return result


def _cel_list(values: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _string_map(description: str, **extra: Any) -> Schema:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": {"type": "string", "maxLength": MAX_STRING},
        "maxProperties": MAX_ITEMS,
        **extra,
    }


def _opaque(description: str) -> Schema:
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
            _rule(
                "!has(self.requests) || !has(self.limits) || self.requests.all(r, !(r in self.limits)"
                " || quantity(string(self.requests[r])).compareTo(quantity(string(self.limits[r]))) <= 0)",
                "a request must not exceed the limit of the same resource (requests.X <= limits.X)",
            )
        ],
    }


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
            _rule(
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
                f"(a ConfigMap NAME{workload.MONITORING_SUFFIX}: prometheus_config {{ enable: true, path: "
                f'"{workload.METRICS_PATH}" }}), passes it with --monitoring_config_file, and adds a '
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


def _owned_fields(fields: dict[str, str], where: str) -> list[Schema]:
    """CEL rules refusing, by name, fields the product owns."""
    return [
        _rule(f"!has(self.{name})", f"{where}.{name} cannot be set: {why}", field_path=f".{name}")
        for name, why in fields.items()
    ]


def toleration() -> Schema:
    return {
        "type": "object",
        "description": "A toleration, as in a Pod (e.g. {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}).",
        "properties": {
            "key": string_schema("Taint key; empty (with operator Exists) tolerates every taint.", maxLength=316),
            "operator": {
                "type": "string",
                "enum": ["", "Exists", "Equal"],
                "description": "Exists or Equal (default Equal).",
            },
            "value": string_schema("Taint value (Equal only).", maxLength=63),
            "effect": {
                "type": "string",
                "enum": ["", "NoSchedule", "PreferNoSchedule", "NoExecute"],
                "description": "Taint effect to tolerate; empty: every effect.",
            },
            "tolerationSeconds": {
                "type": "integer",
                "format": "int64",
                "description": "How long the pod stays bound to a node tainted NoExecute.",
            },
        },
        "x-kubernetes-validations": [
            _rule(
                "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                "value must be empty when operator is Exists",
                field_path=".value",
            ),
            _rule(
                "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
                "operator must be Exists when key is empty",
                field_path=".operator",
            ),
            _rule(
                "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                "tolerationSeconds applies to effect NoExecute only",
                field_path=".tolerationSeconds",
            ),
        ],
    }


_OWNED_VOLUMES = _cel_list(list(workload.OWNED_VOLUMES))
_OWNED_PATHS = _cel_list(list(workload.OWNED_MOUNT_PATHS))


def volume() -> Schema:
    allowed = " or ".join(workload.VOLUME_SOURCES)
    projected_sources = {
        name: _opaque(f"A {name} source, as in a Pod's projected volume.") for name in workload.PROJECTED_SOURCES
    }
    return {
        "type": "object",
        "required": ["name"],
        "description": (
            f"An extra volume of the pods, as in a Pod: {allowed} (mount it with a volumeMount of the serving "
            "container). Secret, hostPath, PersistentVolumeClaim and network volumes are refused."
        ),
        "properties": {
            "name": string_schema(
                "Volume name (a DNS label); not one of the operator's: " + ", ".join(workload.OWNED_VOLUMES) + ".",
                maxLength=63,
                pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
            ),
            "emptyDir": _opaque("An emptyDir, e.g. {medium: Memory, sizeLimit: 1Gi} for /dev/shm."),
            "configMap": _opaque("A ConfigMap of the namespace, e.g. {name: batching-config}."),
            "downwardAPI": _opaque("Fields of the pod as files."),
            "projected": {
                "type": "object",
                "description": "A projected volume of configMap, downwardAPI and clusterTrustBundle sources.",
                "properties": {
                    "defaultMode": {"type": "integer", "format": "int32", "description": "File mode bits."},
                    "sources": {
                        "type": "array",
                        "maxItems": MAX_ITEMS,
                        "description": "The sources: configMap, downwardAPI, clusterTrustBundle.",
                        "items": {
                            "type": "object",
                            "properties": {
                                **projected_sources,
                                "secret": _opaque("Refused."),
                                "serviceAccountToken": _opaque("Refused."),
                            },
                            "x-kubernetes-validations": [
                                _rule(
                                    "!has(self.secret)",
                                    "a projected Secret is refused: Secrets reach the pods only as "
                                    "spec.source.credentialsSecret, mounted into the poller",
                                    field_path=".secret",
                                ),
                                _rule(
                                    "!has(self.serviceAccountToken)",
                                    "a projected ServiceAccount token is refused: the pods run as the poller's "
                                    "ServiceAccount, whose token is the poller's alone",
                                    field_path=".serviceAccountToken",
                                ),
                            ],
                        },
                    },
                },
            },
            "secret": _opaque("Refused: Secrets reach the pods only as spec.source.credentialsSecret."),
            "hostPath": _opaque("Refused: the pods run under the restricted PodSecurity level."),
        },
        "x-kubernetes-validations": [
            _rule(
                f"!(self.name in {_OWNED_VOLUMES})",
                "the volume name is the operator's",
                field_path=".name",
                message_expression=(
                    "'volume name ' + self.name + ' is the operator\\'s (its volumes: "
                    + ", ".join(workload.OWNED_VOLUMES)
                    + "): choose another name'"
                ),
            ),
            _rule(
                "!has(self.secret)",
                "Secret volumes are refused: Secrets reach the pods only as spec.source.credentialsSecret, "
                "mounted into the poller (the operator's admission policy allows no other)",
                field_path=".secret",
            ),
            _rule(
                "!has(self.hostPath)",
                "hostPath volumes are refused: the pods run under the restricted PodSecurity level",
                field_path=".hostPath",
            ),
            _rule(
                "has(self.secret) || has(self.hostPath) || ["
                + ", ".join(f"has(self.{k})" for k in workload.VOLUME_SOURCES)
                + "].exists_one(x, x)",
                f"a volume needs exactly one source of: {', '.join(workload.VOLUME_SOURCES)} "
                "(other volume types are refused)",
            ),
        ],
    }


def volume_mount() -> Schema:
    return {
        "type": "object",
        "required": ["name", "mountPath"],
        "description": "A mount of an extra volume (spec.podTemplate.spec.volumes) into the serving container.",
        "properties": {
            "name": string_schema("The volume's name.", maxLength=63),
            "mountPath": string_schema(
                "Where it appears; not at or under " + ", ".join(workload.OWNED_MOUNT_PATHS) + ".",
                minLength=1,
                maxLength=MAX_STRING,
            ),
            "subPath": string_schema("A path inside the volume to mount instead of its root.", maxLength=MAX_STRING),
            "readOnly": {"type": "boolean", "description": "Mount read-only."},
        },
        "x-kubernetes-validations": [
            _rule(
                f"!(self.name in {_OWNED_VOLUMES})",
                "the volume is the operator's",
                field_path=".name",
                message_expression=(
                    "'volume ' + self.name + ' is the operator\\'s: the serving container already mounts what it "
                    "needs of it'"
                ),
            ),
            _rule(
                f"!{_OWNED_PATHS}.exists(p, self.mountPath == p || self.mountPath.startsWith(p + '/'))",
                "the mount path is the operator's",
                field_path=".mountPath",
                message_expression=(
                    "'mountPath ' + self.mountPath + ' is at or under a path the operator mounts ("
                    + ", ".join(workload.OWNED_MOUNT_PATHS)
                    + "): choose another'"
                ),
            ),
        ],
    }


def env_var() -> Schema:
    value_from = {
        name: _opaque(f"As in a container's env: {name}.")
        for name in ("fieldRef", "resourceFieldRef", "configMapKeyRef")
    }
    return {
        "type": "object",
        "required": ["name"],
        "description": "An environment variable, as in a container (value, or valueFrom without secretKeyRef).",
        "properties": {
            "name": string_schema("Variable name.", minLength=1, maxLength=MAX_STRING),
            "value": string_schema("Its value.", maxLength=MAX_STRING * 8),
            "valueFrom": {
                "type": "object",
                "description": "fieldRef, resourceFieldRef or configMapKeyRef (no secretKeyRef).",
                "properties": {**value_from, "secretKeyRef": _opaque("Refused.")},
            },
        },
        "x-kubernetes-validations": [
            _rule(
                "!has(self.valueFrom) || !has(self.valueFrom.secretKeyRef)",
                "secretKeyRef is refused: Secrets reach the pods only as spec.source.credentialsSecret, "
                "mounted into the poller (the operator's admission policy allows no Secret in env)",
                field_path=".valueFrom.secretKeyRef",
            )
        ],
    }


def _cel_any(value: str, method: str, affixes: tuple[str, ...]) -> str:
    """``value`` starts (or ends) with one of ``affixes``, as one CEL disjunction."""
    return " || ".join(f"{value}.{method}('{a}')" for a in affixes)


# Compared upper-cased, as workload.owned_env does (http_proxy is a proxy too).
_OWNED_ENV_NAME = (
    f"(e.name.upperAscii() in {_cel_list(list(workload.OWNED_ENV))}"
    f" || {_cel_any('e.name.upperAscii()', 'startsWith', workload.OWNED_ENV_PREFIXES)}"
    f" || {_cel_any('e.name.upperAscii()', 'endsWith', workload.OWNED_ENV_SUFFIXES)})"
)
_OWNED_ENV_DOC = (
    ", ".join(workload.OWNED_ENV)
    + ", "
    + ", ".join(f"{p}*" for p in workload.OWNED_ENV_PREFIXES)
    + " or "
    + ", ".join(f"*{s}" for s in workload.OWNED_ENV_SUFFIXES)
)


def container_override() -> Schema:
    serving, poller = workload.SERVING_CONTAINER, workload.POLLER_CONTAINER
    where = "spec.podTemplate.spec.containers"
    return {
        "type": "object",
        "required": ["name"],
        "description": (
            f"Merged over the rendered container of that name: {serving} takes args (appended after the rendered "
            f"ones and spec.serving.args), env (appended), resources (merged by resource name, over "
            f"spec.serving.resources) and volumeMounts (appended); {poller} takes env and resources (merged over "
            "spec.poller.resources)."
        ),
        "properties": {
            "name": {
                "type": "string",
                "enum": list(workload.CONTAINERS),
                "description": f"{serving} (TF Serving) or {poller} (the sidecar).",
            },
            "args": serving_args(f"{where}[{serving}].args"),
            "env": {
                "type": "array",
                "maxItems": MAX_ITEMS,
                "items": env_var(),
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "description": (
                    "Environment variables appended to the rendered ones. In the poller, not "
                    + _OWNED_ENV_DOC
                    + " (in any case): the operator sets the poller's flags through them, and the others would "
                    "send the poller's credentials elsewhere (API server address, proxies, emulators, metadata "
                    "server) or run other code with them."
                ),
            },
            "resources": resources("named"),
            "volumeMounts": {
                "type": "array",
                "maxItems": MAX_ITEMS,
                "items": volume_mount(),
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["mountPath"],
                "description": "Mounts of extra volumes, appended to the rendered ones (serving only).",
            },
            "securityContext": _opaque("Refused: the containers' security context is the operator's."),
        },
        "x-kubernetes-validations": [
            _rule(
                "!has(self.securityContext)",
                "the containers' security context is the operator's (the restricted PodSecurity baseline: non-root, "
                "no privilege escalation, every capability dropped, RuntimeDefault seccomp, read-only root)",
                field_path=".securityContext",
            ),
            _rule(
                f"self.name != '{poller}' || !has(self.args)",
                "the poller takes no args: its flags come from the ModelDeployment's spec",
                field_path=".args",
            ),
            _rule(
                f"self.name != '{poller}' || !has(self.volumeMounts)",
                "the poller takes no volumeMounts: it needs only the model volume it has",
                field_path=".volumeMounts",
            ),
            _rule(
                f"self.name != '{poller}' || !has(self.env) || !self.env.exists(e, {_OWNED_ENV_NAME})",
                "the poller's env may not set the variables the operator owns",
                field_path=".env",
                message_expression=(
                    f"'env ' + self.env.filter(e, {_OWNED_ENV_NAME})[0].name + ' is the operator\\'s (the "
                    "poller\\'s flags, identity and where its credentials go): set the matching spec field, "
                    "or leave it out'"
                ),
            ),
        ],
    }


def pod_template_schema() -> Schema:
    owned_labels = ", ".join(workload.OWNED_LABELS) + f", {workload.OWNED_KEY_PREFIX}*"
    owned_annotations = ", ".join([*workload.OWNED_ANNOTATIONS, *(f"{p}*" for p in workload.OWNED_ANNOTATION_PREFIXES)])
    labels_owned = f"(k in {_cel_list(list(workload.OWNED_LABELS))} || k.startsWith('{workload.OWNED_KEY_PREFIX}'))"
    annotations_owned = (
        f"(k in {_cel_list(list(workload.OWNED_ANNOTATIONS))}"
        f" || {_cel_any('k', 'startsWith', workload.OWNED_ANNOTATION_PREFIXES)})"
    )
    return {
        "type": "object",
        "description": (
            "Shape the operator's pods (spec.workload: operator only): labels, annotations, scheduling (nodeSelector, "
            "tolerations, affinity, topologySpreadConstraints, priorityClassName, runtimeClassName), "
            "imagePullSecrets, extra volumes, and overrides of the serving and poller containers, merged by "
            "name. What the product owns (the model volume and path, the poller's identity and token, the security "
            "context, the selector labels, the poller's env, TF Serving's model flags) is refused by name."
        ),
        "properties": {
            "metadata": {
                "type": "object",
                "description": "Labels and annotations added to the pods.",
                "properties": {
                    "labels": _string_map(
                        f"Labels added to the pods; not {owned_labels} (the selectors use them).",
                        **{
                            "x-kubernetes-validations": [
                                _rule(
                                    f"!self.exists(k, {labels_owned})",
                                    f"labels {owned_labels} are the operator's",
                                    message_expression=(
                                        f"'label ' + self.filter(k, {labels_owned})[0] + ' is the operator\\'s "
                                        "(the Deployment\\'s selector and the operator\\'s watches use it)'"
                                    ),
                                )
                            ]
                        },
                    ),
                    "annotations": _string_map(
                        f"Annotations added to the pods (e.g. prometheus.io/scrape); not {owned_annotations}.",
                        **{
                            "x-kubernetes-validations": [
                                _rule(
                                    f"!self.exists(k, {annotations_owned})",
                                    f"annotations {owned_annotations} are the operator's",
                                    message_expression=(
                                        f"'annotation ' + self.filter(k, {annotations_owned})[0] + ' is the "
                                        "operator\\'s (its own keys, and the AppArmor and seccomp profiles of the "
                                        "restricted security context)'"
                                    ),
                                )
                            ]
                        },
                    ),
                },
            },
            "spec": {
                "type": "object",
                "description": "Pod fields, as in a Pod's spec, over the rendered ones.",
                "properties": {
                    "nodeSelector": _string_map(
                        "Node labels the pods must run on, e.g. {cloud.google.com/gke-accelerator: nvidia-l4}."
                    ),
                    "tolerations": {
                        "type": "array",
                        "maxItems": MAX_ITEMS,
                        "items": toleration(),
                        "description": "Taints the pods tolerate, e.g. GPU nodes' nvidia.com/gpu.",
                    },
                    "affinity": _opaque(
                        "Node and pod (anti-)affinity, as in a Pod (validated by the API server when the operator "
                        "applies the Deployment)."
                    ),
                    "topologySpreadConstraints": {
                        "type": "array",
                        "maxItems": MAX_ITEMS,
                        "items": _opaque("A topology spread constraint, as in a Pod."),
                        "description": (
                            "How the replicas spread over zones or nodes, as in a Pod (validated by the API server "
                            "when the operator applies the Deployment)."
                        ),
                    },
                    "priorityClassName": string_schema("The pods' PriorityClass.", maxLength=253),
                    "runtimeClassName": string_schema("The pods' RuntimeClass (e.g. for GPU runtimes).", maxLength=253),
                    "imagePullSecrets": {
                        "type": "array",
                        "maxItems": MAX_ITEMS,
                        "description": "Secrets of the namespace to pull private images with.",
                        "items": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {"name": string_schema("Secret name.", minLength=1, maxLength=253)},
                        },
                    },
                    "volumes": {
                        "type": "array",
                        "maxItems": MAX_ITEMS,
                        "items": volume(),
                        "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["name"],
                        "description": "Extra volumes, appended to the operator's (mount them in the serving container).",
                    },
                    "containers": {
                        "type": "array",
                        "maxItems": len(workload.CONTAINERS),
                        "items": container_override(),
                        "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["name"],
                        "description": "Overrides merged by name over the rendered serving and poller containers.",
                    },
                    "securityContext": _opaque("Refused: " + workload.OWNED_POD_FIELDS["securityContext"] + "."),
                    "serviceAccountName": string_schema(
                        "Refused: " + workload.OWNED_POD_FIELDS["serviceAccountName"] + "."
                    ),
                    "serviceAccount": string_schema("Refused: " + workload.OWNED_POD_FIELDS["serviceAccount"] + "."),
                    "automountServiceAccountToken": {
                        "type": "boolean",
                        "description": "Refused: " + workload.OWNED_POD_FIELDS["automountServiceAccountToken"] + ".",
                    },
                    "initContainers": {
                        "type": "array",
                        "items": _opaque("Refused."),
                        "description": "Refused: " + workload.OWNED_POD_FIELDS["initContainers"] + ".",
                    },
                },
                "x-kubernetes-validations": _owned_fields(workload.OWNED_POD_FIELDS, "spec.podTemplate.spec"),
            },
        },
    }


def service_account_schema() -> Schema:
    return {
        "type": "object",
        "description": "The poller's ServiceAccount NAME-poller (both workload modes).",
        "properties": {
            "annotations": _string_map(
                "Annotations of the ServiceAccount, e.g. {iam.gke.io/gcp-service-account: "
                "poller@PROJECT.iam.gserviceaccount.com} for GKE Workload Identity; not "
                f"{workload.OWNED_KEY_PREFIX}*.",
                **{
                    "x-kubernetes-validations": [
                        _rule(
                            f"!self.exists(k, k.startsWith('{workload.OWNED_KEY_PREFIX}'))",
                            f"annotations {workload.OWNED_KEY_PREFIX}* are the operator's",
                        )
                    ]
                },
            )
        },
    }


def _count_or_percent(description: str) -> Schema:
    return {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-int-or-string": True,
        "description": description,
        "x-kubernetes-validations": [
            _rule(
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
            _rule(
                "has(self.minAvailable) != has(self.maxUnavailable)",
                "spec.disruptionBudget needs exactly one of minAvailable or maxUnavailable",
            )
        ],
    }


def operator_mode_only_rules() -> list[Schema]:
    external = f"has(self.workload) && self.workload == '{names.WORKLOAD_EXTERNAL}'"
    why = "shape your own workload (spec.workload: external: the operator renders no Deployment)"
    return [
        _rule(
            f"!({external}) || !has(self.podTemplate)",
            f"spec.podTemplate applies to operator mode only: {why}",
            field_path=".podTemplate",
        ),
        _rule(
            f"!({external}) || !has(self.disruptionBudget)",
            "spec.disruptionBudget applies to operator mode only: give your own workload a PodDisruptionBudget",
            field_path=".disruptionBudget",
        ),
        _rule(
            f"!({external}) || !has(self.serving) || !has(self.serving.args)",
            f"spec.serving.args applies to operator mode only: {why}",
            field_path=".serving.args",
        ),
        _rule(
            f"!({external}) || !has(self.serving) || !has(self.serving.monitoring) || !self.serving.monitoring",
            f"spec.serving.monitoring applies to operator mode only: {why}",
            field_path=".serving.monitoring",
        ),
    ]
