"""The Proxy and the Gatekeeper as real processes on free loopback ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cluster.loopback.waiting import free_port, wait_until

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProcess:
    module: str
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, expect_healthy: bool = True) -> None:
        env = {**os.environ, **self.env}
        log = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen([sys.executable, "-m", self.module], env=env,
                                        cwd=PROJECT_ROOT, stdout=log, stderr=log)
        wait_until(lambda: self._answers(expect_healthy), 30, f"{self.module} on {self.url}")

    def _answers(self, expect_healthy: bool) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.module} exited with {self.process.returncode}")
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as answer:
                return answer.status == 200
        except urllib.error.HTTPError:
            return not expect_healthy  # it serves HTTP, but is not healthy (yet)

    def health(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
