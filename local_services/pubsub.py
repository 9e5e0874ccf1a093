"""Google's Pub/Sub emulator, started with `gcloud beta emulators pubsub start`."""

from __future__ import annotations

import shutil
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from local_services.binaries import MissingServiceError
from local_services.process import Service, free_port

INSTALL_HINT = (
    "the Pub/Sub emulator is missing: install the Debian packages google-cloud-cli and "
    "google-cloud-cli-pubsub-emulator (they come with this machine image; their apt "
    "repository is not reachable from here, so a machine without them cannot run these tests)"
)
EMULATOR_DIR = Path("/usr/lib/google-cloud-sdk/platform/pubsub-emulator")


@dataclass
class PubSubEmulator:
    workdir: Path
    project: str = "test-project"
    host: str = ""
    _service: Service | None = field(default=None, repr=False)

    def start(self) -> PubSubEmulator:
        gcloud = shutil.which("gcloud")
        if gcloud is None or not EMULATOR_DIR.is_dir():
            raise MissingServiceError(INSTALL_HINT)
        port = free_port()
        self.host = f"127.0.0.1:{port}"
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "gcloud-config"
        config.mkdir(exist_ok=True)
        self._service = Service(
            "pubsub-emulator",
            [
                gcloud,
                "beta",
                "emulators",
                "pubsub",
                "start",
                f"--host-port={self.host}",
                f"--project={self.project}",
                f"--data-dir={data}",
                "--quiet",
            ],
            self.workdir / "pubsub-emulator.log",
            # A private gcloud config: never touch the user's, never prompt.
            env={"CLOUDSDK_CONFIG": str(config), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"},
        )
        self._service.wait_until(self._ready, 90)
        return self

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"http://{self.host}/", timeout=2) as resp:
            return bool(resp.status == 200)

    def stop(self) -> None:
        if self._service:
            self._service.stop()
