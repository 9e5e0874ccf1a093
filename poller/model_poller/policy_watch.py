"""Live version policy: follow ``spec.versions`` of this poller's own ModelDeployment.

A get, then a watch by name (what the rendered Role allows), in a thread of its own. A
change of ``keep`` or ``pinned`` reaches the sync loop within a second, without a restart.
The watch is re-opened after the server ends it, after API server restarts (with backoff)
and after "resource version too old" (410: get again, then watch from the server's current
state, since the object's own resourceVersion may be the one that is too old).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from model_poller_api import models
from model_poller_api.defaults import DEFAULT_KEEP

from model_poller.backoff import Backoff
from model_poller.kube import Kube, KubeError, KubeForbidden, KubeNotFound, ResourceExpired
from model_poller.policy import Policy

log = logging.getLogger(__name__)

RETRY_START = 0.5
RETRY_MAX = 5.0
SLOW_RETRY = 60.0
# A persisting 403/404 is logged at most this often.
LOG_EVERY = 600.0


def policy_of(obj: Mapping[str, Any]) -> Policy:
    """The poller's Policy from a ModelDeployment's ``spec.versions`` (defaults applied)."""
    meta = obj.get("metadata") or {}
    spec = models.ModelDeploymentSpec.from_object(str(meta.get("name", "")), obj.get("spec") or {})
    versions = spec.versions
    if versions.pinned:
        return Policy(keep=None, pinned=frozenset(versions.pinned))
    return Policy(keep=versions.keep if versions.keep is not None else DEFAULT_KEEP)


class PolicyWatcher:
    """Calls ``on_policy`` with the first policy read and with every change after it."""

    def __init__(
        self, kube: Kube, on_policy: Callable[[Policy], None], on_error: Callable[[str], None] | None = None
    ) -> None:
        self.kube = kube
        self._on_policy = on_policy
        self._on_error = on_error or (lambda outcome: None)
        self._logged_at = -LOG_EVERY
        self._policy: Policy | None = None
        self._stop = threading.Event()
        self.first = threading.Event()
        self._thread = threading.Thread(target=self._run, name="policy-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        # The watch request ends within its timeout; the thread is a daemon, so a stop
        # never waits for it.
        self._stop.set()

    def _apply(self, obj: Mapping[str, Any]) -> None:
        try:
            policy = policy_of(obj)
        except (KeyError, TypeError, ValueError) as exc:
            log.error(
                "cannot read spec.versions of ModelDeployment %s: %s; keeping %s",
                self.kube.target,
                exc,
                self._policy.describe() if self._policy else "the flags' policy",
            )
            return
        if policy != self._policy:
            if self._policy is not None:
                log.info(
                    "version policy of %s changed: %s -> %s",
                    self.kube.target,
                    self._policy.describe(),
                    policy.describe(),
                )
            self._policy = policy
            self._on_policy(policy)
        self.first.set()

    def _run(self) -> None:
        # Slowing to one a minute after a 403/404: an API server that is starting can
        # answer 403 for a moment, and a fixed Role or a re-created object must still be
        # picked up.
        backoff = Backoff(start=RETRY_START, cap=RETRY_MAX, jitter=0.5)
        # Once a 410 was seen, every later start watches from the server's current state; that
        # costs one ADDED event per re-watch (the policy as it is, applied again: a no-op).
        expired = False
        while not self._stop.is_set():
            try:
                self._follow(backoff, from_now=expired)
            except ResourceExpired as exc:
                # The object's own resourceVersion can be older than the API server's watch
                # cache (an object unchanged since before the server restarted): watching from
                # it again would get 410 again, in a loop. From now on watch from the server's
                # current state instead.
                expired = True
                log.info("%s; getting ModelDeployment %s again and watching from now", exc, self.kube.target)
                self._stop.wait(RETRY_START)
            except (KubeForbidden, KubeNotFound) as exc:
                delay = backoff.fail(cap=SLOW_RETRY)
                self._on_error("forbidden" if isinstance(exc, KubeForbidden) else "not_found")
                if backoff.failures > 1 and time.monotonic() - self._logged_at >= LOG_EVERY:
                    self._logged_at = time.monotonic()
                    log.error(
                        "cannot follow spec.versions of %s: %s (the poller's ServiceAccount needs get and "
                        "watch on modeldeployments, resourceNames [%s]); retrying",
                        self.kube.target,
                        exc,
                        self.kube.target.name,
                    )
                self._stop.wait(delay)
            except KubeError as exc:
                delay = max(backoff.fail(), exc.retry_after or 0.0)
                self._on_error("retry")
                log.warning("watch of %s interrupted (%s); again in about %.1fs", self.kube.target, exc, delay)
                self._stop.wait(delay)
            except Exception:  # noqa: BLE001 - the live policy must outlive any one bad answer
                delay = backoff.fail(cap=SLOW_RETRY)
                log.exception(
                    "following spec.versions of %s failed unexpectedly (a bug: please report it)", self.kube.target
                )
                self._stop.wait(delay)

    def _follow(self, backoff: Backoff, from_now: bool = False) -> None:
        """Get the ModelDeployment, then watch it from there until stopped or an error.

        ``from_now``: watch without a resourceVersion (the server sends the object as it is
        now, as ADDED, then its changes), not from the object's own resourceVersion."""
        obj = self.kube.get()
        self._apply(obj)
        resource_version = "" if from_now else str((obj.get("metadata") or {}).get("resourceVersion", ""))
        backoff.reset()
        while not self._stop.is_set():
            for kind, event_obj in self.kube.watch(resource_version):
                if self._stop.is_set():
                    return
                resource_version = str((event_obj.get("metadata") or {}).get("resourceVersion") or resource_version)
                if kind in ("ADDED", "MODIFIED"):
                    self._apply(event_obj)
                elif kind == "DELETED":
                    log.warning(
                        "ModelDeployment %s was deleted; keeping %s",
                        self.kube.target,
                        self._policy.describe() if self._policy else "the flags' policy",
                    )
