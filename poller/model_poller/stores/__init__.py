"""Stores that serve versions, chosen by the ``--source`` URI's scheme."""

from __future__ import annotations

from model_poller_api.names import SCHEME_FILE, SCHEME_GCS

from model_poller.errors import ConfigError
from model_poller.stores.base import Sink, Store, Transfer

__all__ = ["Sink", "Store", "Transfer", "open_store", "validate_uri"]


def validate_uri(uri: str) -> None:
    """Raise ``ConfigError`` naming ``--source`` unless ``uri`` names a store we can open."""
    if uri.startswith(SCHEME_GCS):
        bucket = uri[len(SCHEME_GCS) :].split("/", 1)[0]
        if not bucket:
            raise ConfigError(f"--source {uri!r}: name a bucket, {SCHEME_GCS}<bucket>/<prefix>/")
    elif not uri.startswith(SCHEME_FILE):
        raise ConfigError(f"--source {uri!r}: use {SCHEME_GCS}<bucket>/<prefix>/ or {SCHEME_FILE}<dir>/")


def open_store(uri: str, project: str | None = None, transfer: Transfer | None = None) -> Store:
    """The store for ``uri`` (``gs://bucket/prefix/`` or ``file:///dir/``); ``transfer``
    says how a ``gs://`` store downloads (a local directory is read whole)."""
    validate_uri(uri)
    if uri.startswith(SCHEME_GCS):
        from model_poller.stores.gcs import GcsStore  # google-cloud-storage only when needed

        return GcsStore.from_uri(uri, project=project, transfer=transfer)
    from model_poller.stores.file import FileStore

    return FileStore.from_uri(uri)
