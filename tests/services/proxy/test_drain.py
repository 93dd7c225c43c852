"""A Proxy stopping (``services.proxy.app.ProxyDrain``): on SIGTERM it opens no new transaction
(503 ``draining``) and its health check fails, while plain requests and the open transactions'
are served; it exits 0 once they have ended, or at PROXY_DRAIN_SECONDS, rolling back those
left. Real processes over mutual TLS, on the loopback MariaDB.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cluster.loopback.services import ServiceProcess
from cluster.waiting import wait_until
from services.contract import KEY_NAME_HEADER
from tests.conftest import proxy_service, scratch_tables
from tests.services.proxy.test_transactions import Client, ids_on

DRAIN_LIMIT = 30.0


@pytest.fixture(scope="module")
def scratch(db_cluster) -> Iterator[Callable[..., str]]:
    with scratch_tables(db_cluster, "drain") as make:
        yield make


def draining(service: ServiceProcess) -> bool:
    status, health = service.health()
    return status == 503 and health["status"] == "draining"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_open_transaction_commits_during_the_drain_then_the_proxy_exits(
        db_cluster, scratch, tmp_path, workers):
    service = proxy_service(db_cluster, tmp_path / "proxy.log", PROXY_WORKERS=workers,
                            PROXY_DRAIN_SECONDS=str(DRAIN_LIMIT),
                            PROXY_TRANSACTION_IDLE_TIMEOUT="20")
    table = scratch()
    api = Client(service.url, {KEY_NAME_HEADER: "drainer"})
    service.start()
    process = service.process
    try:
        tid = api.begin()
        api.ok(f"INSERT INTO {table} VALUES (1, 'before')", tid=tid)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert wait_until(lambda: draining(service), 2, "the health check failing")
        refused = api.post("/transactions")
        assert refused.status == 503, refused.json
        assert refused.json["draining"] is True and "draining" in refused.json["error"]
        assert refused.headers["Retry-After"] == "1"
        assert api.ok("SELECT 1").json["rows"] == [[1]]  # plain requests are served
        api.ok(f"INSERT INTO {table} VALUES (2, 'during')", tid=tid)
        time.sleep(1.0)
        assert process.poll() is None  # still open: still serving
        committed = api.end(tid)
        assert committed.status == 200, committed.json
        ended = time.monotonic()
        assert process.wait(10) == 0
        exited = time.monotonic()
    finally:
        service.stop()
    assert exited - ended < 3.0, exited - ended
    assert exited - signalled < DRAIN_LIMIT / 2
    assert ids_on(db_cluster.primary, table) == [1, 2]
    text = Path(tmp_path / "proxy.log").read_text()
    assert "no new transactions" in text and "rolling them back" not in text


def test_transactions_still_open_at_the_drain_limit_are_rolled_back(db_cluster, scratch,
                                                                    tmp_path):
    service = proxy_service(db_cluster, tmp_path / "proxy.log", PROXY_DRAIN_SECONDS="2",
                            PROXY_TRANSACTION_IDLE_TIMEOUT="30")
    table = scratch()
    api = Client(service.url)
    service.start()
    process = service.process
    try:
        tid = api.begin()
        api.ok(f"INSERT INTO {table} VALUES (1, 'abandoned')", tid=tid)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        elapsed = time.monotonic() - signalled
    finally:
        service.stop()
    assert 2.0 <= elapsed < 8.0, elapsed
    assert ids_on(db_cluster.primary, table) == []
    text = Path(tmp_path / "proxy.log").read_text()
    assert "after its drain limit of 2s: 1 transaction(s) still open" in text
    assert f"rolling them back ({tid})" in text


def test_a_second_sigterm_stops_at_once_and_rolls_back(db_cluster, scratch, tmp_path):
    service = proxy_service(db_cluster, tmp_path / "proxy.log", PROXY_DRAIN_SECONDS="60",
                            PROXY_TRANSACTION_IDLE_TIMEOUT="60")
    table = scratch()
    api = Client(service.url)
    service.start()
    process = service.process
    try:
        tid = api.begin()
        api.ok(f"INSERT INTO {table} VALUES (1, 'cut')", tid=tid)
        process.send_signal(signal.SIGTERM)
        assert wait_until(lambda: draining(service), 2, "the health check failing")
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert time.monotonic() - began < 4
    finally:
        service.stop()
    assert ids_on(db_cluster.primary, table) == []
