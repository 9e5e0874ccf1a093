"""Toxiproxy (github.com/Shopify/toxiproxy/v2): a real TCP proxy between the poller and its
services, whose faults (toxics) tests switch on and off through its HTTP API.

Toxiproxy works at the TCP level, so it carries plain HTTP (fake-gcs-server), gRPC over
HTTP/2 (the Pub/Sub emulator) and TLS (kube-apiserver: the certificate names 127.0.0.1,
which is where every proxy listens) alike.

    with Toxiproxy(workdir) as toxiproxy:
        proxy = toxiproxy.create_proxy("gcs", upstream="127.0.0.1:4443")
        with proxy.toxic("latency", {"latency": 2000}):   # every answer arrives 2 s late
            ...
        with proxy.down():                 # connection refused, open connections dropped
            ...
        name = proxy.bandwidth(102400)     # ~100 MiB/s per connection, until removed
        proxy.remove_toxic(name)

A toxic acts on each connection on its own (``bandwidth`` caps each stream, not the sum),
on the ``downstream`` direction (server -> client) unless told otherwise. Units are
Toxiproxy's: milliseconds for times, KB/s (1000 bytes) for ``rate``, microseconds for the
slicer's ``delay``.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from local_services.binaries import binary
from local_services.process import Service, free_port

Stream = Literal["upstream", "downstream"]


class ToxiproxyError(RuntimeError):
    """Toxiproxy refused a request; the message holds its answer."""


@dataclass
class _Api:
    url: str

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise ToxiproxyError(f"{method} {path}: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from exc
        return json.loads(raw) if raw.strip() else None


@dataclass
class Proxy:
    """One proxy: clients connect to ``listen`` ("127.0.0.1:PORT"), it connects to ``upstream``."""

    api: _Api = field(repr=False)
    name: str
    listen: str
    upstream: str

    @property
    def url(self) -> str:
        """``http://`` + ``listen``: what STORAGE_EMULATOR_HOST and friends take."""
        return f"http://{self.listen}"

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    # -- toxics --------------------------------------------------------------------------------
    def add_toxic(
        self,
        type_: str,
        attributes: dict[str, int],
        *,
        stream: Stream = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
    ) -> str:
        """Add a toxic; returns its name (for ``remove_toxic``). ``toxicity`` is the share of
        connections it applies to, drawn per connection."""
        name = name or f"{type_}-{stream}-{uuid.uuid4().hex[:8]}"
        self.api.call(
            "POST",
            f"/proxies/{self.name}/toxics",
            {
                "name": name,
                "type": type_,
                "stream": stream,
                "toxicity": toxicity,
                "attributes": attributes,
            },
        )
        return name

    def remove_toxic(self, name: str) -> None:
        self.api.call("DELETE", f"/proxies/{self.name}/toxics/{name}")

    def toxics(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.api.call("GET", f"/proxies/{self.name}/toxics")
        return found

    def clear_toxics(self) -> None:
        for toxic in self.toxics():
            self.remove_toxic(str(toxic["name"]))

    @contextlib.contextmanager
    def toxic(
        self, type_: str, attributes: dict[str, int], *, stream: Stream = "downstream", toxicity: float = 1.0
    ) -> Iterator[str]:
        """A toxic for the duration of a ``with`` block."""
        name = self.add_toxic(type_, attributes, stream=stream, toxicity=toxicity)
        try:
            yield name
        finally:
            self.remove_toxic(name)

    def bandwidth(self, rate_kb_per_s: int, *, stream: Stream = "downstream") -> str:
        """Cap each connection at ``rate`` KB/s (1000 bytes): 100 MiB/s is 104858."""
        return self.add_toxic("bandwidth", {"rate": rate_kb_per_s}, stream=stream)

    def latency(self, latency_ms: int, jitter_ms: int = 0, *, stream: Stream = "downstream") -> str:
        """Delay data by ``latency_ms`` (+/- ``jitter_ms``): on ``downstream``, every answer
        arrives that much later."""
        return self.add_toxic("latency", {"latency": latency_ms, "jitter": jitter_ms}, stream=stream)

    def timeout(self, timeout_ms: int = 0, *, stream: Stream = "downstream") -> str:
        """Drop all data; close the connection after ``timeout_ms`` (0: never, a stalled stream).
        Data dropped, not held: a server that closes its side still closes the client's."""
        return self.add_toxic("timeout", {"timeout": timeout_ms}, stream=stream)

    def reset_peer(self, timeout_ms: int = 0, *, stream: Stream = "downstream", toxicity: float = 1.0) -> str:
        """Reset (TCP RST) each connection ``timeout_ms`` after its first data."""
        return self.add_toxic("reset_peer", {"timeout": timeout_ms}, stream=stream, toxicity=toxicity)

    def slicer(
        self, average_size: int, size_variation: int = 0, delay_us: int = 0, *, stream: Stream = "downstream"
    ) -> str:
        """Cut data into small packets (``average_size`` +/- ``size_variation`` bytes), each
        delayed by ``delay_us`` microseconds."""
        return self.add_toxic(
            "slicer", {"average_size": average_size, "size_variation": size_variation, "delay": delay_us}, stream=stream
        )

    # -- availability ----------------------------------------------------------------------------
    def disable(self) -> None:
        """Close the listener and every open connection: clients see connection refused."""
        self.api.call("POST", f"/proxies/{self.name}", {"enabled": False})

    def enable(self) -> None:
        """Listen again, on the same port."""
        self.api.call("POST", f"/proxies/{self.name}", {"enabled": True})

    def set_upstream(self, upstream: str) -> None:
        """Send new connections to ``upstream`` (a service restarted elsewhere behind the same
        address); open connections are dropped."""
        self.api.call("POST", f"/proxies/{self.name}", {"upstream": upstream})
        self.upstream = upstream

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        self.disable()
        try:
            yield
        finally:
            self.enable()

    def delete(self) -> None:
        self.api.call("DELETE", f"/proxies/{self.name}")


@dataclass
class Toxiproxy:
    """toxiproxy-server on a free loopback port; ``url`` is its HTTP API."""

    workdir: Path
    url: str = ""
    _service: Service | None = field(default=None, repr=False)

    def start(self) -> Toxiproxy:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._service = Service(
            "toxiproxy-server",
            [str(binary("toxiproxy-server")), "-host", "127.0.0.1", "-port", str(port)],
            self.workdir / "toxiproxy.log",
            env={"LOG_LEVEL": "warn"},
        )
        self._service.wait_until(self._ready, 30)
        return self

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/version", timeout=2) as resp:
            return bool(resp.status == 200)

    @property
    def api(self) -> _Api:
        if not self.url:
            raise RuntimeError("toxiproxy-server was never started: call start() first")
        return _Api(self.url)

    def create_proxy(self, name: str, upstream: str, listen: str = "127.0.0.1:0") -> Proxy:
        """A proxy to ``upstream`` ("host:port"); by default on a port the kernel picks, so two
        proxies never race for one port."""
        created = self.api.call(
            "POST", "/proxies", {"name": name, "listen": listen, "upstream": upstream, "enabled": True}
        )
        return Proxy(self.api, name=name, listen=str(created["listen"]), upstream=upstream)

    def proxies(self) -> dict[str, Any]:
        found: dict[str, Any] = self.api.call("GET", "/proxies")
        return found

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self.api.call("POST", "/reset")

    def stop(self) -> None:
        if self._service:
            self._service.stop()

    def __enter__(self) -> Toxiproxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
