"""No session state survives a request: every pooled connection behaves as a new one.

Each statement that could leave state on a shared connection is sent through a real Proxy;
it must be refused (400, saying what to use instead) or made harmless (a reset follows it).
Then the session's fingerprint, taken through the Proxy on the pooled connections, must equal
the one a new connection has. With one pooled connection the next request certainly reuses
the same connection; with sixteen, many connections are dirtied and probed concurrently.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from cluster.loopback.services import ServiceProcess
from services.config import NodeAddress, ProxyConfig
from services.proxy import session
from services.proxy.pools import NodePool, SqlError
from services.statements import Statement
from tests.conftest import http, proxy_service

PROBE_LOCK = "sqlgate_probe_lock"
PROBE_TABLE = "sqlgate_test.session_probe_tmp"
# Everything a leaked statement could change, read in one statement on the primary.
FINGERPRINT = (
    "SELECT @@autocommit, @@character_set_client, @@character_set_connection, "
    "@@character_set_results, @@collation_connection, @@sql_mode, DATABASE(), "
    "@@foreign_key_checks, @@unique_checks, @@time_zone, @@tx_isolation, @@tx_read_only, "
    f"@sqlgate_probe, IS_FREE_LOCK('{PROBE_LOCK}'), @@in_transaction, @@last_insert_id")

# Statements whose purpose is session state: refused with a 400 that names the way instead.
REFUSED = [
    ("SET autocommit = 0", "POST /transactions"),
    ("SET sql_mode = ''", "transaction"),
    ("SET SESSION foreign_key_checks = 0", "transaction"),
    ("SET @@session.unique_checks = 0", "transaction"),
    ("SET time_zone = '+05:00'", "transaction"),
    ("SET @sqlgate_probe = 1", "transaction"),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "transaction"),
    ("SET NAMES latin1", "utf8mb4"),
    ("SET CHARACTER SET latin1", "utf8mb4"),
    ("USE sakila", "transaction"),
    ("LOCK TABLES sakila.actor WRITE", "transaction"),
    ("UNLOCK TABLES", "transaction"),
    (f"SELECT GET_LOCK('{PROBE_LOCK}', 0)", "transaction"),
    ("SELECT 1 INTO @sqlgate_probe", "transaction"),
    ("SELECT @sqlgate_probe := 1", "transaction"),
    ("HANDLER sakila.actor OPEN", "transaction"),
    ("PREPARE sqlgate_probe FROM 'SELECT 1'", "transaction"),
    ("EXECUTE sqlgate_probe", "transaction"),
    (f"CREATE TEMPORARY TABLE {PROBE_TABLE} (a INT)", "transaction"),
    ("BEGIN", "POST /transactions"),
    ("START TRANSACTION", "POST /transactions"),
    ("COMMIT", "POST /transactions"),
    ("XA START 'sqlgate_probe'", "POST /transactions"),
    ("SELECT 1 /*!, GET_LOCK('sqlgate_probe_lock', 0) */", "executable comments"),
    ("SELECT * FROM sakila.actor /*!50000 FOR UPDATE */", "executable comments"),
]
# Statements the classifier cannot see into: they run, and the connection is reset after.
HARMLESS = [
    f"DO GET_LOCK('{PROBE_LOCK}', 0)",
    "CALL sqlgate_test.leak_session_state()",
]


@pytest.fixture(scope="module")
def leaking_procedure(db_cluster):
    """A procedure that sets every kind of session state it can, as an application's might."""
    db_cluster.primary.sql("DROP PROCEDURE IF EXISTS sqlgate_test.leak_session_state")
    db_cluster.primary.sql(f"""
        CREATE PROCEDURE sqlgate_test.leak_session_state()
        BEGIN
            SET @sqlgate_probe = 42;
            SET SESSION sql_mode = '';
            SET SESSION foreign_key_checks = 0;
            SET SESSION time_zone = '+05:00';
            DO GET_LOCK('{PROBE_LOCK}', 0);
            CREATE TEMPORARY TABLE IF NOT EXISTS {PROBE_TABLE} (a INT);
        END""")
    db_cluster.primary.sql("DROP PROCEDURE IF EXISTS sqlgate_test.autocommit_off_insert")
    db_cluster.primary.sql("CREATE TABLE IF NOT EXISTS sqlgate_test.session_ledger ("
                           "id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(64) NOT NULL, "
                           "KEY (tag))")
    db_cluster.primary.sql("""
        CREATE PROCEDURE sqlgate_test.autocommit_off_insert(IN t VARCHAR(64))
        BEGIN
            SET autocommit = 0;
            INSERT INTO sqlgate_test.session_ledger (tag) VALUES (t);
        END""")
    db_cluster.wait_for_replicas()


@pytest.fixture(scope="module", params=[1, 16], ids=["pool1", "pool16"])
def pooled_proxy(request, db_cluster, leaking_procedure,
                 tmp_path_factory) -> Iterator[ServiceProcess]:
    size = request.param
    service = proxy_service(db_cluster, tmp_path_factory.mktemp("logs") / f"proxy-pool{size}.log",
                            PROXY_POOL_MAX_SIZE=str(size), PROXY_MAX_TRANSACTIONS=str(size // 2),
                            PROXY_MAX_STATEMENTS_PER_KEY=str(2 * size))  # the probes, at once
    service.pool_size = size
    with service.running():
        yield service


def send(proxy: ServiceProcess, sql: str, **extra):
    return http(proxy.url + "/query", {"sql": sql, "mode": "direct", **extra})


def fingerprint(proxy: ServiceProcess) -> list:
    answer = send(proxy, FINGERPRINT)
    assert answer.status == 200, answer.json
    return answer.json["rows"][0]


def assert_clean(proxy: ServiceProcess, fresh: list, probes: int) -> None:
    """``probes`` concurrent requests: each sees a new connection's session."""
    with ThreadPoolExecutor(max_workers=min(probes, 16)) as pool:
        prints = list(pool.map(lambda _: fingerprint(proxy), range(probes)))
        tables = list(pool.map(lambda _: send(proxy, f"SELECT COUNT(*) FROM {PROBE_TABLE}"),
                               range(probes)))
        others = list(pool.map(lambda _: send(proxy, "SELECT COUNT(*) FROM sakila.film"),
                               range(probes)))
    names = FINGERPRINT.removeprefix("SELECT ").split(", ")
    differences = {name: (want, got) for print_ in prints
                   for name, want, got in zip(names, fresh, print_, strict=True) if want != got}
    assert differences == {}, "fields differing from a new connection's (new, pooled)"
    # no temporary table survived, and no LOCK TABLES (another table would be refused: 1100)
    assert {answer.json.get("mysql_errno") for answer in tables} == {1146}
    assert all(answer.status == 200 for answer in others), [a.json for a in others]


@pytest.fixture
def fresh_fingerprint(db_cluster) -> list:
    """What a brand-new connection of the admin scope's user has (the scope ``http()`` asks
    the Proxy for), as the Proxy reports it."""
    node, user = db_cluster.primary, db_cluster.app_users["admin"]
    with node.connect(user.name, user.password, charset="utf8mb4") as conn, \
            conn.cursor() as cursor:
        cursor.execute(FINGERPRINT)
        row = list(cursor.fetchone())
    return [value.decode() if isinstance(value, bytes) else value for value in row]


@pytest.mark.parametrize(("sql", "advice"), REFUSED)
def test_session_statements_are_refused_and_leave_nothing(pooled_proxy, fresh_fingerprint,
                                                          sql, advice):
    probes = pooled_proxy.pool_size * 2
    with ThreadPoolExecutor(max_workers=probes) as pool:
        answers = list(pool.map(lambda _: send(pooled_proxy, sql), range(probes)))
    for answer in answers:
        assert answer.status == 400, answer.json
        assert advice in answer.json["error"]
    assert_clean(pooled_proxy, fresh_fingerprint, probes)


@pytest.mark.parametrize("sql", HARMLESS)
def test_statements_the_classifier_cannot_see_into_are_followed_by_a_reset(
        pooled_proxy, fresh_fingerprint, sql):
    probes = pooled_proxy.pool_size * 2
    with ThreadPoolExecutor(max_workers=probes) as pool:
        answers = list(pool.map(lambda _: send(pooled_proxy, sql), range(probes)))
    assert all(answer.status == 200 for answer in answers), [a.json for a in answers]
    assert_clean(pooled_proxy, fresh_fingerprint, probes)


def test_a_statement_that_leaves_a_transaction_open_is_not_acknowledged(
        pooled_proxy, db_cluster, fresh_fingerprint):
    """Autocommit turned off inside a procedure: the write is rolled back and the client told
    so, never acknowledged and then silently lost when the connection is reset."""
    tag = f"left-open-{uuid.uuid4().hex[:8]}"
    answer = send(pooled_proxy, "CALL sqlgate_test.autocommit_off_insert(?)", params=[tag])
    assert answer.status == 400, answer.json
    assert "rolled back" in answer.json["error"]
    rows = db_cluster.primary.sql(
        f"SELECT COUNT(*) AS n FROM sqlgate_test.session_ledger WHERE tag = '{tag}'")
    assert rows[0]["n"] == 0
    assert_clean(pooled_proxy, fresh_fingerprint, pooled_proxy.pool_size * 2)


def test_state_set_inside_a_transaction_ends_with_it(proxy, fresh_fingerprint):
    opened = http(proxy.url + "/transactions", b"")
    assert opened.status == 201, opened.json
    transaction_id = opened.json["transaction_id"]
    for sql in ("SET @sqlgate_probe = 7", "SET SESSION sql_mode = ''",
                "SET foreign_key_checks = 0", f"SELECT GET_LOCK('{PROBE_LOCK}', 0)",
                f"CREATE TEMPORARY TABLE {PROBE_TABLE} (a INT)", "USE sakila"):
        answer = send(proxy, sql, transaction_id=transaction_id)
        assert answer.status == 200, (sql, answer.json)
    inside = send(proxy, "SELECT @sqlgate_probe, DATABASE()", transaction_id=transaction_id)
    assert inside.json["rows"] == [[7, "sakila"]]
    ended = http(proxy.url + f"/transactions/{transaction_id}/rollback", b"")
    assert ended.status == 200, ended.json
    assert_clean(proxy, fresh_fingerprint, 32)


def test_the_server_refuses_a_second_statement_on_a_pooled_connection(db_cluster):
    """Multi-statements are off on every pooled connection: even text that got past the
    classifier could not carry a second statement."""
    user = db_cluster.app_users["admin"]
    config = ProxyConfig(db_user=user.name, db_password=user.password,
                         db_tls_ca=str(db_cluster.ca_file))
    address = NodeAddress("primary", "127.0.0.1", db_cluster.primary.port)

    async def attempt() -> tuple[int, bool]:
        pool = NodePool(address, "primary", config)
        try:
            with pytest.raises(SqlError) as error:
                await pool.execute(Statement.plain("SELECT 1; SELECT 2"), 10, scope="admin")
            result = await pool.execute(Statement.plain("SELECT 1;"), 10, scope="admin")
            return error.value.code, result.rows == [(1,)]
        finally:
            await pool.close()

    code, trailing_semicolon_ok = asyncio.run(attempt())
    assert code == 1064  # a syntax error: the server reads one statement only
    assert trailing_semicolon_ok


def test_a_reset_connection_is_a_new_connection(db_cluster, fresh_fingerprint):
    """The reset itself, on a connection dirtied with everything at once.

    All but USE: a reset keeps the default schema, so the pool closes a connection whose
    schema was changed (``test_state_set_inside_a_transaction_ends_with_it`` covers that).
    """
    import asyncmy

    async def dirty_then_reset() -> list:
        user = db_cluster.app_users["admin"]
        conn = await asyncmy.connect(host="127.0.0.1", port=db_cluster.primary.port,
                                     user=user.name, password=user.password, autocommit=True,
                                     charset="utf8mb4",
                                     ssl=ssl.create_default_context(
                                         cafile=str(db_cluster.ca_file)))
        try:
            await session.prepare(conn)
            async with conn.cursor() as cursor:
                for sql in ("SET autocommit = 0", "SET NAMES latin1", "SET sql_mode = ''",
                            "SET foreign_key_checks = 0", "SET unique_checks = 0",
                            "SET time_zone = '+05:00'", "SET @sqlgate_probe = 1",
                            f"SELECT GET_LOCK('{PROBE_LOCK}', 0)",
                            "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                            "SELECT LAST_INSERT_ID(99)",
                            f"CREATE TEMPORARY TABLE {PROBE_TABLE} (a INT)",
                            "SET SESSION TRANSACTION READ ONLY"):
                    await cursor.execute(sql)
                    await cursor.fetchall()
            await session.reset(conn, None)
            async with conn.cursor() as cursor:
                await cursor.execute(FINGERPRINT)
                row = list(await cursor.fetchone())
                with pytest.raises(asyncmy.errors.ProgrammingError):
                    await cursor.execute(f"SELECT * FROM {PROBE_TABLE}")
            return [value.decode() if isinstance(value, bytes) else value for value in row]
        finally:
            conn.close()

    assert asyncio.run(dirty_then_reset()) == fresh_fingerprint


def test_ledger_of_acknowledged_writes_survives_every_session_statement(db_cluster,
                                                                       leaking_procedure,
                                                                       tmp_path):
    """2,000 acknowledged inserts interleaved with every refused or harmless statement:
    every acknowledged row is on the primary and on both replicas, and no other row is."""
    service = proxy_service(db_cluster, tmp_path / "proxy.log", PROXY_POOL_MAX_SIZE="4",
                            PROXY_MAX_TRANSACTIONS="1",
                            PROXY_MAX_STATEMENTS_PER_KEY="8")  # its 8 clients, one key
    run = f"ledger-{uuid.uuid4().hex[:8]}"
    disturbances = [sql for sql, _ in REFUSED] + HARMLESS

    def client(worker: int) -> tuple[list[str], list]:
        acknowledged, unexpected = [], []
        for i in range(250):
            tag = f"{run}-{worker}-{i}"
            answer = send(service, "INSERT INTO sqlgate_test.session_ledger (tag) VALUES (?)",
                          params=[tag])
            if answer.status == 200 and answer.json["rowcount"] == 1:
                acknowledged.append(tag)
            else:
                unexpected.append((tag, answer.status, answer.json))
            disturbance = send(service, disturbances[(worker * 250 + i) % len(disturbances)])
            if disturbance.status not in (200, 400):
                unexpected.append((disturbance.status, disturbance.json))
        return acknowledged, unexpected

    with service.running(), ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(client, range(8)))
    acknowledged = {tag for tags, _ in outcomes for tag in tags}
    assert [problem for _, problems in outcomes for problem in problems] == []
    assert len(acknowledged) == 2000
    db_cluster.wait_for_replicas()
    for node in db_cluster.nodes:
        rows = node.sql(f"SELECT tag FROM sqlgate_test.session_ledger WHERE tag LIKE '{run}-%'")
        assert {row["tag"] for row in rows} == acknowledged, node.name
