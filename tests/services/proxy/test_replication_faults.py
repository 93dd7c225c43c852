"""Reads you can trust, under real faults: lag and stopped threads take a replica out of
rotation, tokens make a client read its own writes, and killed servers cost no acknowledged
write and no read.

These tests stop, kill, delay and starve real MariaDB servers, so they run on a replicated
trio of their own, with a Proxy that checks every 100 ms. Every acknowledged write goes into
a ledger that the last test looks for on every node.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from cluster.loopback import gatekeeper_service, write_keys_file
from cluster.loopback.faults import cpu_limited
from cluster.loopback.mariadb import MariaDBCluster, MariaDBNode
from cluster.loopback.services import ServiceProcess
from cluster.waiting import wait_until
from loadtest.consistency import run_pairs
from loadtest.workload import DEFAULT_TABLE, create_table_sql
from services.client import Client
from services.contract import SCOPE_HEADER
from tests.conftest import proxy_service
from tests.ledger import Ledger, load

LEDGER = "sqlgate_test.ledger"
POINT_READ = "SELECT first_name FROM sakila.actor WHERE actor_id = ?"


@dataclass
class Stack:
    db: MariaDBCluster
    proxy: ServiceProcess
    gatekeeper: ServiceProcess
    api_key: str
    ledger: dict[str, set[int]] = field(default_factory=lambda: {LEDGER: set()})

    def client(self) -> Client:
        return self.gatekeeper.client(self.api_key, timeout=20)

    def node(self, name: str) -> MariaDBNode:
        return next(node for node in self.db.nodes if node.name == name)

    def health(self, name: str) -> dict:
        return self.proxy.health()[1]["nodes"][name]

    def write(self, client: Client, tag: str) -> int:
        """One ledger insert; its id once acknowledged, else 0."""
        answer = client.query(f"INSERT INTO {LEDGER} (tag) VALUES (?)", [tag])
        if answer.ok:
            self.ledger[LEDGER].add(answer.json["last_insert_id"])
            return answer.json["last_insert_id"]
        return 0


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    db = MariaDBCluster(replicas=2)
    db.start()
    logs = tmp_path_factory.mktemp("replication")
    try:
        db.primary.sql(f"CREATE TABLE {LEDGER} (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
                       "tag VARCHAR(64) NOT NULL)")
        db.primary.sql(create_table_sql(DEFAULT_TABLE))
        db.wait_for_replicas()
        proxy = proxy_service(db, logs / "proxy.log", PROXY_HEALTH_INTERVAL="0.1",
                              PROXY_MAX_REPLICA_LAG="1", PROXY_REPLICA_RECOVERY_CHECKS="3",
                              PROXY_CAUSAL_WAIT="0.2")
        api_key = secrets.token_urlsafe(24)
        gatekeeper = gatekeeper_service(db, proxy.url,
                                        write_keys_file(logs / "keys.json", api_key),
                                        logs / "gatekeeper.log")
        with proxy.running(), gatekeeper.running():
            yield Stack(db, proxy, gatekeeper, api_key)
    finally:
        db.destroy()


@pytest.fixture
def healed(stack) -> Iterator[None]:
    """Whatever a test broke is repaired, and every replica caught up, before the next."""
    yield
    for node in stack.db.nodes:
        if not node.running:
            stack.db.restart(node)
    if stack.db.primary.name != "primary":  # a restart made another node the primary
        stack.db.wait_for_replicas()
        stack.db.switchover(stack.node("primary"))
    for replica in stack.db.replicas:
        replica.sql("STOP SLAVE")
        replica.sql("CHANGE MASTER TO MASTER_DELAY=0")
        replica.sql("START SLAVE")
    stack.db.wait_for_replicas()
    for replica in stack.db.replicas:
        wait_until(lambda name=replica.name: stack.health(name)["in_rotation"], 20,
                   f"{replica.name} back in rotation")


def test_health_shows_threads_lag_and_rotation_per_replica(stack):
    with stack.client() as client:
        for number in range(20):
            assert stack.write(client, f"health-{number}")
    for name in ("replica1", "replica2"):
        replica = stack.health(name)
        assert replica["io_running"] is True and replica["sql_running"] is True
        assert replica["lag_source"] == "heartbeat"
        assert 0 <= replica["lag_ms"] < 1000
        assert replica["in_rotation"] is True and replica["rotation_reason"] is None


def test_a_stopped_sql_thread_takes_the_replica_out_within_a_second(stack, healed):
    replica1 = stack.node("replica1")
    with stack.client() as client:
        replica1.sql("STOP SLAVE SQL_THREAD")
        stopped = time.monotonic()
        row = stack.write(client, "sql-thread-stopped")
        wait_until(lambda: stack.health("replica1")["in_rotation"] is False, 1.0,
                   "replica1 out of rotation")
        assert time.monotonic() - stopped < 1.0
        assert "SQL thread stopped" in stack.health("replica1")["rotation_reason"]
        reads = [client.query(f"SELECT id FROM {LEDGER} WHERE id = ?", [row], mode=mode)
                 for mode in ("random", "ping", "least") for _ in range(15)]
        assert {read.json["node"] for read in reads} == {"replica2"}
        assert all(read.json["rowcount"] == 1 for read in reads)
        replica1.sql("START SLAVE SQL_THREAD")
        wait_until(lambda: stack.health("replica1")["in_rotation"], 10, "replica1 back")
        nodes = Counter(client.query(POINT_READ, [1], mode="random").json["node"]
                        for _ in range(40))
        assert set(nodes) == {"replica1", "replica2"}


def test_tokens_make_every_read_see_its_write_on_a_lagging_replica(stack, healed, tmp_path):
    """replica1 applies everything two seconds late (MASTER_DELAY) but stays in rotation for
    a Proxy that tolerates 30 s of lag: without the token many reads miss the row they
    follow; with it none does, and the reads that reached replica1 moved on after waiting."""
    replica1 = stack.node("replica1")
    replica1.sql("STOP SLAVE")
    replica1.sql("CHANGE MASTER TO MASTER_DELAY=2")
    replica1.sql("START SLAVE")
    tolerant = proxy_service(stack.db, tmp_path / "tolerant-proxy.log",
                             PROXY_HEALTH_INTERVAL="0.1", PROXY_MAX_REPLICA_LAG="30",
                             PROXY_CAUSAL_WAIT="0.2")
    # The pairs' writes need the write scope, which the Gatekeeper would state for a key.
    with tolerant.running(), tolerant.client(headers={SCOPE_HEADER: "write"}) as client:
        wait_until(lambda: tolerant.health()[1]["nodes"]["replica1"]["lag_ms"] > 1000, 10,
                   "replica1 lagging")
        results = [run_pairs(client, 60, mode, with_token)
                   for mode in ("random", "least") for with_token in (False, True)]
    for result in results:
        print(result.line())
        stack.ledger.setdefault(DEFAULT_TABLE, set()).update(result.written)
        assert result.failed == 0, result.errors
        assert result.pairs == 60
    without, with_token = results[0], results[1]
    assert without.stale > 5, without.line()  # the check can fail: replica1 is stale
    assert with_token.stale == 0, with_token.line()
    assert with_token.waited > 0  # some reads waited for replica1, then moved on
    assert results[3].stale == 0, results[3].line()


def read_loop(stack: Stack, mode: str, stop: threading.Event, outcomes: Counter,
              failures: list[str]) -> None:
    with stack.client() as client:
        while not stop.is_set():
            try:
                answer = client.query(POINT_READ, [7], mode=mode)
            except OSError as error:
                failures.append(f"{mode}: {error}")
                continue
            if answer.ok:
                outcomes[answer.json["node"]] += 1
            else:
                failures.append(f"{mode}: {answer.status} {answer.json}")


def write_loop(stack: Stack, stop: threading.Event, written: list[int]) -> None:
    with stack.client() as client:
        while not stop.is_set():
            written.append(stack.write(client, "during-faults"))
            time.sleep(0.005)


def test_a_killed_replica_costs_no_read_and_returns_by_itself(stack, healed):
    """8 clients read in random, ping and least while replica2's server is killed (SIGKILL)
    and later restarted; the Proxy is never restarted."""
    stop, outcomes, failures, written = threading.Event(), Counter(), [], []
    threads = [threading.Thread(target=read_loop, args=(stack, mode, stop, outcomes, failures))
               for mode in ("random", "ping", "least", "random", "ping", "least", "random",
                            "least")]
    threads.append(threading.Thread(target=write_loop, args=(stack, stop, written)))
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        stack.node("replica2").kill()
        wait_until(lambda: stack.health("replica2")["up"] is False, 5, "replica2 seen down")
        time.sleep(1.0)
        before_restart = outcomes.copy()
        stack.node("replica2").start()
        wait_until(lambda: stack.health("replica2")["in_rotation"], 30, "replica2 in rotation")
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert failures == []
    assert all(written), "a write failed while only a replica was down"
    assert sum(outcomes.values()) > 100
    assert outcomes["replica2"] > before_restart["replica2"]  # back in rotation, serving reads


def test_a_restarted_primary_gets_the_writes_held_meanwhile(stack, healed):
    """The primary killed and started again within PROXY_WRITE_HOLD: a write sent while it
    was down waits for it instead of failing, and reads go on from the replicas."""
    primary = stack.node("primary")
    with stack.client() as client:
        row = stack.write(client, "before-the-crash")
        stack.db.wait_for_replicas()
        primary.kill()
        wait_until(lambda: stack.health("primary")["up"] is False, 5, "the primary seen down")
        held: list = []
        writer = threading.Thread(target=lambda: held.append(stack.write(stack.client(),
                                                                         "held")))
        began = time.monotonic()
        writer.start()
        for mode in ("random", "ping", "least"):
            read = client.query(f"SELECT id FROM {LEDGER} WHERE id = ?", [row], mode=mode)
            assert read.status == 200, read.json
            assert read.json["node"] in ("replica1", "replica2") and read.json["rowcount"] == 1
        stack.db.restart(primary)  # read-only, then promoted again if no replica is ahead
        writer.join(30)
        assert held and held[0] > 0, "the held write was not acknowledged"
        assert stack.proxy.health()[1]["primary"] == stack.db.primary.name
        assert time.monotonic() - began < 15


def under_writers(stack: Stack, action) -> Ledger:
    """8 writers and a reader through the Gatekeeper around ``action``; their acknowledged
    writes join the module's ledger, checked on every node by the last test."""
    ledger = Ledger(LEDGER)
    with load(ledger, stack.client):
        time.sleep(1.0)
        action()
        time.sleep(1.5)
    stack.ledger[LEDGER] |= ledger.acknowledged
    assert ledger.read_failures == [], ledger.read_failures[:5]
    return ledger


def test_switchover_under_load_holds_writes_and_fails_none(stack, healed):
    """A planned switchover to replica2 and back, under 8 writers and a reader: the Proxy
    finds the new primary by itself (read-only everywhere else, the higher epoch there),
    holds the writes meanwhile, and fails none."""
    db = stack.db
    moments: list[float] = []
    took: list[float] = []

    def switch(to: str) -> None:
        moments.append(time.monotonic())
        db.switchover(stack.node(to))
        took.append(time.monotonic() - moments[-1])
        wait_until(lambda: stack.proxy.health()[1]["primary"] == to, 10,
                   f"the Proxy to follow {to}")

    def there_and_back() -> None:
        switch("replica2")
        time.sleep(1.0)
        switch("primary")

    ledger = under_writers(stack, there_and_back)
    gaps = [ledger.unavailable_after(moment) for moment in moments]
    print(f"switchover: {dict(ledger.outcomes)}, longest write gaps "
          f"{[round(g, 2) for g in gaps]} s, the switchovers took {[round(t, 2) for t in took]} s")
    assert ledger.outcomes["failed"] == ledger.outcomes["unknown"] == 0, ledger.refusals[:5]
    assert ledger.outcomes["ok"] > 50
    # Writes wait only while the switchover runs, plus the Proxy's next checks (0.1 s each).
    assert all(gap < duration + 0.5 for gap, duration in zip(gaps, took, strict=True)), \
        (gaps, took)
    health = stack.proxy.health()[1]
    assert health["primary"] == "primary" and health["epoch"] >= 3, health


def test_a_killed_primary_is_replaced_by_the_most_advanced_replica(stack, healed):
    """SIGKILL under 8 writers; replica1 is behind (its IO thread stopped a moment before),
    so replica2, which received more, is promoted. Writes in flight answer 'unknown', the
    others wait for the new primary; reads never fail; CHECKSUM TABLE agrees on every node
    afterwards. Then the old primary rejoins, and a switchover brings it back."""
    db = stack.db
    moments: list[float] = []

    def crash_and_promote() -> None:
        stack.node("replica1").sql("STOP SLAVE IO_THREAD")  # it receives no more
        time.sleep(0.3)
        moments.append(time.monotonic())
        stack.node("primary").kill()
        time.sleep(1.0)  # the detection time a real failover waits out
        assert db.failover().name == "replica2"

    ledger = under_writers(stack, crash_and_promote)
    gap = ledger.unavailable_after(moments[0])
    print(f"failover: {dict(ledger.outcomes)}, writes unavailable {gap:.2f} s, unknown: "
          f"{ledger.refusals[:3]}")
    assert ledger.outcomes["failed"] == 0, ledger.refusals[:5]
    assert ledger.outcomes["ok"] > 50
    assert gap < 10.0
    new_primary = db.primary
    db.wait_for_replicas()
    checksums = {node.name: node.sql(f"CHECKSUM TABLE {LEDGER}")[0]["Checksum"]
                 for node in db.nodes if node.running}
    assert len(set(checksums.values())) == 1, checksums
    old = stack.node("primary")
    old.start()  # read-only: it never takes a write again by itself
    assert old.sql("SELECT @@read_only AS r")[0]["r"] == 1
    db.follow(old, new_primary)
    db.wait_for_replicas()
    db.switchover(old)
    wait_until(lambda: stack.proxy.health()[1]["primary"] == "primary", 10, "primary back")


def test_a_writable_old_primary_at_an_older_epoch_is_fenced(stack, healed):
    """Split brain on purpose: replica1 made writable with an older epoch row (as an old
    primary that missed the last promotion and came back writable). The Proxy never writes
    there (fenced), nor reads from it."""
    intruder = stack.node("replica1")
    epoch = intruder.sql("SELECT epoch FROM sqlgate.epoch")[0]["epoch"]
    with intruder.connect() as conn, conn.cursor() as cursor:  # one session: not logged
        cursor.execute("SET SESSION sql_log_bin = 0")
        cursor.execute(f"UPDATE sqlgate.epoch SET epoch = {epoch - 1}")
    intruder.sql("SET GLOBAL read_only = OFF")
    try:
        wait_until(lambda: stack.health("replica1")["role"] == "fenced", 5, "replica1 fenced")
        health = stack.proxy.health()[1]
        assert health["primary"] == "primary" and health["epoch"] == epoch, health
        with stack.client() as client:
            for number in range(20):
                answer = client.query(f"INSERT INTO {LEDGER} (tag) VALUES (?)",
                                      [f"fenced-{number}"])
                assert answer.ok and answer.json["node"] == "primary", answer.json
                stack.ledger[LEDGER].add(answer.json["last_insert_id"])
                read = client.query(POINT_READ, [1], mode="random")
                assert read.ok and read.json["node"] != "replica1", read.json
    finally:
        intruder.sql("SET GLOBAL read_only = ON")
        with intruder.connect() as conn, conn.cursor() as cursor:
            cursor.execute("SET SESSION sql_log_bin = 0")
            cursor.execute(f"UPDATE sqlgate.epoch SET epoch = {epoch}")


def test_two_writable_nodes_at_one_epoch_get_no_write(stack, healed, tmp_path):
    """Should two nodes ever be writable at the same epoch, neither is written to: writes
    wait, then 503; reads go on."""
    intruder = stack.node("replica1")
    intruder.sql("SET GLOBAL read_only = OFF")
    strict = proxy_service(stack.db, tmp_path / "strict-proxy.log", PROXY_WRITE_HOLD="1",
                           PROXY_HEALTH_INTERVAL="0.1")
    try:
        with strict.running(expect_healthy=False), \
                strict.client(headers={SCOPE_HEADER: "write"}) as client:
            wait_until(lambda: "writable nodes" in str(strict.health()[1]), 5, "no primary")
            answer = client.query(f"INSERT INTO {LEDGER} (tag) VALUES (?)", ["two-writers"])
            assert answer.status == 503 and "2 writable nodes" in answer.json["error"], \
                answer.json
            assert client.query(POINT_READ, [1], mode="random").ok
    finally:
        intruder.sql("SET GLOBAL read_only = ON")


def test_writes_are_refused_while_no_replica_acknowledges(stack, healed, tmp_path):
    """Every replica's IO thread stopped: semi-sync falls back to async on the primary, and
    no write is acknowledged (503 naming semi-sync) until a replica acknowledges again;
    PROXY_ALLOW_ASYNC=true accepts them."""
    for replica in stack.db.replicas:
        replica.sql("STOP SLAVE IO_THREAD")
    with stack.client() as client:
        answers = [client.query(f"INSERT INTO {LEDGER} (tag) VALUES (?)", ["no-replica"])
                   for _ in range(5)]
        lenient = proxy_service(stack.db, tmp_path / "async-proxy.log",
                                PROXY_ALLOW_ASYNC="true")
        with lenient.running(), lenient.client(headers={SCOPE_HEADER: "write"}) as direct:
            accepted = direct.query(f"INSERT INTO {LEDGER} (tag) VALUES (?)", ["async"])
    assert [answer.status for answer in answers] == [503] * 5, [a.json for a in answers]
    assert all("semi-synchronous" in answer.json["error"] for answer in answers)
    assert accepted.ok, accepted.json
    stack.ledger[LEDGER].add(accepted.json["last_insert_id"])
    for replica in stack.db.replicas:
        replica.sql("START SLAVE IO_THREAD")
    with stack.client() as client:
        wait_until(lambda: stack.write(client, "semi-sync-back") > 0, 15, "writes back")


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.95 * (len(ordered) - 1))]


def timed_reads(stack: Stack, mode: str, clients: int, reads: int) -> list[float]:
    latencies: list[float] = []

    def one_client() -> None:
        with stack.client() as client:
            for _ in range(reads):
                began = time.perf_counter()
                answer = client.query(POINT_READ, [3], mode=mode)
                assert answer.ok, answer.json
                latencies.append((time.perf_counter() - began) * 1000.0)
    threads = [threading.Thread(target=one_client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return latencies


def test_least_beats_random_on_a_cpu_starved_replica(stack, healed):
    """replica1's server gets 2% of one CPU: random keeps sending it half the reads, least
    sees the statements pile up there and sends them elsewhere."""
    replica1 = stack.node("replica1")
    with cpu_limited(replica1.process.pid, 2, f"sqlgate-test-{secrets.token_hex(4)}"):
        figures = {mode: timed_reads(stack, mode, clients=8, reads=60)
                   for mode in ("random", "least")}
    summary = {mode: round(p95(values), 2) for mode, values in figures.items()}
    print(f"p95 ms with replica1 starved: {summary}")
    assert summary["least"] < summary["random"], summary


def test_every_acknowledged_write_is_on_every_node(stack, healed):
    assert len(stack.ledger[LEDGER]) > 50  # the fault tests' writes (fewer on a loaded machine)
    stack.db.wait_for_replicas()
    for table, acknowledged in stack.ledger.items():
        for node in stack.db.nodes:
            present = {row["id"] for row in node.sql(f"SELECT id FROM {table}")}
            missing = acknowledged - present
            assert not missing, (f"{node.name} lacks {len(missing)} acknowledged rows of "
                                 f"{table}: {sorted(missing)[:20]}")
