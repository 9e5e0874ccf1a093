"""Prometheus metrics, on a registry owned by one poller (no module globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 300)
_BYTES_BUCKETS = tuple(float(1 << n) for n in range(10, 41, 3))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.versions_installed = Gauge(
            "model_poller_versions_installed", "Number of versions in the model dir.", registry=r
        )
        self.latest_installed = Gauge(
            "model_poller_latest_installed_version", "Newest version in the model dir (-1: none).", registry=r
        )
        self.latest_at_source = Gauge(
            "model_poller_latest_source_version", "Newest valid version at the source (-1: none).", registry=r
        )
        self.installs = Counter("model_poller_installs", "Versions installed.", registry=r)
        self.removals = Counter("model_poller_removals", "Versions removed (outside the policy).", registry=r)
        self.install_seconds = Histogram(
            "model_poller_install_duration_seconds",
            "Time to download, verify, unpack and rename one version.",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.install_bytes = Histogram(
            "model_poller_install_bytes",
            "Bytes downloaded per installed version.",
            buckets=_BYTES_BUCKETS,
            registry=r,
        )
        self.downloaded_bytes = Counter(
            "model_poller_downloaded_bytes", "Bytes downloaded for installed versions.", registry=r
        )
        self.rejections = Counter("model_poller_rejections", "Versions rejected, by reason.", ["reason"], registry=r)
        self.install_attempts = Counter(
            "model_poller_install_attempts", "Installs started (each one downloads the version).", registry=r
        )
        self.failures = Counter(
            "model_poller_install_failures", "Installs that failed and will be retried (with backoff).", registry=r
        )
        self.unexpected_errors = Counter(
            "model_poller_install_unexpected_errors",
            "Installs that failed with an error no handler expected (a bug: the log holds its traceback); "
            "also counted in model_poller_install_failures.",
            registry=r,
        )
        self.sync_errors = Counter(
            "model_poller_sync_errors",
            "Syncs that did not finish (source not listed, or an unexpected error).",
            registry=r,
        )
        self.serving_version = Gauge(
            "model_poller_serving_version",
            "Highest version inside the policy that TF Serving reports AVAILABLE (-1: none; with --serving-url).",
            registry=r,
        )
        self.load_failures = Gauge(
            "model_poller_load_failures",
            "Versions inside the policy that TF Serving failed to load (with --serving-url).",
            registry=r,
        )
        self.status_writes = Counter(
            "model_poller_status_writes",
            "Writes of this pod's status.pollers entry, by outcome (ok, retry, forbidden, not_found).",
            ["outcome"],
            registry=r,
        )
        self.policy_watch_errors = Counter(
            "model_poller_policy_watch_errors",
            "Failed reads/watches of the ModelDeployment's spec.versions, by outcome (retry, forbidden, not_found).",
            ["outcome"],
            registry=r,
        )
        self.notifications = Counter(
            "model_poller_notifications", "Pub/Sub notifications received, by outcome.", ["outcome"], registry=r
        )
        self.notification_latency = Histogram(
            "model_poller_notification_to_installed_seconds",
            "From the notification's publish time to the version being installed.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.last_sync = Gauge(
            "model_poller_last_sync_timestamp_seconds", "Unix time of the last completed sync.", registry=r
        )
        self.last_sync_success = Gauge(
            "model_poller_last_sync_success", "1 if the last sync left the policy's versions on disk.", registry=r
        )
        self.latest_installed.set(-1)
        self.serving_version.set(-1)
        self.latest_at_source.set(-1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
