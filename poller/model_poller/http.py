"""The poller's HTTP endpoints: /healthz, /readyz, /serving-ready, /metrics."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from model_poller_api.names import PATH_HEALTHZ, PATH_METRICS, PATH_READYZ, PATH_SERVING_READY
from prometheus_client import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)


class Probes:
    """What the endpoints answer; set by the poller's loop, read by the HTTP threads."""

    def __init__(self, metrics: Callable[[], bytes]) -> None:
        self.ready = threading.Event()
        self.serving = threading.Event()
        self.metrics = metrics


class HttpServer:
    def __init__(self, port: int, probes: Probes, host: str = "") -> None:
        handler = _handler(probes)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("serving %s, %s, %s, %s on port %d", PATH_HEALTHZ, PATH_READYZ, PATH_SERVING_READY, PATH_METRICS, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(probes: Probes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == PATH_HEALTHZ:
                self._send(200, b"ok\n")
            elif path == PATH_READYZ:
                ok = probes.ready.is_set()
                self._send(200 if ok else 503, b"ready\n" if ok else b"initial sync not done\n")
            elif path == PATH_SERVING_READY:
                ok = probes.serving.is_set()
                self._send(200 if ok else 503, b"serving\n" if ok else b"no version inside the policy yet\n")
            elif path == PATH_METRICS:
                self._send(200, probes.metrics(), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # probes every few seconds would drown the log

    return Handler
