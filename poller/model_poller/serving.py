"""What TF Serving actually serves (``--serving-url``, ``--model-name``).

TF Serving's REST status API, ``GET /v1/models/<name>``, lists every version it knows with
its state (START, LOADING, AVAILABLE, UNLOADING, END) and status (``error_code``,
``error_message``); it answers 200 in every state, so it cannot be a readiness probe by
itself. The pure functions below read that answer; ``ServingWatcher`` polls it: quickly
right after an install until the new version is AVAILABLE or has failed, slowly otherwise,
and calls back when what it sees changes.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from model_poller.text import one_line
from model_poller.versions import parse_version

log = logging.getLogger(__name__)

AVAILABLE = "AVAILABLE"
END = "END"
FAST_POLL = 0.1
SLOW_POLL = 5.0
# Fast polling for a new version stops after this long (a load can take minutes).
EXPECT_SECONDS = 1800.0
TIMEOUT = 2.0


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""

    @property
    def failed(self) -> bool:
        """TF Serving gave up on this version (END with an error)."""
        return self.state == END and self.error_code not in ("OK", "", "0")


@dataclass(frozen=True)
class ServingStatus:
    """One answer of TF Serving; ``reachable`` False when it did not answer (yet)."""

    reachable: bool
    versions: tuple[VersionStatus, ...] = ()
    problem: str = ""

    def available(self) -> frozenset[int]:
        return frozenset(v.version for v in self.versions if v.state == AVAILABLE)

    def state_of(self, version: int) -> VersionStatus | None:
        return next((v for v in self.versions if v.version == version), None)


def parse_status(body: Mapping[str, Any]) -> tuple[VersionStatus, ...]:
    """TF Serving's ``{"model_version_status": [...]}`` -> typed entries (versions are
    strings in TF Serving's JSON; anything not an ASCII int64 is skipped)."""
    result = []
    for item in body.get("model_version_status") or ():
        if not isinstance(item, Mapping):
            continue
        version = parse_version(str(item.get("version", "")))
        if version is None:
            continue
        status = item.get("status")
        status = status if isinstance(status, Mapping) else {}
        result.append(
            VersionStatus(
                version=version,
                state=str(item.get("state", "")),
                error_code=str(status.get("error_code", "OK")),
                error_message=str(status.get("error_message", "")),
            )
        )
    return tuple(sorted(result, key=lambda v: v.version))


def serving_version(status: ServingStatus | None, policy_versions: AbstractSet[int]) -> int | None:
    """The highest AVAILABLE version inside the policy, or None."""
    if status is None:
        return None
    inside = status.available() & set(policy_versions)
    return max(inside) if inside else None


def serving_ready(status: ServingStatus | None, policy_versions: AbstractSet[int], on_disk: AbstractSet[int]) -> bool:
    """``/serving-ready``: TF Serving reports AVAILABLE a version inside the policy, or the
    version it keeps serving while the policy's version is not (yet) AVAILABLE: one still
    on disk (the poller keeps the previous version until a version inside the policy is
    AVAILABLE, and after a failed load), or one it serves while a version inside the policy
    loads (a rollback removes newer versions at once). So neither a rollout, nor a rollback,
    nor a bad upload ever makes every replica unready at once; ``serving`` in the report
    and the ModelDeployment's Ready condition still say only what is inside the policy."""
    if status is None:
        return False
    available = status.available()
    if not available:
        return False
    if available & (set(policy_versions) | set(on_disk)):
        return True
    loading = [v for v in set(policy_versions) & set(on_disk) if not ((s := status.state_of(v)) and s.failed)]
    return bool(loading)


def load_failures(status: ServingStatus | None, policy_versions: AbstractSet[int]) -> dict[int, str]:
    """{version: TF Serving's message} for versions inside the policy it failed to load."""
    if status is None:
        return {}
    return {
        v.version: f"{v.error_code}: {one_line(v.error_message, 400)}"
        for v in status.versions
        if v.failed and v.version in policy_versions
    }


def fetch(url: str, model_name: str, timeout: float = TIMEOUT) -> ServingStatus:
    """One ``GET <url>/v1/models/<name>``; never raises."""
    endpoint = f"{url.rstrip('/')}/v1/models/{urllib.parse.quote(model_name, safe='')}"
    try:
        with urllib.request.urlopen(endpoint, timeout=timeout) as resp:
            body = json.loads(resp.read(1 << 20) or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            # TF Serving answers 404 until a first version of the model is known.
            return ServingStatus(reachable=True, problem=f"no version of {model_name} loaded yet")
        return ServingStatus(reachable=False, problem=f"{endpoint}: HTTP {exc.code}")
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        return ServingStatus(reachable=False, problem=f"{endpoint}: {one_line(exc, 200)}")
    if not isinstance(body, Mapping):
        return ServingStatus(reachable=False, problem=f"{endpoint}: not TF Serving's status JSON")
    return ServingStatus(reachable=True, versions=parse_status(body))


class ServingWatcher:
    """Polls TF Serving in a thread of its own; ``on_change`` is called (from that thread)
    whenever the answer differs from the previous one."""

    def __init__(
        self,
        url: str,
        model_name: str,
        on_change: Callable[[], None],
        *,
        fast: float = FAST_POLL,
        slow: float = SLOW_POLL,
    ) -> None:
        self.url = url
        self.model_name = model_name
        self._on_change = on_change
        self.fast = fast
        self.slow = slow
        self._lock = threading.Lock()
        self._status: ServingStatus | None = None
        self._expected: dict[int, float] = {}
        self._gave_up: set[int] = set()  # versions TF Serving never settled within EXPECT_SECONDS
        self._bugs: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serving-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=TIMEOUT + 1)

    def current(self) -> ServingStatus | None:
        with self._lock:
            return self._status

    def expect(self, versions: AbstractSet[int]) -> None:
        """Poll fast until each of ``versions`` is AVAILABLE or has failed."""
        deadline = time.monotonic() + EXPECT_SECONDS
        with self._lock:
            for version in versions - self._gave_up:  # re-asking never extends a deadline
                self._expected.setdefault(version, deadline)
        self._wake.set()

    def refresh(self) -> None:
        """Ask TF Serving now, in the caller's thread: a report made right after the model dir
        changed must not carry an answer from before the change (up to ``slow`` seconds old:
        e.g. a rollback reporting the old version served after TF Serving unloaded it)."""
        try:
            self._poll_once()
        except Exception:  # noqa: BLE001 - the watcher's own thread asks again and logs a bug
            log.debug("refreshing TF Serving's status failed", exc_info=True)

    def _settle(self, status: ServingStatus) -> None:
        now = time.monotonic()
        with self._lock:
            for version, deadline in list(self._expected.items()):
                entry = status.state_of(version)
                if entry is not None and (entry.state == AVAILABLE or entry.failed):
                    del self._expected[version]
                elif now > deadline:
                    del self._expected[version]
                    self._gave_up.add(version)

    def _interval(self) -> float:
        with self._lock:
            return self.fast if self._expected else self.slow

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll_once()
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any one bad answer
                what = f"{type(exc).__name__}: {one_line(exc, 200)}"
                if what not in self._bugs:  # once per kind of error: it may repeat 10 times a second
                    self._bugs.add(what)
                    log.exception("checking TF Serving failed unexpectedly (a bug: please report it); trying again")
            self._wake.wait(self._interval())
            self._wake.clear()

    def _poll_once(self) -> None:
        status = fetch(self.url, self.model_name)
        with self._lock:
            previous = self._status
            changed = status != previous
            self._status = status
        if not status.reachable and (previous is None or previous.reachable):
            log.info("TF Serving not answering yet: %s", status.problem)
        self._settle(status)
        if changed:
            self._log_change(status)
            self._on_change()

    def _log_change(self, status: ServingStatus) -> None:
        if status.reachable:
            states = ", ".join(f"{v.version} {v.state}" for v in status.versions) or "no version"
            log.info("TF Serving reports %s: %s", self.model_name, states)
            for v in status.versions:
                if v.failed:
                    log.error("TF Serving failed to load version %d: %s: %s", v.version, v.error_code, v.error_message)
