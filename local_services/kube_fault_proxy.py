"""A fault-injecting HTTPS reverse proxy in front of the real kube-apiserver: a test
stand-in, not part of the product.

Toxiproxy (``local_services/toxiproxy.py``) breaks TCP; it cannot make the API server
*answer* 429 or 409. This proxy terminates TLS with the API server's own serving
certificate (it names 127.0.0.1, so a kubeconfig with the same CA and token works
unchanged but for ``server``), forwards every request to the real kube-apiserver over TLS
and streams its answer back (watches included, chunk by chunk). A test adds rules that
answer chosen requests itself instead, as the API server does when it is overloaded (429
with ``Retry-After``), unavailable (503) or in conflict (409), with a ``Status`` body of
the API server's shape, for a number of requests or a length of time:

    with KubeFaultProxy(kube) as proxy:
        proxy.write_kubeconfig(path, token)               # the client's view
        rule = proxy.fail(429, method="PATCH", path_suffix="/status", count=5, retry_after=1)
        ...
        rule.answered  # requests answered by the rule (times in rule.times)

It can also end every open watch cleanly (the last chunk, as the server does at a watch's
``timeoutSeconds``) and hold new watch requests until released, so a test can make a
client resume a watch from a resourceVersion the API server no longer has.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from local_services.kube import KubeControlPlane

log = logging.getLogger("services")

# Hop-by-hop headers (RFC 9110 section 7.6.1) are the proxy's own on each side.
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
_REASONS = {409: "Conflict", 429: "TooManyRequests", 503: "ServiceUnavailable"}


@dataclass
class FaultRule:
    """Answer matching requests with ``code`` instead of forwarding them, for the first
    ``count`` matches (None: any number) and until ``until`` (monotonic; None: no end)."""

    code: int
    method: str | None = None
    path_suffix: str | None = None
    watch: bool | None = None  # True: only watch requests; False: never them; None: both
    count: int | None = None
    until: float | None = None
    retry_after: int | None = None
    times: list[float] = field(default_factory=list)  # monotonic time of each answer

    @property
    def answered(self) -> int:
        return len(self.times)

    def matches(self, method: str, path: str, is_watch: bool) -> bool:
        if self.method is not None and method != self.method:
            return False
        if self.path_suffix is not None and not path.endswith(self.path_suffix):
            return False
        if self.watch is not None and is_watch != self.watch:
            return False
        if self.count is not None and self.answered >= self.count:
            return False
        return self.until is None or time.monotonic() < self.until

    def body(self, method: str, path: str) -> bytes:
        reason = _REASONS.get(self.code, "InternalError")
        message = {
            409: "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again",
            429: "Too many requests, please try again later.",
            503: "the server is currently unable to handle the request",
        }.get(self.code, "injected fault")
        status = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"{message} (injected by the test proxy for {method} {path})",
            "reason": reason,
            "code": self.code,
        }
        if self.retry_after is not None:
            status["details"] = {"retryAfterSeconds": self.retry_after}
        return json.dumps(status).encode()


@dataclass
class Seen:
    """One request the proxy handled: what was asked and what the client got."""

    at: float
    method: str
    path: str
    watch: bool
    code: int
    injected: bool
    query: str = ""
    body: bytes = b""  # the request's


class KubeFaultProxy:
    def __init__(self, kube: KubeControlPlane) -> None:
        self.kube = kube
        upstream = urllib.parse.urlsplit(kube.url)
        self._upstream = (upstream.hostname or "127.0.0.1", upstream.port or 443)
        self._client_ctx = ssl.create_default_context(cafile=str(kube.ca_file))
        self._server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # The API server's serving certificate (local_services/kube.py writes it beside the CA).
        self._server_ctx.load_cert_chain(kube.workdir / "tls.crt", kube.workdir / "tls.key")
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self.seen: list[Seen] = []
        self._watch_generation = 0
        self._upstream_watches: set[socket.socket] = set()
        # Watches the API server ended with a 410 ERROR event ("too old resource version").
        self.expired_watches = 0
        self.held_watches = 0
        self._watches_open = threading.Event()
        self._watches_open.set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._server.socket = self._server_ctx.wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="kube-fault-proxy", daemon=True)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> KubeFaultProxy:
        self._thread.start()
        log.info("kube fault proxy at %s -> %s", self.url, self.kube.url)
        return self

    def stop(self) -> None:
        self._watches_open.set()
        self.end_watches()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> KubeFaultProxy:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path, user: str, token: str) -> Path:
        """A kubeconfig for ``token`` whose server is this proxy (same CA as the API server)."""
        config: dict[str, Any] = self.kube.kubeconfig_for(user, token)
        config["clusters"][0]["cluster"]["server"] = self.url
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    # -- faults -------------------------------------------------------------------------

    def fail(
        self,
        code: int,
        *,
        method: str | None = None,
        path_suffix: str | None = None,
        watch: bool | None = None,
        count: int | None = None,
        seconds: float | None = None,
        retry_after: int | None = None,
    ) -> FaultRule:
        """Answer ``code`` to matching requests (see FaultRule) from now on."""
        rule = FaultRule(
            code,
            method=method,
            path_suffix=path_suffix,
            watch=watch,
            count=count,
            until=None if seconds is None else time.monotonic() + seconds,
            retry_after=retry_after,
        )
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            for rule in self._rules:
                rule.until = time.monotonic()
            self._rules.clear()

    def end_watches(self) -> None:
        """End every open watch cleanly (as the server does at the watch's timeout)."""
        with self._lock:
            self._watch_generation += 1
            upstreams = list(self._upstream_watches)
        for sock in upstreams:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the reader wakes up and ends its client's stream
            except OSError:
                pass

    def _open_watch(self, sock: socket.socket, generation: int) -> None:
        with self._lock:
            self._upstream_watches.add(sock)
            ended = generation != self._watch_generation
        if ended:
            sock.shutdown(socket.SHUT_RDWR)

    def _closed_watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._upstream_watches.discard(sock)

    def _held(self, n: int) -> None:
        with self._lock:
            self.held_watches += n

    def _count_expired(self) -> None:
        with self._lock:
            self.expired_watches += 1

    @property
    def open_watches(self) -> int:
        with self._lock:
            return len(self._upstream_watches)

    def hold_watches(self) -> None:
        """Keep new watch requests waiting (unforwarded) until ``release_watches()``."""
        self._watches_open.clear()

    def release_watches(self) -> None:
        self._watches_open.set()

    def requests(self, method: str | None = None, path_suffix: str | None = None) -> list[Seen]:
        with self._lock:
            return [
                s
                for s in self.seen
                if (method is None or s.method == method) and (path_suffix is None or s.path.endswith(path_suffix))
            ]

    # -- the HTTP side ------------------------------------------------------------------

    def _rule_for(self, method: str, path: str, is_watch: bool) -> FaultRule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path, is_watch):
                    rule.times.append(time.monotonic())
                    return rule
        return None

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        return type("Handler", (_Handler,), {"proxy": self})


class _Handler(BaseHTTPRequestHandler):
    proxy: KubeFaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        is_watch = query.get("watch", ["false"])[0] in ("true", "1")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        rule = self.proxy._rule_for(self.command, url.path, is_watch)
        if rule is not None:
            payload = rule.body(self.command, url.path)
            self.send_response(rule.code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if rule.retry_after is not None:
                self.send_header("Retry-After", str(rule.retry_after))
            self.end_headers()
            self.wfile.write(payload)
            self.proxy._record(
                Seen(time.monotonic(), self.command, url.path, is_watch, rule.code, True, url.query, body)
            )
            return
        if is_watch and not self.proxy._watches_open.is_set():
            self.proxy._held(+1)
            self.proxy._watches_open.wait()
            self.proxy._held(-1)
        self._forward(url.path, url.query, is_watch, body)

    def _forward(self, path: str, query: str, is_watch: bool, body: bytes) -> None:
        host, port = self.proxy._upstream
        conn = http.client.HTTPSConnection(host, port, context=self.proxy._client_ctx, timeout=None)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP and k.lower() != "host"}
        try:
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
        except OSError as exc:
            self._bad_gateway(f"{exc}")
            self.proxy._record(Seen(time.monotonic(), self.command, path, is_watch, 502, True, query, body))
            conn.close()
            return
        self.proxy._record(Seen(time.monotonic(), self.command, path, is_watch, resp.status, False, query, body))
        generation = self.proxy._watch_generation
        try:
            self.send_response(resp.status, resp.reason)
            for key, value in resp.getheaders():
                if key.lower() not in _HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if is_watch and conn.sock is not None:
                self.proxy._open_watch(conn.sock, generation)
            while True:
                try:
                    chunk = resp.read1(65536)
                except (OSError, http.client.HTTPException):
                    if self.proxy._watch_generation == generation:
                        raise
                    chunk = b""  # end_watches() cut the upstream: end this one cleanly
                if not chunk or (is_watch and self.proxy._watch_generation != generation):
                    break
                if is_watch and b'"code":410' in chunk:
                    self.proxy._count_expired()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (OSError, http.client.HTTPException):
            self.close_connection = True
        finally:
            if is_watch and conn.sock is not None:
                self.proxy._closed_watch(conn.sock)
            conn.close()

    def _bad_gateway(self, why: str) -> None:
        payload = json.dumps({"kind": "Status", "status": "Failure", "code": 502, "message": why}).encode()
        self.send_response(502)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


__all__ = ["FaultRule", "KubeFaultProxy", "Seen"]
