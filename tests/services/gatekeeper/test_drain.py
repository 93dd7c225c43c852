"""A Gatekeeper stopping behind a load balancer (``services.http.Drain``): on SIGTERM its health
check fails at once, it serves on for GATEKEEPER_DRAIN_SECONDS (the balancer's checks notice
and send nothing new), then it stops listening, finishes what is in flight and exits 0.

Real processes over HTTPS, with the stand-in Proxy behind (``SELECT 'slow:N'`` takes N s),
under clients that never stop sending: new connections, keep-alive ones, slow requests, and
the balancer's health check every 50 ms.
"""

from __future__ import annotations

import os
import signal
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
import pytest

from services.client import Answer, Client, request
from tests.services.gatekeeper.conftest import gatekeeper_process, write_keys

GRACE = 2.0
SLOW = 1.0  # seconds each slow request takes at the stand-in Proxy
# Beyond the grace: the last slow request, the last connections, closing; with room for a
# loaded machine (the test's own clients share it).
BOUND = SLOW + 5.0


@dataclass
class Sent:
    """One request: when it left and came back (monotonic), and what it got."""

    began: float
    ended: float
    status: int | None = None
    body: Any = None
    connection: str | None = None  # the answer's Connection header
    error: BaseException | None = None


class Sender(threading.Thread):
    """Sends ``send()`` over and over, recording each, until told to stop."""

    def __init__(self, send: Callable[[], Answer], pause: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.send, self.pause = send, pause
        self.sent: list[Sent] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            began = time.monotonic()
            try:
                answer = self.send()
            except (OSError, ssl.SSLError) as error:  # refused, reset...
                self.sent.append(Sent(began, time.monotonic(), error=error))
                time.sleep(0.01)
            else:
                self.sent.append(Sent(began, time.monotonic(), answer.status, answer.json,
                                      answer.headers.get("Connection")))
            if self.pause:
                time.sleep(self.pause)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_fails_the_health_check_serves_on_then_exits_0(tls_dir, fake_proxy, keys,
                                                               tmp_path, workers):
    keys_file = write_keys(tmp_path / "keys.json", *keys.all())
    service = gatekeeper_process(tls_dir, fake_proxy.url, tmp_path / "gatekeeper.log",
                                 keys_file, GATEKEEPER_DRAIN_SECONDS=str(GRACE),
                                 GATEKEEPER_WORKERS=workers)
    service.start()
    url, secret = service.url, keys.admin.secret
    process = service.process

    def fresh(sql: str = "SELECT 1") -> Callable[[], Answer]:
        return lambda: request(url + "/query", {"sql": sql}, {"X-API-Key": secret},
                               timeout=10, tls=service.tls)

    kept = [Client(url, secret, 10, tls=service.tls) for _ in range(2)]
    senders = {
        "fresh": [Sender(fresh()) for _ in range(4)],
        "kept": [Sender(lambda client=client: client.query("SELECT 1")) for client in kept],
        "slow": [Sender(fresh(f"SELECT 'slow:{SLOW}'")) for _ in range(3)],
        "health": [Sender(lambda: request(url + "/health", timeout=5, tls=service.tls),
                          pause=0.05)],
    }
    everyone = [sender for group in senders.values() for sender in group]
    try:
        for sender in everyone:
            sender.start()
        time.sleep(1.5)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(GRACE + BOUND + 5)
        exited = time.monotonic()
        time.sleep(0.3)  # what is sent after the exit is refused too
    finally:
        for sender in everyone:
            sender.stopping.set()
        for sender in everyone:
            sender.join(15)
        service.stop()

    assert code == 0
    assert GRACE <= exited - signalled <= GRACE + BOUND, exited - signalled

    # The health check fails at once, and says why, without the Proxy's details.
    (health,) = senders["health"]
    before = [sent for sent in health.sent if sent.ended < signalled]
    after = [sent for sent in health.sent if sent.began > signalled + 0.05 and sent.error is None]
    assert before and all(sent.status == 200 for sent in before)
    assert len(after) >= 3  # answered along the grace
    assert {(sent.status, str(sent.body)) for sent in after} == {
        (503, str({"service": "gatekeeper", "status": "draining"}))}
    first_503 = min(sent.ended for sent in health.sent if sent.status == 503)
    assert first_503 - signalled < 0.5

    # Every request got its answer, except those refused once the port was closed.
    queries = [sent for name in ("fresh", "kept", "slow") for sender in senders[name]
               for sent in sender.sent]
    failed = [sent for sent in queries if sent.error is not None]
    assert all(isinstance(sent.error, ConnectionRefusedError) for sent in failed), \
        [(name, repr(sent.error), sent.began - signalled, sent.ended - signalled,
          exited - signalled) for name in senders for sender in senders[name]
         for sent in sender.sent
         if sent.error is not None and not isinstance(sent.error, ConnectionRefusedError)]
    # A refusal is seen when the connection is tried, some time after the request began: the
    # port closed no sooner than the grace after the signal, so no refusal came back sooner.
    assert failed and min(sent.ended for sent in failed) >= signalled + GRACE
    answered = [sent for sent in queries if sent.error is None]
    assert {sent.status for sent in answered} == {200}
    # Served throughout the grace: new connections and keep-alive ones alike.
    for name in ("fresh", "kept"):
        during = [sent for sender in senders[name] for sent in sender.sent
                  if signalled + 0.1 < sent.began < signalled + GRACE - 0.1]
        assert len(during) >= 10 and all(sent.status == 200 for sent in during), name
        # ... each answer closing its connection, so that keep-alive clients move elsewhere.
        assert {sent.connection for sent in during} == {"close"}, name
    # What was in flight when the port closed was finished.
    slow_late = [sent for sender in senders["slow"] for sent in sender.sent
                 if sent.status == 200 and sent.ended > signalled + GRACE]
    assert slow_late, "no slow request was in flight when the port closed"
    text = (tmp_path / "gatekeeper.log").read_text()
    assert "draining" in text and "no longer accepting connections" in text


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_sigterm_or_a_sigint_stops_at_once(tls_dir, fake_proxy, keys, tmp_path,
                                                    second):
    keys_file = write_keys(tmp_path / "keys.json", *keys.all())
    service = gatekeeper_process(tls_dir, fake_proxy.url, tmp_path / "gatekeeper.log",
                                 keys_file, GATEKEEPER_DRAIN_SECONDS="60",
                                 GATEKEEPER_WORKERS="2")
    service.start()
    process = service.process
    try:
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        status, health = service.health()
        assert (status, health["status"]) == (503, "draining")
        began = time.monotonic()
        process.send_signal(second)
        assert process.wait(10) == 0
        assert time.monotonic() - began < 3
    finally:
        service.stop()


def test_sigint_alone_stops_at_once(tls_dir, fake_proxy, keys, tmp_path):
    keys_file = write_keys(tmp_path / "keys.json", *keys.all())
    service = gatekeeper_process(tls_dir, fake_proxy.url, tmp_path / "gatekeeper.log",
                                 keys_file, GATEKEEPER_DRAIN_SECONDS="60")
    service.start()
    process = service.process
    try:
        began = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
        assert time.monotonic() - began < 3
    finally:
        service.stop()


def test_sigterm_to_the_whole_process_group_still_drains(tls_dir, fake_proxy, keys, tmp_path):
    """A service manager stopping the process group (systemd's default KillMode, supervisor's
    stopasgroup) sends SIGTERM to the parent and to every worker: each worker gets it twice
    (the parent passes its own on), and still drains rather than stopping at once."""
    keys_file = write_keys(tmp_path / "keys.json", *keys.all())
    service = gatekeeper_process(tls_dir, fake_proxy.url, tmp_path / "gatekeeper.log",
                                 keys_file, GATEKEEPER_DRAIN_SECONDS=str(GRACE),
                                 GATEKEEPER_WORKERS="2")
    service.start()
    process = service.process
    try:
        workers = psutil.Process(process.pid).children()
        assert len(workers) == 2
        began = time.monotonic()
        for pid in (process.pid, *(worker.pid for worker in workers)):
            os.kill(pid, signal.SIGTERM)
        for _ in range(3):
            time.sleep(0.4)
            assert service.health() == (503, {"service": "gatekeeper", "status": "draining"})
            answer = request(service.url + "/query", {"sql": "SELECT 1"},
                             {"X-API-Key": keys.admin.secret}, tls=service.tls)
            assert answer.status == 200, answer.json
        assert process.wait(GRACE + BOUND) == 0
        assert time.monotonic() - began >= GRACE
    finally:
        service.stop()
