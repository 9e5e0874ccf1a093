"""fake-gcs-server on loopback, publishing object notifications to the Pub/Sub emulator.

It sends what GCS sends for a JSON_API_V1 notification config: attributes bucketId,
objectId, eventType (OBJECT_FINALIZE / OBJECT_DELETE), objectGeneration, eventTime,
payloadFormat, and the object resource as the JSON payload.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
