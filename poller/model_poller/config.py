"""Typed settings, and how flags, MODEL_POLLER_* variables and the proof of concept's
environment (PROJECT_ID, SUBSCRIPTION, SAVE_DIR) become them."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, TypeVar

from model_poller_api.models import parse_duration
from model_poller_api.names import POLLER_HTTP_PORT

from model_poller.errors import ConfigError
from model_poller.extract import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, DEFAULT_MAX_RATIO, Limits
from model_poller.policy import DEFAULT_KEEP, Policy
from model_poller.sources import Transfer, validate_uri
from model_poller.sources.base import DEFAULT_READ_TIMEOUT, DEFAULT_SLICE, DEFAULT_STREAMS
from model_poller.status_writer import DEFAULT_HEARTBEAT, MIN_HEARTBEAT
from model_poller.versions import parse_version

_T = TypeVar("_T")

DEFAULT_POLL_INTERVAL = 60.0
# While Pub/Sub notifications are down, list this often: uploads are then found within
# seconds, not a poll interval later.
DEFAULT_FALLBACK_POLL_INTERVAL = 10.0
LOG_FORMATS = ("text", "json")
# Download connections: beyond this, more streams only add request overhead and sockets.
MAX_STREAMS = 64
# Ranged requests smaller than this spend more on the request than on the bytes.
MIN_SLICE = 1 << 20
_TOPIC = re.compile(r"^projects/[^/]+/topics/[^/]+$")
_SUBSCRIPTION = re.compile(r"^projects/[^/]+/subscriptions/[^/]+$")
_SIZE = re.compile(r"^(\d+)\s*([KMGT]i?B?|B)?$", re.IGNORECASE | re.ASCII)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
          "KI": 1 << 10, "MI": 1 << 20, "GI": 1 << 30, "TI": 1 << 40}


@dataclass(frozen=True)
class Settings:
    source: str
    model_dir: Path
    policy: Policy = field(default_factory=lambda: Policy(keep=DEFAULT_KEEP))
    subscription: str | None = None
    topic: str | None = None
    project: str | None = None
    poll_interval: float = DEFAULT_POLL_INTERVAL
    fallback_poll_interval: float = DEFAULT_FALLBACK_POLL_INTERVAL
    once: bool = False
    report_to: str | None = None
    status_heartbeat: float = DEFAULT_HEARTBEAT
    serving_url: str | None = None
    model_name: str | None = None
    http_port: int = POLLER_HTTP_PORT
    limits: Limits = field(default_factory=Limits)
    storage_limit: int | None = None
    transfer: Transfer = field(default_factory=Transfer)
    log_format: str = "text"
    log_level: str = "INFO"
    pod_name: str = field(default_factory=socket.gethostname)


def parse_size(text: str) -> int:
    """``1000``, ``50Gi``, ``50GiB``, ``10M`` -> bytes."""
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"invalid size {text!r}: use bytes or e.g. 500Mi, 50Gi")
    unit = (match.group(2) or "").upper().rstrip("B")
    return int(match.group(1)) * _UNITS[unit]


def parse_interval(text: str) -> float:
    """``60``, ``2.5``, ``90s``, ``5m``, ``1h`` -> seconds (> 0)."""
    try:
        value = float(text)
    except ValueError:
        value = float(parse_duration(text))
    if value <= 0:
        raise ValueError(f"invalid interval {text!r}: must be positive")
    return value


def parse_pinned(text: str) -> frozenset[int]:
    parsed = [parse_version(v.strip()) for v in text.split(",") if v.strip()]
    if not parsed or None in parsed:
        raise ValueError(f"invalid version list {text!r}: use e.g. 3 or 3,4 (ASCII digits, at most int64)")
    return frozenset(v for v in parsed if v is not None)


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"invalid boolean {text!r}: use true or false")


def full_subscription(name: str, project: str | None) -> str:
    if _SUBSCRIPTION.match(name):
        return name
    if "/" not in name and project:
        return f"projects/{project}/subscriptions/{name}"
    raise ConfigError(f"subscription {name!r}: use projects/P/subscriptions/S (or set --project / PROJECT_ID)")


def full_topic(name: str, project: str | None) -> str:
    if _TOPIC.match(name):
        return name
    if "/" not in name and project:
        return f"projects/{project}/topics/{name}"
    raise ConfigError(f"topic {name!r}: use projects/P/topics/T (or set --project / PROJECT_ID)")


def pod_name(env: Mapping[str, str]) -> str:
    return env.get("POD_NAME") or socket.gethostname()


def build_settings(values: Mapping[str, str | bool | None], env: Mapping[str, str] = os.environ) -> Settings:
    """Settings from resolved option values (flag, else MODEL_POLLER_*, else PoC env).

    ``values`` maps option names (``model_dir``) to strings as typed; conversion errors
    become ``ConfigError`` naming the option.
    """

    def text(key: str) -> str | None:
        value = values.get(key)
        if value is None or value == "":
            return None
        return str(value)

    def convert(key: str, fn: Callable[[str], _T], default: _T) -> _T:
        raw = text(key)
        if raw is None:
            return default
        try:
            return fn(raw)
        except ValueError as exc:
            raise ConfigError(f"--{key.replace('_', '-')}: {exc}") from None

    source = text("source")
    if source is None:
        raise ConfigError("--source is required (or MODEL_POLLER_SOURCE): gs://bucket/prefix/ or file:///dir/")
    validate_uri(source)
    model_dir = text("model_dir")
    if model_dir is None:
        raise ConfigError("--model-dir is required (or MODEL_POLLER_MODEL_DIR, or SAVE_DIR)")

    keep = convert("keep", int, None)
    pinned = convert("pinned", parse_pinned, None)
    if keep is not None and pinned is not None:
        raise ConfigError("--keep and --pinned are mutually exclusive")
    report_to = text("report_to")
    if report_to is not None and (keep is not None or pinned is not None):
        raise ConfigError(
            "--keep/--pinned cannot be used with --report-to: the version policy then comes from spec.versions "
            f"of ModelDeployment {report_to} (kubectl patch it instead)"
        )
    serving_url = text("serving_url")
    if serving_url is not None and not text("model_name"):
        raise ConfigError("--serving-url needs --model-name (the model TF Serving serves, as in GET /v1/models/NAME)")
    if serving_url is not None and not serving_url.startswith(("http://", "https://")):
        raise ConfigError(f"--serving-url {serving_url!r}: use TF Serving's REST URL, e.g. http://localhost:8501")
    status_heartbeat = convert("status_heartbeat", parse_interval, DEFAULT_HEARTBEAT)
    if status_heartbeat < MIN_HEARTBEAT:
        raise ConfigError(f"--status-heartbeat must be at least {MIN_HEARTBEAT:g} seconds, got {status_heartbeat:g}")
    if keep is not None and keep < 1:
        raise ConfigError(f"--keep must be at least 1, got {keep}")
    policy = Policy(keep=None, pinned=pinned) if pinned is not None else Policy(keep=keep or DEFAULT_KEEP)

    project = text("project")
    subscription = text("subscription")
    topic = text("topic")
    if subscription and topic:
        raise ConfigError("--subscription and --topic are mutually exclusive")
    log_format = text("log_format") or "text"
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    limits = Limits(
        max_files=convert("max_files", int, DEFAULT_MAX_FILES),
        max_bytes=convert("max_bytes", parse_size, DEFAULT_MAX_BYTES),
        max_ratio=convert("max_ratio", float, DEFAULT_MAX_RATIO),
    )
    if limits.max_files < 1 or limits.max_bytes < 1 or limits.max_ratio <= 1:
        raise ConfigError("--max-files and --max-bytes must be positive, --max-ratio above 1")
    storage_limit = convert("storage_limit", parse_size, None)
    if storage_limit is not None and storage_limit < 1:
        raise ConfigError("--storage-limit must be positive")
    transfer = Transfer(
        streams=convert("download_streams", int, DEFAULT_STREAMS),
        read_timeout=convert("read_timeout", parse_interval, DEFAULT_READ_TIMEOUT),
        slice_bytes=convert("download_slice", parse_size, DEFAULT_SLICE),
    )
    if not 1 <= transfer.streams <= MAX_STREAMS:
        raise ConfigError(f"--download-streams must be between 1 and {MAX_STREAMS}, got {transfer.streams}")
    if transfer.slice_bytes < MIN_SLICE:
        raise ConfigError(f"--download-slice must be at least {MIN_SLICE >> 20}Mi, got {transfer.slice_bytes}")
    http_port = convert("http_port", int, POLLER_HTTP_PORT)
    if not 0 <= http_port <= 65535:
        raise ConfigError(f"--http-port {http_port} is not a port")
    once = values.get("once")
    return Settings(
        source=source,
        model_dir=Path(model_dir),
        policy=policy,
        subscription=full_subscription(subscription, project) if subscription else None,
        topic=full_topic(topic, project) if topic else None,
        project=project,
        poll_interval=convert("poll_interval", parse_interval, DEFAULT_POLL_INTERVAL),
        fallback_poll_interval=convert("fallback_poll_interval", parse_interval, DEFAULT_FALLBACK_POLL_INTERVAL),
        once=once if isinstance(once, bool) else convert("once", parse_bool, False),
        report_to=report_to,
        status_heartbeat=status_heartbeat,
        serving_url=serving_url,
        model_name=text("model_name"),
        http_port=http_port,
        limits=limits,
        storage_limit=storage_limit,
        transfer=transfer,
        log_format=log_format,
        log_level=(text("log_level") or "INFO").upper(),
        pod_name=pod_name(env),
    )

