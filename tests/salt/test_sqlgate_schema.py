"""The ``sqlgate_schema.loaded`` state (salt/_states/sqlgate_schema.py): loaded on its own over the
real ``sqlgate_db`` module with a scripted client, and through ``salt-call state.single`` against
the loopback MariaDB primary. What matters: the files (Sakila's begins with DROP SCHEMA) never
run against a schema with a table, nor when that could not be checked."""

from __future__ import annotations

from pathlib import Path

import pymysql
import pytest

from tests.salt.fakedb import FakeClient
from tests.salt.saltcall import MINION, load_salt_module

COUNT = "SELECT (SELECT COUNT(*) FROM information_schema.schemata"


def states(client: FakeClient, test: bool = False):
    db = load_salt_module("modules", "sqlgate_db", {"cmd.run_all": client.run_all})
    salt = {f"sqlgate_db.{name}": getattr(db, name)
            for name in ("schema_state", "execute", "sql_literal")}
    return load_salt_module("states", "sqlgate_schema", salt, {"test": test})


def sql_files(directory: Path) -> list[str]:
    schema, data = directory / "schema.sql", directory / "data.sql"
    schema.write_text("DROP SCHEMA IF EXISTS demo;\nCREATE SCHEMA demo;\n"
                      "CREATE TABLE demo.t (id INT PRIMARY KEY);\n")
    data.write_text("INSERT INTO demo.t VALUES (1);\n")
    return [str(schema), str(data)]


class Server:
    """A scripted client: the schema's counts before and after a load, and what was loaded."""

    def __init__(self, before: str, after: str = "1\t1\n", count_fails: bool = False) -> None:
        self.client = FakeClient()
        self.before, self.after, self.count_fails = before, after, count_fails
        self.loaded: list[str] = []
        self.client.on_run = self.run

    def run(self, sql: str) -> None:
        client = self.client
        if sql.startswith(COUNT):
            client.answer = self.after if self.loaded else self.before
            client.retcode = 1 if self.count_fails else 0
            client.stderr = "ERROR 1040 (HY000): Too many connections" if self.count_fails else ""
        else:
            self.loaded.append(sql)
            client.answer, client.retcode, client.stderr = "NULL\n", 0, ""


def test_a_schema_with_a_table_is_left_alone(tmp_path):
    server = Server(before="1\t3\n")
    ret = states(server.client).loaded("demo", sql_files(tmp_path), client="mariadb")
    assert (ret["result"], ret["changes"]) == (True, {}), ret
    assert "has tables: nothing loaded" in ret["comment"]
    assert server.loaded == []


@pytest.mark.parametrize("server", [
    Server(before="", count_fails=True),   # busy, down: the client failed
    Server(before="1\n"),                  # an answer that is not the two counts
    Server(before="1\tNULL\n"),
], ids=["error", "short", "null"])
def test_a_failed_check_loads_nothing_and_fails(tmp_path, server):
    ret = states(server.client).loaded("demo", sql_files(tmp_path), client="mariadb")
    assert ret["result"] is False and ret["changes"] == {}
    assert "Could not tell whether schema demo is empty (unknown" in ret["comment"]
    assert "nothing loaded" in ret["comment"]
    assert server.loaded == []


@pytest.mark.parametrize("before", ["0\t0\n", "1\t0\n"], ids=["absent", "empty"])
def test_an_absent_or_empty_schema_is_loaded_behind_the_guard(tmp_path, before):
    server = Server(before=before)
    files = sql_files(tmp_path)
    ret = states(server.client).loaded("demo", files, client="mariadb")
    assert ret["result"] is True and ret["changes"] == {"loaded": files}, ret
    schema_sql, data_sql = server.loaded
    guard, rest = schema_sql.split("\n", 1)
    assert guard.startswith("SELECT (SELECT 1 FROM information_schema.tables "
                            "WHERE table_schema = 'demo' UNION ALL ")
    assert rest == Path(files[0]).read_text()  # the guard runs first, in the same session
    assert data_sql == Path(files[1]).read_text()


def test_test_mode_loads_nothing(tmp_path):
    server = Server(before="1\t0\n")
    ret = states(server.client, test=True).loaded("demo", sql_files(tmp_path))
    assert ret["result"] is None and ret["changes"]["loaded"]
    assert server.loaded == []


def test_a_table_that_appeared_after_the_check_stops_the_load(tmp_path):
    server = Server(before="1\t0\n")

    def guard_fails(sql: str) -> None:
        server.run(sql)
        if "sqlgate_empty_schema_guard" in sql:
            server.client.retcode = 1
            server.client.stderr = "ERROR 1242 (21000) at line 1: Subquery returns more than 1 row"
    server.client.on_run = guard_fails
    ret = states(server.client).loaded("demo", sql_files(tmp_path), client="mariadb")
    assert ret["result"] is False and ret["changes"] == {}
    assert "the guard found a table there by now" in ret["comment"]
    assert len(server.loaded) == 1  # the data file never ran


def test_a_missing_file_is_a_failure(tmp_path):
    server = Server(before="1\t0\n")
    ret = states(server.client).loaded("demo", [str(tmp_path / "missing.sql")])
    assert ret["result"] is False and "Cannot read" in ret["comment"]
    assert server.loaded == []


# --- the real thing: the guard and the state on the loopback MariaDB primary --------------------

def test_the_guard_fails_exactly_when_the_schema_has_a_table(db_cluster):
    primary = db_cluster.primary
    guard = states(FakeClient()).empty_schema_guard("sqlgate_salt_guard")
    primary.sql("DROP DATABASE IF EXISTS sqlgate_salt_guard")
    try:
        primary.sql(guard)  # absent: passes
        primary.sql("CREATE DATABASE sqlgate_salt_guard")
        primary.sql(guard)  # empty: passes
        primary.sql("CREATE TABLE sqlgate_salt_guard.one (id INT PRIMARY KEY)")
        with pytest.raises(pymysql.err.OperationalError) as failed:
            primary.sql(guard)
        assert failed.value.args[0] == 1242
    finally:
        primary.sql("DROP DATABASE IF EXISTS sqlgate_salt_guard")


def test_the_state_on_a_real_primary(salt_call, db_cluster, tmp_path):
    primary = db_cluster.primary
    schema = "sqlgate_salt_load"
    schema_sql, data_sql = tmp_path / "schema.sql", tmp_path / "data.sql"
    schema_sql.write_text(f"DROP SCHEMA IF EXISTS {schema};\nCREATE SCHEMA {schema};\n"
                          f"CREATE TABLE {schema}.t (id INT PRIMARY KEY);\n")
    data_sql.write_text(f"INSERT INTO {schema}.t VALUES (1), (2);\n")
    tmp_path.chmod(0o755)  # the minion reads them as whoever runs the tests

    def load(socket: Path = primary.socket, failing: bool = False) -> dict:
        answer = salt_call.run(MINION, "state.single", "sqlgate_schema.loaded",
                               f"name={schema}", f"files=[{schema_sql}, {data_sql}]",
                               f"socket={socket}", "client=mariadb", failing=failing)
        (ret,) = answer.values()
        return ret

    primary.sql(f"DROP DATABASE IF EXISTS {schema}")
    try:
        # Data there already: one table, one row that the files would drop.
        primary.sql(f"CREATE DATABASE {schema}")
        primary.sql(f"CREATE TABLE {schema}.kept (id INT PRIMARY KEY)")
        primary.sql(f"INSERT INTO {schema}.kept VALUES (7)")
        ret = load()
        assert (ret["result"], ret["changes"]) == (True, {}), ret
        assert primary.sql(f"SELECT id FROM {schema}.kept") == [{"id": 7}]

        # A server that cannot be asked: nothing runs, the state fails.
        ret = load(primary.socket.with_name("no-server.sock"), failing=True)
        assert ret["result"] is False and "nothing loaded" in ret["comment"], ret
        assert primary.sql(f"SELECT id FROM {schema}.kept") == [{"id": 7}]

        # Empty: loaded, once.
        primary.sql(f"DROP TABLE {schema}.kept")
        ret = load()
        assert ret["result"] is True and ret["changes"] == {
            "loaded": [str(schema_sql), str(data_sql)]}, ret
        assert primary.sql(f"SELECT id FROM {schema}.t ORDER BY id") == [{"id": 1}, {"id": 2}]
        ret = load()
        assert (ret["result"], ret["changes"]) == (True, {}), ret
    finally:
        primary.sql(f"DROP DATABASE IF EXISTS {schema}")
    db_cluster.wait_for_replicas()
