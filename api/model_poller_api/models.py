"""Typed views of a ModelDeployment's spec and status.

The API server validates the spec against the CRD schema (``crd.py``); these dataclasses
read an already-validated object and apply the documented defaults, so the operator and
the poller agree on what an omitted field means.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from model_poller_api import names
from model_poller_api.defaults import DEFAULT_KEEP, DEFAULT_POLL_INTERVAL, default_poller_image

DEFAULT_SERVING_IMAGE = "tensorflow/serving:2.19.0"
DEFAULT_REPLICAS = 1
# Who runs the tensorflow/serving pods: the operator (its own Deployment), or the user
# (their own pods, labelled, get the poller injected by the admission webhook).
WORKLOADS = (names.WORKLOAD_OPERATOR, names.WORKLOAD_EXTERNAL)
DEFAULT_WORKLOAD = names.WORKLOAD_OPERATOR

_DURATION = re.compile(r"^(?:([0-9]+)h)?(?:([0-9]+)m(?!s))?(?:([0-9]+)s)?$")
DURATION_PATTERN = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"


def parse_duration(text: str) -> int:
    """`90s`, `2m`, `1h30m` -> seconds. Raises ValueError naming the bad value."""
    match = _DURATION.match(text.strip())
    if not text.strip() or not match or not any(match.groups()):
        raise ValueError(f"invalid duration {text!r}: use e.g. 30s, 5m, 1h")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


@dataclass(frozen=True)
class PubSub:
    topic: str | None = None
    subscription: str | None = None


@dataclass(frozen=True)
class Source:
    uri: str
    pubsub: PubSub | None = None
    poll_interval: str = DEFAULT_POLL_INTERVAL
    credentials_secret: str | None = None


@dataclass(frozen=True)
class VersionPolicy:
    """Either keep the newest ``keep`` versions, or exactly the ``pinned`` ones."""

    keep: int | None = DEFAULT_KEEP
    pinned: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Container:
    image: str
    resources: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Serving(Container):
    """spec.serving: the TF Serving container, with flags appended to the rendered ones."""

    args: tuple[str, ...] = ()
    # Render TF Serving's monitoring config: Prometheus metrics on the REST port.
    monitoring: bool = False


@dataclass(frozen=True)
class ContainerOverride:
    """One item of spec.podTemplate.spec.containers, merged by name over a rendered container."""

    name: str
    args: tuple[str, ...] = ()
    env: tuple[Mapping[str, Any], ...] = ()
    resources: Mapping[str, Any] = field(default_factory=dict)
    volume_mounts: tuple[Mapping[str, Any], ...] = ()
    # Any other field the object holds (stored before the CRD refused it): the renderer
    # refuses these by name instead of dropping them silently.
    other: tuple[str, ...] = ()

    @classmethod
    def from_object(cls, item: Mapping[str, Any]) -> ContainerOverride:
        known = ("name", "args", "env", "resources", "volumeMounts")
        return cls(
            name=str(item.get("name", "")),
            args=tuple(str(a) for a in item.get("args") or ()),
            env=tuple(item.get("env") or ()),
            resources=item.get("resources") or {},
            volume_mounts=tuple(item.get("volumeMounts") or ()),
            other=tuple(sorted(k for k in item if k not in known)),
        )


@dataclass(frozen=True)
class PodTemplate:
    """spec.podTemplate: labels, annotations and pod fields over the operator's own pods."""

    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    # The pod-level fields as given (nodeSelector, tolerations, affinity, volumes...).
    pod: Mapping[str, Any] = field(default_factory=dict)
    containers: tuple[ContainerOverride, ...] = ()

    @classmethod
    def from_object(cls, template: Mapping[str, Any]) -> PodTemplate:
        metadata = template.get("metadata") or {}
        pod = dict(template.get("spec") or {})
        containers = pod.pop("containers", None) or ()
        return cls(
            labels=metadata.get("labels") or {},
            annotations=metadata.get("annotations") or {},
            pod=pod,
            containers=tuple(ContainerOverride.from_object(c) for c in containers),
        )

    def container(self, name: str) -> ContainerOverride | None:
        return next((c for c in self.containers if c.name == name), None)


@dataclass(frozen=True)
class DisruptionBudget:
    """spec.disruptionBudget: exactly one of minAvailable or maxUnavailable (int or "N%")."""

    min_available: int | str | None = None
    max_unavailable: int | str | None = None


@dataclass(frozen=True)
class Storage:
    size_limit: str | None = None
    medium: str | None = None


@dataclass(frozen=True)
class ModelDeploymentSpec:
    model_name: str
    replicas: int
    source: Source
    versions: VersionPolicy
    serving: Serving
    poller: Container
    storage: Storage
    workload: str = DEFAULT_WORKLOAD
    pod_template: PodTemplate = field(default_factory=PodTemplate)
    # Annotations of the poller's ServiceAccount (e.g. iam.gke.io/gcp-service-account).
    service_account_annotations: Mapping[str, str] = field(default_factory=dict)
    disruption_budget: DisruptionBudget | None = None

    @property
    def external(self) -> bool:
        """Whether the user runs the pods (the operator renders no Deployment or Service)."""
        return self.workload == names.WORKLOAD_EXTERNAL

    @classmethod
    def from_object(cls, name: str, spec: Mapping[str, Any]) -> ModelDeploymentSpec:
        """Read ``spec`` of ModelDeployment ``name`` with every default applied."""
        src = spec.get("source") or {}
        pubsub = src.get("pubsub")
        versions = spec.get("versions") or {}
        pinned = versions.get("pinned")
        serving = spec.get("serving") or {}
        poller = spec.get("poller") or {}
        storage = spec.get("storage") or {}
        return cls(
            model_name=spec.get("modelName") or name,
            replicas=int(spec.get("replicas", DEFAULT_REPLICAS)),
            source=Source(
                uri=src["uri"],
                pubsub=PubSub(topic=pubsub.get("topic"), subscription=pubsub.get("subscription")) if pubsub else None,
                poll_interval=src.get("pollInterval") or DEFAULT_POLL_INTERVAL,
                credentials_secret=src.get("credentialsSecret"),
            ),
            versions=VersionPolicy(keep=None, pinned=tuple(sorted(set(pinned))))
            if pinned
            else VersionPolicy(keep=int(versions.get("keep", DEFAULT_KEEP))),
            serving=Serving(
                image=serving.get("image") or DEFAULT_SERVING_IMAGE,
                resources=serving.get("resources") or {},
                args=tuple(str(a) for a in serving.get("args") or ()),
                monitoring=bool(serving.get("monitoring", False)),
            ),
            poller=Container(
                image=poller.get("image") or default_poller_image(),
                resources=poller.get("resources") or {},
            ),
            storage=Storage(size_limit=_quantity(storage.get("sizeLimit")), medium=storage.get("medium")),
            workload=str(spec.get("workload") or DEFAULT_WORKLOAD),
            pod_template=PodTemplate.from_object(spec.get("podTemplate") or {}),
            service_account_annotations=(spec.get("serviceAccount") or {}).get("annotations") or {},
            disruption_budget=_disruption_budget(spec.get("disruptionBudget")),
        )


def _disruption_budget(budget: Mapping[str, Any] | None) -> DisruptionBudget | None:
    if not budget:
        return None
    return DisruptionBudget(min_available=budget.get("minAvailable"), max_unavailable=budget.get("maxUnavailable"))


def _quantity(value: Any) -> str | None:
    return None if value is None else str(value)


class ReportReason(str, enum.Enum):
    """Why a poller reports an error: set by the poller from its exception types, mapped
    to the Degraded condition's reason by the operator (never parsed from the message)."""

    # A version at the source was refused (hostile or broken upload, over a limit).
    VERSION_REJECTED = "VersionRejected"
    # TF Serving failed to load a version inside the policy.
    LOAD_FAILED = "LoadFailed"
    # The source could not be listed or read (network, 5xx, timeout).
    SOURCE_UNREACHABLE = "SourceUnreachable"
    # The poller's identity may not read the source (401/403).
    ACCESS_DENIED = "AccessDenied"
    # The bucket (or the file:// directory) does not exist.
    SOURCE_NOT_FOUND = "SourceNotFound"
    # A version in spec.versions.pinned is not a valid version at the source.
    PINNED_VERSION_MISSING = "PinnedVersionMissing"
    # The model dir could not be written (disk full, read-only, I/O error).
    INSTALL_FAILED = "InstallFailed"

    @classmethod
    def parse(cls, value: Any) -> ReportReason | None:
        """The member named by ``value``; None for None or an unknown value (a newer poller)."""
        try:
            return cls(value) if value is not None else None
        except ValueError:
            return None


# Most urgent first: which problem a poller's entry shows when it has several, and which
# reason the operator's Degraded condition takes when pollers report different ones.
REPORT_REASON_PRIORITY: tuple[ReportReason, ...] = (
    ReportReason.ACCESS_DENIED,
    ReportReason.SOURCE_NOT_FOUND,
    ReportReason.SOURCE_UNREACHABLE,
    ReportReason.INSTALL_FAILED,
    ReportReason.PINNED_VERSION_MISSING,
    ReportReason.LOAD_FAILED,
    ReportReason.VERSION_REJECTED,
)


@dataclass(frozen=True)
class PollerReport:
    """What one pod's poller writes under ``status.pollers[<pod name>]``.

    ``error`` is for humans; ``reason`` says what kind of error it is (None with no error).
    """

    versions: tuple[int, ...] = ()
    serving: int | None = None
    last_sync: str | None = None
    error: str | None = None
    latest: int | None = None
    reason: ReportReason | None = None

    def to_status(self) -> dict[str, Any]:
        return {
            "versions": list(self.versions),
            "serving": self.serving,
            "latest": self.latest,
            "lastSync": self.last_sync,
            "error": self.error,
            "reason": self.reason.value if self.reason is not None else None,
        }

    @classmethod
    def from_status(cls, entry: Mapping[str, Any]) -> PollerReport:
        return cls(
            versions=tuple(int(v) for v in entry.get("versions") or ()),
            serving=entry.get("serving"),
            last_sync=entry.get("lastSync"),
            error=entry.get("error"),
            latest=entry.get("latest"),
            reason=ReportReason.parse(entry.get("reason")),
        )


# Status field names, written by the operator (aggregates) and the pollers (their entry).
STATUS_OBSERVED_GENERATION = "observedGeneration"
STATUS_CONDITIONS = "conditions"
STATUS_LATEST_VERSION = "latestVersion"
STATUS_SERVING_VERSION = "servingVersion"
STATUS_REPLICAS = "replicas"
STATUS_READY_REPLICAS = "readyReplicas"
STATUS_SELECTOR = "selector"
STATUS_MODEL_NAME = "modelName"
STATUS_POLLERS = "pollers"

CONDITION_READY = "Ready"
CONDITION_SYNCED = "Synced"
CONDITION_DEGRADED = "Degraded"
