"""Sources of versions, chosen by URI scheme."""

from __future__ import annotations

from model_poller.errors import ConfigError
from model_poller.sources.base import Sink, Source, Transfer

__all__ = ["Sink", "Source", "Transfer", "open_source", "validate_uri"]


def validate_uri(uri: str) -> None:
    if uri.startswith("gs://"):
        bucket = uri[len("gs://") :].split("/", 1)[0]
        if not bucket:
            raise ConfigError(f"--source {uri!r}: name a bucket, gs://<bucket>/<prefix>/")
    elif uri.startswith("file:///"):
        pass
    else:
        raise ConfigError(f"--source {uri!r}: use gs://<bucket>/<prefix>/ or file:///<dir>/")


def open_source(uri: str, project: str | None = None, transfer: Transfer | None = None) -> Source:
    """The source for ``uri`` (``gs://bucket/prefix/`` or ``file:///dir/``); ``transfer``
    says how a ``gs://`` source downloads (a local directory is read whole)."""
    validate_uri(uri)
    if uri.startswith("gs://"):
        from model_poller.sources.gcs import GcsSource  # google-cloud-storage only when needed

        return GcsSource.from_uri(uri, project=project, transfer=transfer)
    from model_poller.sources.file import FileSource

    return FileSource.from_uri(uri)
