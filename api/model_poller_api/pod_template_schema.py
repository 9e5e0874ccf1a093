"""spec.podTemplate: labels, annotations, scheduling, extra volumes and container overrides
of the operator's pods; what the product owns is refused by name."""

from __future__ import annotations

from model_poller_api import workload
from model_poller_api.container_override_schema import container_override
from model_poller_api.schema_blocks import (
    MAX_ITEMS,
    Schema,
    cel_any,
    cel_list,
    cel_rule,
    opaque,
    owned_fields,
    string_map,
    string_schema,
)
from model_poller_api.volume_schema import volume


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
            cel_rule(
                "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                "value must be empty when operator is Exists",
                field_path=".value",
            ),
            cel_rule(
                "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
                "operator must be Exists when key is empty",
                field_path=".operator",
            ),
            cel_rule(
                "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                "tolerationSeconds applies to effect NoExecute only",
                field_path=".tolerationSeconds",
            ),
        ],
    }


def pod_template_schema() -> Schema:
    owned_labels = ", ".join(workload.OWNED_LABELS) + f", {workload.OWNED_KEY_PREFIX}*"
    owned_annotations = ", ".join([*workload.OWNED_ANNOTATIONS, *(f"{p}*" for p in workload.OWNED_ANNOTATION_PREFIXES)])
    labels_owned = f"(k in {cel_list(list(workload.OWNED_LABELS))} || k.startsWith('{workload.OWNED_KEY_PREFIX}'))"
    annotations_owned = (
        f"(k in {cel_list(list(workload.OWNED_ANNOTATIONS))}"
        f" || {cel_any('k', 'startsWith', workload.OWNED_ANNOTATION_PREFIXES)})"
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
                    "labels": string_map(
                        f"Labels added to the pods; not {owned_labels} (the selectors use them).",
                        **{
                            "x-kubernetes-validations": [
                                cel_rule(
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
                    "annotations": string_map(
                        f"Annotations added to the pods (e.g. prometheus.io/scrape); not {owned_annotations}.",
                        **{
                            "x-kubernetes-validations": [
                                cel_rule(
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
                    "nodeSelector": string_map(
                        "Node labels the pods must run on, e.g. {cloud.google.com/gke-accelerator: nvidia-l4}."
                    ),
                    "tolerations": {
                        "type": "array",
                        "maxItems": MAX_ITEMS,
                        "items": toleration(),
                        "description": "Taints the pods tolerate, e.g. GPU nodes' nvidia.com/gpu.",
                    },
                    "affinity": opaque(
                        "Node and pod (anti-)affinity, as in a Pod (validated by the API server when the operator "
                        "applies the Deployment)."
                    ),
                    "topologySpreadConstraints": {
                        "type": "array",
                        "maxItems": MAX_ITEMS,
                        "items": opaque("A topology spread constraint, as in a Pod."),
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
                    "securityContext": opaque("Refused: " + workload.OWNED_POD_FIELDS["securityContext"] + "."),
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
                        "items": opaque("Refused."),
                        "description": "Refused: " + workload.OWNED_POD_FIELDS["initContainers"] + ".",
                    },
                },
                "x-kubernetes-validations": owned_fields(workload.OWNED_POD_FIELDS, "spec.podTemplate.spec"),
            },
        },
    }
