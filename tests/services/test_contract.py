"""The HTTP contract, end to end: client -> Gatekeeper -> Proxy -> replicated MariaDB."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from cluster.loopback.services import PROJECT_ROOT
from tests.conftest import connection, http

REPLICAS = {"replica1", "replica2"}


@pytest.fixture(scope="module")
def scratch_table(db_cluster):
    db_cluster.primary.sql("CREATE TABLE IF NOT EXISTS sqlgate_test.items ("
                           "id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(64) UNIQUE, "
                           "price DECIMAL(10,2), created DATETIME, blob_col VARBINARY(16))")
    db_cluster.wait_for_replicas()
    return "sqlgate_test.items"


# --- the key -------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}])
def test_missing_or_wrong_key_is_401_and_nothing_runs(gatekeeper, db_cluster, scratch_table,
                                                      headers):
    name = f"unauthorised-{uuid.uuid4().hex[:8]}"
    answer = http(gatekeeper.url + "/query",
                  {"sql": f"INSERT INTO {scratch_table} (name) VALUES ('{name}')"}, headers)
    assert answer.status == 401
    assert "X-API-Key" in answer.json["error"]
    assert answer.headers["WWW-Authenticate"] == "X-API-Key"
    rows = db_cluster.primary.sql(f"SELECT COUNT(*) AS n FROM {scratch_table} WHERE name='{name}'")
    assert rows[0]["n"] == 0


def test_key_is_checked_before_the_body_is_read(gatekeeper):
    """An unauthorised client cannot make the Gatekeeper read (or buffer) a large body."""
    conn = connection(gatekeeper)
    conn.putrequest("POST", "/query")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", "1000000")
    conn.endheaders()  # headers only: the megabyte never comes
    answer = conn.getresponse()
    assert answer.status == 401
    assert "error" in json.loads(answer.read())
    conn.close()


# --- routing per mode ------------------------------------------------------------------------

def test_direct_reads_run_on_the_primary(query):
    answer = query("SELECT COUNT(*) FROM sakila.actor", "direct")
    assert answer.status == 200, answer.json
    assert answer.json["rows"] == [[200]]
    assert answer.json["columns"] == ["COUNT(*)"]
    assert (answer.json["node"], answer.json["node_role"]) == ("primary", "primary")
    assert answer.json["query_type"] == "read"


@pytest.mark.parametrize("mode", ["random", "ping"])
def test_balanced_reads_run_on_replicas(query, mode):
    nodes = set()
    for _ in range(30):
        answer = query("SELECT COUNT(*) FROM sakila.actor", mode)
        assert answer.status == 200, answer.json
        assert answer.json["rows"] == [[200]]
        assert answer.json["mode"] == mode
        nodes.add(answer.json["node"])
    assert nodes <= REPLICAS and nodes
    if mode == "random":
        assert nodes == REPLICAS  # 30 draws from two replicas: both show up


@pytest.mark.parametrize("mode", ["direct", "random", "ping"])
def test_writes_go_to_the_primary_and_reach_both_replicas(query, db_cluster, scratch_table,
                                                          mode):
    name = f"{mode}-{uuid.uuid4().hex[:8]}"
    answer = query(f"INSERT INTO {scratch_table} (name, price) VALUES ('{name}', 9.99)", mode)
    assert answer.status == 200, answer.json
    assert answer.json["query_type"] == "write"
    assert answer.json["node"] == "primary"
    assert answer.json["rowcount"] == 1
    assert answer.json["last_insert_id"] > 0
    db_cluster.wait_for_replicas()
    for replica in db_cluster.replicas:
        rows = replica.sql(f"SELECT id FROM {scratch_table} WHERE name = '{name}'")
        assert rows == [{"id": answer.json["last_insert_id"]}], replica.name


@pytest.mark.parametrize("sql", ["SELECT * FROM sakila.actor WHERE actor_id = 1 FOR UPDATE",
                                 "SELECT LAST_INSERT_ID()", "SELECT IS_FREE_LOCK('sqlgate')"])
def test_reads_that_belong_to_the_primary_stay_there(query, sql):
    answer = query(sql, "random")
    assert answer.status == 200, answer.json
    assert answer.json["node"] == "primary"
    assert answer.json["query_type"] == "write"


def test_replicas_refuse_writes_from_the_app_user(db_cluster):
    """The safety net behind the classifier: replicas are read-only for the app users."""
    import pymysql

    replica, user = db_cluster.replicas[0], db_cluster.app_users["write"]
    with replica.connect(user.name, user.password) as conn, \
            conn.cursor() as cursor, pytest.raises(pymysql.err.MySQLError) as error:
        cursor.execute("INSERT INTO sqlgate_test.items (name) VALUES ('on-a-replica')")
    assert error.value.args[0] == 1290  # --read-only


# --- answers ---------------------------------------------------------------------------------

def test_request_id_is_echoed_or_generated(query):
    given = query("SELECT 1", request_id="client-id-42")
    assert given.json["request_id"] == "client-id-42"
    assert given.headers["X-Request-Id"] == "client-id-42"
    generated = query("SELECT 1")
    assert len(generated.json["request_id"]) == 32
    assert generated.headers["X-Request-Id"] == generated.json["request_id"]
    assert generated.json["elapsed_ms"] > 0


def test_values_without_a_json_type_are_rendered_safely(query, scratch_table):
    name = f"typed-{uuid.uuid4().hex[:8]}"
    inserted = query(f"INSERT INTO {scratch_table} (name, price, created, blob_col) VALUES "
                     f"('{name}', 12345678.91, '2025-01-02 03:04:05', 0x00FF10)")
    assert inserted.status == 200, inserted.json
    answer = query(f"SELECT price, created, blob_col, CAST('12:34:56' AS TIME) AS t "
                   f"FROM {scratch_table} WHERE name = '{name}'")
    assert answer.json["rows"] == [["12345678.91", "2025-01-02T03:04:05", "0x00ff10", "12:34:56"]]


def test_large_results_are_capped_and_flagged(query):
    answer = query("SELECT payment_id FROM sakila.payment ORDER BY payment_id", "random")
    assert answer.status == 200
    assert answer.json["truncated"] is True
    assert len(answer.json["rows"]) == answer.json["rowcount"] == 100  # PROXY_MAX_ROWS
    assert answer.json["rows"][:3] == [[1], [2], [3]]
    small = query("SELECT actor_id FROM sakila.actor WHERE actor_id <= 5", "random")
    assert small.json["truncated"] is False and small.json["rowcount"] == 5


# --- errors: always JSON, never a 500 --------------------------------------------------------

@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "malformed JSON"),
    (b"\xff\xfe", "malformed JSON"),
    (b"[1, 2]", "JSON object"),
    (b"{}", "missing field 'sql'"),
    (b'{"sql": 42}', "'sql' must be a string"),
    (b'{"sql": "   "}', "'sql' is empty"),
    (b'{"sql": "SELECT 1", "mode": 3}', "'mode' must be a string"),
    (b'{"sql": "SELECT 1", "mode": "fastest"}', "unknown mode"),
    (b'{"sql": "SELECT 1", "request_id": 7}', "'request_id'"),
    (b'{"sql": "SELECT 1", "request_id": "bad id\\r\\nX: y"}', "'request_id'"),
    (b'{"sql": "SELECT 1", "mod": "direct"}', "unknown field"),
    (b'{"sql": "SELECT 1; SELECT 2"}', "one statement"),
    (b'{"sql": "-- nothing"}', "empty SQL"),
])
def test_bad_requests_get_400_with_a_json_error(gatekeeper, api_key, body, message):
    answer = http(gatekeeper.url + "/query", body, {"X-API-Key": api_key})
    assert answer.status == 400
    assert message in answer.json["error"]


def test_the_proxy_validates_too(proxy):
    answer = http(proxy.url + "/query", b'{"sql": "SELECT 1", "mode": "fastest"}')
    assert answer.status == 400
    assert answer.json["modes"] == ["direct", "least", "ping", "random"]


def test_oversized_body_is_refused(gatekeeper, api_key):
    sql = "SELECT '" + "x" * 5000 + "'"  # the test Gatekeeper caps bodies at 4096 bytes
    answer = http(gatekeeper.url + "/query", {"sql": sql}, {"X-API-Key": api_key})
    assert answer.status == 413
    assert "larger than 4096" in answer.json["error"]


def test_oversized_chunked_body_is_refused(gatekeeper, api_key):
    """No Content-Length to check up front: the cap holds while the chunks arrive."""
    conn = connection(gatekeeper)
    chunks = [b'{"sql": "SELECT \'', *([b"x" * 1000] * 6), b"'\"}"]
    conn.request("POST", "/query", body=iter(chunks), encode_chunked=True,
                 headers={"X-API-Key": api_key, "Content-Type": "application/json"})
    answer = conn.getresponse()
    assert answer.status == 413
    assert "larger than 4096" in json.loads(answer.read())["error"]
    conn.close()


def test_statements_too_deep_for_the_parser_stay_on_the_primary(proxy):
    sql = "SELECT " + "(" * 3000 + "1" + ")" * 3000
    answer = http(proxy.url + "/query", {"sql": sql, "mode": "random"})
    assert answer.status in (200, 400), answer.json  # MariaDB's own answer, never a 500
    assert answer.json.get("node", "primary") == "primary"
    assert answer.json.get("query_type", "write") == "write"


@pytest.mark.parametrize(("sql", "status", "errno"), [
    ("SELEC 1", 400, 1064),
    ("SELECT * FROM sakila.no_such_table", 400, 1146),
    ("SELECT no_such_column FROM sakila.actor", 400, 1054),
    ("INSERT INTO sakila.actor (actor_id, first_name, last_name) VALUES (1, 'A', 'B')", 409, 1062),
    ("DROP DATABASE mysql", 403, 1044),
])
def test_mysql_errors_carry_their_code(query, sql, status, errno):
    answer = query(sql, "random")
    assert answer.status == status, answer.json
    assert answer.json["mysql_errno"] == errno
    assert answer.json["error"]
    assert answer.json["request_id"] == answer.headers["X-Request-Id"]


def test_a_statement_over_the_time_limit_is_stopped(query, db_cluster):
    answer = query("SELECT SLEEP(30) AS slept_for_the_timeout_test", "direct")
    assert answer.status == 504
    assert "exceeded" in answer.json["error"]
    running = db_cluster.primary.sql(
        "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST "
        "WHERE INFO LIKE '%slept_for_the_timeout_test%' AND INFO NOT LIKE '%PROCESSLIST%'")
    assert running[0]["n"] == 0  # killed on the server, not just abandoned
    assert query("SELECT 1", "direct").status == 200


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/query", 405), ("GET", "/nowhere", 404), ("DELETE", "/health", 405)])
def test_unknown_routes_and_methods_answer_json(gatekeeper, api_key, method, path, status):
    answer = http(gatekeeper.url + path, None, {"X-API-Key": api_key}, method=method)
    assert answer.status == status
    assert answer.json["error"]


def test_health_reports_every_node(gatekeeper, proxy):
    status, proxy_health = proxy.health()
    assert status == 200 and proxy_health["status"] == "ok"
    assert {name: node["up"] for name, node in proxy_health["nodes"].items()} == {
        "primary": True, "replica1": True, "replica2": True}
    assert proxy_health["nodes"]["replica1"]["icmp_rtt_ms"] is not None
    status, gatekeeper_health = gatekeeper.health()
    # Public: whether it can serve, and nothing of the internal topology.
    assert (status, gatekeeper_health) == (200, {"service": "gatekeeper", "status": "ok"})


def test_the_gatekeeper_reuses_its_connections_to_the_proxy(query, proxy):
    """Forwarding over keep-alive: many requests, few connections (no TCP set-up per request):
    the pool's (earlier tests' concurrency may have left two), and the health checks' own."""
    import subprocess

    for _ in range(50):
        assert query("SELECT 1", "direct").status == 200
    listing = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{proxy.port} )"],
                             capture_output=True, text=True, check=True).stdout
    assert 2 <= len(listing.splitlines()) <= 3, listing


def test_the_gatekeeper_imports_no_database_code():
    """The public service knows the contract (modes, fields, tokens' shape) without the
    Proxy's driver, parser or pinger: a smaller attack surface and a lighter process."""
    code = ("import sys, services.gatekeeper.__main__; "
            "print(sorted(m for m in ('asyncmy', 'icmplib', 'sqlglot', 'services.proxy') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=PROJECT_ROOT)
    assert done.stdout.strip() == "[]"


def test_the_contract_names_every_routing_strategy():
    from services.contract import MODES
    from services.proxy.routing import STRATEGIES
    assert tuple(STRATEGIES) == MODES
