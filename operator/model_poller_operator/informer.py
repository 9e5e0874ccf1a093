"""One collection of one namespace kept in memory: a list, then a watch from its resourceVersion.

Used outside kopf, in threads of their own: for the labelled pods of external-mode
ModelDeployments (``external.py``: kopf's pod watch selects the operator's own label only)
and for the webhook's lookups (``admission.py``: its answers must not wait for two API round
trips per pod, nor depend on kopf). A lost connection or an expired resourceVersion (410)
lists again; nothing is missed, changes are only late.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from kubernetes.client.exceptions import ApiException

from model_poller_operator.apply import Api

log = logging.getLogger(__name__)

Obj = dict[str, Any]
# (name, the object before or None, the object now or None when deleted)
OnEvent = Callable[[str, Obj | None, Obj | None], None]
MAX_DELAY: Final = 30.0


@dataclass
class NamespaceWatch:
    """``path`` (a namespaced collection, e.g. ``/api/v1/namespaces/ml/pods``) filtered by
    ``selector``; ``objects`` by name once ``listed`` is set."""

    api: Api
    path: str
    selector: str = ""
    on_event: OnEvent | None = None
    # Seconds of one watch request (then it is renewed from the last resourceVersion).
    watch_seconds: int = 300
    listed: threading.Event = field(default_factory=threading.Event)
    stopped: threading.Event = field(default_factory=threading.Event)
    _objects: dict[str, Obj] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> NamespaceWatch:
        threading.Thread(target=self._run, name=f"watch {self.path}", daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def get(self, name: str) -> Obj | None:
        with self._lock:
            return self._objects.get(name)

    def items(self) -> list[Obj]:
        with self._lock:
            return list(self._objects.values())

    def _run(self) -> None:
        delay = 1.0
        while not self.stopped.is_set():
            try:
                version = self._list()
                delay = 1.0
                while not self.stopped.is_set():
                    version = self._watch(version)
            except ApiException as error:
                if error.status != 410:  # 410: the resourceVersion expired: list again at once
                    log.warning("watching %s: %s %s; retrying in %.0fs", self.path, error.status, error.reason, delay)
                    self.stopped.wait(delay)
                    delay = min(delay * 2, MAX_DELAY)
            except Exception as error:  # noqa: BLE001 - a lost connection must not end the thread
                log.warning("watching %s: %s; retrying in %.0fs", self.path, error, delay)
                self.stopped.wait(delay)
                delay = min(delay * 2, MAX_DELAY)

    def _query(self) -> list[tuple[str, str]]:
        return [("labelSelector", self.selector)] if self.selector else []

    def _list(self) -> str:
        found = self.api.request("GET", self.path, query=self._query())
        fresh = {str(item["metadata"]["name"]): item for item in found.get("items") or ()}
        with self._lock:
            before, self._objects = self._objects, fresh
        self.listed.set()
        for name in set(before) | set(fresh):
            if before.get(name) != fresh.get(name):
                self._notify(name, before.get(name), fresh.get(name))
        return str(found["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> str:
        """One watch request from ``version``; returns the last resourceVersion seen."""
        query = [
            *self._query(),
            ("watch", "true"),
            ("resourceVersion", version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(self.watch_seconds)),
        ]
        client = self.api.client
        method, url, headers, _body, _post = client.param_serialize(
            "GET",
            self.path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = client.call_api(method, url, header_params=headers, _request_timeout=(10, self.watch_seconds + 30))
        raw = response.response
        try:
            if not 200 <= int(response.status) < 300:
                raise ApiException(status=response.status, reason=response.reason)
            for line in _lines(raw):
                if self.stopped.is_set():
                    break
                version = self._event(json.loads(line), version) if line else version
        finally:
            raw.release_conn()
        return version

    def _event(self, event: Mapping[str, Any], version: str) -> str:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            raise ApiException(status=int(obj.get("code") or 500), reason=str(obj.get("message") or obj))
        version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return version  # BOOKMARK: only the resourceVersion moves
        name = str(obj["metadata"]["name"])
        with self._lock:
            before = self._objects.pop(name, None)
            if kind != "DELETED":
                self._objects[name] = dict(obj)
        self._notify(name, before, None if kind == "DELETED" else dict(obj))
        return version

    def _notify(self, name: str, before: Obj | None, after: Obj | None) -> None:
        if self.on_event is not None:
            self.on_event(name, before, after)


def _lines(raw: Any) -> Iterator[str]:
    """The lines of a streamed (chunked) response, as they arrive: one watch event each."""
    buffer = b""
    for chunk in raw.stream(amt=None, decode_content=False):
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            if line.strip():
                yield line.decode("utf-8", errors="replace")
