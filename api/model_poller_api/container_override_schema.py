"""spec.podTemplate.spec.containers: overrides of the serving and poller containers,
merged by name, and their env."""

from __future__ import annotations

from model_poller_api import workload
from model_poller_api.container_schema import serving_args
from model_poller_api.schema_blocks import (
    MAX_ITEMS,
    MAX_STRING,
    Schema,
    cel_any,
    cel_list,
    cel_rule,
    opaque,
    resources,
    string_schema,
)
from model_poller_api.volume_schema import volume_mount


def env_var() -> Schema:
    value_from = {
        name: opaque(f"As in a container's env: {name}.")
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
                "properties": {**value_from, "secretKeyRef": opaque("Refused.")},
            },
        },
        "x-kubernetes-validations": [
            cel_rule(
                "!has(self.valueFrom) || !has(self.valueFrom.secretKeyRef)",
                "secretKeyRef is refused: Secrets reach the pods only as spec.source.credentialsSecret, "
                "mounted into the poller (the operator's admission policy allows no Secret in env)",
                field_path=".valueFrom.secretKeyRef",
            )
        ],
    }


# Compared upper-cased, as workload.owned_env does (http_proxy is a proxy too).
_OWNED_ENV_NAME = (
    f"(e.name.upperAscii() in {cel_list(list(workload.OWNED_ENV))}"
    f" || {cel_any('e.name.upperAscii()', 'startsWith', workload.OWNED_ENV_PREFIXES)}"
    f" || {cel_any('e.name.upperAscii()', 'endsWith', workload.OWNED_ENV_SUFFIXES)})"
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
            "securityContext": opaque("Refused: the containers' security context is the operator's."),
        },
        "x-kubernetes-validations": [
            cel_rule(
                "!has(self.securityContext)",
                "the containers' security context is the operator's (the restricted PodSecurity baseline: non-root, "
                "no privilege escalation, every capability dropped, RuntimeDefault seccomp, read-only root)",
                field_path=".securityContext",
            ),
            cel_rule(
                f"self.name != '{poller}' || !has(self.args)",
                "the poller takes no args: its flags come from the ModelDeployment's spec",
                field_path=".args",
            ),
            cel_rule(
                f"self.name != '{poller}' || !has(self.volumeMounts)",
                "the poller takes no volumeMounts: it needs only the model volume it has",
                field_path=".volumeMounts",
            ),
            cel_rule(
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
