"""No key can starve the others of transactions or connections: one key holds at most
PROXY_MAX_TRANSACTIONS_PER_KEY open and PROXY_MAX_STATEMENTS_PER_KEY requests in flight (429
past either, with Retry-After), while the others still get theirs. The key is the Gatekeeper's
key-name header (a request without one counts as one anonymous key). Proxies of their own: 4
transactions, 2 per key; and a pool of 4 connections, 2 statements per key, behind a
Gatekeeper with two keys.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from cluster.keys import KeySet
from cluster.loopback import gatekeeper_service
from cluster.loopback.processes import free_port
from cluster.loopback.services import ServiceProcess
from cluster.waiting import wait_until
from services.client import Answer
from services.contract import KEY_NAME_HEADER
from tests.conftest import proxy_service, scratch_tables
from tests.services.proxy.test_transactions import Client, ids_on
from tests.services.scrape import scrape

PER_KEY = 2


@pytest.fixture(scope="module")
def shared_proxy(db_cluster, tmp_path_factory) -> Iterator[ServiceProcess]:
    service = proxy_service(db_cluster, tmp_path_factory.mktemp("logs") / "shares.log",
                            PROXY_POOL_MAX_SIZE="8", PROXY_MAX_TRANSACTIONS="4",
                            PROXY_METRICS_PORT=str(free_port()))
    with service.running():
        yield service


@pytest.fixture(scope="module")
def scratch(db_cluster) -> Iterator[Callable[..., str]]:
    with scratch_tables(db_cluster, "shares") as make:
        yield make


def open_transactions(service: ServiceProcess) -> int:
    return service.health()[1]["open_transactions"]


@pytest.fixture
def shares(shared_proxy) -> ServiceProcess:
    """The Proxy of this module, with no transaction left open by an earlier test."""
    wait_until(lambda: open_transactions(shared_proxy) == 0, 15, "no open transactions")
    return shared_proxy


def refusals(service: ServiceProcess, reason: str) -> float:
    port = int(service.env["PROXY_METRICS_PORT"])
    return scrape(port, service.tls).value("sqlgate_proxy_refusals_total", reason=reason)


def test_a_key_at_its_share_gets_429_while_another_key_gets_its_transactions(
        shares, db_cluster, scratch):
    proxy = shares
    table = scratch()
    hog = Client(proxy.url, {KEY_NAME_HEADER: "hog"})
    fair = Client(proxy.url, {KEY_NAME_HEADER: "fair"})
    refused_before = refusals(proxy, "transactions_per_key")
    held = [hog.begin() for _ in range(PER_KEY)]

    # The hog keeps asking for more, all along.
    statuses: Counter[int] = Counter()
    answers = []
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            answer = hog.post("/transactions")
            statuses[answer.status] += 1
            answers.append(answer)
            time.sleep(0.02)

    asking = threading.Thread(target=keep_asking, daemon=True)
    asking.start()
    try:
        # Meanwhile the other key opens, writes and commits, up to its own share at once.
        fair_statuses: Counter[int] = Counter()
        for round_ in range(5):
            tids = []
            for _ in range(PER_KEY):
                opened = fair.post("/transactions")
                fair_statuses[opened.status] += 1
                assert opened.status == 201, opened.json
                tids.append(opened.json["transaction_id"])
            for n, tid in enumerate(tids):
                fair.ok(f"INSERT INTO {table} VALUES ({10 * round_ + n}, 'fair')", tid=tid)
            for tid in tids:
                committed = fair.end(tid)
                fair_statuses[committed.status] += 1
                assert committed.status == 200, committed.json
    finally:
        stop.set()
        asking.join(10)
    assert fair_statuses == {201: 5 * PER_KEY, 200: 5 * PER_KEY}
    assert len(ids_on(db_cluster.primary, table)) == 5 * PER_KEY
    assert set(statuses) == {429} and statuses[429] >= 5, statuses
    refused = answers[0]
    assert refused.json["error"] == ("too many open transactions for this key (2): commit or "
                                     "roll back one of them, or retry later")
    assert refused.headers["Retry-After"] == "1" and refused.json["retry_after"] == 1
    assert wait_until(lambda: refusals(proxy, "transactions_per_key") - refused_before
                      == statuses[429], 5, "the refusals counted")

    # Once one of its own has ended, the hog may open one again.
    assert hog.end(held[0], "rollback").status == 200
    again = hog.post("/transactions")
    assert again.status == 201, again.json
    for tid in (held[1], again.json["transaction_id"]):
        assert hog.end(tid, "rollback").status == 200


def test_requests_without_a_key_name_share_one_anonymous_share(shares):
    proxy = shares
    anonymous = Client(proxy.url)
    named = Client(proxy.url, {KEY_NAME_HEADER: "named"})
    held = [anonymous.begin() for _ in range(PER_KEY)]
    refused = anonymous.post("/transactions")
    assert refused.status == 429, refused.json
    mine = [named.begin() for _ in range(PER_KEY)]  # the global cap (4) is now reached
    full = Client(proxy.url, {KEY_NAME_HEADER: "third"}).post("/transactions")
    assert full.status == 503 and "too many open transactions (4)" in full.json["error"]
    for tid in held + mine:
        assert anonymous.end(tid, "rollback").status == 200


def test_through_the_gatekeeper_the_share_is_the_api_keys(gatekeeper, proxy, api_key):
    """The session's Gatekeeper and Proxy (8 transactions, 4 per key): the Gatekeeper names
    the key, and relays the 429 with its Retry-After."""
    api = Client(gatekeeper.url, {"X-API-Key": api_key})
    held = []
    try:
        while len(held) < 8:
            answer = api.post("/transactions")
            if answer.status != 201:
                break
            held.append(answer.json["transaction_id"])
        assert len(held) == 4
        assert answer.status == 429, answer.json
        assert answer.headers["Retry-After"] == "1"
        assert "too many open transactions for this key (4)" in answer.json["error"]
    finally:
        for tid in held:
            api.end(tid, "rollback")


# --- statements in flight --------------------------------------------------------------------

STATEMENTS_PER_KEY = 2
SLEEP = 3  # seconds each of the hog's slow statements runs: the window the rest happens in


@pytest.fixture(scope="module")
def pool_of_four(db_cluster, tmp_path_factory) -> Iterator[tuple[ServiceProcess, Client, Client]]:
    """A Proxy with 4 connections per node and user (1 for a transaction), 2 statements in
    flight per key, behind a Gatekeeper with two write keys of the same database user: the
    Gatekeeper and a client of each key, ``hog`` and ``fair``."""
    logs = tmp_path_factory.mktemp("logs")
    proxy = proxy_service(db_cluster, logs / "statements.log", PROXY_POOL_MAX_SIZE="4",
                          PROXY_MAX_TRANSACTIONS="1",
                          PROXY_MAX_STATEMENTS_PER_KEY=str(STATEMENTS_PER_KEY),
                          PROXY_METRICS_PORT=str(free_port()))
    keys, hog = KeySet().add("hog", "write", rate=0)
    keys, fair = keys.add("fair", "write", rate=0)
    with proxy.running():
        gatekeeper = gatekeeper_service(db_cluster, proxy.url, keys.save(logs / "keys.json"),
                                        logs / "statements-gatekeeper.log")
        with gatekeeper.running():
            yield (proxy, Client(gatekeeper.url, {"X-API-Key": hog}),
                   Client(gatekeeper.url, {"X-API-Key": fair}))


def sleeping(db_cluster, table: str) -> int:
    """The hog's slow statements running on the primary now."""
    return int(db_cluster.primary.sql(
        "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST "
        f"WHERE INFO LIKE '%{table}%SLEEP%' AND INFO NOT LIKE '%PROCESSLIST%'")[0]["n"])


def test_a_key_at_its_share_of_statements_gets_429_while_another_key_is_served_at_once(
        pool_of_four, db_cluster, scratch):
    """The hog holds its 2 statements in flight (slow inserts) and a transaction; its further
    statements are refused at once with 429 and never run, a batch counts once, its
    transaction goes on; the fair key, on the same pool, is answered 200 at once meanwhile."""
    proxy, hog, fair = pool_of_four
    table = scratch()
    refused_before = refusals(proxy, "statements_per_key")

    def slow_insert(row: int) -> Answer:
        return hog.query(f"INSERT INTO {table} VALUES (?, IF(SLEEP({SLEEP}) = 0, 'slept', "
                         "'woken'))", [row])

    tid = hog.begin()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(slow_insert, 1)
        wait_until(lambda: sleeping(db_cluster, table) == 1, 5, "the first slow insert")
        # One in flight: a batch of three statements takes one more, not three.
        batch = hog.post("/batch", {"statements": [{"sql": "SELECT 1"}] * 3,
                                    "transaction": False})
        assert batch.status == 200, batch.json
        assert [result["status"] for result in batch.json["results"]] == [200] * 3
        second = pool.submit(slow_insert, 2)
        wait_until(lambda: sleeping(db_cluster, table) == 2, 5, "the second slow insert")

        # At its share: four more at once, a batch, a transaction of its own, all refused.
        began = time.monotonic()
        excess = list(pool.map(slow_insert, range(10, 14)))
        excess.append(hog.post("/batch", {"statements": [
            {"sql": f"INSERT INTO {table} VALUES (20, 'batch')"}], "transaction": False}))
        excess.append(hog.post("/batch", {"statements": [
            {"sql": f"INSERT INTO {table} VALUES (21, 'atomic')"}]}))
        refused_in = time.monotonic() - began
        assert [answer.status for answer in excess] == [429] * 6, [a.json for a in excess]
        assert refused_in < 1.0, refused_in  # at once: not after a wait for a connection
        for answer in excess:
            assert answer.json["error"] == (
                "too many statements in flight for this key (2): this request was not run; "
                "wait for the key's earlier requests to be answered, or retry later")
            assert answer.headers["Retry-After"] == "1" and answer.json["retry_after"] == 1
        assert sleeping(db_cluster, table) == 2  # none of them reached the database

        # Inside its transaction the hog is not refused: it holds its connection already.
        hog.ok(f"INSERT INTO {table} VALUES (30, 'in its transaction')", tid=tid)

        # The other key, on the same pool of 4 (2 sleeping, 1 the transaction's), two at a
        # time (its own share): at once.
        def fair_query(n: int) -> tuple[int, float]:
            sent = time.monotonic()
            answer = (fair.query("SELECT 1") if n else
                      fair.query(f"INSERT INTO {table} VALUES (40, 'fair')"))
            return answer.status, time.monotonic() - sent

        with ThreadPoolExecutor(STATEMENTS_PER_KEY) as fair_pool:
            fair_answers = list(fair_pool.map(fair_query, range(6)))
        assert [status for status, _ in fair_answers] == [200] * 6, fair_answers
        assert max(took for _, took in fair_answers) < 0.5, fair_answers
        assert sleeping(db_cluster, table) == 2  # the hog's were still running meanwhile
        assert [first.result().status, second.result().status] == [200, 200]
    assert hog.end(tid).status == 200

    # Only what was answered 200 ran; the refused statements never did.
    assert ids_on(db_cluster.primary, table) == [1, 2, 30, 40]
    assert wait_until(lambda: refusals(proxy, "statements_per_key") - refused_before == 6, 5,
                      "the refusals counted")
    # With its statements answered, the hog is served again.
    hog.ok(f"INSERT INTO {table} VALUES (50, 'again')")
