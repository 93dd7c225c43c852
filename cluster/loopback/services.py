"""The Proxy and the Gatekeeper as real processes on free loopback ports.

A service started with ``tls`` serves HTTPS (its environment carries its certificate), and
``tls`` is how a client reaches it: the CA to verify it with and, for a Proxy, the client
certificate it asks for. While it runs, ``ServiceProcess.serving(url)`` finds it by its URL, so
that a helper given only a URL (the tests' ``http()``) reaches it the right way.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cluster.loopback.processes import free_port, terminate
from cluster.waiting import GiveUp, wait_until
from services.client import Client, TlsFiles, request

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProcess:
    module: str
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    process: subprocess.Popen | None = None
    root: Path = PROJECT_ROOT  # the checkout whose code runs (another one for a baseline)
    tls: TlsFiles | None = None  # None: plain HTTP
    # The running services of this process, by URL.
    _running: ClassVar[dict[str, ServiceProcess]] = {}

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @classmethod
    def serving(cls, url: str) -> ServiceProcess | None:
        """The running service whose URL ``url`` starts with (scheme, address and port)."""
        parts = urllib.parse.urlsplit(url)
        return cls._running.get(f"{parts.scheme}://{parts.netloc}")

    def client(self, api_key: str = "", timeout: float = 30.0, **kwargs: Any) -> Client:
        """A keep-alive client of this service, with its TLS files."""
        return Client(self.url, api_key, timeout, tls=self.tls, **kwargs)

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
        self._running[self.url] = self
        try:
            wait_until(lambda: self._answers(expect_healthy), 30, f"{self.module} on {self.url}")
        except BaseException:
            self.stop()
            raise

    def _answers(self, expect_healthy: bool) -> bool:
        if self.process.poll() is not None:
            raise GiveUp(f"{self.module} exited with {self.process.returncode}"
                         + (f": see {self.log_path}" if self.log_path else ""))
        status, _ = self.health(timeout=2)
        # Serving, but not healthy (yet): enough when health is not expected.
        return status == 200 or not expect_healthy

    def health(self, timeout: float = 5) -> tuple[int, dict]:
        answer = request(self.url + "/health", timeout=timeout, tls=self.tls)
        return answer.status, answer.json

    def stop(self) -> None:
        if self._running.get(self.url) is self:
            del self._running[self.url]
        terminate(self.process, grace=15)
        self.process = None

    @contextlib.contextmanager
    def running(self, expect_healthy: bool = True) -> Iterator[ServiceProcess]:
        self.start(expect_healthy)
        try:
            yield self
        finally:
            self.stop()
