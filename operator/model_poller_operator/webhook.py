"""The mutating admission webhook that injects the poller into labelled pods (spec.workload: external).

An HTTPS server of its own (aiohttp, in a thread with its own event loop), in the
operator's process, rather than kopf's admission support, because:

- it answers whatever kopf does: a replica that kopf's peering keeps on standby, or whose
  handlers are busy, still admits pods (every replica behind the webhook's Service must);
- it reads the ModelDeployment and the poller's ServiceAccount from watches of its own
  (``informer.py``, started in a namespace once a pod was injected there) or, for a name
  those have not seen, from the API server: never from kopf's in-memory indexes, so a
  ModelDeployment created a moment ago is found, and a standby replica's view, which kopf
  does not keep fresh, never decides;
- its TLS comes from the Secret every replica shares (``certs.py``) and is reloaded when
  renewed; kopf's managed webhook configuration would need ``create`` on
  MutatingWebhookConfigurations, which RBAC cannot narrow to one name.

The decision itself is ``inject.py`` (pure); this module only does I/O. Settings come from
``MODEL_POLLER_OPERATOR_WEBHOOK_*`` variables (the chart sets them); without a port the
webhook is off.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import logging
import shutil
import ssl
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final

from aiohttp import web
from kubernetes.client.exceptions import ApiException
from model_poller_api import names

from model_poller_operator import certs, inject
from model_poller_operator.apply import Api
from model_poller_operator.config import SettingsError, host, object_name, read_env, setting
from model_poller_operator.informer import NamespaceWatch
from model_poller_operator.render import ownership, rbac

log = logging.getLogger(__name__)

ENV_PREFIX: Final = "MODEL_POLLER_OPERATOR_WEBHOOK_"
PATH_MUTATE: Final = "/mutate"
PATH_HEALTHZ: Final = "/healthz"
MWC_PATH: Final = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
# An AdmissionReview holds one pod (etcd stores objects up to 1.5 MiB) plus the request.
MAX_REVIEW_BYTES: Final = 4 * 1024 * 1024


@dataclass(frozen=True)
class WebhookSettings:
    """Where the webhook listens and where its certificate comes from."""

    ENV_PREFIX: ClassVar[str] = ENV_PREFIX

    port: int = setting(
        0, "HTTPS port of the admission webhook (the chart sets it); 0: no webhook", minimum=0, maximum=65535
    )
    address: str = setting("0.0.0.0", "address the webhook listens on", check=host)
    # Self-signed mode: the Secret NAMESPACE/NAME holding the CA and serving certificate,
    # the names the certificate is for, and the MutatingWebhookConfiguration whose caBundle
    # the operator keeps equal to that CA.
    secret: str = setting(
        "",
        "NAMESPACE/NAME of the Secret holding the webhook's self-signed CA and certificate (shared by every replica)",
    )
    hosts: tuple[str, ...] = setting(
        (), "comma-separated names (or IPs) the certificate is for: the webhook Service's DNS names", check=host
    )
    configuration: str = setting(
        "", "the MutatingWebhookConfiguration whose caBundle the operator keeps equal to its CA", check=object_name
    )
    # Or: a folder with tls.crt and tls.key written by someone else (cert-manager).
    cert_dir: str = setting(
        "",
        f"instead of {ENV_PREFIX}SECRET: a folder with tls.crt and tls.key kept by someone else "
        "(cert-manager); reloaded when they change",
    )
    check_interval: float = setting(
        60.0,
        "seconds between two checks of the certificate (renewal, another replica's write) and of the caBundle",
        minimum=0.1,
    )
    lookup_timeout: float = setting(
        2.0,
        "seconds each API lookup of an admission may take (the API server waits timeoutSeconds in all)",
        minimum=0.1,
    )

    @property
    def enabled(self) -> bool:
        return self.port > 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebhookSettings:
        """``MODEL_POLLER_OPERATOR_WEBHOOK_PORT=9443`` etc.; raises SettingsError naming the variable."""
        settings = read_env(cls, environ)
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse settings that cannot work together, naming the variables."""
        if not self.enabled:
            return
        if self.secret and self.cert_dir:
            raise SettingsError(
                f"{ENV_PREFIX}CERT_DIR and {ENV_PREFIX}SECRET are both set: set only one, "
                "CERT_DIR (cert-manager) or SECRET (self-signed)"
            )
        if not self.secret and not self.cert_dir:
            raise SettingsError(
                f"{ENV_PREFIX}PORT is set: set {ENV_PREFIX}SECRET (self-signed) or {ENV_PREFIX}CERT_DIR (cert-manager) too"
            )
        if self.secret and (self.secret.count("/") != 1 or not all(self.secret.split("/"))):
            raise SettingsError(f"{ENV_PREFIX}SECRET={self.secret!r} must be NAMESPACE/NAME")
        if self.secret and not self.hosts:
            raise SettingsError(
                f"{ENV_PREFIX}HOSTS must name the webhook's Service (e.g. svc.ns.svc) for its certificate"
            )


# --- admission: lookups around the pure decision -----------------------------------------


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
        except (inject.Refused, LookupFailed) as refused:
            log.info("refused pod %s/%s: %s", namespace, pod_name, refused)
            return {"allowed": False, "status": {"code": 403, "reason": "Forbidden", "message": str(refused)}}
        if self.cache is not None:
            self.cache.remember(namespace)
        if not patch:
            log.info("pod %s/%s already has the poller of ModelDeployment %s", namespace, pod_name, name)
            return {"allowed": True}
        log.info("injected the poller of ModelDeployment %s into pod %s/%s", name, namespace, pod_name)
        return {"allowed": True, "patchType": "JSONPatch", "patch": base64.b64encode(inject.dumps(patch)).decode()}

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


# --- TLS: the certificate and the configuration's caBundle -------------------------------


@dataclass
class Tls:
    """The server's SSL context and where its certificate comes from (Secret or folder)."""

    settings: WebhookSettings
    api: Api
    context: ssl.SSLContext = field(init=False)
    _loaded: bytes = b""
    _dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="model-poller-webhook-")))

    def __post_init__(self) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2

    def refresh(self) -> bool:
        """Load the current certificate if it changed, then keep the configuration's caBundle;
        True once a certificate is loaded (a caBundle that cannot be set is only logged: the
        server serves meanwhile, and the next check tries again)."""
        cert, key, ca_bundle = self._current()
        if cert != self._loaded:
            self._load(cert, key)
            log.info("webhook serving certificate loaded (%s)", self.settings.secret or self.settings.cert_dir)
        if ca_bundle is not None and self.settings.configuration:
            try:
                patch_ca_bundle(self.api, self.settings.configuration, ca_bundle)
            except ApiException as error:
                log.error(
                    "cannot set the caBundle of MutatingWebhookConfiguration %s (labelled pods are refused until "
                    "it trusts the webhook's CA): %s",
                    self.settings.configuration,
                    api_error(error),
                )
        return True

    def _current(self) -> tuple[bytes, bytes, str | None]:
        if self.settings.cert_dir:
            folder = Path(self.settings.cert_dir)
            return (folder / certs.CERT_KEY).read_bytes(), (folder / certs.PRIVATE_KEY).read_bytes(), None
        namespace, name = self.settings.secret.split("/")
        bundle = certs.SecretStore(self.api, namespace, name).ensure(self.settings.hosts)
        return bundle.tls_crt, bundle.tls_key, bundle.ca_bundle

    def close(self) -> None:
        """Remove the certificate files."""
        shutil.rmtree(self._dir, ignore_errors=True)

    def _load(self, cert: bytes, key: bytes) -> None:
        # ssl loads certificates from files only: a private folder (0700), key file 0600.
        cert_file, key_file = self._dir / certs.CERT_KEY, self._dir / certs.PRIVATE_KEY
        cert_file.write_bytes(cert)
        key_file.touch(mode=0o600)
        key_file.write_bytes(key)
        # New handshakes use the new certificate; open connections keep theirs.
        self.context.load_cert_chain(cert_file, key_file)
        self._loaded = cert


def api_error(error: ApiException) -> str:
    """``403 Forbidden: <the API server's message>``."""
    try:
        message = json.loads(error.body or "{}").get("message") or error.body
    except (ValueError, AttributeError):
        message = error.body
    return f"{error.status} {error.reason}: {message}"


def patch_ca_bundle(api: Api, configuration: str, ca_bundle: str) -> None:
    """Make every webhook of the MutatingWebhookConfiguration trust ``ca_bundle``; writes
    only when one differs (a JSON patch guarded by each webhook's name)."""
    path = f"{MWC_PATH}/{configuration}"
    try:
        current = api.request("GET", path, timeout=10)
    except ApiException as error:
        if error.status == 404:
            log.warning(
                "MutatingWebhookConfiguration %s does not exist: labelled pods are refused until it does "
                "(the chart creates it)",
                configuration,
            )
            return
        raise
    ops: list[dict[str, Any]] = []
    for i, hook in enumerate(current.get("webhooks") or ()):
        if (hook.get("clientConfig") or {}).get("caBundle") != ca_bundle:
            ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": hook["name"]})
            ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": ca_bundle})
    if ops:
        api.request("PATCH", path, body=ops, content_type="application/json-patch+json", timeout=10)
        log.info("caBundle of MutatingWebhookConfiguration %s set to the webhook CA", configuration)


# --- the server ----------------------------------------------------------------------------


@dataclass
class Webhook:
    """The HTTPS server in a thread of its own; ``start()`` returns at once, the server
    listens as soon as a certificate is loaded (retrying until it is)."""

    settings: WebhookSettings
    api: Api
    port: int = 0  # the bound port, once listening
    listening: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _executor: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="webhook")
    )

    def start(self) -> Webhook:
        self._thread = threading.Thread(target=self._run, name="model-poller-webhook", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception:  # noqa: BLE001 - the operator lives on; the log says why
            log.exception("the admission webhook stopped")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        tls = Tls(self.settings, self.api)
        try:
            await self._listen(tls)
        finally:
            tls.close()

    async def _listen(self, tls: Tls) -> None:
        delay = 1.0
        while not await self._ready(tls):
            if await self._sleep(delay):
                return
            delay = min(delay * 2, 60.0)
        admission = Admission(self.api, self.settings.lookup_timeout, Lookups(self.api))
        app = web.Application(client_max_size=MAX_REVIEW_BYTES)
        app.router.add_post(PATH_MUTATE, self._handler(admission))
        app.router.add_get(PATH_HEALTHZ, _healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.address, self.settings.port, ssl_context=tls.context)
        await site.start()
        self.port = site.port
        self.listening.set()
        log.info("admission webhook listening on https://%s:%d%s", self.settings.address, self.port, PATH_MUTATE)
        try:
            while not await self._sleep(self.settings.check_interval):
                await self._ready(tls)
        finally:
            await runner.cleanup()
            if admission.cache is not None:
                admission.cache.stop()

    async def _ready(self, tls: Tls) -> bool:
        """Load (or renew) the certificate and set the caBundle; False on failure (logged)."""
        try:
            return await asyncio.to_thread(tls.refresh)
        except Exception as error:  # noqa: BLE001 - retried; the message says what to do
            log.error("admission webhook certificate: %s", error)
            return False

    async def _sleep(self, seconds: float) -> bool:
        """Sleep; True if asked to stop meanwhile."""
        assert self._stop is not None
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _handler(self, admission: Admission) -> Any:
        async def mutate(request: web.Request) -> web.Response:
            try:
                review = json.loads(await request.read())
            except (ValueError, UnicodeDecodeError):
                return web.json_response({"error": "the body is not an AdmissionReview (JSON)"}, status=400)
            if not isinstance(review, dict):
                return web.json_response({"error": "the body is not an AdmissionReview (JSON object)"}, status=400)
            loop = asyncio.get_running_loop()
            answer = await loop.run_in_executor(self._executor, admission.review, review)
            return web.json_response(answer)

        return mutate


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")
