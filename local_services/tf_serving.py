#!/usr/bin/env python3
"""A stand-in for tensorflow/serving's model server, for tests and the local demo ONLY.

This machine has no TF Serving binary and no container runtime, so this process imitates
the parts of ``tensorflow_model_server`` that model-poller depends on. It is not TF Serving:
it runs no model, speaks no gRPC, and must never be shipped. Python standard library only;
run it as ``python local_services/tf_serving.py --rest_api_port=8501 --model_name=NAME
--model_base_path=DIR --file_system_poll_wait_seconds=1``.

What it imitates, as tensorflow/serving's source does it (FileSystemStoragePathSource,
AspiredVersionsManager, AvailabilityPreservingPolicy, LoaderHarness, ServableStateMonitor,
GetModelStatusImpl, the HTTP/REST handler, main.cc):

* Flags, only in TF Serving's ``--flag=value`` form: ``--port`` (gRPC: accepted, ignored),
  ``--rest_api_port``, ``--model_name`` (default ``default``), ``--model_base_path``,
  ``--file_system_poll_wait_seconds`` (default 1; 0 polls once), ``--max_num_load_retries``
  (default 5) and ``--load_retry_interval_micros`` (default one minute). Any other argument,
  ``--flag value`` included, is logged as ``unknown argument`` and ignored, as TF Serving
  does; so ``--model_name foo`` leaves the name ``default``.
* Versions: each poll lists the base path. A child whose name TF's ``safe_strto64`` accepts
  (optional surrounding ASCII whitespace, optional ``-``, ASCII digits, int64 range) is a
  version, directory or not; anything else (``.staging-3``, ``3.tmp``, ``٣``, ``３``) is
  ignored. The default version policy, ``latest {num_versions: 1}``, aspires the highest
  version only. A base path with no version unaspires everything (so it is unloaded); a
  missing base path is logged and changes nothing.
* States in ``GET /v1/models/<name>``: START when a version is aspired, LOADING, then
  AVAILABLE, or END with an error; UNLOADING then END when it is unloaded. The
  availability-preserving policy: a version that stops being aspired stays AVAILABLE until
  an aspired version is AVAILABLE (or nothing is aspired any more, or another unaspired
  version is AVAILABLE too), then it is unloaded. A failed version stays END and is not
  retried while it stays aspired; once it has left the aspired set (and been forgotten),
  aspiring it again loads it anew. One consequence, faithful to TF Serving's manager: while
  an older, unaspired version still serves, a request that aspires that older version again
  waits until it is unloaded, which the policy never does while the failed version stays
  aspired; so removing and restoring the failed number changes nothing, a newer number
  does. Every version ever seen keeps being reported (END included), as TF Serving's state
  monitor never forgets one.
* Loads run one at a time in the manager loop (TF Serving's default
  ``--num_load_threads=0``). A failed load is retried ``--max_num_load_retries`` times,
  ``--load_retry_interval_micros`` apart; the version stays LOADING meanwhile.
* Start-up: the REST port opens only once the model's first version is AVAILABLE (ServerCore
  waits for it). If that version fails instead, the process prints ``Failed to start
  server. Error: ...`` and exits 255. With no version in the base path the port stays closed.
* REST: ``GET /v1/models/<name>[/versions/<v>]`` answers 200 in every state with
  ``{"model_version_status": [{"version": "3", "state": "AVAILABLE", "status":
  {"error_code": "OK", "error_message": ""}}]}`` (the version is a string: proto3 JSON of an
  int64). A model with no version known, an unknown name included, answers 404
  ``{"error": "Could not find any versions of model <name>"}``; an unknown version 404
  ``{"error": "Could not find version <v> of model <name>"}``; a malformed ``/v1/`` request
  400 ``{"error": "Malformed request: <METHOD> <path>"}``; other paths 404, empty body.

What "loads" means here (the stand-in parses no protobuf): the version path holds
``saved_model.pb`` (or, without it, ``saved_model.pbtxt``) whose content does not start with
the bytes ``INVALID``; loading it then takes ``--load_seconds`` (a stand-in-only flag,
default 0.2). Otherwise the load fails with TF Serving's error: no SavedModel file ->
NOT_FOUND "Specified file path does not appear to contain a SavedModel bundle (should have a
file called `saved_model.pb`) ..."; content starting with ``INVALID`` -> DATA_LOSS "Can't
parse <file> as binary proto" ("as text proto" for ``.pbtxt``). ``variables/`` is not checked.

Not imitated: inference, gRPC (nothing listens on ``--port``), ``--model_config_file``,
version labels, ``/metadata``, ``:classify`` and ``:regress`` (all 501), ``--rest_api_port=0``
(the stand-in exits 255: REST is all it has), non-local base paths. ``POST
/v1/models/<name>[/versions/<v>]:predict`` needs a JSON body (not otherwise checked) and
answers 200 ``{"predictions": [], "model_version": "<v>"}`` from the highest AVAILABLE
version, or 404 "Servable not found for request: Latest(<name>)" as TF Serving does;
``model_version`` is the stand-in's addition (TF Serving's REST answer carries no version).
SIGTERM and SIGINT stop it with exit 0 (TF Serving has no handler and dies by the signal).
Every state transition is one line on stderr.
"""

from __future__ import annotations

import enum
import json
import logging
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from local_services.process import Service

SCRIPT = Path(__file__).resolve()
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
# C's isspace() in the "C" locale: what TF's safe_strto64 skips around a number.
C_SPACES = " \t\n\v\f\r"
INVALID_MARKER = b"INVALID"
# AspiredVersionsManager's manage-state period.
MANAGE_INTERVAL_SECONDS = 0.1
EXIT_FAILED_TO_START = 255  # main.cc returns -1

log = logging.getLogger("tf_serving_standin")


class UsageError(Exception):
    """A flag value the stand-in cannot run with; the message names the flag."""


# --- flags ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    model_base_path: Path
    rest_api_port: int
    model_name: str = "default"
    grpc_port: int = 8500
    poll_wait_seconds: int = 1
    max_num_load_retries: int = 5
    load_retry_interval_seconds: float = 60.0
    load_seconds: float = 0.2


_INT_FLAGS = ("port", "rest_api_port", "file_system_poll_wait_seconds", "max_num_load_retries")
_KNOWN_FLAGS = (*_INT_FLAGS, "model_name", "model_base_path", "load_retry_interval_micros", "load_seconds")


def split_flags(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """TF's Flags::Parse: only ``--name=value`` sets a flag; the rest is left over."""
    values: dict[str, str] = {}
    unknown: list[str] = []
    for arg in argv:
        name, eq, value = arg.removeprefix("--").partition("=")
        if arg.startswith("--") and eq and name in _KNOWN_FLAGS:
            values[name] = value  # the last occurrence wins, as in TF
        else:
            unknown.append(arg)
    return values, unknown


def _int_flag(values: dict[str, str], name: str, default: int) -> int:
    raw = values.get(name)
    if raw is None:
        return default
    number = parse_int64(raw)
    if number is None:
        raise UsageError(f"--{name}={raw}: not an integer")
    return number


def _float_flag(values: dict[str, str], name: str, default: float) -> float:
    raw = values.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise UsageError(f"--{name}={raw}: not a number") from None


def _base_path(raw: str) -> Path:
    if not raw:
        raise UsageError("Both server_options.model_base_path and server_options.model_config_file are empty!")
    if raw.startswith("file://"):
        return Path(raw.removeprefix("file://"))
    if "://" in raw:
        raise UsageError(f"--model_base_path={raw}: the stand-in reads local paths only")
    return Path(raw)


def parse_options(argv: Sequence[str]) -> tuple[Options, list[str]]:
    """Options from TF Serving-style flags, and the arguments TF Serving would ignore."""
    values, unknown = split_flags(argv)
    rest_port = _int_flag(values, "rest_api_port", 0)
    if rest_port <= 0:
        raise UsageError("--rest_api_port: the stand-in serves only REST; give --rest_api_port=PORT")
    retry_micros = _int_flag(values, "load_retry_interval_micros", 60_000_000)
    options = Options(
        model_base_path=_base_path(values.get("model_base_path", "")),
        rest_api_port=rest_port,
        model_name=values.get("model_name", "default"),
        grpc_port=_int_flag(values, "port", 8500),
        poll_wait_seconds=_int_flag(values, "file_system_poll_wait_seconds", 1),
        max_num_load_retries=max(0, _int_flag(values, "max_num_load_retries", 5)),
        # TF: "If set negative, it doesn't wait."
        load_retry_interval_seconds=max(0, retry_micros) / 1e6,
        load_seconds=max(0.0, _float_flag(values, "load_seconds", 0.2)),
    )
    return options, unknown


# --- versions on disk ------------------------------------------------------------------


def parse_int64(text: str) -> int | None:
    """TF's strings::safe_strto64: ASCII digits, optional '-', surrounding C spaces, int64."""
    body = text.strip(C_SPACES)
    digits = body.removeprefix("-")
    if not digits or not (digits.isascii() and digits.isdigit()):
        return None
    number = -int(digits) if body.startswith("-") else int(digits)
    return number if INT64_MIN <= number <= INT64_MAX else None


def list_versions(base: Path) -> dict[int, Path] | None:
    """Version number -> path under ``base``; None when the base path cannot be listed."""
    try:
        children = sorted(p.name for p in base.iterdir())
    except OSError as exc:
        log.error("FileSystemStoragePathSource encountered a filesystem access error: %s: %s", base, exc.strerror)
        return None
    found: dict[int, Path] = {}
    for child in children:  # sorted, so a duplicate resolves as TF's std::map does
        version = parse_int64(child)
        if version is None:
            continue
        if version in found:
            log.warning("Duplicate version directories detected. Version %d will be loaded from %s", version, child)
        found[version] = base / child
    return found


def latest_policy(found: dict[int, Path]) -> dict[int, Path]:
    """The file-system source's default policy: latest {num_versions: 1}."""
    if not found:
        return {}
    newest = max(found)
    return {newest: found[newest]}


# --- states and the policy ---------------------------------------------------------------


class ManagerState(str, enum.Enum):
    """What GET /v1/models reports (ServableState::ManagerState)."""

    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


class HarnessState(enum.Enum):
    """The manager's own view of a version (LoaderHarness::State, quiescing folded in)."""

    NEW = "new"
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    DISABLED = "disabled"
    ERROR = "error"


@dataclass(frozen=True)
class Health:
    """TF Serving's StatusProto: error_code and error_message."""

    code: str = "OK"
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.code == "OK"


OK = Health()


@dataclass(frozen=True)
class Snapshot:
    version: int
    state: HarnessState
    aspired: bool


class Action(enum.Enum):
    LOAD = "load"
    UNLOAD = "unload"


def next_action(snapshots: Sequence[Snapshot]) -> tuple[Action, int] | None:
    """AvailabilityPreservingPolicy::GetNextAction, line for line."""
    has_aspired = any(s.aspired for s in snapshots)
    has_aspired_serving = any(s.aspired and s.state is HarnessState.READY for s in snapshots)
    unaspired_serving = sorted(s.version for s in snapshots if not s.aspired and s.state is HarnessState.READY)
    # Unload the lowest unaspired version only if that cannot leave the model unserved.
    if unaspired_serving and (not has_aspired or has_aspired_serving or len(unaspired_serving) > 1):
        return Action.UNLOAD, unaspired_serving[0]
    new_aspired = [s.version for s in snapshots if s.aspired and s.state is HarnessState.NEW]
    if new_aspired:
        return Action.LOAD, max(new_aspired)
    return None


# --- loading ---------------------------------------------------------------------------------


def check_saved_model(path: Path) -> Health:
    """Whether the stand-in can "load" ``path``; on failure, the error TF Serving reports."""
    for name, kind in (("saved_model.pb", "binary"), ("saved_model.pbtxt", "text")):
        candidate = path / name
        try:
            with candidate.open("rb") as fh:
                head = fh.read(len(INVALID_MARKER))
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            break  # a file named like a version: TF finds no saved_model.pb under it
        except OSError as exc:
            code = "PERMISSION_DENIED" if isinstance(exc, PermissionError) else "UNKNOWN"
            return Health(code, f"{candidate}; {exc.strerror}")
        if head == INVALID_MARKER:
            return Health("DATA_LOSS", f"Can't parse {candidate} as {kind} proto")
        return OK
    return Health(
        "NOT_FOUND",
        "Specified file path does not appear to contain a SavedModel bundle (should have a file called "
        f"`saved_model.pb`)\nSpecified file path: {path}",
    )


# --- the state monitor ------------------------------------------------------------------------


class Monitor:
    """ServableStateMonitor: the last published state of every version ever seen."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._states: dict[int, tuple[ManagerState, Health]] = {}
        self._changed = threading.Condition()

    def publish(self, version: int, state: ManagerState, health: Health = OK) -> None:
        with self._changed:
            self._states[version] = (state, health)
            self._changed.notify_all()
        error = "" if health.ok else f" error_code={health.code} error_message={health.message!r}"
        log.info("model=%s version=%d state=%s%s", self.model, version, state.value, error)

    def states(self) -> dict[int, tuple[ManagerState, Health]]:
        with self._changed:
            return dict(self._states)

    def serving(self, version: int | None = None) -> int | None:
        """The version a predict request would use: ``version`` or the highest AVAILABLE one."""
        available = [v for v, (state, _) in self.states().items() if state is ManagerState.AVAILABLE]
        if version is not None:
            return version if version in available else None
        return max(available, default=None)

    def wait_first_settled(self, stop: threading.Event) -> ManagerState | None:
        """What ServerCore waits for at start: a version AVAILABLE or END (lowest first)."""
        with self._changed:
            while not stop.is_set():
                settled = sorted(
                    (v, s) for v, (s, _) in self._states.items() if s in (ManagerState.AVAILABLE, ManagerState.END)
                )
                if settled:
                    return settled[0][1]
                self._changed.wait(0.1)
        return None


# --- the manager ----------------------------------------------------------------------------


@dataclass
class Harness:
    version: int
    path: Path
    state: HarnessState = HarnessState.NEW
    aspired: bool = True


@dataclass
class Manager:
    """AspiredVersionsManager + BasicManager for one model, driven by ``tick()``."""

    options: Options
    monitor: Monitor
    stop: threading.Event
    harnesses: dict[int, Harness] = field(default_factory=dict)
    _pending: dict[int, Path] | None = None
    _pending_lock: threading.Lock = field(default_factory=threading.Lock)

    def set_aspired(self, versions: dict[int, Path]) -> None:
        """The source's callback: queue the newest request, replacing an unprocessed one."""
        with self._pending_lock:
            self._pending = dict(versions)

    def tick(self) -> None:
        self._flush()
        self._handle_pending()
        action = next_action([Snapshot(h.version, h.state, h.aspired) for h in self.harnesses.values()])
        if action is not None:
            kind, version = action
            (self._load if kind is Action.LOAD else self._unload)(self.harnesses[version])

    def _flush(self) -> None:
        """Forget unaspired versions that are not loaded (they may then be aspired anew)."""
        idle = (HarnessState.NEW, HarnessState.DISABLED, HarnessState.ERROR)
        for version in [v for v, h in self.harnesses.items() if h.state in idle and not h.aspired]:
            del self.harnesses[version]

    def _handle_pending(self) -> None:
        with self._pending_lock:
            request = self._pending
        if request is None:
            return
        # A version coming back while still managed as unaspired waits until it is gone.
        if any(v in self.harnesses and not self.harnesses[v].aspired for v in request):
            return
        with self._pending_lock:
            if self._pending is request:
                self._pending = None
        for harness in self.harnesses.values():
            if harness.version not in request:
                harness.aspired = False
        for version, path in sorted(request.items()):
            if version not in self.harnesses:
                self.harnesses[version] = Harness(version, path)
                self.monitor.publish(version, ManagerState.START)

    def _load(self, harness: Harness) -> None:
        harness.state = HarnessState.LOADING
        self.monitor.publish(harness.version, ManagerState.LOADING)
        health = self._load_with_retries(harness)
        if health is None:
            return  # stopping
        if health.ok:
            harness.state = HarnessState.READY
            self.monitor.publish(harness.version, ManagerState.AVAILABLE)
        else:
            harness.state = HarnessState.ERROR
            self.monitor.publish(harness.version, ManagerState.END, health)

    def _load_with_retries(self, harness: Harness) -> Health | None:
        """LoaderHarness::Load: up to 1 + max_num_load_retries tries while aspired."""
        tries = 0
        while True:
            if tries and self.stop.wait(self.options.load_retry_interval_seconds):
                return None
            if tries:
                model = self.options.model_name
                log.info("Retrying load on servable {name: %s version: %d} retry: %d", model, harness.version, tries)
            health = check_saved_model(harness.path)
            if health.ok and self.stop.wait(self.options.load_seconds):
                return None
            tries += 1
            if health.ok or not harness.aspired or tries > self.options.max_num_load_retries:
                return health

    def _unload(self, harness: Harness) -> None:
        harness.state = HarnessState.UNLOADING
        self.monitor.publish(harness.version, ManagerState.UNLOADING)
        harness.state = HarnessState.DISABLED
        self.monitor.publish(harness.version, ManagerState.END)


# --- the threads ------------------------------------------------------------------------------


class Source:
    """FileSystemStoragePathSource for one model."""

    def __init__(self, options: Options, manager: Manager) -> None:
        self.options = options
        self.manager = manager
        self._last: dict[int, Path] | None = None

    def poll_once(self) -> None:
        found = list_versions(self.options.model_base_path)
        if found is None:
            return  # a missing base path must not unload what is served
        aspired = latest_policy(found)
        if aspired != self._last:  # TF logs every poll; once per change is enough here
            if aspired:
                log.info("Aspiring version for servable %s from path: %s", self.options.model_name, *aspired.values())
            else:
                base = self.options.model_base_path
                log.warning("No versions of servable %s found under base path %s", self.options.model_name, base)
            self._last = aspired
        self.manager.set_aspired(aspired)

    def run(self, stop: threading.Event) -> None:
        poll = self.options.poll_wait_seconds
        if poll < 0:
            return  # TF: negative is "reserved for testing": no polling at all
        self.poll_once()
        while poll > 0 and not stop.wait(poll):
            self.poll_once()


def run_manager(manager: Manager, stop: threading.Event) -> None:
    while not stop.is_set():
        manager.tick()
        stop.wait(MANAGE_INTERVAL_SECONDS)


# --- REST -------------------------------------------------------------------------------------

_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE
)
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE
)
_API_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)

Reply = tuple[int, dict[str, Any] | None]


def _error(code: int, message: str) -> Reply:
    return code, {"error": message}


def _version_entry(version: int, state: ManagerState, health: Health) -> dict[str, Any]:
    return {
        "version": str(version),
        "state": state.value,
        "status": {"error_code": health.code, "error_message": health.message},
    }


def model_status(monitor: Monitor, model: str, version_text: str | None) -> Reply:
    """GetModelStatusImpl against the monitor (which knows only the configured model)."""
    states = monitor.states() if model == monitor.model else {}
    if version_text is not None:
        version = parse_int64(version_text)
        if version is None:
            return _error(400, f"Failed to convert version: {version_text} to numeric.")
        if version not in states:
            return _error(404, f"Could not find version {version} of model {model}")
        return 200, {"model_version_status": [_version_entry(version, *states[version])]}
    if not states:
        return _error(404, f"Could not find any versions of model {model}")
    return 200, {"model_version_status": [_version_entry(v, *states[v]) for v in sorted(states)]}


def predict(monitor: Monitor, model: str, version_text: str | None, body: bytes) -> Reply:
    try:
        json.loads(body or b"")
    except ValueError as exc:
        return _error(400, f"JSON Parse error: {exc}")
    version = None if version_text is None else parse_int64(version_text)
    if version_text is not None and version is None:
        return _error(400, f"Failed to convert version: {version_text} to numeric.")
    serving = monitor.serving(version) if model == monitor.model else None
    if serving is None:
        wanted = f"Latest({model})" if version is None else f"Specific({model}, {version})"
        return _error(404, f"Servable not found for request: {wanted}")
    return 200, {"predictions": [], "model_version": str(serving)}


def route(monitor: Monitor, method: str, path: str, body: bytes) -> Reply:
    """The REST dispatcher: TF Serving's path regexes and error envelopes."""
    if not _API_PATH.fullmatch(path):
        return 404, None
    malformed = _error(400, f"Malformed request: {method} {path}")
    pattern = {"GET": _STATUS_PATH, "POST": _PREDICT_PATH}.get(method)
    match = pattern.fullmatch(path) if pattern else None
    if match is None:
        return malformed
    model = urllib.parse.unquote(match.group(1) or "")
    version_text, label, tail = match.group(2), match.group(3), match.group(4)
    if not model:
        return _error(400, "Missing model name in request.")
    if label is not None or (tail or "").lower() in ("metadata", "classify", "regress"):
        return _error(501, "not imitated by the tf_serving stand-in (labels, metadata, classify, regress)")
    if method == "GET":
        return model_status(monitor, model, version_text)
    return predict(monitor, model, version_text, body)


class RestServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, monitor: Monitor) -> None:
        self.monitor = monitor
        super().__init__(("0.0.0.0", port), RestHandler)


class RestHandler(BaseHTTPRequestHandler):
    server: RestServer

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        path = urllib.parse.urlsplit(self.path).path
        code, payload = route(self.server.monitor, self.command, path, body)
        data = b"" if payload is None else json.dumps(payload, indent=1).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not state transitions: keep stderr to one line per transition."""


# --- the process -------------------------------------------------------------------------------


def _settle_or_fail(options: Options, monitor: Monitor, stop: threading.Event) -> int | None:
    """Wait as ServerCore does for the first version; an exit code if the server must not start."""
    reached = monitor.wait_first_settled(stop)
    if reached is None:
        return 0  # stopped before start-up finished
    if reached is ManagerState.AVAILABLE:
        return None
    failed = [
        f"{{{{name: {options.model_name} version: {v}}} due to error: {h.code}: {h.message}}}, "
        for v, (s, h) in sorted(monitor.states().items())
        if s is ManagerState.END
    ]
    reason = f"{len(failed)} servable(s) did not become available: {{{''.join(failed)}}}"
    print(f"Failed to start server. Error: UNKNOWN: {reason}", flush=True)
    return EXIT_FAILED_TO_START


def serve(options: Options, stop: threading.Event) -> int:
    monitor = Monitor(options.model_name)
    manager = Manager(options, monitor, stop)
    threads = [
        threading.Thread(target=Source(options, manager).run, args=(stop,), name="source", daemon=True),
        threading.Thread(target=run_manager, args=(manager, stop), name="manager", daemon=True),
    ]
    for thread in threads:
        thread.start()
    code = _settle_or_fail(options, monitor, stop)
    if code is not None:
        stop.set()
        return code
    try:
        server = RestServer(options.rest_api_port, monitor)
    except OSError as exc:
        print(f"Failed to start server. Error: --rest_api_port={options.rest_api_port}: {exc.strerror}", flush=True)
        stop.set()
        return EXIT_FAILED_TO_START
    threading.Thread(target=server.serve_forever, args=(0.1,), name="rest", daemon=True).start()
    rest, grpc = options.rest_api_port, options.grpc_port
    log.info("Exporting HTTP/REST API at:localhost:%d ... (no gRPC on --port=%d)", rest, grpc)
    while not stop.wait(0.1):
        pass
    log.info("stopping")
    server.shutdown()
    server.server_close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s tf_serving stand-in: %(message)s")
    try:
        options, unknown = parse_options(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"Failed to start server. Error: INVALID_ARGUMENT: {exc}", flush=True)
        return EXIT_FAILED_TO_START
    for arg in unknown:
        log.warning("unknown argument: %s (TF Serving parses only --flag=value; ignored)", arg)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()  # only a flag: the main loop does the shutdown

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return serve(options, stop)


# --- for tests: the stand-in as a child process ------------------------------------------------


class TfServingProcess:
    """The stand-in as a child process, with the serving container's flags.

    Use as a context manager, or ``start()`` then ``stop()``. ``start()`` waits until the REST
    port answers, which (as with TF Serving) happens only after the first version loaded.
    Failed loads are retried as TF Serving's defaults say (5 times, a minute apart): pass
    ``extra_args=["--max_num_load_retries=0"]`` to see a failure at once.
    """

    def __init__(
        self,
        model_base_path: Path,
        log_path: Path,
        model_name: str = "model",
        load_seconds: float = 0.2,
        poll_seconds: int = 1,
        extra_args: Sequence[str] = (),
    ) -> None:
        # Imported here: as a script this module runs without the repository root on sys.path.
        from local_services.process import free_port

        self.model_name = model_name
        self.log_path = log_path
        self.rest_port = free_port()
        self.argv = [
            sys.executable,
            str(SCRIPT),
            f"--port={free_port()}",
            f"--rest_api_port={self.rest_port}",
            f"--model_name={model_name}",
            f"--model_base_path={model_base_path}",
            f"--file_system_poll_wait_seconds={poll_seconds}",
            f"--load_seconds={load_seconds}",
            *extra_args,
        ]
        self.service: Service | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def start(self, wait: bool = True, timeout: float = 30) -> TfServingProcess:
        from local_services.process import Service

        self.service = Service("tf-serving-standin", self.argv, self.log_path)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        from local_services.process import port_open

        self._service().wait_until(lambda: port_open(self.rest_port), timeout)

    def get(self, path: str) -> tuple[int, Any]:
        """GET ``path``: the HTTP code and the parsed JSON body (None when empty)."""
        return self._request(urllib.request.Request(self.url + path))

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        data = json.dumps(body).encode()
        return self._request(urllib.request.Request(self.url + path, data=data, method="POST"))

    def status(self, version: int | None = None) -> dict[str, Any]:
        """The parsed ``GET /v1/models/<name>[/versions/<v>]``; fails unless it answers 200."""
        path = f"/v1/models/{self.model_name}" + ("" if version is None else f"/versions/{version}")
        code, body = self.get(path)
        assert code == 200, f"GET {path} answered {code}: {body}"
        return dict(body)

    def states(self) -> dict[int, str]:
        """Version -> state, from the status API."""
        return {int(e["version"]): e["state"] for e in self.status()["model_version_status"]}

    def predict(self, version: int | None = None) -> tuple[int, Any]:
        path = f"/v1/models/{self.model_name}" + ("" if version is None else f"/versions/{version}") + ":predict"
        return self.post(path, {"instances": [[0.0]]})

    def wait_for(self, version: int, state: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        seen: dict[int, str] = {}
        while time.monotonic() < deadline:
            seen = self.states()
            if seen.get(version) == state:
                return
            time.sleep(0.02)
        raise AssertionError(f"version {version} never reached {state}; states: {seen}\n{self.output()}")

    def wait_exit(self, timeout: float = 30) -> int:
        return self._service().proc.wait(timeout)

    def output(self) -> str:
        return self._service().tail(80)

    def stop(self) -> int | None:
        """SIGTERM, wait; the exit code."""
        service = self._service()
        service.stop()
        return service.proc.returncode

    def __enter__(self) -> TfServingProcess:
        return self if self.service is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        if self.service is not None:
            self.stop()

    def _service(self) -> Service:
        assert self.service is not None, "start() first"
        return self.service

    def _request(self, request: urllib.request.Request) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                code, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            code, raw = exc.code, exc.read()
        return code, json.loads(raw) if raw else None


if __name__ == "__main__":
    sys.exit(main())
