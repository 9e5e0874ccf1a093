"""Long-running pollers as child processes, with their HTTP endpoints."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from local_services.process import free_port


class PollerProcess:
    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = log
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_POLLER_")}
        full_env.update(env or {})
        self._fh = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "model_poller", "--http-port", str(self.port), *args],
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_for(self, path: str, status: int = 200, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"poller exited {self.proc.returncode}: {self.output()}"
            try:
                if self.get(path)[0] == status:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{path} never answered {status}: {self.output()}")

    def metric(self, name: str, labels: str = "") -> float:
        _, text = self.get("/metrics")
        pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)"
        match = re.search(r"^" + pattern + "$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def output(self) -> str:
        if not self._fh.closed:
            self._fh.flush()
        return self.log.read_text(errors="replace")[-4000:]

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._fh.close()
