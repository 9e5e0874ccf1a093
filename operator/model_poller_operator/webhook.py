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

The decision itself is ``inject.py`` (pure); ``admission.py`` does its lookups,
``webhook_tls.py`` the certificate and caBundle, and this module serves HTTPS. Settings
come from ``MODEL_POLLER_OPERATOR_WEBHOOK_*`` variables (``webhook_settings.py``; the chart
sets them); without a port the webhook is off.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from model_poller_operator.admission import Admission, Lookups
from model_poller_operator.apply import Api
from model_poller_operator.webhook_settings import WebhookSettings
from model_poller_operator.webhook_tls import Tls

log = logging.getLogger(__name__)

PATH_MUTATE: Final = "/mutate"
PATH_HEALTHZ: Final = "/healthz"
# An AdmissionReview holds one pod (etcd stores objects up to 1.5 MiB) plus the request.
MAX_REVIEW_BYTES: Final = 4 * 1024 * 1024


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
