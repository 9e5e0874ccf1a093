"""The probe/metrics server under idle, trickling and flooding clients.

The kubelet restarts the pod when /healthz stops answering; before these limits, every
half-open connection pinned a thread forever.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from model_poller.http import HANDLER_THREADS, MAX_CONNECTIONS, REQUEST_TIMEOUT, HttpServer
from model_poller.probes import Probes
from prometheus_client import CONTENT_TYPE_LATEST

from local_services.archives import model_files, zip_bytes
from local_services.process import wait_for
from tests.poller.kit import Dirs
from tests.poller.procs import PollerProcess


def request(port: int, raw: bytes, timeout: float = 5) -> bytes:
    """Send ``raw``, return everything the server sends until it closes."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(raw)
            while chunk := sock.recv(65536):
                out += chunk
        except ConnectionResetError:
            # Closing with part of the request unread sends a reset after the answer.
            if not out:
                raise
    return out


def status_and_body(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return lines[0], headers, body


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed ``sock`` (EOF or reset); never blocks."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass  # a 503 before the close
        return True
    except BlockingIOError:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


class Trickler:
    """Clients that send a request head one byte a second and never finish it."""

    def __init__(self, port: int, count: int, every: float = 1.0) -> None:
        self.socks = [connect(port) for _ in range(count)]
        self.sent = [0] * count
        self._every = every
        self._stop = threading.Event()
        for sock in self.socks:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            for i, sock in enumerate(self.socks):
                try:
                    sock.send(b"a")
                    self.sent[i] += 1
                except OSError:
                    pass  # closed by the server: what the test waits for

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.socks:
            sock.close()


@pytest.fixture
def probes() -> Probes:
    return Probes(lambda: b"model_poller_up 1\n")


ServerFactory = Callable[..., HttpServer]


@pytest.fixture
def make_server(probes: Probes) -> Iterator[ServerFactory]:
    """Started servers on loopback, any port; keyword arguments go to HttpServer."""
    servers: list[HttpServer] = []

    def make(**kwargs: Any) -> HttpServer:
        server = HttpServer(0, probes, "127.0.0.1", **kwargs)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


def test_endpoints_answer_as_before(make_server: ServerFactory, probes: Probes) -> None:
    port = make_server().port

    def get(path: str) -> tuple[str, dict[str, str], bytes]:
        return status_and_body(request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()))

    status, headers, body = get("/healthz")
    assert (status, headers["Content-Type"], headers["Content-Length"], body) == (
        "HTTP/1.0 200 OK",
        "text/plain; charset=utf-8",
        "3",
        b"ok\n",
    )
    assert get("/readyz")[::2] == ("HTTP/1.0 503 Service Unavailable", b"initial sync not done\n")
    assert get("/serving-ready")[::2] == ("HTTP/1.0 503 Service Unavailable", b"no version inside the policy yet\n")
    probes.ready.set()
    probes.serving.set()
    assert get("/readyz?verbose")[::2] == ("HTTP/1.0 200 OK", b"ready\n")
    assert get("/serving-ready")[::2] == ("HTTP/1.0 200 OK", b"serving\n")
    status, headers, body = get("/metrics")
    assert (status, headers["Content-Type"], body) == ("HTTP/1.0 200 OK", CONTENT_TYPE_LATEST, b"model_poller_up 1\n")
    assert get("/nope")[::2] == ("HTTP/1.0 404 Not Found", b"not found\n")
    # http.server's own answers to what the endpoints do not handle.
    assert request(port, b"POST /healthz HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 501 Unsupported method ('POST')")
    assert request(port, b"HEAD /healthz HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 501")
    assert b"Error code: 400" in request(port, b"NONSENSE\r\n\r\n")  # an HTTP/0.9 answer: no status line
    assert request(port, b"GET /healthz HTTP/1.0\n\n").endswith(b"\r\n\r\nok\n")  # bare newlines
    assert request(port, b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 414")
    assert request(port, b"GET /healthz HTTP/1.0\r\n" + b"X-Big: yyyyyyyyyy\r\n" * 5000 + b"\r\n").startswith(
        b"HTTP/1.0 431"
    )


def test_a_request_in_pieces_within_the_timeout_is_answered(make_server: ServerFactory) -> None:
    port = make_server(request_timeout=5).port
    with connect(port) as sock:
        for piece in (b"GET /hea", b"lthz HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
            sock.sendall(piece)
            time.sleep(0.1)
        assert sock.recv(65536).startswith(b"HTTP/1.0 200 OK")


def test_trickling_client_is_closed_at_the_deadline(make_server: ServerFactory) -> None:
    # A byte every 0.2s would reset a per-read timeout forever; the deadline is per request.
    port = make_server(request_timeout=1.5).port
    started = time.monotonic()
    trickler = Trickler(port, 1, every=0.2)
    idle = connect(port)
    try:
        wait_for("both closed", lambda: closed_by_server(trickler.socks[0]) and closed_by_server(idle), 10)
        elapsed = time.monotonic() - started
        assert 1.2 < elapsed < 5, elapsed
        assert trickler.sent[0] >= 4  # it kept sending until the end
        assert request(port, b"GET /healthz HTTP/1.0\r\n\r\n").endswith(b"ok\n")
    finally:
        trickler.close()
        idle.close()


def test_a_new_connection_at_the_cap_closes_the_oldest_idle_one(make_server: ServerFactory) -> None:
    port = make_server(max_connections=4, request_timeout=60).port
    idle = [connect(port) for _ in range(4)]
    try:
        time.sleep(0.2)
        assert not any(closed_by_server(sock) for sock in idle)
        assert request(port, b"GET /healthz HTTP/1.0\r\n\r\n").endswith(b"ok\n")
        wait_for("the oldest idle connection closed", lambda: closed_by_server(idle[0]), 5)
        assert not any(closed_by_server(sock) for sock in idle[1:])
    finally:
        for sock in idle:
            sock.close()


def test_a_new_connection_at_the_cap_with_none_idle_is_answered_503(make_server: ServerFactory, probes: Probes) -> None:
    # Every open connection is past its request (a metrics call that hangs): no idle one
    # to close, so the newcomer is refused at once rather than queued.
    release = threading.Event()

    def slow_metrics() -> bytes:
        release.wait(30)
        return b"m 1\n"

    probes.metrics = slow_metrics
    server = make_server(request_timeout=30, max_connections=2)
    busy = [connect(server.port) for _ in range(2)]
    try:
        for sock in busy:
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        time.sleep(0.3)
        started = time.monotonic()
        refused = request(server.port, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert refused.startswith(b"HTTP/1.0 503 Service Unavailable"), refused
        assert refused.endswith(b"too many connections\n")
        assert time.monotonic() - started < 2
        release.set()
        for sock in busy:
            sock.settimeout(10)
            assert sock.recv(65536).startswith(b"HTTP/1.0 200 OK")
    finally:
        release.set()
        for sock in busy:
            sock.close()


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads line in /proc/{pid}/status")


@pytest.mark.slow
def test_the_poller_survives_idle_and_trickling_connections(dirs: Dirs, tmp_path: Path) -> None:
    (dirs.src / "1.zip").write_bytes(zip_bytes(model_files(1)))
    poller = PollerProcess(
        ["--source", dirs.uri, "--model-dir", str(dirs.models), "--poll-interval", "3600"], tmp_path / "poller.log"
    )
    idle: list[socket.socket] = []
    trickler: Trickler | None = None
    try:
        poller.wait_for("/readyz")
        baseline = threads_of(poller.proc.pid)
        opened = time.monotonic()
        idle = [connect(poller.port) for _ in range(400)]
        trickler = Trickler(poller.port, 10)
        for _ in range(5):
            started = time.monotonic()
            assert poller.get("/healthz") == (200, "ok\n")
            assert time.monotonic() - started < 2
            # Before the limits: a thread per open connection, 400 and more.
            assert threads_of(poller.proc.pid) <= baseline + HANDLER_THREADS + 2
            time.sleep(0.2)
        assert not any(closed_by_server(sock) for sock in trickler.socks)  # held, not refused
        open_now = sum(not closed_by_server(sock) for sock in idle + trickler.socks)
        assert open_now <= MAX_CONNECTIONS
        socks = idle + trickler.socks
        wait_for(
            "the server closed every idle and trickling connection",
            lambda: all(closed_by_server(sock) for sock in socks),
            REQUEST_TIMEOUT + 10,
        )
        assert time.monotonic() - opened >= REQUEST_TIMEOUT - 1  # the tricklers lasted until the deadline
        assert min(trickler.sent) >= REQUEST_TIMEOUT - 4
        assert poller.get("/readyz") == (200, "ready\n")
    finally:
        if trickler is not None:
            trickler.close()
        for sock in idle:
            sock.close()
        code = poller.terminate()
    assert code == 0, poller.output()
    assert "Traceback" not in poller.output()
