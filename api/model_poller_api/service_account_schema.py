"""spec.serviceAccount: the annotations of the poller's ServiceAccount."""

from __future__ import annotations

from model_poller_api import workload
from model_poller_api.schema_blocks import (
    Schema,
    cel_rule,
    string_map,
)


def service_account_schema() -> Schema:
    return {
        "type": "object",
        "description": "The poller's ServiceAccount NAME-poller (both workload modes).",
        "properties": {
            "annotations": string_map(
                "Annotations of the ServiceAccount, e.g. {iam.gke.io/gcp-service-account: "
                "poller@PROJECT.iam.gserviceaccount.com} for GKE Workload Identity; not "
                f"{workload.OWNED_KEY_PREFIX}*.",
                **{
                    "x-kubernetes-validations": [
                        cel_rule(
                            f"!self.exists(k, k.startsWith('{workload.OWNED_KEY_PREFIX}'))",
                            f"annotations {workload.OWNED_KEY_PREFIX}* are the operator's",
                        )
                    ]
                },
            )
        },
    }
