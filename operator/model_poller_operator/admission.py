"""One AdmissionReview decided: the ModelDeployment and the poller's ServiceAccount looked up
(from watches of their namespace, else from the API server), then ``inject.py`` patches or
refuses the pod. A lookup that fails refuses the pod (fail closed)."""

from __future__ import annotations

import base64
import concurrent.futures
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from kubernetes.client.exceptions import ApiException
from model_poller_api import names

from model_poller_operator import inject, json_patch, refusals
from model_poller_operator.apply import Api
from model_poller_operator.informer import NamespaceWatch
from model_poller_operator.render import ownership, rbac

log = logging.getLogger(__name__)


class LookupFailed(Exception):
    """The API server did not answer a lookup; the pod is refused (fail closed)."""


# The ServiceAccounts the operator renders carry its label: those are the ones worth keeping.
_ACCOUNT_SELECTOR: Final = f"{names.LABEL_MANAGED_BY}={names.MANAGER}"


@dataclass
class Lookups:
    """The ModelDeployments and the operator's ServiceAccounts of the namespaces where a pod
    was injected, kept by watches, so the next pods there cost no API round trip. A name
    the watch has not seen (yet) is read from the API server by the caller: a
    ModelDeployment created a moment ago is found, a look-alike ServiceAccount without the
    operator's label still seen (and refused as a conflict)."""

    api: Api
    _watches: dict[str, tuple[NamespaceWatch, NamespaceWatch]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def model_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._cached(namespace, 0, name)

    def service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._cached(namespace, 1, name)

    def _cached(self, namespace: str, which: int, name: str) -> dict[str, Any] | None:
        with self._lock:
            watches = self._watches.get(namespace)
        if watches is None or not watches[which].listed.is_set():
            return None
        return watches[which].get(name)

    def remember(self, namespace: str) -> None:
        """Keep the ModelDeployments and ServiceAccounts of ``namespace`` from now on
        (called once a pod was injected there: only namespaces with an external-mode
        ModelDeployment ever get watches)."""
        with self._lock:
            if namespace in self._watches:
                return
            self._watches[namespace] = (
                NamespaceWatch(self.api, f"/apis/{names.API_VERSION}/namespaces/{namespace}/{names.PLURAL}").start(),
                NamespaceWatch(self.api, f"/api/v1/namespaces/{namespace}/serviceaccounts", _ACCOUNT_SELECTOR).start(),
            )

    def stop(self) -> None:
        with self._lock:
            watches, self._watches = self._watches, {}
        for pair in watches.values():
            for watch in pair:
                watch.stop()


@dataclass
class Admission:
    """Decides one AdmissionReview: reads the ModelDeployment and ServiceAccount, then
    lets ``inject.mutation`` patch or refuse the pod."""

    api: Api
    lookup_timeout: float = 2.0
    cache: Lookups | None = None
    # Lookups that miss the cache run side by side (the ServiceAccount's name is known
    # from the label): the API server waits for one round trip, not two.
    _lookups: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="lookup")
    )

    def review(self, review: Mapping[str, Any]) -> dict[str, Any]:
        request = review.get("request") or {}
        return {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": request.get("uid", ""), **self.decide(request)},
        }

    def decide(self, request: Mapping[str, Any]) -> dict[str, Any]:
        kind = (request.get("kind") or {}).get("kind")
        if kind != "Pod" or request.get("operation") != "CREATE" or request.get("subResource"):
            return {"allowed": True}  # the configuration sends only pod creations
        pod = request.get("object") or {}
        meta = pod.get("metadata") or {}
        name = (meta.get("labels") or {}).get(names.LABEL_MODEL_DEPLOYMENT)
        if not name:
            return {"allowed": True}  # not ours: the objectSelector should not have sent it
        namespace = str(request.get("namespace") or meta.get("namespace") or "")
        pod_name = meta.get("name") or f"{meta.get('generateName', '')}<generated>"
        identity = rbac.poller_identity(ownership.Owner(name=name, namespace=namespace, uid=""))
        cached_md = self.cache.model_deployment(namespace, name) if self.cache else None
        cached_account = self.cache.service_account(namespace, identity) if self.cache else None
        account = None
        if cached_account is None:
            account = self._lookups.submit(self._get, f"ServiceAccount {identity}", _sa_path(namespace, identity))
        try:
            md = cached_md or self._get(f"ModelDeployment {name}", _md_path(namespace, name))
            target = inject.target_of(md, namespace, name)
            inject.check_identity(account.result() if account is not None else cached_account, target)
            patch = inject.mutation(pod, target)
        except (refusals.Refused, LookupFailed) as refused:
            log.info("refused pod %s/%s: %s", namespace, pod_name, refused)
            return {"allowed": False, "status": {"code": 403, "reason": "Forbidden", "message": str(refused)}}
        if self.cache is not None:
            self.cache.remember(namespace)
        if not patch:
            log.info("pod %s/%s already has the poller of ModelDeployment %s", namespace, pod_name, name)
            return {"allowed": True}
        log.info("injected the poller of ModelDeployment %s into pod %s/%s", name, namespace, pod_name)
        return {"allowed": True, "patchType": "JSONPatch", "patch": base64.b64encode(json_patch.dumps(patch)).decode()}

    def _get(self, what: str, path: str) -> dict[str, Any] | None:
        try:
            return self.api.request("GET", path, timeout=self.lookup_timeout)
        except ApiException as error:
            if error.status == 404:
                return None
            if error.status in (401, 403):
                raise LookupFailed(
                    f"the operator may not read {what} in this namespace (it serves only the namespaces "
                    f"of its watch.namespaces value): {error.status} {error.reason}"
                ) from None
            raise LookupFailed(f"could not read {what}: {error.status} {error.reason}") from None
        except Exception as error:  # noqa: BLE001 - timeouts and connection errors: refuse, say why
            raise LookupFailed(f"could not read {what}: {type(error).__name__}: {error}") from None


def _md_path(namespace: str, name: str) -> str:
    return f"/apis/{names.API_VERSION}/namespaces/{namespace}/{names.PLURAL}/{name}"


def _sa_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}"
