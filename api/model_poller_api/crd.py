"""The ModelDeployment CustomResourceDefinition, built from the names in this package.

`crds/modeldeployments.modelpoller.dev.yaml` and the Helm chart's copy are generated from
`render_crd()` by `python -m model_poller_api.crd`; a test keeps them equal.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from model_poller_api import defaults, models, names
from model_poller_api.container_schema import poller_schema, serving_schema
from model_poller_api.disruption_budget_schema import disruption_budget_schema
from model_poller_api.formats import MODEL_NAME_PATTERN, SUBSCRIPTION_PATTERN, TOPIC_PATTERN
from model_poller_api.pod_template_schema import pod_template_schema
from model_poller_api.schema_blocks import QUANTITY_PATTERN, string_schema
from model_poller_api.service_account_schema import service_account_schema
from model_poller_api.workload_mode_schema import operator_mode_only_rules

Schema = dict[str, Any]

# A TF Serving model name becomes a path segment and a URL segment.


def spec_schema() -> Schema:
    return {
        "type": "object",
        "description": (
            "What you want: where the model versions live and which to keep, how many TF Serving replicas "
            "serve them, and the shape of their pods."
        ),
        "required": ["source"],
        "x-kubernetes-validations": operator_mode_only_rules(),
        "properties": {
            "modelName": string_schema(
                "TF Serving model name (--model_name); default: metadata.name.",
                pattern=MODEL_NAME_PATTERN,
                maxLength=253,
            ),
            "replicas": {
                "type": "integer",
                "format": "int32",
                "minimum": 0,
                "default": models.DEFAULT_REPLICAS,
                "description": "Number of tensorflow/serving pods.",
            },
            "source": {
                "type": "object",
                "description": "Where model versions live.",
                "required": ["uri"],
                "properties": {
                    "uri": string_schema(
                        "gs://bucket/prefix/ or file:///dir/; versions are <digits>.zip, "
                        "<digits>.tar.gz, <digits>.tgz or <digits>/ folders with a _READY marker.",
                        minLength=1,
                        **{
                            "x-kubernetes-validations": [
                                {
                                    "rule": f"self.startsWith('{names.SCHEME_GCS}') || self.startsWith('{names.SCHEME_FILE}')",
                                    "message": f"source.uri must start with {names.SCHEME_GCS} or {names.SCHEME_FILE}",
                                    "reason": "FieldValueInvalid",
                                },
                                {
                                    "rule": f"!self.startsWith('{names.SCHEME_GCS}') || self.matches('^{names.SCHEME_GCS}[a-z0-9][a-z0-9._-]*[a-z0-9](/.*)?$')",
                                    "message": "source.uri must name a bucket: gs://<bucket>/<prefix>/",
                                    "reason": "FieldValueInvalid",
                                },
                            ]
                        },
                    ),
                    "pubsub": {
                        "type": "object",
                        "description": "Notifications that wake the poller up; without it the poller only lists.",
                        "properties": {
                            "topic": string_schema(
                                "Each replica makes its own subscription on this topic, so every replica hears of every version.",
                                pattern=TOPIC_PATTERN,
                            ),
                            "subscription": string_schema(
                                "A shared subscription: one replica per message (the poll interval is then the safety net).",
                                pattern=SUBSCRIPTION_PATTERN,
                            ),
                        },
                        "x-kubernetes-validations": [
                            {
                                "rule": "has(self.topic) != has(self.subscription)",
                                "message": "source.pubsub needs exactly one of topic or subscription",
                            }
                        ],
                    },
                    "pollInterval": string_schema(
                        "How often to list the source as a safety net (e.g. 30s, 5m).",
                        pattern=models.DURATION_PATTERN,
                        default=defaults.DEFAULT_POLL_INTERVAL,
                        **{
                            "x-kubernetes-validations": [
                                {"rule": "self != ''", "message": "source.pollInterval must not be empty"}
                            ]
                        },
                    ),
                    "credentialsSecret": string_schema(
                        "Secret with a service-account key (key.json); default: ambient credentials.",
                        minLength=1,
                    ),
                },
            },
            "versions": {
                "type": "object",
                "description": "Which versions are kept on disk: the newest `keep`, or exactly `pinned`.",
                "properties": {
                    "keep": {
                        "type": "integer",
                        "format": "int32",
                        "minimum": 1,
                        "description": f"Keep the newest N valid versions (default {defaults.DEFAULT_KEEP}).",
                    },
                    "pinned": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "integer", "format": "int64", "minimum": 0},
                        "x-kubernetes-list-type": "set",
                        "description": "Exactly these versions (a rollback).",
                    },
                },
                "x-kubernetes-validations": [
                    {
                        "rule": "!(has(self.keep) && has(self.pinned))",
                        "message": "versions.keep and versions.pinned are mutually exclusive",
                    }
                ],
            },
            "workload": {
                "type": "string",
                "enum": list(models.WORKLOADS),
                "default": models.DEFAULT_WORKLOAD,
                "description": (
                    "Who runs the tensorflow/serving pods. operator (default): the operator's own "
                    "Deployment and Service. external: your own pods; those labelled "
                    f"{names.LABEL_MODEL_DEPLOYMENT}=<this name> in this namespace get the poller injected "
                    "by the operator's admission webhook, and spec.replicas and spec.serving are not used. "
                    "Immutable: delete and recreate the ModelDeployment to change it."
                ),
                "x-kubernetes-validations": [
                    {
                        "rule": "self == oldSelf",
                        "message": "spec.workload is immutable: delete and recreate the ModelDeployment to change it",
                    }
                ],
            },
            "serving": serving_schema(),
            "poller": poller_schema(),
            "podTemplate": pod_template_schema(),
            "serviceAccount": service_account_schema(),
            "disruptionBudget": disruption_budget_schema(),
            "storage": {
                "type": "object",
                "description": "The emptyDir shared by the poller and TF Serving.",
                "properties": {
                    "sizeLimit": {
                        "x-kubernetes-int-or-string": True,
                        "pattern": QUANTITY_PATTERN,
                        "description": "Size limit of the emptyDir, e.g. 20Gi.",
                    },
                    "medium": {
                        "type": "string",
                        "enum": ["", "Memory"],
                        "description": "emptyDir medium: '' (node disk, default) or Memory.",
                    },
                },
            },
        },
    }


def status_schema() -> Schema:
    version = {"type": "integer", "format": "int64"}
    return {
        "type": "object",
        "properties": {
            models.STATUS_OBSERVED_GENERATION: {"type": "integer", "format": "int64"},
            models.STATUS_CONDITIONS: {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": {
                    "type": "object",
                    "required": ["type", "status"],
                    "properties": {
                        "type": {"type": "string"},
                        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                        "reason": {"type": "string"},
                        "message": {"type": "string"},
                        "observedGeneration": {"type": "integer", "format": "int64"},
                        "lastTransitionTime": {"type": "string", "format": "date-time"},
                    },
                },
            },
            models.STATUS_MODEL_NAME: {"type": "string"},
            models.STATUS_LATEST_VERSION: version,
            models.STATUS_SERVING_VERSION: version,
            models.STATUS_REPLICAS: {"type": "integer", "format": "int32"},
            models.STATUS_READY_REPLICAS: {"type": "integer", "format": "int32"},
            models.STATUS_SELECTOR: {"type": "string", "description": "Pod label selector (scale subresource)."},
            models.STATUS_POLLERS: {
                "type": "object",
                "description": "One entry per pod, written by that pod's poller.",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "versions": {"type": "array", "items": version},
                        "serving": {**version, "nullable": True},
                        "latest": {**version, "nullable": True},
                        "lastSync": {"type": "string", "format": "date-time", "nullable": True},
                        "error": {"type": "string", "nullable": True},
                        # No enum: a newer poller image may report a reason this CRD does not
                        # list yet; the operator maps unknown reasons to PollerError.
                        "reason": {
                            "type": "string",
                            "nullable": True,
                            "description": "What kind of error `error` is (one of "
                            + ", ".join(r.value for r in models.ReportReason)
                            + "); null with no error.",
                        },
                    },
                },
            },
        },
    }


def printer_columns() -> list[Schema]:
    return [
        {"name": "Model", "type": "string", "jsonPath": f".status.{models.STATUS_MODEL_NAME}"},
        {"name": "Source", "type": "string", "jsonPath": ".spec.source.uri"},
        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
        {"name": "Ready", "type": "integer", "jsonPath": f".status.{models.STATUS_READY_REPLICAS}"},
        {"name": "Latest", "type": "integer", "jsonPath": f".status.{models.STATUS_LATEST_VERSION}"},
        {"name": "Serving", "type": "integer", "jsonPath": f".status.{models.STATUS_SERVING_VERSION}"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def render_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": names.CRD_NAME},
        "spec": {
            "group": names.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": names.KIND,
                "listKind": names.LIST_KIND,
                "plural": names.PLURAL,
                "singular": names.SINGULAR,
                "shortNames": list(names.SHORT_NAMES),
            },
            "versions": [
                {
                    "name": names.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A TF Serving model kept in sync with a GCS bucket by the model-poller sidecar.",
                            "required": ["spec"],
                            "x-kubernetes-validations": [
                                {
                                    "rule": f"self.metadata.name.size() <= {names.MAX_NAME_LENGTH}"
                                    f" && self.metadata.name.matches('{names.NAME_PATTERN}')",
                                    "message": "metadata.name must be a DNS-1035 label of at most "
                                    f"{names.MAX_NAME_LENGTH} characters (lower case letters, digits and '-', "
                                    "starting with a letter): it names the model's Service",
                                }
                            ],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": f".status.{models.STATUS_REPLICAS}",
                            "labelSelectorPath": f".status.{models.STATUS_SELECTOR}",
                        },
                    },
                    "additionalPrinterColumns": printer_columns(),
                }
            ],
        },
    }


HEADER = "# Generated by `python -m model_poller_api.crd`; edit api/model_poller_api/crd.py instead.\n"


class _Dumper(yaml.SafeDumper):
    """Writes shared sub-schemas out in full: no &id001 anchors in a file people read."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_crd_yaml() -> str:
    return HEADER + yaml.dump(render_crd(), Dumper=_Dumper, sort_keys=False, width=120)


def main(argv: list[str]) -> int:
    text = render_crd_yaml()
    for path in argv or ["-"]:
        if path == "-":
            sys.stdout.write(text)
        else:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
