"""spec.podTemplate.spec.volumes and the serving container's volumeMounts: extra volumes,
never the operator's own names and paths."""

from __future__ import annotations

from model_poller_api import workload
from model_poller_api.schema_blocks import (
    MAX_ITEMS,
    MAX_STRING,
    Schema,
    cel_list,
    cel_rule,
    opaque,
    string_schema,
)

_OWNED_VOLUMES = cel_list(list(workload.OWNED_VOLUMES))
_OWNED_PATHS = cel_list(list(workload.OWNED_MOUNT_PATHS))


def volume() -> Schema:
    allowed = " or ".join(workload.VOLUME_SOURCES)
    projected_sources = {
        name: opaque(f"A {name} source, as in a Pod's projected volume.") for name in workload.PROJECTED_SOURCES
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
            "emptyDir": opaque("An emptyDir, e.g. {medium: Memory, sizeLimit: 1Gi} for /dev/shm."),
            "configMap": opaque("A ConfigMap of the namespace, e.g. {name: batching-config}."),
            "downwardAPI": opaque("Fields of the pod as files."),
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
                                "secret": opaque("Refused."),
                                "serviceAccountToken": opaque("Refused."),
                            },
                            "x-kubernetes-validations": [
                                cel_rule(
                                    "!has(self.secret)",
                                    "a projected Secret is refused: Secrets reach the pods only as "
                                    "spec.source.credentialsSecret, mounted into the poller",
                                    field_path=".secret",
                                ),
                                cel_rule(
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
            "secret": opaque("Refused: Secrets reach the pods only as spec.source.credentialsSecret."),
            "hostPath": opaque("Refused: the pods run under the restricted PodSecurity level."),
        },
        "x-kubernetes-validations": [
            cel_rule(
                f"!(self.name in {_OWNED_VOLUMES})",
                "the volume name is the operator's",
                field_path=".name",
                message_expression=(
                    "'volume name ' + self.name + ' is the operator\\'s (its volumes: "
                    + ", ".join(workload.OWNED_VOLUMES)
                    + "): choose another name'"
                ),
            ),
            cel_rule(
                "!has(self.secret)",
                "Secret volumes are refused: Secrets reach the pods only as spec.source.credentialsSecret, "
                "mounted into the poller (the operator's admission policy allows no other)",
                field_path=".secret",
            ),
            cel_rule(
                "!has(self.hostPath)",
                "hostPath volumes are refused: the pods run under the restricted PodSecurity level",
                field_path=".hostPath",
            ),
            cel_rule(
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
            cel_rule(
                f"!(self.name in {_OWNED_VOLUMES})",
                "the volume is the operator's",
                field_path=".name",
                message_expression=(
                    "'volume ' + self.name + ' is the operator\\'s: the serving container already mounts what it "
                    "needs of it'"
                ),
            ),
            cel_rule(
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
