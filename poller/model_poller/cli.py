"""``model-poller``: flags, their MODEL_POLLER_* variables, and the proof of concept's
environment, turned into Settings and handed to the Poller."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from model_poller_api.defaults import DEFAULT_KEEP
from model_poller_api.names import POLLER_HTTP_PORT, SCHEME_FILE, SCHEME_GCS, env_name

from model_poller.config import (
    DEFAULT_FALLBACK_POLL_INTERVAL,
    DEFAULT_HEARTBEAT,
    DEFAULT_POLL_INTERVAL,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_STREAMS,
    MIN_HEARTBEAT,
    build_settings,
)
from model_poller.errors import ConfigError
from model_poller.extract import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, DEFAULT_MAX_RATIO
from model_poller.logs import configure_logging
from model_poller.runner import EXIT_CONFIG, Poller
from model_poller.stores.base import DEFAULT_READ_TIMEOUT, DEFAULT_SLICE, DEFAULT_STREAMS

log = logging.getLogger("model_poller")

# flag -> (metavar, help). Every flag also reads env_name(flag), e.g. MODEL_POLLER_SOURCE.
FLAGS: dict[str, tuple[str | None, str]] = {
    "--source": ("URI", f"where versions live: {SCHEME_GCS}bucket/prefix/ or {SCHEME_FILE}dir/"),
    "--model-dir": ("DIR", "TF Serving's model base path; versions appear as DIR/<version>/ (PoC: SAVE_DIR)"),
    "--keep": ("N", f"keep the newest N valid versions (default {DEFAULT_KEEP})"),
    "--pinned": ("V[,V...]", "keep exactly these versions (rollback); exclusive with --keep"),
    "--subscription": ("projects/P/subscriptions/S", "shared Pub/Sub subscription (PoC: SUBSCRIPTION with PROJECT_ID)"),
    "--topic": (
        "projects/P/topics/T",
        "Pub/Sub topic; this replica creates (and on exit deletes) its own subscription",
    ),
    "--project": ("PROJECT", "Google Cloud project for short subscription/topic names (PoC: PROJECT_ID)"),
    "--poll-interval": (
        "SECONDS",
        f"list the source this often as a safety net (default {DEFAULT_POLL_INTERVAL:g}; 90s, 5m work too)",
    ),
    "--fallback-poll-interval": (
        "SECONDS",
        f"while Pub/Sub notifications are down (stream lost, topic or subscription missing), list this often "
        f"instead (default {DEFAULT_FALLBACK_POLL_INTERVAL:g}; never less often than --poll-interval)",
    ),
    "--once": (None, "one full sync, then exit 0 if the policy's versions are on disk, 1 otherwise"),
    "--report-to": (
        "NAMESPACE/NAME",
        "write this pod's entry of that ModelDeployment's status.pollers (POD_NAME) and follow its spec.versions "
        "live (then --keep/--pinned are refused)",
    ),
    "--status-heartbeat": (
        "SECONDS",
        f"with --report-to: rewrite an unchanged entry this often (default {DEFAULT_HEARTBEAT:g}, at least "
        f"{MIN_HEARTBEAT:g}; 1h works too)",
    ),
    "--serving-url": (
        "URL",
        "TF Serving's REST URL: report what it serves, gate /serving-ready and removals on its AVAILABLE versions",
    ),
    "--model-name": ("NAME", "TF Serving model name (required with --serving-url)"),
    "--http-port": (
        "PORT",
        f"port of /healthz, /readyz, /serving-ready, /metrics (default {POLLER_HTTP_PORT}; 0: any)",
    ),
    "--max-bytes": (
        "BYTES",
        f"largest unpacked size of one version (default {DEFAULT_MAX_BYTES >> 30}Gi; 500Mi works)",
    ),
    "--storage-limit": (
        "BYTES",
        "size limit of the model dir's volume (an emptyDir's sizeLimit; 20Gi works): a version larger than "
        "LIMIT / (versions the policy keeps + 2) is refused before the volume overflows",
    ),
    "--max-files": ("N", f"most entries in one version (default {DEFAULT_MAX_FILES})"),
    "--download-streams": (
        "N",
        f"{SCHEME_GCS} sources: connections used at once, for the objects of a folder version or the slices of "
        f"one archive (default {DEFAULT_STREAMS}; 1 to {MAX_STREAMS})",
    ),
    "--download-slice": (
        "BYTES",
        f"{SCHEME_GCS} sources: bytes per ranged request (default {DEFAULT_SLICE >> 20}Mi); an archive is downloaded "
        "at most STREAMS x SLICE ahead of its unpacking",
    ),
    "--read-timeout": (
        "SECONDS",
        f"a download connection that delivers nothing for this long is dropped and resumed where it stopped "
        f"(default {DEFAULT_READ_TIMEOUT:g})",
    ),
    "--max-ratio": ("RATIO", f"largest compression ratio of an archive (default {DEFAULT_MAX_RATIO:g})"),
    "--log-format": ("|".join(LOG_FORMATS), "log format (default text), one line per event"),
    "--log-level": ("LEVEL", f"{', '.join(LOG_LEVELS)} (default INFO)"),
}

# The proof of concept's environment: still honoured when the new names are not set.
LEGACY_ENV = {"model_dir": "SAVE_DIR", "subscription": "SUBSCRIPTION", "project": "PROJECT_ID"}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-poller",
        description="Keep a TF Serving model dir in sync with versions at a GCS bucket or a local dir.",
        epilog="Every flag has an environment variable MODEL_POLLER_<FLAG>, e.g. MODEL_POLLER_POLL_INTERVAL. "
        "Exit codes: 2 for a bad flag (one line naming it on stderr); with --once, 0 in sync, 1 not in sync "
        "(a one-line reason on stderr).",
    )
    for flag, (metavar, help_text) in FLAGS.items():
        help_text = f"{help_text} [{env_name(flag)}]"
        if metavar is None:
            parser.add_argument(flag, action="store_const", const=True, default=None, help=help_text)
        else:
            parser.add_argument(flag, metavar=metavar, default=None, help=help_text)
    return parser


def resolve(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, str | bool | None]:
    """Flag, else MODEL_POLLER_<FLAG>, else the proof of concept's variable."""
    values: dict[str, str | bool | None] = {}
    for flag in FLAGS:
        key = flag.lstrip("-").replace("-", "_")
        value = getattr(args, key)
        if value is None:
            value = env.get(env_name(flag)) or None
        if value is None and key in LEGACY_ENV:
            value = env.get(LEGACY_ENV[key]) or None
        values[key] = value
    return values


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    args = make_parser().parse_args(argv)
    values = resolve(args, env)
    try:
        settings = build_settings(values, env)
    except ConfigError as exc:
        configure_logging(str(values.get("log_format") or "text"))
        log.error("%s", exc)
        return EXIT_CONFIG
    configure_logging(settings.log_format, settings.log_level)
    poller = Poller(settings)
    if settings.once:
        return poller.run_once()
    poller.install_signal_handlers()
    try:
        return poller.run()
    except OSError as exc:  # e.g. the HTTP port is taken
        log.error("cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
