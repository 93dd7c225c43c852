"""Plain requests through a Gatekeeper on a thread of their own, for the tests that change
its Proxies under traffic (a list file rewritten, a Proxy lost)."""

from __future__ import annotations

import threading
import time

from cluster.loopback.services import ServiceProcess


class PlainTraffic:
    """Plain requests one after another on a thread of their own, each answer's time and
    status kept: what the clients without a transaction see while a Proxy is lost."""

    def __init__(self, front: ServiceProcess, api_key: str) -> None:
        self.front, self.api_key = front, api_key
        self.answers: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = self.front.client(self.api_key, timeout=10)
        while not self._stop.is_set():
            try:
                status = client.query("SELECT 1").status
            except OSError:
                status = 0
            self.answers.append((time.monotonic(), status))
            time.sleep(0.005)
        client.close()

    def __enter__(self) -> PlainTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def failed(self, after: float = 0.0) -> list[tuple[float, int]]:
        return [(at, status) for at, status in self.answers if at >= after and status != 200]

    @property
    def statuses(self) -> list[int]:
        return [status for _, status in self.answers]
