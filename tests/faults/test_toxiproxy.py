"""The Toxiproxy service itself: each toxic the fault tests rely on does what it says, measured
through a proxy in front of fake-gcs-server."""

from __future__ import annotations

import http.client
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from local_services.toxiproxy import Proxy, Toxiproxy


def _get(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return bytes(resp.read())


def _media_url(proxy: Proxy, bucket: Any, name: str) -> str:
    return f"{proxy.url}/download/storage/v1/b/{bucket.name}/o/{name}?alt=media"


def test_proxy_passes_traffic_and_latency_delays_each_answer(proxied_gcs: Proxy, bucket: Any) -> None:
    bucket.blob("a.bin").upload_from_string(b"x" * 1000)
    assert _get(_media_url(proxied_gcs, bucket, "a.bin")) == b"x" * 1000
    with proxied_gcs.toxic("latency", {"latency": 1000}):
        started = time.monotonic()
        assert _get(_media_url(proxied_gcs, bucket, "a.bin")) == b"x" * 1000
        took = time.monotonic() - started
    print(f"one GET with a 1000 ms downstream latency toxic: {took:.2f} s")
    assert 1.0 <= took < 3.0
    assert proxied_gcs.toxics() == []


def test_bandwidth_caps_each_connection(proxied_gcs: Proxy, bucket: Any) -> None:
    size = 2 * 1024 * 1024
    bucket.blob("b.bin").upload_from_string(b"y" * size)
    name = proxied_gcs.bandwidth(1024)  # ~1 MB/s
    try:
        started = time.monotonic()
        assert len(_get(_media_url(proxied_gcs, bucket, "b.bin"))) == size
        took = time.monotonic() - started
    finally:
        proxied_gcs.remove_toxic(name)
    print(f"2 MiB through a 1024 KB/s bandwidth toxic: {took:.2f} s ({size / took / 1e6:.2f} MB/s)")
    assert 1.6 <= took < 4.0


def test_down_refuses_connections_and_up_listens_again_on_the_same_port(proxied_gcs: Proxy, bucket: Any) -> None:
    bucket.blob("c.bin").upload_from_string(b"z")
    with proxied_gcs.down():
        with pytest.raises(urllib.error.URLError):
            _get(_media_url(proxied_gcs, bucket, "c.bin"), timeout=5)
    assert _get(_media_url(proxied_gcs, bucket, "c.bin")) == b"z"


def test_reset_peer_resets_and_timeout_stalls(proxied_gcs: Proxy, bucket: Any) -> None:
    bucket.blob("d.bin").upload_from_string(b"w" * 100_000)
    name = proxied_gcs.reset_peer(0)
    try:
        with pytest.raises((ConnectionError, http.client.HTTPException, urllib.error.URLError)):
            _get(_media_url(proxied_gcs, bucket, "d.bin"), timeout=5)
    finally:
        proxied_gcs.remove_toxic(name)
    # On the request's way (upstream): the server never hears it, the client waits. (Downstream,
    # a server that closes after its answer would close the client's side at once.)
    name = proxied_gcs.timeout(0, stream="upstream")
    try:
        started = time.monotonic()
        with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
            _get(_media_url(proxied_gcs, bucket, "d.bin"), timeout=1)
        assert time.monotonic() - started < 3
    finally:
        proxied_gcs.remove_toxic(name)
    assert len(_get(_media_url(proxied_gcs, bucket, "d.bin"))) == 100_000


def test_slicer_still_delivers_every_byte(proxied_gcs: Proxy, bucket: Any) -> None:
    data = bytes(range(256)) * 400
    bucket.blob("e.bin").upload_from_string(data)
    name = proxied_gcs.slicer(100, 50, 10)
    try:
        assert _get(_media_url(proxied_gcs, bucket, "e.bin")) == data
    finally:
        proxied_gcs.remove_toxic(name)


def test_set_upstream_moves_the_service_behind_a_stable_address(
    toxiproxy: Toxiproxy, proxied_gcs: Proxy, bucket: Any
) -> None:
    bucket.blob("f.bin").upload_from_string(b"f")
    upstream = proxied_gcs.upstream
    other = toxiproxy.create_proxy("other-gcs", upstream)
    try:
        proxied_gcs.set_upstream(other.listen)  # a chain: same bytes, one more hop
        assert _get(_media_url(proxied_gcs, bucket, "f.bin")) == b"f"
        assert proxied_gcs.listen in {p["listen"] for p in toxiproxy.proxies().values()}
    finally:
        proxied_gcs.set_upstream(upstream)
        other.delete()
