"""``gs://bucket/prefix/``: Google Cloud Storage through google-cloud-storage.

``STORAGE_EMULATOR_HOST`` is honoured by the client (fake-gcs-server in tests). Objects
are streamed with plain media GETs pinned to the listed generation and read raw (no
decompressive transcoding), so the bytes are the stored bytes the CRC32C refers to.
"""

from __future__ import annotations

import threading
from typing import Any, NoReturn
from urllib.parse import quote

from model_poller.errors import Abandoned, SourceAccessDenied, SourceError, SourceNotFound
from model_poller.sources.base import Sink
from model_poller.text import one_line
from model_poller.versions import SourceObject

CHUNK = 1 << 20
_LIST_FIELDS = "items(name,size,generation,crc32c,md5Hash),nextPageToken,prefixes"


def parse_gs_uri(uri: str) -> tuple[str, str]:
    """``gs://b/models/x`` -> ("b", "models/x/"); ``gs://b`` -> ("b", "")."""
    rest = uri[len("gs://") :]
    bucket, _, prefix = rest.partition("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


class GcsSource:
    def __init__(self, uri: str, bucket: str, prefix: str, client: Any) -> None:
        self.uri = uri
        self.bucket = bucket
        self.prefix = prefix
        self._client = client

    @classmethod
    def from_uri(cls, uri: str, project: str | None = None) -> GcsSource:
        bucket, prefix = parse_gs_uri(uri)
        try:
            from google.cloud import storage

            client = storage.Client(project=project) if project else storage.Client()
        except Exception as exc:  # noqa: BLE001 - every credential failure becomes one line
            raise SourceError(f"cannot create a Cloud Storage client: {_describe(exc)}") from None
        return cls(uri, bucket, prefix, client)

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
        self._get(obj, parts.append, threading.Event(), (start, end))
        data = b"".join(parts)
        if len(data) != end - start:
            raise SourceError(f"gs://{self.bucket}/{self.prefix}{obj.name}: short range read")
        return data

    def download(self, obj: SourceObject, sink: Sink, stop: threading.Event) -> None:
        self._get(obj, sink, stop, None)

    def _get(self, obj: SourceObject, sink: Sink, stop: threading.Event, span: tuple[int, int] | None) -> None:
        name = self.prefix + obj.name
        url = (
            f"{self._client.api_endpoint}/download/storage/v1/b/{quote(self.bucket, safe='')}"
            f"/o/{quote(name, safe='')}?alt=media&generation={obj.generation}"
        )
        where = f"gs://{self.bucket}/{name}"
        headers = {"Accept-Encoding": "identity"}
        if span is not None:
            headers["Range"] = f"bytes={span[0]}-{span[1] - 1}"
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
            with session.get(url, stream=True, timeout=(30, 120), headers=headers) as resp:
                if resp.status_code == 404:
                    raise SourceError(f"{where} (generation {obj.generation}) vanished since it was listed")
                if resp.status_code in (401, 403):
                    raise SourceAccessDenied(
                        f"access to {where} denied ({resp.status_code}): {one_line(resp.text, 200)}"
                    )
                if resp.status_code != (200 if span is None else 206):
                    raise SourceError(f"download of {where} failed: HTTP {resp.status_code} {one_line(resp.text, 200)}")
                raw = resp.raw
                while True:
                    if stop.is_set():
                        raise Abandoned()
                    chunk = raw.read(CHUNK, decode_content=False)
                    if not chunk:
                        break
                    sink(chunk)
        except (SourceError, Abandoned):
            raise
        except Exception as exc:  # noqa: BLE001 - network failures are SourceErrors; sink errors pass
            if _is_transport_error(exc):
                raise SourceError(f"download of {where} failed: {_describe(exc)}") from None
            raise

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - best effort on shutdown
            pass


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


def _describe(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return one_line(message, 240)


def _raise_source_error(exc: BaseException, what: str, bucket: str) -> NoReturn:
    from google.api_core import exceptions as api

    if isinstance(exc, api.NotFound):
        raise SourceNotFound(f"{what}: bucket {bucket!r} does not exist") from None
    if isinstance(exc, api.Unauthorized):
        raise SourceAccessDenied(f"{what}: credential rejected (401): {_describe(exc)}") from None
    if isinstance(exc, api.Forbidden):
        raise SourceAccessDenied(f"{what}: access denied (403): {_describe(exc)}") from None
    if isinstance(exc, api.GoogleAPICallError) or _is_transport_error(exc):
        raise SourceError(f"{what}: {_describe(exc)}") from None
    raise exc
