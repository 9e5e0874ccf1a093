"""Typed settings, and how flags, MODEL_POLLER_* variables and the proof of concept's
environment (PROJECT_ID, SUBSCRIPTION, SAVE_DIR) become them.

Every value is checked here, before anything starts: a bad one is a ``ConfigError``
naming its flag (``model-poller`` prints it as one line and exits 2).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from model_poller_api.defaults import DEFAULT_KEEP
from model_poller_api.defaults import DEFAULT_POLL_INTERVAL as DEFAULT_POLL_DURATION
from model_poller_api.formats import MODEL_NAME_PATTERN, SUBSCRIPTION_PATTERN, TOPIC_PATTERN
from model_poller_api.models import parse_duration
from model_poller_api.names import POLLER_HTTP_PORT, SCHEME_FILE, SCHEME_GCS

from model_poller.errors import ConfigError
from model_poller.extract import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, DEFAULT_MAX_RATIO, Limits
from model_poller.parsers import (
    parse_bool,
    parse_choice,
    parse_count,
    parse_http_url,
    parse_interval,
    parse_number,
    parse_pinned,
    parse_size,
    parse_target,
)
from model_poller.policy import Policy
from model_poller.stores import Transfer, validate_uri
from model_poller.stores.base import DEFAULT_READ_TIMEOUT, DEFAULT_SLICE, DEFAULT_STREAMS

_T = TypeVar("_T")

DEFAULT_POLL_INTERVAL = float(parse_duration(DEFAULT_POLL_DURATION))
# While Pub/Sub notifications are down, list this often: uploads are then found within
# seconds, not a poll interval later.
DEFAULT_FALLBACK_POLL_INTERVAL = 10.0
# --report-to: an unchanged status entry is rewritten this often (at least MIN_HEARTBEAT:
# every write of every pod costs the API server, and the entry's lastSync says enough).
DEFAULT_HEARTBEAT = 3600.0
MIN_HEARTBEAT = 300.0
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Download connections: beyond this, more streams only add request overhead and sockets.
MAX_STREAMS = 64
# Ranged requests smaller than this spend more on the request than on the bytes.
MIN_SLICE = 1 << 20
# Notifications remembered as handled, so a redelivery is acked without work (oldest
# forgotten first). A redelivery follows its first delivery by minutes (a lost ack, a
# lease that ran out while the message waited); 10,000 notifications is far more than one
# prefix receives meanwhile, and costs a few MB. Not a flag: no user should need to tune it.
HINT_MEMORY = 10_000
_TOPIC = re.compile(TOPIC_PATTERN)
_SUBSCRIPTION = re.compile(SUBSCRIPTION_PATTERN)
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN, re.ASCII)
# A Google Cloud project: no slash (it becomes a resource name's segment), no space.
_PROJECT = re.compile(r"[^/\s]+")


@dataclass(frozen=True)
class Target:
    """The ModelDeployment a poller reports into (``--report-to NAMESPACE/NAME``)."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


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
    report_to: Target | None = None
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

    @property
    def notifications(self) -> bool:
        """Pub/Sub notifications are configured and can describe the source."""
        return bool(self.topic or self.subscription) and self.source.startswith(SCHEME_GCS)


def full_subscription(name: str, project: str | None) -> str:
    return _full_name("--subscription", "subscriptions", name, project, _SUBSCRIPTION)


def full_topic(name: str, project: str | None) -> str:
    return _full_name("--topic", "topics", name, project, _TOPIC)


def _full_name(flag: str, collection: str, name: str, project: str | None, pattern: re.Pattern[str]) -> str:
    """``projects/P/<collection>/N`` from a full name, or a short one and ``--project``."""
    if pattern.match(name):
        return name
    if "/" not in name and project:
        return f"projects/{project}/{collection}/{name}"
    example = f"projects/P/{collection}/{collection[0].upper()}"
    raise ConfigError(f"{flag} {name!r}: use {example} (or set --project / PROJECT_ID)")


def pod_name(env: Mapping[str, str]) -> str:
    return env.get("POD_NAME") or socket.gethostname()


class _Values:
    """Option values as typed (``model_dir`` -> "/models"), read through a parser: a
    ``ValueError`` becomes a ``ConfigError`` naming the flag and the value."""

    def __init__(self, values: Mapping[str, str | bool | None]) -> None:
        self._values = values

    def text(self, key: str) -> str | None:
        value = self._values.get(key)
        if value is None or value == "":
            return None
        return str(value)

    def get(self, key: str, parse: Callable[[str], _T], default: _T) -> _T:
        raw = self.text(key)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{flag(key)} {raw!r}: {exc}") from None

    def bounded(
        self, key: str, parse: Callable[[str], _T], default: _T, low: float, high: float = float("inf"), unit: str = ""
    ) -> _T:
        """``get``, then ``low <= value <= high`` (``unit`` shows the bounds: "Mi")."""
        value = self.get(key, parse, default)
        if isinstance(value, (int, float)) and not low <= value <= high:
            shown = [_number(bound, unit) for bound in (low, high)]
            bound = f"at least {shown[0]}" if high == float("inf") else f"between {shown[0]} and {shown[1]}"
            raise ConfigError(f"{flag(key)} must be {bound}, got {self.text(key)}")
        return value


def _number(value: float, unit: str = "") -> str:
    """``1048576, "Mi"`` -> ``1Mi``; ``300.0`` -> ``300``."""
    if unit:
        value /= {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}[unit]
    return (str(int(value)) if float(value).is_integer() else f"{value:g}") + unit


def flag(key: str) -> str:
    """``model_dir`` -> ``--model-dir``."""
    return "--" + key.replace("_", "-")


def build_settings(values: Mapping[str, str | bool | None], env: Mapping[str, str] = os.environ) -> Settings:
    """Settings from resolved option values (flag, else MODEL_POLLER_*, else PoC env).

    ``values`` maps option names (``model_dir``) to strings as typed; every error is a
    ``ConfigError`` naming the option.
    """
    read = _Values(values)
    once = values.get("once")
    once = once if isinstance(once, bool) else read.get("once", parse_bool, False)
    if once and read.text("report_to") is not None:
        raise ConfigError("--once does not follow a ModelDeployment: drop --report-to (and give --keep or --pinned)")
    source, model_dir = _where(read)
    subscription, topic, project = _pubsub(read)
    serving_url, model_name = _serving(read)
    log_format = read.get("log_format", lambda t: parse_choice(t, LOG_FORMATS), "text")
    return Settings(
        source=source,
        model_dir=model_dir,
        policy=_policy(read),
        subscription=subscription,
        topic=topic,
        project=project,
        poll_interval=read.get("poll_interval", parse_interval, DEFAULT_POLL_INTERVAL),
        fallback_poll_interval=read.get("fallback_poll_interval", parse_interval, DEFAULT_FALLBACK_POLL_INTERVAL),
        once=once,
        report_to=read.get("report_to", lambda t: Target(*parse_target(t)), None),
        status_heartbeat=read.bounded("status_heartbeat", parse_interval, DEFAULT_HEARTBEAT, MIN_HEARTBEAT),
        serving_url=serving_url,
        model_name=model_name,
        http_port=read.bounded("http_port", parse_count, POLLER_HTTP_PORT, 0, 65535),
        limits=_limits(read),
        storage_limit=read.bounded("storage_limit", parse_size, None, 1),
        transfer=_transfer(read),
        log_format=log_format,
        log_level=read.get("log_level", lambda t: parse_choice(t, LOG_LEVELS), "INFO"),
        pod_name=pod_name(env),
    )


def _where(read: _Values) -> tuple[str, Path]:
    """``--source`` and ``--model-dir``: both required."""
    source = read.text("source")
    if source is None:
        raise ConfigError(
            f"--source is required (or MODEL_POLLER_SOURCE): {SCHEME_GCS}bucket/prefix/ or {SCHEME_FILE}dir/"
        )
    validate_uri(source)
    text = read.text("model_dir")
    if text is None:
        raise ConfigError("--model-dir is required (or MODEL_POLLER_MODEL_DIR, or SAVE_DIR)")
    model_dir = Path(text)  # (one that cannot be written yet is retried: a volume may be mounted late)
    if source.startswith(SCHEME_FILE) and _same_dir(model_dir, Path(source[len(SCHEME_FILE) - 1 :])):
        # Versions outside the policy are removed from the model dir: never from the source.
        raise ConfigError(f"--model-dir {text!r} is the --source directory: give the versions a folder of their own")
    return source, model_dir


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _policy(read: _Values) -> Policy:
    """``--keep`` or ``--pinned`` (neither with ``--report-to``: spec.versions says)."""
    keep = read.bounded("keep", parse_count, None, 1)
    pinned = read.get("pinned", parse_pinned, None)
    if keep is not None and pinned is not None:
        raise ConfigError("--keep and --pinned are mutually exclusive")
    report_to = read.text("report_to")
    if report_to is not None and (keep is not None or pinned is not None):
        raise ConfigError(
            "--keep/--pinned cannot be used with --report-to: the version policy then comes from spec.versions "
            f"of ModelDeployment {report_to} (kubectl patch it instead)"
        )
    return Policy(keep=None, pinned=pinned) if pinned is not None else Policy(keep=keep or DEFAULT_KEEP)


def _pubsub(read: _Values) -> tuple[str | None, str | None, str | None]:
    """(subscription, topic, project), names completed with the project."""
    project = read.get("project", _project, None)
    subscription = read.text("subscription")
    topic = read.text("topic")
    if subscription and topic:
        raise ConfigError("--subscription and --topic are mutually exclusive")
    return (
        full_subscription(subscription, project) if subscription else None,
        full_topic(topic, project) if topic else None,
        project,
    )


def _project(text: str) -> str:
    if not _PROJECT.fullmatch(text):
        raise ValueError("use a Google Cloud project id (no '/' or spaces)")
    return text


def _serving(read: _Values) -> tuple[str | None, str | None]:
    """``--serving-url`` and ``--model-name`` (required with it)."""
    serving_url = read.get("serving_url", parse_http_url, None)
    model_name = read.text("model_name")
    if model_name is not None and not _MODEL_NAME.fullmatch(model_name):
        raise ConfigError(
            f"--model-name {model_name!r}: use letters, digits, '_', '.' and '-' (it becomes a URL "
            "segment of TF Serving's API)"
        )
    if serving_url is not None and model_name is None:
        raise ConfigError("--serving-url needs --model-name (the model TF Serving serves, as in GET /v1/models/NAME)")
    return serving_url, model_name


def _limits(read: _Values) -> Limits:
    return Limits(
        max_files=read.bounded("max_files", parse_count, DEFAULT_MAX_FILES, 1),
        max_bytes=read.bounded("max_bytes", parse_size, DEFAULT_MAX_BYTES, 1),
        max_ratio=_ratio(read),
    )


def _ratio(read: _Values) -> float:
    ratio = read.get("max_ratio", parse_number, DEFAULT_MAX_RATIO)
    if ratio <= 1:
        raise ConfigError(f"--max-ratio must be above 1, got {read.text('max_ratio')}")
    return ratio


def _transfer(read: _Values) -> Transfer:
    return Transfer(
        streams=read.bounded("download_streams", parse_count, DEFAULT_STREAMS, 1, MAX_STREAMS),
        read_timeout=read.get("read_timeout", parse_interval, DEFAULT_READ_TIMEOUT),
        slice_bytes=read.bounded("download_slice", parse_size, DEFAULT_SLICE, MIN_SLICE, unit="Mi"),
    )
