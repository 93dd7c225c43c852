"""A key's rate limit across Gatekeepers: the shared Redis store (a real redis-server, TLS,
client certificates, the formula's ACL), its token bucket's arithmetic, and what happens while
it is down.

The accepted rate is a count of 200 answers over a window (``RATE_WINDOW`` seconds, 10 by
default; ``python -m loadtest.ratelimit`` measures 30), not a latency: the machine may be
busy, which changes how many 429s there are, not how many 200s.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from cluster.loopback.redis import RedisServer
from loadtest.ratelimit import accepted, measure, run_load
from services.gatekeeper.keys import LocalLimiter
from services.gatekeeper.metrics import GatekeeperMetrics
from services.gatekeeper.ratestore import RedisLimiter, redis_client
from tests.services.gatekeeper.conftest import gatekeeper_process, new_key, write_keys

RATE, BURST = 100.0, 20
WINDOW = float(os.environ.get("RATE_WINDOW", "10"))
TOLERANCE = 0.10


@pytest.fixture(scope="module")
def store(tls_dir) -> Iterator[RedisServer]:
    server = RedisServer((tls_dir.ca_crt, tls_dir.proxy_crt, tls_dir.proxy_key))
    try:
        yield server.start()
    finally:
        server.close()


def client(store: RedisServer, tls_dir, timeout: float = 0.5):
    return redis_client(store.url, store.password, timeout,
                        (tls_dir.ca_crt, tls_dir.gatekeeper_crt, tls_dir.gatekeeper_key))


def limiter(store: RedisServer, tls_dir, peers: int = 1, metrics=None,
            timeout: float = 0.5) -> RedisLimiter:
    return RedisLimiter(client(store, tls_dir, timeout), LocalLimiter(share=peers), timeout,
                        metrics, retry_interval=0.2)


# --- the script's arithmetic, through the real Redis -----------------------------------------

def test_a_bucket_grants_its_burst_then_says_how_long_to_wait(store, tls_dir):
    async def run() -> list[float]:
        bucket = limiter(store, tls_dir)
        try:
            return [await bucket.take("arith-burst", 4.0, 3) for _ in range(4)]
        finally:
            await bucket.close()

    waits = asyncio.run(run())
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert 0.2 < waits[3] <= 0.25  # one token at 4/s, less what came in meanwhile


def test_a_bucket_refills_at_its_rate_up_to_its_burst(store, tls_dir):
    async def run() -> tuple[list[float], list[float]]:
        bucket = limiter(store, tls_dir)
        try:
            drained = [await bucket.take("arith-refill", 20.0, 5) for _ in range(6)]
            await asyncio.sleep(0.5)  # 10 tokens' worth: kept to the burst, 5
            return drained, [await bucket.take("arith-refill", 20.0, 5) for _ in range(6)]
        finally:
            await bucket.close()

    drained, refilled = asyncio.run(run())
    assert drained[:5] == [0.0] * 5 and drained[5] > 0
    assert refilled[:5] == [0.0] * 5 and refilled[5] > 0


def test_a_bucket_follows_a_lowered_burst(store, tls_dir):
    async def run() -> list[float]:
        bucket = limiter(store, tls_dir)
        try:
            await bucket.take("arith-reload", 0.01, 10)  # 9 left
            return [await bucket.take("arith-reload", 0.01, 2) for _ in range(3)]
        finally:
            await bucket.close()

    waits = asyncio.run(run())
    assert waits[:2] == [0.0, 0.0]
    assert waits[2] == pytest.approx(100.0, rel=0.01)  # 1 token at 0.01/s


def test_concurrent_takes_from_two_clients_grant_the_burst_exactly(store, tls_dir):
    """The script is atomic: 2 x 40 takes at once, a bucket of 30 that barely refills."""
    async def run() -> list[float]:
        first, second = limiter(store, tls_dir), limiter(store, tls_dir)
        try:
            return await asyncio.gather(*(bucket.take("arith-atomic", 0.001, 30)
                                          for bucket in (first, second) for _ in range(40)))
        finally:
            await first.close()
            await second.close()

    assert sum(1 for wait in asyncio.run(run()) if wait == 0.0) == 30


def test_a_stopped_store_falls_back_at_once_logs_once_counts_and_comes_back(
        tls_dir, caplog):
    """Down: this limiter's own buckets at rate / peers and burst / peers, within the
    timeout, one log line, the metric; back: one log line, and the shared bucket again."""
    server = RedisServer((tls_dir.ca_crt, tls_dir.proxy_crt, tls_dir.proxy_key))
    metrics = GatekeeperMetrics(CollectorRegistry())

    async def run() -> None:
        bucket = limiter(server.start(), tls_dir, peers=2, metrics=metrics, timeout=0.1)
        try:
            await bucket.start()
            assert bucket.up and metrics.rate_store_up._value.get() == 1
            server.stop()
            began = time.monotonic()
            # burst 4 / 2 peers: 2 at once, then 10 / 2 = 5 a second.
            waits = [await bucket.take("down", 10.0, 4) for _ in range(3)]
            assert time.monotonic() - began < 0.3  # the timeout once at most, then none
            assert waits[:2] == [0.0, 0.0] and waits[2] == pytest.approx(0.2, abs=0.01)
            assert not bucket.up and metrics.rate_store_up._value.get() == 0
            assert metrics.rate_store_fallbacks._value.get() == 3
            server.start()
            deadline = time.monotonic() + 3
            while not bucket.up and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert bucket.up and metrics.rate_store_up._value.get() == 1
            assert [await bucket.take("down", 10.0, 4) for _ in range(4)] == [0.0] * 4
        finally:
            await bucket.close()

    try:
        with caplog.at_level("INFO", logger="services.gatekeeper.ratestore"):
            asyncio.run(run())
    finally:
        server.close()
    messages = [record.getMessage() for record in caplog.records]
    assert sum("does not answer" in message for message in messages) == 1, messages
    assert sum("answers again" in message for message in messages) == 1, messages
    assert not any(server.password in message for message in messages)


# --- real Gatekeepers sharing it ---------------------------------------------------------------

COMBINATIONS = [(1, 1), (1, 8), (2, 1), (2, 8)]  # (Gatekeepers, connections)
KEYS = {combo: new_key(f"shared-{combo[0]}gk-{combo[1]}c", "read", RATE, BURST)
        for combo in COMBINATIONS}
FAILOVER_KEY = new_key("shared-failover", "read", RATE, BURST)


@pytest.fixture(scope="module")
def gatekeepers(tls_dir, fake_proxy, store, tmp_path_factory):
    """Two Gatekeeper processes sharing the store (``PEERS`` 2)."""
    root = tmp_path_factory.mktemp("shared-rate")
    keys_file = write_keys(root / "keys.json", *KEYS.values(), FAILOVER_KEY)
    processes = [gatekeeper_process(tls_dir, fake_proxy.url, root / f"gatekeeper{index}.log",
                                    keys_file, GATEKEEPER_LOG_REQUESTS="false",
                                    GATEKEEPER_RATE_STORE=store.url,
                                    GATEKEEPER_RATE_STORE_PASSWORD_FILE=str(
                                        store.password_file),
                                    GATEKEEPER_RATE_STORE_PEERS="2")
                 for index in range(2)]
    try:
        for process in processes:
            process.start()
        yield processes
    finally:
        for process in processes:
            process.stop()


@pytest.mark.parametrize(("count", "connections"), COMBINATIONS,
                         ids=[f"{g}gk-{c}conn" for g, c in COMBINATIONS])
def test_a_keys_rate_holds_through_one_or_two_gatekeepers(gatekeepers, tls_dir, count,
                                                          connections):
    rate, statuses = measure([process.url for process in gatekeepers[:count]],
                             KEYS[count, connections].secret, connections, WINDOW,
                             tls_dir.ca_crt)
    print(f"\n{count} Gatekeeper(s), {connections} connection(s): {rate:.1f} accepted/s "
          f"over {WINDOW:g} s; answers {statuses}")
    assert set(statuses) <= {200, 429}, statuses
    assert abs(rate - RATE) <= TOLERANCE * RATE, rate


def test_while_the_store_is_down_each_gatekeeper_grants_its_share(gatekeepers, store, tls_dir):
    """Shared, then redis-server stopped (each of the 2 Gatekeepers grants rate / 2 from its
    own buckets, no request fails other than 429), then started again (shared again)."""
    urls = [process.url for process in gatekeepers]
    answers: list = []
    began = time.monotonic()
    load = threading.Thread(target=lambda: answers.extend(
        run_load(urls, FAILOVER_KEY.secret, 8, 14.0, tls_dir.ca_crt)))
    load.start()
    try:
        time.sleep(4.0 - (time.monotonic() - began))
        stopped = time.monotonic()
        store.stop()
        time.sleep(5.0)
        restarted = time.monotonic()
        store.start()
    finally:
        load.join(30)

    def rate(start: float, end: float, gatekeeper: int | None = None) -> float:
        return accepted(answers, start, end, gatekeeper) / (end - start)

    shared = rate(began + 1.5, stopped)
    down = [rate(stopped + 1.0, restarted, index) for index in (0, 1)]
    back = rate(restarted + 2.0, began + 14.0)
    print(f"\nshared {shared:.1f}/s; store down: {down[0]:.1f} + {down[1]:.1f}/s; "
          f"back: {back:.1f}/s; each second: "
          + " ".join(f"{accepted(answers, began + s, began + s + 1, 0)}+"
                     f"{accepted(answers, began + s, began + s + 1, 1)}" for s in range(14)))
    assert {answer.status for answer in answers} <= {200, 429}
    assert abs(shared - RATE) <= TOLERANCE * RATE
    for share in down:
        assert abs(share - RATE / 2) <= TOLERANCE * RATE / 2
    assert abs(back - RATE) <= TOLERANCE * RATE
    for process in gatekeepers:
        log = process.log_path.read_text()
        assert log.count("the shared rate store does not answer") == 1, log[-2000:]
        assert log.count("the shared rate store answers again") == 1, log[-2000:]
        assert store.password not in log
