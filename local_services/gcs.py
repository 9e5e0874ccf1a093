"""fake-gcs-server on loopback, publishing object notifications to the Pub/Sub emulator.

It sends what GCS sends for a JSON_API_V1 notification config: attributes bucketId,
objectId, eventType (OBJECT_FINALIZE / OBJECT_DELETE), objectGeneration, eventTime,
payloadFormat, and the object resource as the JSON payload.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import google_crc32c

from local_services.binaries import binary
from local_services.process import Service, free_port


@dataclass
class FakeGcs:
    workdir: Path
    pubsub_host: str
    project: str
    topic_id: str = "gcs-notifications"
    url: str = ""
    host: str = ""
    _service: Service | None = field(default=None, repr=False)

    @property
    def notification_topic(self) -> str:
        return f"projects/{self.project}/topics/{self.topic_id}"

    def start(self) -> FakeGcs:
        port = free_port()
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://{self.host}"
        self._service = Service(
            "fake-gcs-server",
            [
                str(binary("fake-gcs-server")),
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                str(port),
                "-external-url",
                self.url,
                "-public-host",
                self.host,
                # The filesystem backend keeps multi-GiB objects off the heap.
                "-backend",
                "filesystem",
                "-filesystem-root",
                str(self.workdir / "storage"),
                "-event.pubsub-project-id",
                self.project,
                "-event.pubsub-topic",
                self.topic_id,
                "-event.list",
                "finalize,delete",
                "-log-level",
                "warn",
            ],
            self.workdir / "fake-gcs-server.log",
            env={"PUBSUB_EMULATOR_HOST": self.pubsub_host},
        )
        self._service.wait_until(self._ready, 60)
        return self

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b?project={self.project}", timeout=2) as resp:
            return bool(resp.status == 200)

    def client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=self.project, credentials=AnonymousCredentials(), client_options={"api_endpoint": self.url}
        )

    def stop(self) -> None:
        if self._service:
            self._service.stop()


def seed_object(gcs: Any, bucket: Any, name: str, path: Path) -> None:
    """Put the file at ``path`` into fake-gcs-server (``gcs.workdir``, filesystem backend) as
    ``gs://bucket/name`` without an upload, which the server would hold in memory several
    times over.

    The filesystem backend stores an object as a file plus its attributes (an xattr, or a
    ``<name>.metadata`` file where xattrs are unsupported; metadata_xattr.go /
    metadata_file.go). So: upload a tiny placeholder through the API (the server writes
    attributes in its own format, with a generation), then rename the real content over it
    and rewrite the attributes' Crc32c/Md5Hash/Etag for the new bytes. Listing, metadata,
    downloads and ranged reads then all come from disk; the size comes from stat().
    """
    bucket.blob(name).upload_from_string(b"placeholder")
    target = gcs.workdir / "storage" / quote(bucket.name, safe="") / name
    crc = google_crc32c.Checksum()  # type: ignore[no-untyped-call]
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(16 << 20):
            crc.update(chunk)  # type: ignore[no-untyped-call]
            md5.update(chunk)
    try:
        attrs_raw, use_xattr = os.getxattr(target, "user.metadata"), True
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.ENODATA):
            raise
        attrs_raw, use_xattr = Path(f"{target}.metadata").read_bytes(), False
    attrs = json.loads(attrs_raw)
    attrs["Crc32c"] = base64.b64encode(crc.digest()).decode()  # type: ignore[no-untyped-call]
    attrs["Md5Hash"] = attrs["Etag"] = base64.b64encode(md5.digest()).decode()
    encoded = json.dumps(attrs).encode()
    os.rename(path, target)
    if use_xattr:
        os.setxattr(target, "user.metadata", encoded)
    else:
        Path(f"{target}.metadata").write_bytes(encoded)
    blob = bucket.get_blob(name)
    if blob.size != target.stat().st_size or blob.crc32c != attrs["Crc32c"]:
        raise RuntimeError(f"seeding {name} failed: fake-gcs-server reports {blob.size} B crc32c {blob.crc32c}")
