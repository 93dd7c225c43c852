"""Interactive transactions over HTTP: one primary connection kept between requests.

Most tests go through the Gatekeeper, as a client would; the timeouts and caps need a Proxy of
their own with small settings.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pymysql
import pytest

from cluster.loopback.services import ServiceProcess
from cluster.waiting import wait_until
from services.contract import KEY_NAME_HEADER
from tests.conftest import Answer, http, proxy_service, scratch_tables

TRANSACTION_ID = re.compile(r"([A-Za-z0-9-]{1,63})\.([A-Za-z0-9_-]{24})")


@dataclass
class Client:
    """The HTTP API of one service (Gatekeeper or Proxy), with its headers."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)

    def post(self, path: str, body: dict | bytes = b"") -> Answer:
        return http(self.url + path, body, self.headers)

    def begin(self, **options) -> str:
        answer = self.post("/transactions", options or b"")
        assert answer.status == 201, answer.json
        return answer.json["transaction_id"]

    def query(self, sql: str, params: list | dict | None = None, tid: str | None = None,
              mode: str = "direct") -> Answer:
        body: dict = {"sql": sql, "mode": mode}
        if params is not None:
            body["params"] = params
        if tid is not None:
            body["transaction_id"] = tid
        return self.post("/query", body)

    def ok(self, sql: str, params: list | dict | None = None, tid: str | None = None,
           mode: str = "direct") -> Answer:
        answer = self.query(sql, params, tid, mode)
        assert answer.status == 200, (sql, answer.json)
        return answer

    def end(self, tid: str, action: str = "commit") -> Answer:
        return self.post(f"/transactions/{tid}/{action}")


@pytest.fixture
def api(gatekeeper, api_key) -> Client:
    return Client(gatekeeper.url, {"X-API-Key": api_key})


@pytest.fixture(scope="module")
def scratch(db_cluster) -> Iterator[Callable[..., str]]:
    with scratch_tables(db_cluster, "tx") as make:
        yield make


def ids_on(node, table: str) -> list[int]:
    return [row["id"] for row in node.sql(f"SELECT id FROM {table} ORDER BY id")]


def table_exists(db_cluster, table: str) -> bool:
    schema, name = table.split(".")
    return db_cluster.primary.sql(
        f"SELECT COUNT(*) AS n FROM information_schema.TABLES "
        f"WHERE TABLE_SCHEMA = '{schema}' AND TABLE_NAME = '{name}'")[0]["n"] == 1


# --- opening, using, ending --------------------------------------------------------------------

def test_open_use_and_commit(api, db_cluster, scratch):
    table = scratch()
    opened = api.post("/transactions")
    assert opened.status == 201, opened.json
    tid = opened.json["transaction_id"]
    assert TRANSACTION_ID.fullmatch(tid), tid
    assert opened.headers["Location"] == f"/transactions/{tid}"
    assert opened.json["node"] == "primary"
    inserted = api.ok(f"INSERT INTO {table} VALUES (?, ?)", [1, "one"], tid)
    assert inserted.json["transaction_id"] == tid and inserted.json["node"] == "primary"
    batch = api.post("/batch", {"transaction_id": tid, "statements": [
        {"sql": f"INSERT INTO {table} VALUES (:id, :v)", "params": {"id": 2, "v": "two"}},
        {"sql": f"SELECT id FROM {table} ORDER BY id"}]})
    assert batch.status == 200, batch.json
    assert batch.json["transaction_id"] == tid
    assert batch.json["results"][1]["rows"] == [[1], [2]]
    assert ids_on(db_cluster.primary, table) == []
    committed = api.end(tid)
    assert committed.status == 200, committed.json
    assert committed.json["status"] == "committed"
    assert committed.json["transaction_id"] == tid
    assert committed.json["statements"] == 3
    assert ids_on(db_cluster.primary, table) == [1, 2]


def row_is_locked(db_cluster, table: str) -> bool:
    """Whether another session's transaction holds a lock on row 1 (root asks without waiting)."""
    try:
        db_cluster.primary.sql(f"SELECT id FROM {table} WHERE id = 1 FOR UPDATE NOWAIT")
    except pymysql.err.OperationalError as error:
        assert error.args[0] == 1205, error  # lock wait timeout, at once with NOWAIT
        return True
    return False


def test_isolation_and_read_only_options(api, db_cluster, scratch):
    table = scratch()
    db_cluster.primary.sql(f"INSERT INTO {table} VALUES (1, 'read me')")
    # SERIALIZABLE turns a plain read into a locking one: the row stays locked until the end.
    serializable = api.begin(isolation="SERIALIZABLE", read_only=False)
    api.ok(f"SELECT v FROM {table} WHERE id = 1", tid=serializable)
    assert row_is_locked(db_cluster, table)
    api.ok(f"INSERT INTO {table} VALUES (2, 'written')", tid=serializable)
    assert api.end(serializable).status == 200
    assert not row_is_locked(db_cluster, table)
    # The default (REPEATABLE READ) reads without locking, on whichever pooled connection.
    for _ in range(3):
        default = api.begin()
        api.ok(f"SELECT v FROM {table} WHERE id = 1", tid=default)
        assert not row_is_locked(db_cluster, table)
        assert api.end(default, "rollback").status == 200
    read_only = api.begin(read_only=True)
    refused = api.query(f"INSERT INTO {table} VALUES (3, 'refused')", tid=read_only)
    assert refused.status == 400 and refused.json["mysql_errno"] == 1792, refused.json
    assert api.end(read_only, "rollback").json["status"] == "rolled back"
    assert ids_on(db_cluster.primary, table) == [1, 2]
    bad = api.post("/transactions", {"isolation": "CHAOS"})
    assert bad.status == 400 and "unknown isolation" in bad.json["error"]


def test_uncommitted_writes_are_private_until_commit(api, db_cluster, scratch):
    table = scratch()
    db_cluster.wait_for_replicas()
    tid = api.begin()
    api.ok(f"INSERT INTO {table} VALUES (?, ?)", [1, "mine"], tid)
    assert api.ok(f"SELECT v FROM {table} WHERE id = ?", [1], tid).json["rows"] == [["mine"]]
    outside = api.ok(f"SELECT v FROM {table} WHERE id = ?", [1], mode="direct")
    assert outside.json["node"] == "primary" and outside.json["rows"] == []
    assert db_cluster.primary.sql(f"SELECT v FROM {table}") == []
    assert api.end(tid).json["status"] == "committed"
    assert api.ok(f"SELECT v FROM {table} WHERE id = ?", [1]).json["rows"] == [["mine"]]
    assert db_cluster.primary.sql(f"SELECT v FROM {table}") == [{"v": "mine"}]
    db_cluster.wait_for_replicas()
    for replica in db_cluster.replicas:
        assert replica.sql(f"SELECT v FROM {table}") == [{"v": "mine"}], replica.name


def test_rollback_leaves_nothing(api, db_cluster, scratch):
    table = scratch()
    db_cluster.primary.sql(f"INSERT INTO {table} VALUES (1, 'before')")
    tid = api.begin()
    api.ok(f"INSERT INTO {table} VALUES (2, 'inside')", tid=tid)
    api.ok(f"UPDATE {table} SET v = 'changed' WHERE id = 1", tid=tid)
    api.ok(f"DELETE FROM {table} WHERE id = 1", tid=tid)
    rolled_back = api.end(tid, "rollback")
    assert rolled_back.status == 200, rolled_back.json
    assert rolled_back.json["status"] == "rolled back"
    db_cluster.wait_for_replicas()
    for node in db_cluster.nodes:
        assert node.sql(f"SELECT id, v FROM {table}") == [{"id": 1, "v": "before"}], node.name


# --- session statements inside -----------------------------------------------------------------

def test_user_variables_live_as_long_as_the_transaction(api):
    tid = api.begin()
    api.ok("SET @v = 5", tid=tid)
    assert api.ok("SELECT @v", tid=tid).json["rows"] == [[5]]
    assert api.end(tid).status == 200
    assert api.query("SET @v = 5").status == 400  # outside, it would leak: refused


def test_rollback_to_savepoint_undoes_only_what_followed(api, db_cluster, scratch):
    table = scratch()
    tid = api.begin()
    api.ok(f"INSERT INTO {table} VALUES (1, 'kept')", tid=tid)
    api.ok("SAVEPOINT a", tid=tid)
    api.ok(f"INSERT INTO {table} VALUES (2, 'undone')", tid=tid)
    assert api.ok(f"SELECT id FROM {table} ORDER BY id", tid=tid).json["rows"] == [[1], [2]]
    api.ok("ROLLBACK TO SAVEPOINT a", tid=tid)
    assert api.ok(f"SELECT id FROM {table} ORDER BY id", tid=tid).json["rows"] == [[1]]
    assert api.end(tid).status == 200
    assert ids_on(db_cluster.primary, table) == [1]


def test_a_named_lock_ends_with_the_transaction(api):
    lock = f"sqlgate_tx_lock_{uuid.uuid4().hex[:8]}"
    tid = api.begin()
    assert api.ok("SELECT GET_LOCK(?, 0)", [lock], tid).json["rows"] == [[1]]
    held = api.ok("SELECT IS_FREE_LOCK(?)", [lock])
    assert held.json["node"] == "primary" and held.json["rows"] == [[0]]
    assert api.end(tid).status == 200
    assert api.ok("SELECT IS_FREE_LOCK(?)", [lock]).json["rows"] == [[1]]


@pytest.mark.parametrize("sql", [
    "COMMIT", "BEGIN", "START TRANSACTION", "ROLLBACK", "CREATE TABLE {new} (id INT)",
    "LOCK TABLES {table} WRITE",
])
def test_statements_that_would_end_it_are_refused_and_it_goes_on(api, db_cluster, scratch, sql):
    table = scratch()
    new = f"sqlgate_test.tx_never_{uuid.uuid4().hex[:12]}"
    tid = api.begin()
    api.ok(f"INSERT INTO {table} VALUES (1, 'pending')", tid=tid)
    refused = api.query(sql.format(new=new, table=table), tid=tid)
    assert refused.status == 400, refused.json
    assert refused.json["error"]
    assert "mysql_errno" not in refused.json  # refused by the Proxy, not run
    # Still open, still uncommitted, still usable.
    assert db_cluster.primary.sql(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"] == 0
    api.ok(f"INSERT INTO {table} VALUES (2, 'after')", tid=tid)
    assert api.end(tid).json["status"] == "committed"
    assert ids_on(db_cluster.primary, table) == [1, 2]
    assert not table_exists(db_cluster, new)


# --- a batch inside ----------------------------------------------------------------------------

def test_a_failing_batch_inside_undoes_only_the_batch(api, db_cluster, scratch):
    table = scratch()
    tid = api.begin()
    api.ok(f"INSERT INTO {table} VALUES (1, 'before the batch')", tid=tid)
    failed = api.post("/batch", {"transaction_id": tid, "statements": [
        {"sql": f"INSERT INTO {table} VALUES (?, ?)", "params": [2, "in the batch"]},
        {"sql": f"UPDATE {table} SET v = 'batch' WHERE id = 1"},
        {"sql": f"INSERT INTO {table} VALUES (?, ?)", "params": [1, "duplicate"]},
    ]})
    assert failed.status == 409, failed.json
    assert failed.json["failed_statement"] == 2
    assert failed.json["rolled_back"] == "batch"
    assert failed.json["mysql_errno"] == 1062
    rows = api.ok(f"SELECT id, v FROM {table} ORDER BY id", tid=tid).json["rows"]
    assert rows == [[1, "before the batch"]]
    refused = api.post("/batch", {"transaction_id": tid, "statements": [
        {"sql": f"INSERT INTO {table} VALUES (3, 'never')"}, {"sql": "COMMIT"}]})
    assert refused.status == 400 and refused.json["failed_statement"] == 1, refused.json
    succeeded = api.post("/batch", {"transaction_id": tid, "statements": [
        {"sql": f"INSERT INTO {table} VALUES (?, ?)", "params": [4, "four"]},
        {"sql": f"SELECT COUNT(*) FROM {table}"}]})
    assert succeeded.status == 200, succeeded.json
    assert succeeded.json["results"][1]["rows"] == [[2]]
    assert db_cluster.primary.sql(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"] == 0
    assert api.end(tid).status == 200
    assert db_cluster.primary.sql(f"SELECT id, v FROM {table} ORDER BY id") == [
        {"id": 1, "v": "before the batch"}, {"id": 4, "v": "four"}]
    not_atomic = api.post("/batch", {"transaction_id": tid, "transaction": False,
                                     "statements": [{"sql": "SELECT 1"}]})
    assert not_atomic.status == 400


def test_a_batch_rolling_back_to_an_earlier_savepoint_answers_truthfully(api, scratch):
    table = scratch()
    tid = api.begin()
    api.ok(f"INSERT INTO {table} VALUES (1, 'before a')", tid=tid)
    api.ok("SAVEPOINT a", tid=tid)
    api.ok(f"INSERT INTO {table} VALUES (2, 'after a')", tid=tid)
    answer = api.post("/batch", {"transaction_id": tid, "statements": [
        {"sql": f"INSERT INTO {table} VALUES (3, 'in the batch')"},
        {"sql": "ROLLBACK TO SAVEPOINT a"}]})
    rows = api.ok(f"SELECT id FROM {table} ORDER BY id", tid=tid).json["rows"]
    api.end(tid, "rollback")
    if answer.status == 200:  # applied, and said so
        assert rows == [[1]]
    else:  # refused, and nothing of it applied
        assert "failed_statement" in answer.json, answer.json
        assert rows == [[1], [2]]
        assert "sqlgate_batch" not in answer.json["error"]


# --- ending, and ids ---------------------------------------------------------------------------

def test_an_ended_transaction_answers_409(api, scratch):
    table = scratch()
    tid = api.begin()
    assert api.end(tid).status == 200
    for action in ("commit", "rollback"):
        again = api.end(tid, action)
        assert again.status == 409, again.json
        assert "has ended" in again.json["error"] and "committed" in again.json["error"]
    used = api.query(f"SELECT * FROM {table}", tid=tid)
    assert used.status == 409 and "has ended" in used.json["error"]


def test_unknown_malformed_and_foreign_ids(api):
    real = api.begin()
    instance = real.split(".", 1)[0]
    made_up = f"{instance}.{secrets.token_urlsafe(18)}"
    assert TRANSACTION_ID.fullmatch(made_up) and made_up != real
    for answer in (api.query("SELECT 1", tid=made_up), api.end(made_up),
                   api.end(made_up, "rollback")):
        assert answer.status == 404, answer.json
        assert made_up in answer.json["error"]
    foreign = "other-proxy." + "A" * 24
    answer = api.query("SELECT 1", tid=foreign)
    assert answer.status == 404, answer.json
    assert "not held by this proxy" in answer.json["error"]
    for malformed in ("nope", f"{instance}.short", f"{instance}.{'A' * 25}", 42,
                      f"{instance}.{'A' * 23}!"):
        answer = api.query("SELECT 1", tid=malformed)
        assert answer.status == 400, (malformed, answer.json)
        assert "not a transaction id" in answer.json["error"]
    bad_path = api.end("not-an-id")
    assert bad_path.status == 400 and "not a transaction id" in bad_path.json["error"]
    assert api.ok("SELECT 1", tid=real).json["rows"] == [[1]]  # untouched by all that
    assert api.end(real, "rollback").status == 200


# --- one story, and concurrency ----------------------------------------------------------------

def test_a_transfer_through_the_gatekeeper(api, db_cluster, scratch):
    table = scratch("id INT PRIMARY KEY, balance DECIMAL(12,2) NOT NULL")
    db_cluster.primary.sql(f"INSERT INTO {table} VALUES (1, 100.00), (2, 50.00)")
    tid = api.begin(isolation="SERIALIZABLE")
    amount = {"type": "decimal", "value": "30.25"}
    source = api.ok(f"SELECT balance FROM {table} WHERE id = :id FOR UPDATE", {"id": 1}, tid)
    assert source.json["rows"] == [["100.00"]]
    debit = api.ok(f"UPDATE {table} SET balance = balance - :amount WHERE id = :id",
                   {"amount": amount, "id": 1}, tid)
    credit = api.ok(f"UPDATE {table} SET balance = balance + :amount WHERE id = :id",
                    {"amount": amount, "id": 2}, tid)
    assert debit.json["rowcount"] == credit.json["rowcount"] == 1
    assert db_cluster.primary.sql(f"SELECT balance FROM {table} WHERE id = 1")[0]["balance"] \
        == 100  # not yet
    assert api.end(tid).json["status"] == "committed"
    balances = api.ok(f"SELECT id, balance FROM {table} ORDER BY id").json["rows"]
    assert balances == [[1, "69.75"], [2, "80.25"]]
    total = db_cluster.primary.sql(f"SELECT SUM(balance) AS total FROM {table}")[0]["total"]
    assert str(total) == "150.00"


def test_concurrent_requests_on_one_transaction_are_serialised(api, db_cluster, scratch):
    table = scratch()
    tid = api.begin()
    start = threading.Barrier(2)
    answers: dict[int, Answer] = {}

    def insert(row_id: int) -> None:
        start.wait(5)
        answers[row_id] = api.query(f"INSERT INTO {table} SELECT ?, SLEEP(0.4)", [row_id], tid)

    threads = [threading.Thread(target=insert, args=(n,)) for n in (1, 2)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    elapsed = time.monotonic() - began
    assert sorted(answers) == [1, 2]
    for answer in answers.values():
        assert answer.status == 200, answer.json
        assert answer.json["transaction_id"] == tid and answer.json["rowcount"] == 1
    assert elapsed >= 0.75, elapsed  # one after the other on the one connection
    assert api.end(tid).json["statements"] == 2
    assert ids_on(db_cluster.primary, table) == [1, 2]


# --- timeouts and caps: a Proxy of its own -----------------------------------------------------

@pytest.fixture(scope="module")
def small_proxy(db_cluster, tmp_path_factory) -> Iterator[ServiceProcess]:
    service = proxy_service(db_cluster, tmp_path_factory.mktemp("logs") / "small-proxy.log",
                            PROXY_TRANSACTION_IDLE_TIMEOUT="1", PROXY_TRANSACTION_MAX_AGE="3",
                            PROXY_MAX_TRANSACTIONS="2", PROXY_POOL_MAX_SIZE="4")
    with service.running():
        yield service


def open_transactions(service: ServiceProcess) -> int:
    return service.health()[1]["open_transactions"]


@pytest.fixture
def small(small_proxy) -> Client:
    """The small Proxy, with no transaction left open by an earlier test."""
    wait_until(lambda: open_transactions(small_proxy) == 0, 10, "no open transactions")
    return Client(small_proxy.url)


def test_an_idle_transaction_is_rolled_back(small, small_proxy, db_cluster, scratch):
    table = scratch()
    tid = small.begin()
    last_used = time.monotonic()
    small.ok(f"INSERT INTO {table} VALUES (1, 'abandoned')", tid=tid)
    assert open_transactions(small_proxy) == 1
    wait_until(lambda: open_transactions(small_proxy) == 0, 5, "the idle transaction reaped")
    assert time.monotonic() - last_used >= 1.0  # not before the idle timeout
    assert ids_on(db_cluster.primary, table) == []
    for answer in (small.query(f"SELECT * FROM {table}", tid=tid), small.end(tid)):
        assert answer.status == 409, answer.json
        assert "idle" in answer.json["error"]


def test_a_busy_transaction_is_ended_at_its_max_age(small, small_proxy, db_cluster, scratch):
    table = scratch()
    began = time.monotonic()
    tid = small.begin()
    small.ok(f"INSERT INTO {table} VALUES (1, 'too old')", tid=tid)
    answers = []
    while time.monotonic() - began < 8:
        time.sleep(0.5)  # pacing: a statement every 0.5 s keeps it from being idle
        answer = small.query("SELECT 1", tid=tid)
        answers.append(answer.status)
        if answer.status != 200:
            break
    assert answers[-1] == 409, answer.json
    assert all(status == 200 for status in answers[:-1])
    assert "longer than" in answer.json["error"]
    assert time.monotonic() - began >= 3.0
    assert ids_on(db_cluster.primary, table) == []
    assert open_transactions(small_proxy) == 0


def test_open_transactions_are_capped_and_leave_room(small, small_proxy, db_cluster, scratch):
    table = scratch()
    # Three keys (one transaction each is their share here): the third meets the global cap.
    first, second = (Client(small.url, {KEY_NAME_HEADER: name}).begin() for name in "ab")
    began = time.monotonic()
    third = Client(small.url, {KEY_NAME_HEADER: "c"}).post("/transactions")
    assert time.monotonic() - began < 2
    assert third.status == 503, third.json
    assert "too many open transactions" in third.json["error"]
    assert third.headers["Retry-After"] == "1"
    # Ordinary requests still have connections: the pool holds more than the transactions.
    for n in range(3):
        assert small.ok("SELECT ?", [n], mode="direct").json["node"] == "primary"
    small.ok(f"INSERT INTO {table} VALUES (1, 'outside')")
    batch = small.post("/batch", {"statements": [{"sql": f"INSERT INTO {table} VALUES (2, 'b')"},
                                                 {"sql": "SELECT 1"}]})
    assert batch.status == 200, batch.json
    slow: list[Answer] = []
    threads = [threading.Thread(target=lambda: slow.append(small.query("SELECT SLEEP(0.2)")))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert [answer.status for answer in slow] == [200, 200], [a.json for a in slow]
    assert open_transactions(small_proxy) == 2
    assert small.end(first).status == 200
    replacement = Client(small.url, {KEY_NAME_HEADER: "c"}).post("/transactions")
    assert replacement.status == 201, replacement.json
    for tid in (second, replacement.json["transaction_id"]):
        assert small.end(tid, "rollback").status == 200
    assert ids_on(db_cluster.primary, table) == [1, 2]


# --- a statement the classifier cannot see into commits ----------------------------------------

@pytest.fixture(scope="module")
def committing_procedure(db_cluster) -> str:
    """A procedure that commits: CALL ends whatever transaction its caller had open."""
    name = "sqlgate_test.commits_inside"
    db_cluster.primary.sql(f"DROP PROCEDURE IF EXISTS {name}")
    db_cluster.primary.sql(f"CREATE PROCEDURE {name}() BEGIN COMMIT; END")
    db_cluster.wait_for_replicas()
    return name


def test_an_atomic_batch_committed_by_a_procedure_says_what_was_applied(
        api, db_cluster, scratch, committing_procedure):
    table = scratch()
    answer = api.post("/batch", {"statements": [
        {"sql": f"INSERT INTO {table} VALUES (1, 'before')"},
        {"sql": f"CALL {committing_procedure}()"},
        {"sql": f"INSERT INTO {table} VALUES (2, 'after')"}]})
    assert answer.status == 400, answer.json
    assert answer.json["failed_statement"] == 1
    assert answer.json["rolled_back"] is False
    assert "statements 0 to 1 were applied" in answer.json["error"]
    assert ids_on(db_cluster.primary, table) == [1]  # what the answer says, nothing more


def test_an_interactive_transaction_committed_by_a_procedure_says_so(
        api, db_cluster, scratch, committing_procedure):
    table = scratch()
    tid = api.begin()
    api.ok(f"INSERT INTO {table} VALUES (1, 'inside')", tid=tid)
    called = api.ok(f"CALL {committing_procedure}()", tid=tid)
    assert "committed implicitly" in called.json["transaction_ended"]
    assert ids_on(db_cluster.primary, table) == [1]
    late = api.end(tid, "rollback")
    assert late.status == 409 and "committed implicitly" in late.json["error"]
