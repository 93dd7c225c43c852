"""Bounded resources: a timed-out statement is stopped on the server even with the pool
saturated, and a huge result is cut in bytes without the Proxy loading it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import uvloop
from asyncmy.cursors import SSCursor

from cluster.waiting import wait_until
from services.config import NodeAddress, ProxyConfig
from services.proxy.pools import NodePool, NodeUnavailable
from services.proxy.readahead import HIGH_WATER
from services.statements import Statement
from tests.conftest import http, proxy_service

SLEEPER = "SELECT SLEEP(100000) AS sqlgate_limits_sleeper"
RUNNING_SLEEPERS = ("SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST "
                    "WHERE INFO LIKE '%SLEEP(100000)%' AND INFO NOT LIKE '%PROCESSLIST%'")
MiB = 1024 * 1024
# 15 rows of 1 MB: about 15 MB of result.
BIG = "SELECT REPEAT('x', 1000000) AS big FROM sakila.actor LIMIT 15"


def running_sleepers(db_cluster) -> int:
    return int(db_cluster.primary.sql(RUNNING_SLEEPERS)[0]["n"])


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory now (VmRSS) or at its highest (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture
def stop_sleepers(db_cluster) -> Iterator[None]:
    """Whatever a failing test leaves sleeping on the primary is killed (as root)."""
    yield
    for row in db_cluster.primary.sql("SELECT ID FROM information_schema.PROCESSLIST "
                                      "WHERE INFO LIKE '%SLEEP(100000)%' "
                                      "AND INFO NOT LIKE '%PROCESSLIST%'"):
        db_cluster.primary.sql(f"KILL QUERY {row['ID']}")


def test_timed_out_statements_are_stopped_with_the_pool_saturated(db_cluster, tmp_path,
                                                                   stop_sleepers):
    """32 clients, 16 connections: every answer is a 503 (busy) or a 504 (timed out), and the
    statements stop on the server too, well before its own time limit (10 s)."""
    service = proxy_service(db_cluster, tmp_path / "proxy.log", PROXY_POOL_MAX_SIZE="16",
                            PROXY_QUERY_TIMEOUT="2", PROXY_CONNECT_TIMEOUT="1",
                            PROXY_MAX_STATEMENTS_PER_KEY="32")  # one key may fill the pool
    with service.running():
        started = threading.Barrier(32)

        def sleep(_: int) -> int:
            started.wait()
            return http(service.url + "/query", {"sql": SLEEPER, "mode": "direct"},
                        scope="read", timeout=30).status

        with ThreadPoolExecutor(32) as pool:
            statuses = Counter(pool.map(sleep, range(32)))
        assert set(statuses) <= {503, 504} and statuses[504] >= 1, statuses
        assert statuses[503] >= 1, statuses  # the pool was saturated
        wait_until(lambda: running_sleepers(db_cluster) == 0, 2,
                   "the timed-out statements to stop on the server")
        fresh = http(service.url + "/query", {"sql": "SELECT 1", "mode": "direct"},
                     scope="read")
        assert fresh.status == 200, fresh.json
        assert service.health()[1]["nodes"]["primary"]["up"] is True


def test_the_connection_for_kill_is_opened_again_after_it_died(db_cluster, tmp_path,
                                                             stop_sleepers):
    service = proxy_service(db_cluster, tmp_path / "proxy.log", PROXY_QUERY_TIMEOUT="1")
    read_user = db_cluster.app_users["read"].name

    def sleep_and_stop() -> None:
        answer = http(service.url + "/query", {"sql": SLEEPER, "mode": "direct"},
                      scope="read")
        assert answer.status == 504, answer.json
        wait_until(lambda: running_sleepers(db_cluster) == 0, 2, "the statement to stop")

    with service.running():
        sleep_and_stop()
        # Every connection of the read user on the primary dies, the reserved one included.
        threads = db_cluster.primary.sql("SELECT ID FROM information_schema.PROCESSLIST "
                                         f"WHERE USER = '{read_user}'")
        assert threads, "no connection of the read user is left to kill"
        for thread in threads:
            db_cluster.primary.sql(f"KILL CONNECTION {thread['ID']}")
        sleep_and_stop()


def test_a_15_mb_result_is_cut_at_max_result_bytes(db_cluster, tmp_path):
    service = proxy_service(db_cluster, tmp_path / "proxy.log", PROXY_MAX_ROWS="1000")
    with service.running():
        answer = http(service.url + "/query", {"sql": BIG, "mode": "direct"}, scope="read")
        assert answer.status == 200, answer.json
        assert answer.json["truncated"] is True
        rows = answer.json["rows"]
        assert 1 <= len(rows) < 15
        assert sum(len(row[0]) for row in rows) <= 8 * MiB  # the default cap
        assert len(rows) == 8  # each row is 1 MB and a bit: 8 fit under 8 MiB


def test_four_huge_results_at_once_keep_the_memory_bounded(db_cluster, tmp_path):
    """The Proxy's peak RSS while 4 clients ask for 15 MB each grows by much less than those
    60 MB (and their JSON): rows are counted as they come and the rest is never read."""
    service = proxy_service(db_cluster, tmp_path / "proxy.log", PROXY_MAX_ROWS="1000",
                            PROXY_MAX_RESULT_BYTES=str(4 * MiB))
    with service.running():
        pid = service.process.pid
        warm = http(service.url + "/query", {"sql": "SELECT REPEAT('x', 1000) FROM "
                                             "sakila.actor", "mode": "direct"}, scope="read")
        assert warm.status == 200
        before = rss_kib(pid)

        def big(_: int) -> tuple[int, bool, int]:
            answer = http(service.url + "/query", {"sql": BIG, "mode": "direct"},
                          scope="read", timeout=60)
            return answer.status, answer.json.get("truncated"), len(answer.json.get("rows", []))

        for _ in range(3):
            with ThreadPoolExecutor(4) as pool:
                results = list(pool.map(big, range(4)))
            assert results == [(200, True, 4)] * 4, results
        peak = rss_kib(pid, "VmHWM")  # the highest RSS the process ever had
        assert (peak - before) / 1024 < 100, f"RSS grew from {before} KiB to {peak} KiB"


def test_a_batch_shares_one_byte_budget(db_cluster, tmp_path):
    service = proxy_service(db_cluster, tmp_path / "proxy.log", PROXY_MAX_ROWS="1000",
                            PROXY_MAX_RESULT_BYTES=str(4 * MiB))
    four = "SELECT REPEAT('x', 1000000) FROM sakila.actor LIMIT 3"
    with service.running():
        for transaction in (False, True):
            answer = http(service.url + "/batch", {"statements": [{"sql": four}] * 3,
                                                   "transaction": transaction},
                          scope="write")
            assert answer.status == 200, answer.json
            results = answer.json["results"]
            assert [len(result["rows"]) for result in results] == [3, 1, 0], transaction
            assert [result["truncated"] for result in results] == [False, True, True]


def test_a_streamed_result_is_read_only_as_fast_as_it_is_consumed(db_cluster):
    """With one row taken of 15 MB, the connection stops reading about HIGH_WATER bytes ahead
    (the server waits), and goes on once the rows are consumed."""
    user = db_cluster.app_users["read"]
    pool = NodePool(NodeAddress("primary", "127.0.0.1", db_cluster.primary.port), "primary",
                    ProxyConfig(db_user=user.name, db_password=user.password,
                                db_tls_ca=str(db_cluster.ca_file)))

    async def attempt() -> tuple[int, int]:
        conn = await pool._acquire("read")
        try:
            cursor = conn.cursor(SSCursor)
            await cursor.execute(BIG)
            rows = [await cursor.fetchone()]
            deadline = time.monotonic() + 5
            while conn._transport.is_reading():  # paused, by itself, with data left to send
                assert time.monotonic() < deadline, "reading never paused"
                await asyncio.sleep(0.01)
            ahead = conn._proto.length - conn._proto.pos
            while (row := await cursor.fetchone()) is not None:
                rows.append(row)
            return ahead, len(rows)
        finally:
            pool._give_back(conn, keep=False)
            await pool.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        ahead, count = runner.run(attempt())
    assert ahead <= HIGH_WATER + 1_000_100  # the limit, and the row being delivered
    assert count == 15


def test_statements_in_flight_on_a_replaced_primary_are_cut_off_at_once(db_cluster):
    """``abort_in_flight`` (the health monitor's, once an unreachable primary is replaced):
    a statement running there fails at once as a lost node, whose effect is unknown, instead
    of waiting out the query timeout."""
    user = db_cluster.app_users["read"]
    pool = NodePool(NodeAddress("primary", "127.0.0.1", db_cluster.primary.port), "primary",
                    ProxyConfig(db_user=user.name, db_password=user.password,
                                db_tls_ca=str(db_cluster.ca_file), query_timeout=30))

    async def attempt() -> tuple[float, BaseException | None, int]:
        running = asyncio.create_task(pool.execute(Statement.plain("SELECT SLEEP(20)"), 1,
                                                   scope="read"))
        await asyncio.sleep(0.5)  # the statement is running on the server
        began = time.monotonic()
        aborted = pool.abort_in_flight()
        try:
            await asyncio.wait_for(running, 5)
            error = None
        except NodeUnavailable as lost:
            error = lost
        took = time.monotonic() - began
        await pool.close()
        return took, error, aborted

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        took, error, aborted = runner.run(attempt())
    assert aborted == 1
    assert isinstance(error, NodeUnavailable) and error.maybe_applied, error
    assert took < 1.0, took


def test_a_driver_failure_is_a_lost_connection_not_a_crash(db_cluster):
    """asyncmy lets a few exceptions of its own through while a connection dies under it (a
    RuntimeError for a transport without a socket): connecting, nothing was sent; during a
    statement, it may have been applied. Either way the node is unavailable for it, and the
    router answers 503 (with the outcome) instead of a 500."""
    user = db_cluster.app_users["read"]
    pool = NodePool(NodeAddress("primary", "127.0.0.1", db_cluster.primary.port), "primary",
                    ProxyConfig(db_user=user.name, db_password=user.password,
                                db_tls_ca=str(db_cluster.ca_file)))

    class Broken:
        async def execute(self, *args):
            raise RuntimeError("Transport does not expose socket instance")

    async def attempt() -> tuple[NodeUnavailable, NodeUnavailable]:
        conn = await pool._acquire("read")
        conn.cursor = lambda *args: Broken()
        pool._give_back(conn, keep=True)  # the next statement gets it
        with pytest.raises(NodeUnavailable) as during:
            await pool.execute(Statement.plain("SELECT 1"), 1, scope="read")
        for each in pool._pools.values():  # connecting fails the same way
            each.acquire = Broken().execute
        with pytest.raises(NodeUnavailable) as connecting:
            await pool.execute(Statement.plain("SELECT 1"), 1, scope="read")
        await pool.close()
        return during.value, connecting.value

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        during, connecting = runner.run(attempt())
    assert during.maybe_applied and "RuntimeError" in during.reason, during
    assert not connecting.maybe_applied and "RuntimeError" in connecting.reason, connecting
