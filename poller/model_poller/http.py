"""The poller's HTTP endpoints: /healthz, /readyz, /serving-ready, /metrics.

The kubelet restarts the pod when /healthz stops answering, so nobody who can open a
connection to the port may be able to stop it answering. One event-loop thread does all
network I/O: an idle or trickling connection costs a file descriptor, never a thread.
Limits:

- every connection is closed ``request_timeout`` seconds after it was accepted, however
  slowly its request trickles in (a per-read timeout would let one byte every few seconds
  hold it forever);
- at most ``max_connections`` are open at once; a new connection beyond that closes the
  oldest one still sending its request (the likely idler), so a fresh probe is answered
  while a flood waits out its timeout; when every open connection is past its request,
  the new one is answered 503 and closed at once;
- a request head over ``MAX_HEAD`` bytes is answered 414 or 431.

Responses are made by ``http.server``'s request parser on the complete request head, on
a few worker threads (a slow ``Probes.metrics`` never blocks the event loop).
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

from model_poller_api.names import PATH_HEALTHZ, PATH_METRICS, PATH_READYZ, PATH_SERVING_READY
from prometheus_client import CONTENT_TYPE_LATEST

from model_poller.probes import Probes

log = logging.getLogger(__name__)

# Seconds from accepting a connection to the last byte of its response.
REQUEST_TIMEOUT = 10.0
# Connections open at once; the kubelet and a Prometheus scraper need a handful.
MAX_CONNECTIONS = 32
# Threads that turn a request head into a response.
HANDLER_THREADS = 4
# Bytes of request line and headers; http.server's own line limit is 64 KiB.
MAX_HEAD = 65536
LISTEN_BACKLOG = 128
# Seconds between two warnings that the connection cap was reached (a flood would
# otherwise write a line per connection).
WARN_EVERY = 60.0

_REFUSED_BODY = b"too many connections\n"
_REFUSED = (
    b"HTTP/1.0 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_REFUSED_BODY)).encode() + b"\r\n"
    b"Connection: close\r\n\r\n" + _REFUSED_BODY
)


@dataclass(eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None
    reading: bool = True  # still receiving its request head


class HttpServer:
    def __init__(
        self,
        port: int,
        probes: Probes,
        host: str = "",
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if request_timeout <= 0:
            raise ValueError(f"HttpServer request_timeout {request_timeout}: must be > 0 seconds")
        if max_connections < 1:
            raise ValueError(f"HttpServer max_connections {max_connections}: must be >= 1")
        self._handler = _handler(probes)
        self._request_timeout = request_timeout
        self._max_connections = max_connections
        self._sock = _listen(host, port)
        self._connections: dict[_Connection, None] = {}  # insertion order: oldest first
        self._pool = ThreadPoolExecutor(HANDLER_THREADS, thread_name_prefix="http-handler")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._serving = False
        self._last_warning = float("-inf")
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def start(self) -> None:
        self._thread.start()
        self._started.wait()
        if not self._serving:
            raise RuntimeError(f"the HTTP server on port {self.port} did not start (see the error above)")
        log.info(
            "serving %s, %s, %s, %s on port %d", PATH_HEALTHZ, PATH_READYZ, PATH_SERVING_READY, PATH_METRICS, self.port
        )

    def stop(self) -> None:
        if self._thread.is_alive():
            self._started.wait()
            if self._loop is not None and self._stopping is not None:
                self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._sock.close()

    # -- the event loop thread ----------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        finally:
            self._started.set()  # never leave start() or stop() waiting

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._serve, sock=self._sock, backlog=LISTEN_BACKLOG)
        self._serving = True
        self._started.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            tasks = [conn.task for conn in self._connections if conn.task is not None]
            for conn in list(self._connections):
                self._drop(conn)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = self._admit(writer)
        if conn is None:
            return
        try:
            async with asyncio.timeout(self._request_timeout):
                head, overflow = await _read_head(reader)
                conn.reading = False
                if not head:
                    return  # connected and closed without a request
                loop = asyncio.get_running_loop()
                response = await loop.run_in_executor(self._pool, self._respond, head, overflow)
                # No write buffer: drain() returns once every byte is with the kernel, so
                # a client that never reads is bounded by the timeout too.
                writer.transport.set_write_buffer_limits(high=0)
                writer.write(response)
                await writer.drain()
        except OSError:
            pass  # timed out (TimeoutError), reset or broken pipe: nothing to answer
        except asyncio.CancelledError:
            # Closed to make room, or the server stops. Ending normally, not cancelled:
            # asyncio 3.11's stream callback calls task.exception(), which raises on a
            # cancelled task and logs a traceback per connection.
            pass
        except Exception:
            log.exception("HTTP request failed")
        finally:
            self._drop(conn)  # the response, if any, is with the kernel already

    def _admit(self, writer: asyncio.StreamWriter) -> _Connection | None:
        """Track a new connection, making room under the cap; ``None``: refused (503)."""
        if len(self._connections) >= self._max_connections:
            self._warn_cap()
            idle = next((conn for conn in self._connections if conn.reading), None)
            if idle is None:
                writer.write(_REFUSED)
                writer.close()
                return None
            self._drop(idle)
            if idle.task is not None:
                idle.task.cancel()
        conn = _Connection(writer, asyncio.current_task())
        self._connections[conn] = None
        return conn

    def _drop(self, conn: _Connection) -> None:
        """Forget ``conn`` and close its socket at once, unsent data and all."""
        self._connections.pop(conn, None)
        conn.writer.transport.abort()

    def _warn_cap(self) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY:
            self._last_warning = now
            log.warning(
                "%d HTTP connections open, the limit: a new one closes the oldest still sending its request, "
                "or is answered 503 when none is (every connection is closed %gs after it opened)",
                self._max_connections,
                self._request_timeout,
            )

    def _respond(self, head: bytes, overflow: bool) -> bytes:
        return self._handler(head, overflow).response()


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """The request line and headers; ``True`` with it when it grew past ``MAX_HEAD``."""
    buf = bytearray()
    while not _head_complete(buf):
        if len(buf) > MAX_HEAD:
            return bytes(buf), True
        chunk = await reader.read(4096)
        if not chunk:
            break  # the client stopped sending: answer what it sent, as http.server did
        buf += chunk
    return bytes(buf), False


def _head_complete(buf: bytearray) -> bool:
    # http.server ends the headers at the first empty line ("\r\n" or "\n") after the
    # request line.
    first = buf.find(b"\n")
    return first >= 0 and (buf.find(b"\n\n", first) >= 0 or buf.find(b"\n\r\n", first) >= 0)


def _listen(host: str, port: int) -> socket.socket:
    """A listening IPv4 socket, like ``http.server.HTTPServer``'s (errors raise here)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


class _InMemoryHandler(BaseHTTPRequestHandler):
    """``http.server``'s parser and responses, on a request head already received.

    The socket stays with the event loop; this reads the head from memory and writes the
    response to memory, so status lines, headers and error pages are http.server's own.
    """

    def __init__(self, head: bytes, overflow: bool) -> None:
        # BaseRequestHandler.__init__ would handle a socket; there is none here.
        self.client_address = ("", 0)
        self.rfile = io.BytesIO(head)
        self._out = self.wfile = io.BytesIO()
        self._head = head
        self._overflow = overflow
        self.handle()

    def handle(self) -> None:
        if self._overflow and b"\n" in self._head[:65537]:
            # The request line fits (else http.server answers 414 itself); the headers do not.
            self.requestline = self.request_version = self.command = ""
            self.close_connection = True
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Request head too large")
            return
        super().handle()

    def response(self) -> bytes:
        return self._out.getvalue()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # probes every few seconds would drown the log


def _handler(probes: Probes) -> type[_InMemoryHandler]:
    class Handler(_InMemoryHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == PATH_HEALTHZ:
                self._send(200, b"ok\n")
            elif path == PATH_READYZ:
                ok = probes.ready.is_set()
                self._send(200 if ok else 503, b"ready\n" if ok else f"{probes.not_ready_because}\n".encode())
            elif path == PATH_SERVING_READY:
                ok = probes.serving.is_set()
                self._send(200 if ok else 503, b"serving\n" if ok else f"{probes.not_serving_because}\n".encode())
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

    return Handler
