"""Scopes: what a request may run is checked before anything runs, and again by the database.

A real Proxy (HTTPS, a database user per scope, TLS to MariaDB) is told each request's scope in
the header the Gatekeeper sends; every refusal must leave the data as it was, which is checked
on the primary as root.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pymysql
import pytest

from cluster.loopback.services import ServiceProcess
from services.config import NodeAddress, ProxyConfig, load_config
from services.contract import KEY_NAME_HEADER, SCOPE_HEADER
from services.errors import ApiError
from services.proxy.pools import NodePool, SqlError
from services.proxy.scopes import Caller, caller_from_headers
from services.statements import Statement
from tests.conftest import http, proxy_service, scratch_tables

TABLE_ACCESS_DENIED = 1142


@pytest.fixture(scope="module")
def scoped_proxy(db_cluster, tmp_path_factory) -> Iterator[ServiceProcess]:
    service = proxy_service(db_cluster, tmp_path_factory.mktemp("logs") / "proxy.log")
    with service.running():
        yield service


@pytest.fixture
def table(db_cluster) -> Iterator[str]:
    with scratch_tables(db_cluster, "scopes") as make:
        name = make()
        db_cluster.primary.sql(f"INSERT INTO {name} VALUES (1, 'one')")
        yield name


def send(proxy: ServiceProcess, sql: str, scope: str | None, path: str = "/query",
         key: str | None = "ci", **fields):
    headers = {KEY_NAME_HEADER: key} if key else {}
    return http(proxy.url + path, {"sql": sql, **fields} if path == "/query" else fields,
                headers, scope=scope)


def rows(db_cluster, table: str) -> list[tuple]:
    return [tuple(row.values()) for row in db_cluster.primary.sql(f"SELECT * FROM {table} "
                                                                 "ORDER BY id")]


def exists(db_cluster, table: str) -> bool:
    schema, name = table.split(".")
    return bool(db_cluster.primary.sql(
        f"SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{schema}' "
        f"AND TABLE_NAME = '{name}'"))


def test_drop_table_with_the_write_scope_is_403_and_the_table_stays(scoped_proxy, db_cluster,
                                                                    table):
    answer = send(scoped_proxy, f"DROP TABLE {table}", "write")
    assert answer.status == 403, answer.json
    assert answer.json["scope"] == "write" and answer.json["required_scope"] == "admin"
    assert "the key 'ci' has scope 'write'" in answer.json["error"]
    assert exists(db_cluster, table)
    assert rows(db_cluster, table) == [(1, "one")]


def test_an_insert_with_the_read_scope_is_403_and_nothing_is_written(scoped_proxy, db_cluster,
                                                                     table):
    answer = send(scoped_proxy, f"INSERT INTO {table} VALUES (2, 'two')", "read")
    assert answer.status == 403, answer.json
    assert answer.json["scope"] == "read"
    assert "scope 'read'" in answer.json["error"] and "writes" in answer.json["error"]
    assert rows(db_cluster, table) == [(1, "one")]


def test_without_the_header_a_request_has_the_read_scope(scoped_proxy, db_cluster, table):
    refused = send(scoped_proxy, f"DELETE FROM {table}", None, key=None)
    assert refused.status == 403, refused.json
    assert refused.json["scope"] == "read"
    assert "this request has scope 'read'" in refused.json["error"]
    read = send(scoped_proxy, f"SELECT v FROM {table}", None, key=None)
    assert read.status == 200 and read.json["rows"] == [["one"]]
    assert rows(db_cluster, table) == [(1, "one")]


@pytest.mark.parametrize("scope", ["Admin", "root", "", "read,admin"])
def test_a_bad_scope_header_is_400(scoped_proxy, scope):
    answer = send(scoped_proxy, "SELECT 1", scope)
    assert answer.status == 400, answer.json
    assert "X-Sqlgate-Scope" in answer.json["error"]
    assert answer.json["scopes"] == ["read", "write", "admin"]


def test_each_scope_runs_what_it_allows(scoped_proxy, db_cluster, table):
    assert send(scoped_proxy, f"SELECT COUNT(*) FROM {table}", "read").json["rows"] == [[1]]
    written = send(scoped_proxy, f"UPDATE {table} SET v = 'uno' WHERE id = 1", "write")
    assert written.status == 200 and written.json["rowcount"] == 1, written.json
    altered = send(scoped_proxy, f"ALTER TABLE {table} ADD COLUMN w INT", "admin")
    assert altered.status == 200, altered.json
    assert rows(db_cluster, table) == [(1, "uno", None)]


def test_a_read_scope_batch_with_a_write_runs_nothing(scoped_proxy, db_cluster, table):
    statements = [{"sql": f"SELECT COUNT(*) FROM {table}"},
                  {"sql": f"INSERT INTO {table} VALUES (3, 'three')"}]
    for transaction in (True, False):
        answer = send(scoped_proxy, "", "read", "/batch", statements=statements,
                      transaction=transaction)
        assert answer.status == 403, answer.json
        assert answer.json["scope"] == "read"
    independent = send(scoped_proxy, "", "read", "/batch", statements=statements[1:],
                       transaction=False)
    assert independent.json["failed_statement"] == 0
    assert "nothing was run" in independent.json["error"]
    assert rows(db_cluster, table) == [(1, "one")]


def test_reads_may_be_batched_one_by_one_but_atomic_batches_need_write(scoped_proxy, table):
    statements = [{"sql": f"SELECT COUNT(*) FROM {table}"}, {"sql": "SELECT 1"}]
    atomic = send(scoped_proxy, "", "read", "/batch", statements=statements)
    assert atomic.status == 403, atomic.json
    assert "'transaction': false" in atomic.json["error"]
    one_by_one = send(scoped_proxy, "", "read", "/batch", statements=statements,
                      transaction=False)
    assert one_by_one.status == 200, one_by_one.json
    assert [result["rows"] for result in one_by_one.json["results"]] == [[[1]], [[1]]]


def test_transactions_need_the_write_scope_and_keep_the_one_they_were_opened_with(
        scoped_proxy, db_cluster, table):
    refused = http(scoped_proxy.url + "/transactions", {}, scope="read")
    assert refused.status == 403 and refused.json["scope"] == "read", refused.json
    opened = http(scoped_proxy.url + "/transactions", {}, scope="write")
    assert opened.status == 201, opened.json
    tid = opened.json["transaction_id"]
    inserted = send(scoped_proxy, f"INSERT INTO {table} VALUES (2, 'two')", "write",
                    transaction_id=tid)
    assert inserted.status == 200, inserted.json
    # An admin request cannot do more inside a write transaction than the transaction may...
    temporary = send(scoped_proxy, "CREATE TEMPORARY TABLE sqlgate_test.scope_tmp (a INT)",
                     "admin", transaction_id=tid)
    assert temporary.status == 403, temporary.json
    assert temporary.json["scope"] == "write"
    # ...and a read request cannot write in it, nor end it.
    assert send(scoped_proxy, f"DELETE FROM {table}", "read",
                transaction_id=tid).status == 403
    batch = send(scoped_proxy, "", "read", "/batch", transaction_id=tid,
                 statements=[{"sql": f"DELETE FROM {table}"}])
    assert batch.status == 403, batch.json
    assert http(scoped_proxy.url + f"/transactions/{tid}/commit", b"",
                scope="read").status == 403
    committed = http(scoped_proxy.url + f"/transactions/{tid}/commit", b"", scope="write")
    assert committed.status == 200, committed.json
    assert rows(db_cluster, table) == [(1, "one"), (2, "two")]


def test_an_admin_transaction_may_use_what_admin_may(scoped_proxy):
    opened = http(scoped_proxy.url + "/transactions", {}, scope="admin")
    tid = opened.json["transaction_id"]
    try:
        made = send(scoped_proxy, "CREATE TEMPORARY TABLE sqlgate_test.scope_tmp (a INT)",
                    "admin", transaction_id=tid)
        assert made.status == 200, made.json
    finally:
        http(scoped_proxy.url + f"/transactions/{tid}/rollback", b"", scope="admin")


@pytest.mark.parametrize("sql", [
    "SHOW GRANTS", "SHOW GRANTS FOR CURRENT_USER()", "SHOW PROCESSLIST",
    "SHOW FULL PROCESSLIST", "SELECT * FROM information_schema.PROCESSLIST",
    "SELECT INFO FROM INFORMATION_SCHEMA.processlist WHERE ID <> CONNECTION_ID()",
    "KILL 1", "KILL QUERY 1",
])
def test_other_clients_sessions_and_the_account_are_never_shown(scoped_proxy, sql):
    """Clients of one scope share its database user, which sees its own sessions."""
    answer = send(scoped_proxy, sql, "admin")
    assert answer.status == 403, answer.json
    assert "not available through sqlgate" in answer.json["error"]


def test_the_database_refuses_what_a_scope_user_may_not_do(db_cluster, table):
    """The classification bypassed: each scope's user, connected directly (over TLS, as the
    users require), gets no more than its scope."""
    read, write = db_cluster.app_users["read"], db_cluster.app_users["write"]
    with db_cluster.primary.connect(read.name, read.password) as conn, conn.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {table}")
        assert cursor.fetchone() == (1,)
        with pytest.raises(pymysql.err.OperationalError) as error:
            cursor.execute(f"INSERT INTO {table} VALUES (2, 'two')")
        assert error.value.args[0] == TABLE_ACCESS_DENIED
    with db_cluster.primary.connect(write.name, write.password) as conn, conn.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} VALUES (2, 'two')")
        for ddl in (f"DROP TABLE {table}", f"ALTER TABLE {table} ADD COLUMN w INT",
                    f"TRUNCATE TABLE {table}"):
            with pytest.raises(pymysql.err.OperationalError) as error:
                cursor.execute(ddl)
            assert error.value.args[0] == TABLE_ACCESS_DENIED, ddl
    assert rows(db_cluster, table) == [(1, "one"), (2, "two")]


def test_the_proxy_runs_each_scope_as_its_own_database_user(db_cluster, table):
    """The Proxy's pools, past its classifier: an INSERT sent on the read scope's pool is
    refused by the server, on the write scope's pool it runs."""
    config = ProxyConfig(
        db_tls_ca=str(db_cluster.ca_file),
        **{f"db_{scope}_{part}": getattr(user, attr)
           for scope, user in db_cluster.app_users.items()
           for part, attr in (("user", "name"), ("password", "password"))})
    pool = NodePool(NodeAddress("primary", "127.0.0.1", db_cluster.primary.port), "primary",
                    config)
    insert = Statement.plain(f"INSERT INTO {table} VALUES (2, 'two')")

    async def attempt() -> tuple[int, int, str]:
        try:
            with pytest.raises(SqlError) as refused:
                await pool.execute(insert, 10, scope="read")
            done = await pool.execute(insert, 10, scope="write")
            who = await pool.execute(Statement.plain("SELECT CURRENT_USER()"), 10, scope="read")
            return refused.value.code, done.rowcount, who.rows[0][0]
        finally:
            await pool.close()

    code, rowcount, user = asyncio.run(attempt())
    assert (code, rowcount) == (TABLE_ACCESS_DENIED, 1)
    assert user.startswith(db_cluster.app_users["read"].name + "@")
    assert rows(db_cluster, table) == [(1, "one"), (2, "two")]


def test_a_scope_refusal_is_logged_with_the_key_and_request_id(scoped_proxy, table):
    answer = send(scoped_proxy, f"DELETE FROM {table}", "read", key="audit-probe",
                  request_id="scope-log-probe-1")
    assert answer.status == 403
    log = scoped_proxy.log_path.read_text()
    assert any("scope-log-probe-1" in line and "key=audit-probe" in line and "403" in line
               for line in log.splitlines()), log[-2000:]


def test_the_default_scope_is_read_and_scope_users_fall_back_to_db_user():
    config = load_config(ProxyConfig, [], {"PROXY_DB_USER": "dev", "PROXY_DB_PASSWORD": "pw",
                                           "PROXY_DB_WRITE_USER": "app_write",
                                           "PROXY_DB_WRITE_PASSWORD": "wpw",
                                           "PROXY_DB_ADMIN_USER": "app_admin"})
    assert config.default_scope == "read"
    assert config.max_result_bytes == 8 * 1024 * 1024
    assert config.db_credentials("read") == ("dev", "pw")
    assert config.db_credentials("write") == ("app_write", "wpw")
    assert config.db_credentials("admin") == ("app_admin", "pw")
    assert config.db_credentials("monitor") == ("dev", "pw")


@pytest.mark.parametrize(("settings", "message"), [
    ({"PROXY_DEFAULT_SCOPE": "root"}, "PROXY_DEFAULT_SCOPE"),
    ({"PROXY_MAX_RESULT_BYTES": "0"}, "PROXY_MAX_RESULT_BYTES"),
    ({"PROXY_TLS_CERT": "/etc/proxy.crt"}, "PROXY_TLS_KEY"),
    ({"PROXY_TLS_CLIENT_CA": "/etc/ca.crt"}, "PROXY_TLS_CERT"),
])
def test_bad_security_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        load_config(ProxyConfig, [], settings)


def test_callers_scopes_order_and_limits():
    read, write, admin = Caller("read"), Caller("write", "ci"), Caller("admin")
    assert read.allows("read") and not read.allows("write")
    assert admin.allows("write") and write.allows("read") and not write.allows("admin")
    assert admin.within("write").scope == "write"  # a write transaction limits an admin key
    assert read.within("admin").scope == "read"  # and never lifts a read one
    assert write.within("read").key == "ci"
    with pytest.raises(ApiError) as refused:
        read.check_transaction("interactive transactions")
    assert (refused.value.status, refused.value.details["scope"]) == (403, "read")


@pytest.mark.parametrize("headers", [{SCOPE_HEADER: "ADMIN"}, {SCOPE_HEADER: " read"},
                                     {KEY_NAME_HEADER: "it's"}, {KEY_NAME_HEADER: ""},
                                     {KEY_NAME_HEADER: "x" * 129}])
def test_bad_scope_headers_are_400(headers):
    with pytest.raises(ApiError) as error:
        caller_from_headers(headers, "read")
    assert error.value.status == 400


def test_headers_give_the_caller():
    assert caller_from_headers({}, "read") == Caller("read")
    assert caller_from_headers({SCOPE_HEADER: "write", KEY_NAME_HEADER: "ci runner"},
                               "read") == Caller("write", "ci runner")
