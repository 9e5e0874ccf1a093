"""The poller's edge to the Kubernetes API: read and watch its own ModelDeployment, and
merge-patch its own entry of ``status.pollers``. Nothing else (the rendered Role allows
get/watch on that one object and patch on its status).

Credentials: in a pod, the ServiceAccount token mounted into the poller container (re-read
as the kubelet rotates it); outside a pod, the kubeconfig ($KUBECONFIG or ~/.kube/config).
Every failure becomes one of three typed errors, so callers decide by type, not by text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException
from model_poller_api import names

from model_poller import __version__
from model_poller.config import Target
from model_poller.errors import ConfigError

REQUEST_TIMEOUT = 10.0
# A status patch is a few hundred bytes the API server answers in milliseconds. A short
# timeout bounds how long one write lost in a network black hole delays the next: with the
# status writer's retries (at most 5 s apart) the entry is right within 10 s of the API
# server's return.
PATCH_TIMEOUT = 3.0
# A watch request ends on the server after this long (the poller then re-watches).
WATCH_SECONDS = 240


# A Retry-After longer than this is not waited for in full (the API server's own is 1 s).
MAX_RETRY_AFTER = 60.0


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status (0: no answer); ``retry_after``
    the seconds the API server asked to wait (its ``Retry-After``, on 429 and some 5xx)."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class KubeUnavailable(KubeError):
    """No answer, 5xx, 409 or 429: worth retrying with backoff (not sooner than
    ``retry_after`` when the API server said so)."""


class KubeForbidden(KubeError):
    """401/403: the poller's identity lacks a permission; retrying soon will not help."""


class KubeNotFound(KubeError):
    """404: the ModelDeployment does not exist (any more)."""


class KubeRejected(KubeError):
    """400/422: the request itself was refused (retrying the same one will not help)."""


class ResourceExpired(KubeError):
    """410: the watch's resourceVersion is too old; list (get) again."""


def _error(exc: Exception, what: str) -> KubeError:
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        detail = _api_message(exc)
        message = f"{what}: {status} {exc.reason or ''}: {detail}".strip()
        if status in (401, 403):
            return KubeForbidden(status, message)
        if status == 404:
            return KubeNotFound(status, message)
        if status == 410:
            return ResourceExpired(status, message)
        if status in (400, 422):
            return KubeRejected(status, message)
        return KubeUnavailable(status, message, _retry_after(exc))
    return KubeUnavailable(0, f"{what}: {type(exc).__name__}: {exc}")


def _retry_after(exc: ApiException) -> float | None:
    """The answer's ``Retry-After`` in seconds (the delay form; the API server sends no
    dates), at most MAX_RETRY_AFTER; None when absent or unreadable."""
    value = (exc.headers or {}).get("Retry-After")
    try:
        seconds = float(str(value).strip()) if value is not None else None
    except ValueError:
        return None
    if seconds is None or not seconds >= 0:  # (not NaN)
        return None
    return min(seconds, MAX_RETRY_AFTER)


def _api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.body)
    except (ValueError, AttributeError, TypeError):
        return str(exc.body)


class Kube:
    """Thread-safe (the underlying urllib3 pool is); one per poller."""

    def __init__(self, client: kubernetes.client.ApiClient, target: Target) -> None:
        client.user_agent = f"model-poller/{__version__}"
        self.client = client
        self.target = target
        self.api = kubernetes.client.CustomObjectsApi(client)

    @classmethod
    def from_environment(cls, target: Target) -> Kube:
        """The pod's mounted ServiceAccount token when in a pod, else the kubeconfig."""
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            try:
                kubernetes.config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            except (kubernetes.config.ConfigException, OSError) as exc:
                raise ConfigError(
                    f"--report-to {target}: no Kubernetes credentials (not in a pod, and no usable kubeconfig: {exc})"
                ) from None
        # Retries are ours (with backoff and jitter); urllib3's own would hide an outage.
        configuration.retries = False
        return cls(kubernetes.client.ApiClient(configuration), target)

    def _where(self) -> str:
        return f"ModelDeployment {self.target}"

    def get(self) -> dict[str, Any]:
        t = self.target
        try:
            obj = self.api.get_namespaced_custom_object(
                names.GROUP, names.VERSION, t.namespace, names.PLURAL, t.name, _request_timeout=REQUEST_TIMEOUT
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _error(exc, f"get {self._where()}") from None
        assert isinstance(obj, dict)
        return obj

    def watch(self, resource_version: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(type, object) of each change after ``resource_version`` (empty: the object as it
        is now, as ADDED, then each change), until the server ends the watch (then the
        iterator ends). Raises KubeError subclasses."""
        t = self.target
        watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        try:
            stream = watch.stream(  # type: ignore[no-untyped-call]
                self.api.list_namespaced_custom_object,
                names.GROUP,
                names.VERSION,
                t.namespace,
                names.PLURAL,
                field_selector=f"metadata.name={t.name}",
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_SECONDS,
                _request_timeout=(REQUEST_TIMEOUT, WATCH_SECONDS + 30),
            )
            for event in stream:
                kind = str(event.get("type"))
                obj = event.get("raw_object") or {}
                if kind == "ERROR":
                    code = int(obj.get("code") or 0)
                    message = f"watch {self._where()}: {code} {obj.get('message', '')}"
                    if code == 410:
                        raise ResourceExpired(code, message)
                    raise KubeUnavailable(code, message)
                yield kind, obj
        except KubeError:
            raise
        except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise _error(exc, f"watch {self._where()}") from None
        finally:
            watch.stop()  # type: ignore[no-untyped-call]

    def patch_entry(self, pod: str, entry: Mapping[str, Any]) -> None:
        """Merge-patch ``status.pollers.<pod>`` (only this pod's key) through the status
        subresource: no resourceVersion precondition, so it never conflicts with the
        operator's writes, and never drops anyone else's entry."""
        t = self.target
        body = {"status": {"pollers": {pod: dict(entry)}}}
        try:
            self.api.patch_namespaced_custom_object_status(
                names.GROUP,
                names.VERSION,
                t.namespace,
                names.PLURAL,
                t.name,
                body,
                _content_type="application/merge-patch+json",
                _request_timeout=PATCH_TIMEOUT,
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _error(exc, f"patch status.pollers.{pod} of {self._where()}") from None

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]
