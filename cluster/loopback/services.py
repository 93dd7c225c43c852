"""The Proxy and the Gatekeeper as real processes on free loopback ports."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cluster.loopback.processes import free_port, terminate
from cluster.waiting import GiveUp, wait_until

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProcess:
    module: str
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    process: subprocess.Popen | None = None
    root: Path = PROJECT_ROOT  # the checkout whose code runs (another one for a baseline)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def port_variable(self) -> str:
        """``PROXY_PORT`` for services.proxy: the port is always the one chosen here."""
        return self.module.rsplit(".", 1)[-1].upper() + "_PORT"

    def start(self, expect_healthy: bool = True) -> None:
        self.env[self.port_variable] = str(self.port)
        env = {**os.environ, **self.env}
        with (self.log_path.open("ab") if self.log_path else
              contextlib.nullcontext(subprocess.DEVNULL)) as log:
            self.process = subprocess.Popen([sys.executable, "-m", self.module], env=env,
                                            cwd=self.root, stdout=log, stderr=log)
        try:
            wait_until(lambda: self._answers(expect_healthy), 30, f"{self.module} on {self.url}")
        except BaseException:
            self.stop()
            raise

    def _answers(self, expect_healthy: bool) -> bool:
        if self.process.poll() is not None:
            raise GiveUp(f"{self.module} exited with {self.process.returncode}")
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
        terminate(self.process, grace=15)
        self.process = None

    @contextlib.contextmanager
    def running(self, expect_healthy: bool = True) -> Iterator[ServiceProcess]:
        self.start(expect_healthy)
        try:
            yield self
        finally:
            self.stop()
