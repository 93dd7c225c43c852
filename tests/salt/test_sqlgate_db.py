"""The ``sqlgate_db`` execution module (salt/_modules/sqlgate_db.py): loaded on its own with
fake Salt dunders answering recorded client outputs, and through ``salt-call`` against the
loopback MariaDB replicas."""

from __future__ import annotations

import pytest
from salt.exceptions import CommandExecutionError

from tests.salt.fakedb import FakeClient, recorded
from tests.salt.saltcall import MINION, load_salt_module

SIX = ("Replica_IO_Running", "Replica_SQL_Running", "Seconds_Behind_Source", "Source_Host",
       "Source_Port", "Source_User")


def sqlgate_db(client: FakeClient):
    return load_salt_module("modules", "sqlgate_db", {"cmd.run_all": client.run_all})


@pytest.mark.parametrize(("recording", "expected"), [
    ("mariadb-10.11-running.txt", ("Yes", "Yes", "0", "127.0.0.1", "38835", "repl")),
    ("mariadb-10.11-stopped.txt", ("No", "No", "NULL", "127.0.0.1", "38835", "repl")),
    ("mariadb-10.11-connecting.txt", ("Connecting", "Yes", "NULL", "127.0.0.1", "38835",
                                      "repl")),
    ("mysql-8.0-running.txt", ("Yes", "Yes", "0", "192.168.21.165", "3306", "repl")),
])
def test_replica_status_has_mysql_8_names_on_both_flavours(recording, expected):
    module = sqlgate_db(FakeClient(status=recorded(recording.removesuffix(".txt"))))
    status = module.replica_status(client="mariadb", socket="/run/mysqld/mysqld.sock")
    assert tuple(status[name] for name in SIX) == expected
    words = {word for name in status for word in name.split("_")}
    assert not words & {"Slave", "Master", "master"}, sorted(status)


def test_mariadb_names_are_renamed_word_by_word():
    status = sqlgate_db(FakeClient(status=recorded("mariadb-10.11-running"))).replica_status()
    assert status["Replica_IO_State"] == "Waiting for master to send event"  # values stay
    assert status["Relay_Source_Log_File"] == "mysql-bin.000001"
    assert status["Read_Source_Log_Pos"] == "4686068"
    assert status["Source_SSL_Verify_Server_Cert"] == "No"
    assert status["Gtid_IO_Pos"] == "0-1-66" and status["Last_IO_Error"] == ""
    assert status["Replica_SQL_Running_State"].startswith("Slave has read all relay log")


def test_a_server_that_is_no_replica_has_an_empty_status():
    assert recorded("mariadb-10.11-primary") == ""
    assert sqlgate_db(FakeClient(status="")).replica_status() == {}


def test_long_gtid_sets_over_several_lines_are_one_value():
    text = recorded("mysql-8.0-running").replace(
        "Executed_Gtid_Set: d84f56fa-12eb-11f1-936e-08002719c604:1-2",
        "Executed_Gtid_Set: d84f56fa-12eb-11f1-936e-08002719c604:1-2,\n"
        "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5")
    status = sqlgate_db(FakeClient(status=text)).replica_status()
    assert status["Executed_Gtid_Set"] == ("d84f56fa-12eb-11f1-936e-08002719c604:1-2,"
                                           "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5")
    assert status["Auto_Position"] == "1"


def test_the_client_runs_without_a_shell_with_the_sql_on_stdin():
    client = FakeClient(status=recorded("mysql-8.0-running"))
    sqlgate_db(client).replica_status(client="mysql", socket="/tmp/my.sock")
    (call,) = client.calls
    assert call.argv == ["mysql", "--socket=/tmp/my.sock", "--batch", "--vertical"]
    assert call.stdin == "SHOW REPLICA STATUS"
    assert call.kwargs["python_shell"] is False
    assert call.kwargs["rstrip"] is False  # a row's empty last cell is kept


def test_the_client_is_mariadb_when_installed_else_mysql(monkeypatch):
    import salt.utils.path

    client = FakeClient()
    module = sqlgate_db(client)
    monkeypatch.setattr(salt.utils.path, "which", lambda name: None if name == "mariadb"
                        else f"/usr/bin/{name}")
    module.replica_status()
    monkeypatch.setattr(salt.utils.path, "which", lambda name: f"/usr/bin/{name}")
    module.replica_status()
    assert [call.argv[0] for call in client.calls] == ["mysql", "mariadb"]
    assert client.calls[0].argv[1] == "--socket=/run/mysqld/mysqld.sock"
    monkeypatch.setattr(salt.utils.path, "which", lambda name: None)
    with pytest.raises(CommandExecutionError, match="no database client"):
        module.replica_status()


def test_a_server_that_does_not_answer_is_an_error():
    client = FakeClient(status="")
    client.run_all = lambda cmd, stdin=None, **kw: {
        "retcode": 1, "stdout": "", "stderr": "ERROR 2002 (HY000): Can't connect"}
    with pytest.raises(CommandExecutionError, match="Can't connect"):
        sqlgate_db(client).replica_status(client="mariadb")


def test_table_exists_asks_information_schema_with_quoted_names():
    client = FakeClient(answer="1\n")
    module = sqlgate_db(client)
    assert module.table_exists("sqlgate", "heartbeat", client="mariadb") is True
    assert "table_schema = 'sqlgate' AND table_name = 'heartbeat'" in client.statements[0]
    client.answer = "0\n"
    assert module.table_exists("it's", "heart\\beat", client="mariadb") is False
    assert "'it\\'s'" in client.statements[1] and "'heart\\\\beat'" in client.statements[1]
    client.retcode, client.stderr = 1, "ERROR 2002"
    assert module.table_exists("sqlgate", "heartbeat", client="mariadb") is False


def test_schema_state_is_empty_or_absent_only_when_the_server_said_so():
    client = FakeClient(answer="1\t0\n")
    module = sqlgate_db(client)
    assert module.schema_state("sakila", client="mariadb") == "empty"
    assert "schema_name = 'sakila'" in client.statements[0]
    assert "table_schema = 'sakila'" in client.statements[0]
    client.answer = "0\t0\n"
    assert module.schema_state("sakila", client="mariadb") == "absent"
    assert module.schema_tables("sakila", client="mariadb") is None
    client.answer = "1\t23\n"
    assert module.schema_state("sakila", client="mariadb") == "not empty"
    assert module.schema_tables("sakila", client="mariadb") == 23
    # Anything but the two counts is no answer: not "empty".
    for answer in ("", "1\n", "1\tNULL\n", "1\t0\n1\t0\n", "Warning\t0\n"):
        client.answer = answer
        assert module.schema_state("sakila", client="mariadb") == "unknown", answer
    client.retcode, client.stderr = 1, "ERROR 2002 (HY000): Can't connect"
    assert module.schema_state("sakila", client="mariadb") == "unknown"
    with pytest.raises(CommandExecutionError, match="Can't connect"):
        module.schema_tables("sakila", client="mariadb")


def test_account_reads_the_mysql_user_row_or_nothing():
    client = FakeClient(answer="mysql_native_password\t*ABC\tANY\t60\n")
    module = sqlgate_db(client)
    assert module.account("app_read", "%", fields=["max_user_connections"],
                          client="mariadb") == {
        "plugin": "mysql_native_password", "authentication_string": "*ABC", "ssl_type": "ANY",
        "max_user_connections": "60"}
    assert client.statements[0] == (
        "SELECT plugin, authentication_string, ssl_type, max_user_connections FROM mysql.user "
        "WHERE User = 'app_read' AND Host = '%'")
    client.answer = ""
    assert module.account("it's", "%", client="mariadb") == {}
    assert "User = 'it\\'s'" in client.statements[1]
    with pytest.raises(CommandExecutionError, match="not column names"):
        module.account("app_read", fields=["x FROM y; --"], client="mariadb")


def test_query_rows_undo_the_batch_escapes():
    client = FakeClient(answer="1\ta\\tb\n2\tline\\none\\\\\n")
    rows = sqlgate_db(client).query("SELECT 1", database="sakila", client="mariadb")
    assert rows == [["1", "a\tb"], ["2", "line\none\\"]]
    assert client.calls[0].argv[-2:] == ["--skip-column-names", "sakila"]


# --- the real thing: Salt's loader, cmd.run_all and the loopback MariaDB replicas -------------

def test_replica_status_of_real_mariadb_replicas(salt_call, db_cluster):
    port = str(db_cluster.primary.port)
    for replica in db_cluster.replicas:
        status = salt_call.run(MINION, "sqlgate_db.replica_status",
                               f"socket={replica.socket}")
        assert status["Replica_SQL_Running"] == "Yes", status
        assert status["Replica_IO_Running"] in ("Yes", "Connecting"), status
        assert (status["Source_Host"], status["Source_Port"], status["Source_User"]) == \
            ("127.0.0.1", port, "repl")
        assert status["Seconds_Behind_Source"].isdigit(), status
    primary = salt_call.run(MINION, "sqlgate_db.replica_status",
                            f"socket={db_cluster.primary.socket}")
    assert primary == {}


def test_table_checks_on_a_real_mariadb(salt_call, db_cluster):
    socket = f"socket={db_cluster.primary.socket}"
    assert salt_call.run(MINION, "sqlgate_db.table_exists", "sqlgate", "heartbeat",
                         socket) is True
    assert salt_call.run(MINION, "sqlgate_db.table_exists", "sqlgate", "nothing",
                         socket) is False
    assert salt_call.run(MINION, "sqlgate_db.query", "SELECT @@server_id, 'a b'",
                         socket) == [["1", "a b"]]


def test_schema_state_of_a_real_mariadb(salt_call, db_cluster):
    primary = db_cluster.primary
    socket = f"socket={primary.socket}"
    schema = "sqlgate_salt_schema_state"
    primary.sql(f"DROP DATABASE IF EXISTS {schema}")
    try:
        assert salt_call.run(MINION, "sqlgate_db.schema_state", schema, socket) == "absent"
        primary.sql(f"CREATE DATABASE {schema}")
        assert salt_call.run(MINION, "sqlgate_db.schema_state", schema, socket) == "empty"
        primary.sql(f"CREATE TABLE {schema}.one (id INT PRIMARY KEY)")
        assert salt_call.run(MINION, "sqlgate_db.schema_state", schema, socket) == "not empty"
        assert salt_call.run(MINION, "sqlgate_db.schema_state", "sakila", socket) == "not empty"
    finally:
        primary.sql(f"DROP DATABASE IF EXISTS {schema}")
    # A server that cannot be asked: unknown, never empty.
    nowhere = f"socket={primary.socket.with_name('no-server.sock')}"
    assert salt_call.run(MINION, "sqlgate_db.schema_state", schema, nowhere) == "unknown"


def test_account_of_a_real_mariadb_user(salt_call, db_cluster):
    socket = f"socket={db_cluster.primary.socket}"
    user = db_cluster.app_users["read"].name
    row = salt_call.run(MINION, "sqlgate_db.account", user, "%",
                        'fields=["max_user_connections", "max_statement_time"]', socket)
    assert (row["plugin"], row["ssl_type"], row["max_user_connections"]) == \
        ("mysql_native_password", "ANY", "60")
    assert float(row["max_statement_time"]) == 10
    assert row["authentication_string"].startswith("*")
    assert salt_call.run(MINION, "sqlgate_db.account", "nobody", "%", socket) == {}
