"""``gs://bucket/prefix/``: Google Cloud Storage through google-cloud-storage.

``STORAGE_EMULATOR_HOST`` is honoured by the client (fake-gcs-server in tests). Objects
are streamed with plain media GETs pinned to the listed generation (the JSON API's
``generation=`` parameter, and the answer's ``x-goog-generation`` checked) and read raw,
with ``Accept-Encoding: gzip`` so GCS never transcodes: the bytes are the stored bytes
the CRC32C refers to.
Any byte range can be streamed (``stream_range``): the install engine uses that for
sliced downloads and to resume a broken connection where it stopped. When the listed
generation is gone (a new upload replaced it), the store answers 404: ``SourceChanged``.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, NoReturn
from urllib.parse import quote

from model_poller_api.names import SCHEME_GCS

from model_poller.errors import Abandoned, SourceAccessDenied, SourceError, SourceNotFound
from model_poller.stores.base import Halt, Sink, SourceChanged, SourceInterrupted, Transfer
from model_poller.text import one_line
from model_poller.versions import SourceObject

CHUNK = 1 << 20
CONNECT_TIMEOUT = 30.0
# Answers worth asking again (the same range): GCS's documented retryable statuses.
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_LIST_FIELDS = "items(name,size,generation,crc32c,md5Hash),nextPageToken,prefixes"


def parse_gs_uri(uri: str) -> tuple[str, str]:
    """``gs://b/models/x`` -> ("b", "models/x/"); ``gs://b`` -> ("b", "")."""
    rest = uri[len(SCHEME_GCS) :]
    bucket, _, prefix = rest.partition("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


class GcsStore:
    def __init__(self, uri: str, bucket: str, prefix: str, client: Any, transfer: Transfer | None = None) -> None:
        self.uri = uri
        self.bucket = bucket
        self.prefix = prefix
        self.transfer = transfer or Transfer()
        self._client = client
        _size_connection_pool(client, self.transfer.streams)

    @classmethod
    def from_uri(cls, uri: str, project: str | None = None, transfer: Transfer | None = None) -> GcsStore:
        bucket, prefix = parse_gs_uri(uri)
        try:
            from google.cloud import storage

            client = storage.Client(project=project) if project else storage.Client()
        except Exception as exc:  # noqa: BLE001 - every credential failure becomes one line
            raise SourceError(f"cannot create a Cloud Storage client: {_describe(exc)}") from None
        return cls(uri, bucket, prefix, client, transfer)

    def list_objects(self) -> list[SourceObject]:
        try:
            blobs = self._client.list_blobs(self.bucket, prefix=self.prefix or None, fields=_LIST_FIELDS)
            objects = [
                SourceObject(
                    name=blob.name[len(self.prefix) :],
                    size=int(blob.size or 0),
                    generation=int(blob.generation or 0),
                    crc32c=blob.crc32c,
                    md5=blob.md5_hash,
                )
                for blob in blobs
                if blob.name != self.prefix
            ]
        except Exception as exc:  # noqa: BLE001
            _raise_source_error(exc, f"cannot list {self.uri}", self.bucket)
        return objects

    def read_range(self, obj: SourceObject, start: int, end: int) -> bytes:
        parts: list[bytes] = []
        self._get(obj, parts.append, Halt(), (start, end))
        data = b"".join(parts)
        if len(data) != end - start:
            raise SourceError(f"{SCHEME_GCS}{self.bucket}/{self.prefix}{obj.name}: short range read")
        return data

    def download(self, obj: SourceObject, sink: Sink, stop: threading.Event) -> None:
        self._get(obj, sink, stop, None)

    def stream_range(self, obj: SourceObject, start: int, end: int, sink: Sink, halt: Halt) -> None:
        self._get(obj, sink, halt, (start, end))

    def _get(self, obj: SourceObject, sink: Sink, halt: threading.Event, span: tuple[int, int] | None) -> None:
        name = self.prefix + obj.name
        url = (
            f"{self._client.api_endpoint}/download/storage/v1/b/{quote(self.bucket, safe='')}"
            f"/o/{quote(name, safe='')}?alt=media&generation={obj.generation}"
        )
        where = f"{SCHEME_GCS}{self.bucket}/{name}"
        # "gzip", not "identity": asked for identity, GCS (and fake-gcs-server) inflate an
        # object stored with Content-Encoding: gzip on the fly ("decompressive
        # transcoding"), ignoring Range, and the bytes no longer match the CRC32C of the
        # stored ones. Read raw below, so nothing is ever decoded here.
        headers = {"Accept-Encoding": "gzip"}
        if span is not None:
            headers["Range"] = f"bytes={span[0]}-{span[1] - 1}"
        timeout = (CONNECT_TIMEOUT, self.transfer.read_timeout)
        received = 0
        try:
            # The client's authorized session (``Client._http``, private): same credentials,
            # same endpoint and emulator handling as the listing. The public download API
            # does not fit a multi-GiB stream into a sink: ``Blob.download_to_file`` reads
            # the raw response in 8 KiB pieces (google-resumable-media's
            # _SINGLE_GET_CHUNK_SIZE) and hashes everything a second time, and
            # ``Blob.open()`` issues one ranged request per 40 MiB chunk and buffers each
            # whole chunk (read from the library's code, not benchmarked here); neither
            # can be stopped mid-chunk. Building our own AuthorizedSession would need the
            # client's credentials (``Client._credentials``, equally private), so the
            # client's own session is used, in one place. Raw (undecoded) reads of 1 MiB.
            session = self._client._http
            with session.get(url, stream=True, timeout=timeout, headers=headers) as resp:
                self._check_answer(resp, obj, where, span)
                # A stalled read blocks in recv() until the read timeout; a Halt shuts
                # the socket down when set, which ends that recv() at once.
                unregister = halt.on_set(lambda: _shutdown(resp)) if isinstance(halt, Halt) else _nothing
                try:
                    raw = resp.raw
                    while True:
                        if halt.is_set():
                            raise Abandoned()
                        chunk = raw.read(CHUNK, decode_content=False)
                        if not chunk:
                            break
                        received += len(chunk)
                        sink(chunk)
                finally:
                    unregister()
        except (SourceError, Abandoned):
            raise
        except Exception as exc:  # noqa: BLE001 - network failures are SourceErrors; sink errors pass
            if not _is_transport_error(exc):
                raise
            if halt.is_set():
                raise Abandoned() from None
            at = (span[0] if span else 0) + received
            raise SourceInterrupted(f"download of {where} failed at byte {at}: {_describe(exc)}") from None
        if halt.is_set():
            raise Abandoned()
        expected = (span[1] - span[0]) if span is not None else obj.size
        if received < expected:
            at = (span[0] if span else 0) + received
            raise SourceInterrupted(f"download of {where} ended early at byte {at} of {obj.size}")

    def _check_answer(self, resp: Any, obj: SourceObject, where: str, span: tuple[int, int] | None) -> None:
        """Raise unless ``resp`` is the requested bytes of the listed generation."""
        status = resp.status_code
        if status == 404:
            raise SourceChanged(f"{where} (generation {obj.generation}) vanished or was replaced since it was listed")
        if status in (401, 403):
            raise SourceAccessDenied(f"access to {where} denied ({status}): {one_line(resp.text, 200)}")
        if status in _RETRYABLE_STATUS:
            raise SourceInterrupted(f"download of {where} failed: HTTP {status} {one_line(resp.text, 200)}")
        if status != (200 if span is None else 206):
            raise SourceError(f"download of {where} failed: HTTP {status} {one_line(resp.text, 200)}")
        served = resp.headers.get("x-goog-generation")
        if served is not None and served != str(obj.generation):
            raise SourceChanged(f"{where}: asked for generation {obj.generation}, the store served {served}")
        if span is not None:
            wanted = f"bytes {span[0]}-{span[1] - 1}/"
            if not resp.headers.get("content-range", "").startswith(wanted):
                raise SourceError(
                    f"download of {where}: asked for {wanted}..., the store answered "
                    f"{resp.headers.get('content-range')!r}"
                )

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - best effort on shutdown
            pass


def _nothing() -> None:
    pass


def _shutdown(resp: Any) -> None:
    """End a blocked read on ``resp``'s connection (urllib3's public ``connection``)."""
    connection = getattr(resp.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.shutdown(socket.SHUT_RDWR)


def _size_connection_pool(client: Any, streams: int) -> None:
    """Keep one pooled keep-alive connection per stream (requests keeps 10 per host):
    beyond the pool, every ranged request would open (and drop) a new connection."""
    import requests.adapters

    wanted = streams + 2  # the listing and a notification-driven read on top
    session = getattr(client, "_http", None)
    if session is None or wanted <= requests.adapters.DEFAULT_POOLSIZE:
        return
    for prefix, adapter in list(session.adapters.items()):
        if isinstance(adapter, requests.adapters.HTTPAdapter):
            session.mount(prefix, requests.adapters.HTTPAdapter(pool_maxsize=wanted, max_retries=adapter.max_retries))


def _is_transport_error(exc: BaseException) -> bool:
    import requests
    import urllib3.exceptions
    from google.auth import exceptions as auth_exceptions

    return isinstance(
        exc,
        (
            requests.RequestException,
            urllib3.exceptions.HTTPError,
            auth_exceptions.GoogleAuthError,
            ConnectionError,
            TimeoutError,
        ),
    )


def _is_refused_credential(exc: BaseException) -> bool:
    """The OAuth token endpoint answered that this credential will not do (``invalid_grant``:
    a deleted key, a disabled account): google-auth's RefreshError carrying the endpoint's
    error body, not marked retryable. A RefreshError without that body (the metadata server
    unreachable, an impersonation call failing with a 5xx) is an outage, not a refusal."""
    from google.auth import exceptions as auth_exceptions

    if not isinstance(exc, auth_exceptions.RefreshError) or getattr(exc, "retryable", False):
        return False
    body = exc.args[1] if len(exc.args) > 1 else None
    return isinstance(body, dict) and "error" in body


def _describe(exc: BaseException) -> str:
    # GCS's own sentence ("... does not have storage.objects.list access ...") from the error
    # body, where there is one: google-api-core's message starts with the whole request URL,
    # which took most of the room.
    errors = getattr(exc, "errors", None)
    first = errors[0] if isinstance(errors, list) and errors else None
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, str) or not message:
        first_arg = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
        message = getattr(exc, "message", None) or first_arg or str(exc) or type(exc).__name__
    return one_line(message, 240)


def _raise_source_error(exc: BaseException, what: str, bucket: str) -> NoReturn:
    from google.api_core import exceptions as api

    if isinstance(exc, api.NotFound):
        raise SourceNotFound(f"{what}: bucket {bucket!r} does not exist") from None
    if isinstance(exc, api.Unauthorized):
        raise SourceAccessDenied(f"{what}: credential rejected (401): {_describe(exc)}") from None
    if isinstance(exc, api.Forbidden):
        raise SourceAccessDenied(f"{what}: access denied (403): {_describe(exc)}") from None
    if _is_refused_credential(exc):
        raise SourceAccessDenied(f"{what}: credential refused by the token endpoint: {_describe(exc)}") from None
    if isinstance(exc, api.GoogleAPICallError) or _is_transport_error(exc):
        raise SourceError(f"{what}: {_describe(exc)}") from None
    raise exc
