"""The ``sqlgate_replication`` states (salt/_states/sqlgate_replication.py): loaded on their own
over the real ``sqlgate_db`` module whose client answers recorded outputs, and through
``salt-call state.single`` against the loopback MariaDB replicas."""

from __future__ import annotations

import yaml

from tests.salt.fakedb import FakeClient, recorded
from tests.salt.saltcall import MINION, SALT_TREE, load_salt_module

FLAVOURS = yaml.safe_load((SALT_TREE / "sqlgate" / "flavours.yaml").read_text())
PASSWORD = "s3cret-'pass\\word"
# The source the MariaDB recordings follow.
RECORDED = {"source": "127.0.0.1", "port": 38835, "user": "repl"}


def states(client: FakeClient, test: bool = False):
    db = load_salt_module("modules", "sqlgate_db", {"cmd.run_all": client.run_all})
    salt = {f"sqlgate_db.{name}": getattr(db, name) for name in ("replica_status", "execute")}
    return load_salt_module("states", "sqlgate_replication", salt, {"test": test})


def following(module, flavour: str = "mariadb", **overrides):
    args = {**RECORDED, "password": PASSWORD, "change_source": FLAVOURS[flavour]["change_source"],
            "client": FLAVOURS[flavour]["client"], **overrides}
    return module.following("sqlgate-db-replication-source", **args)


def assert_no_password(ret: dict) -> None:
    for form in (PASSWORD, PASSWORD.replace("\\", "\\\\").replace("'", "\\'"), "s3cret"):
        assert form not in repr(ret)


def test_a_replica_that_follows_its_source_is_left_alone():
    client = FakeClient(status=recorded("mariadb-10.11-running"))
    ret = following(states(client))
    assert (ret["result"], ret["changes"]) == (True, {})
    assert "already follows repl@127.0.0.1:38835" in ret["comment"]
    assert client.statements == []


def test_a_mysql_8_replica_that_follows_its_source_is_left_alone():
    client = FakeClient(status=recorded("mysql-8.0-running"))
    ret = following(states(client), "mysql", source="192.168.21.165", port="3306")
    assert (ret["result"], ret["changes"]) == (True, {})
    assert client.statements == []


def test_test_mode_says_what_would_change_and_changes_nothing():
    client = FakeClient(status=recorded("mariadb-10.11-running"))
    ret = following(states(client, test=True), source="10.0.0.12", port=3306)
    assert ret["result"] is None
    assert ret["changes"] == {"source": {"old": "repl@127.0.0.1:38835",
                                         "new": "repl@10.0.0.12:3306"}}
    assert client.statements == []
    assert_no_password(ret)


def test_another_source_port_or_user_is_changed_with_the_flavours_statement():
    for flavour, recording in (("mariadb", "mariadb-10.11-running"),
                               ("mysql", "mysql-8.0-running")):
        for change in ({"source": "10.0.0.12"}, {"port": 3307}, {"user": "replx"}):
            wanted = {**RECORDED, **change}
            client = FakeClient(status=recorded(recording))
            after = (recorded("mysql-8.0-running").replace("192.168.21.165", wanted["source"])
                     .replace("Source_Port: 3306", f"Source_Port: {wanted['port']}")
                     .replace("Source_User: repl", f"Source_User: {wanted['user']}"))
            client.on_run = lambda sql, after=after, client=client: setattr(
                client, "status", after)
            ret = following(states(client), flavour, **change)
            assert ret["result"] is True, ret
            assert ret["changes"]["source"]["new"] == \
                f"{wanted['user']}@{wanted['source']}:{wanted['port']}"
            (sql,) = client.statements
            lines = sql.splitlines()
            assert lines[0] == "STOP REPLICA;" and lines[-1] == "START REPLICA;"
            statement = FLAVOURS[flavour]["change_source"].format(
                source=wanted["source"], port=wanted["port"], user=wanted["user"],
                password="s3cret-\\'pass\\\\word")  # escaped for the SQL string literal
            assert lines[1] == statement + ";"
            assert all(PASSWORD not in " ".join(call.argv) for call in client.calls)
            assert all(call.kwargs["python_shell"] is False for call in client.calls)
            assert_no_password(ret)


def test_a_server_that_is_no_replica_yet_is_made_one():
    client = FakeClient(status="")
    client.on_run = lambda sql: setattr(client, "status", recorded("mariadb-10.11-running"))
    ret = following(states(client))
    assert ret["result"] is True
    assert ret["changes"] == {"source": {"old": None, "new": "repl@127.0.0.1:38835"}}


def test_a_failed_change_does_not_show_the_password():
    client = FakeClient(status="", retcode=1,
                        stderr="ERROR 1064 (42000) at line 2: You have an error in your SQL "
                               "syntax near 's3cret-\\'pass\\\\word', MASTER_CONNECT_RETRY=5")
    ret = following(states(client))
    assert ret["result"] is False and "ERROR 1064" in ret["comment"]
    assert "********" in ret["comment"]
    assert_no_password(ret)


def test_a_change_that_does_not_take_fails():
    client = FakeClient(status=recorded("mariadb-10.11-running"))
    ret = following(states(client), source="10.0.0.12")
    assert ret["result"] is False
    assert "follows repl@127.0.0.1:38835, not repl@10.0.0.12:38835" in ret["comment"]


CA = "/etc/sqlgate/tls/ca.crt"


def over_tls(status: str, ca: str = CA) -> str:
    """A recorded status, as it reads once the replica connects over TLS with ``ca``."""
    for allowed in ("Master_SSL_Allowed: No", "Source_SSL_Allowed: No"):
        status = status.replace(allowed, allowed.replace("No", "Yes"))
    for field in ("Master_SSL_CA_File:", "Source_SSL_CA_File:"):
        status = status.replace(f"{field} \n", f"{field}\n").replace(f"{field}\n",
                                                                       f"{field} {ca}\n")
    return status


def test_a_replica_without_tls_is_switched_to_it():
    for flavour, recording in (("mariadb", "mariadb-10.11-running"),
                               ("mysql", "mysql-8.0-running")):
        before = recorded(recording)
        client = FakeClient(status=before)
        client.on_run = lambda sql, client=client, before=before: setattr(
            client, "status", over_tls(before))
        wanted = {"source": "192.168.21.165", "port": 3306} if flavour == "mysql" else {}
        ret = following(states(client), flavour, ssl_ca=CA,
                        change_source_ssl=FLAVOURS[flavour]["change_source_ssl"], **wanted)
        assert ret["result"] is True, ret
        where = "repl@{source}:{port}".format(**{**RECORDED, **wanted})
        assert ret["changes"] == {"source": {"old": where, "new": f"{where} over TLS ({CA})"}}
        (sql,) = client.statements
        prefix = "SOURCE" if flavour == "mysql" else "MASTER"
        assert sql.splitlines()[1].endswith(f", {prefix}_SSL=1, {prefix}_SSL_CA='{CA}';")
        assert_no_password(ret)


def test_a_replica_over_tls_with_its_ca_is_left_alone_and_another_ca_is_changed():
    status = over_tls(recorded("mariadb-10.11-running"))
    tls = {"ssl_ca": CA, "change_source_ssl": FLAVOURS["mariadb"]["change_source_ssl"]}
    client = FakeClient(status=status)
    ret = following(states(client), **tls)
    assert (ret["result"], ret["changes"]) == (True, {}), ret
    assert client.statements == []

    client = FakeClient(status=over_tls(recorded("mariadb-10.11-running"), "/old/ca.crt"))
    ret = following(states(client, test=True), **tls)
    assert ret["result"] is None
    assert ret["changes"]["source"]["old"].endswith("over TLS (/old/ca.crt)")
    # And without a CA file: TLS off (MASTER_SSL=0), which the status must then say.
    client = FakeClient(status=status)
    client.on_run = lambda sql: setattr(client, "status", recorded("mariadb-10.11-running"))
    ret = following(states(client), ssl_ca="", change_source_ssl=tls["change_source_ssl"])
    assert ret["result"] is True, ret
    assert client.statements[0].splitlines()[1].endswith(", MASTER_SSL=0, MASTER_SSL_CA='';")


def test_without_a_tls_statement_the_tls_fields_are_not_compared():
    client = FakeClient(status=over_tls(recorded("mariadb-10.11-running")))
    ret = following(states(client))
    assert (ret["result"], ret["changes"]) == (True, {}), ret


def test_running_threads_and_a_connecting_io_thread_are_left_alone():
    for recording in ("mariadb-10.11-running", "mariadb-10.11-connecting", "mysql-8.0-running"):
        client = FakeClient(status=recorded(recording))
        ret = states(client).running("sqlgate-db-replication-running", client="mariadb")
        assert (ret["result"], ret["changes"]) == (True, {}), recording
        assert client.statements == []


def test_stopped_threads_are_started():
    client = FakeClient(status=recorded("mariadb-10.11-stopped"))
    ret = states(client, test=True).running("sqlgate-db-replication-running")
    assert ret["result"] is None and client.statements == []
    assert ret["changes"] == {"Replica_IO_Running": {"old": "No", "new": "Yes"},
                              "Replica_SQL_Running": {"old": "No", "new": "Yes"}}

    client.on_run = lambda sql: setattr(client, "status", recorded("mariadb-10.11-connecting"))
    ret = states(client).running("sqlgate-db-replication-running")
    assert ret["result"] is True, ret
    assert client.statements == ["START REPLICA"]
    assert ret["changes"] == {"Replica_IO_Running": {"old": "No", "new": "Connecting"},
                              "Replica_SQL_Running": {"old": "No", "new": "Yes"}}


def test_a_sql_thread_that_stops_again_fails_with_its_error():
    stopped = recorded("mysql-8.0-running").replace("Replica_SQL_Running: Yes",
                                                    "Replica_SQL_Running: No")
    failing = stopped.replace("Last_SQL_Error:", "Last_SQL_Error: Duplicate entry '1'")
    client = FakeClient(status=stopped)
    client.on_run = lambda sql: setattr(client, "status", failing)
    ret = states(client).running("sqlgate-db-replication-running")
    assert ret["result"] is False
    assert "SQL: No" in ret["comment"] and "Duplicate entry '1'" in ret["comment"]
    assert ret["changes"] == {"Replica_SQL_Running": {"old": "No", "new": "No"}}


def test_a_server_that_is_no_replica_has_no_threads_to_start():
    ret = states(FakeClient(status="")).running("sqlgate-db-replication-running")
    assert ret["result"] is False and "Not a replica" in ret["comment"]


def test_the_states_need_the_sqlgate_db_module():
    module = load_salt_module("states", "sqlgate_replication", {})
    assert module.__virtual__()[0] is False
    module.__salt__ = {"sqlgate_db.replica_status": None}
    assert module.__virtual__() == "sqlgate_replication"


# --- the real thing: salt-call state.single on a loopback MariaDB replica ----------------------

def single(salt_call, function: str, *args: str, test: bool = False) -> dict:
    answer = salt_call.run(MINION, "state.single", function, *args,
                           *(["test=True"] if test else []))
    (ret,) = answer.values()
    return ret


def test_the_states_on_a_real_replica(salt_call, db_cluster):
    replica = db_cluster.replicas[0]
    common = [f"socket={replica.socket}", "client=mariadb"]
    ca = f"ssl_ca={db_cluster.ca_file}"
    tls = f"change_source_ssl={FLAVOURS['mariadb']['change_source_ssl']}"
    source = ["name=sqlgate-db-replication-source", "source=127.0.0.1",
              f"port={db_cluster.primary.port}", "user=repl",
              f"password={db_cluster.repl_password}",
              f"change_source={FLAVOURS['mariadb']['change_source']}", ca, tls, *common]
    where = f"repl@127.0.0.1:{db_cluster.primary.port} over TLS ({db_cluster.ca_file})"
    ret = single(salt_call, "sqlgate_replication.following", *source)
    assert (ret["result"], ret["changes"]) == (True, {}), ret

    moved = [arg if not arg.startswith("port=") else "port=1" for arg in source]
    ret = single(salt_call, "sqlgate_replication.following", *moved, test=True)
    assert ret["result"] is None
    assert ret["changes"]["source"]["new"] == f"repl@127.0.0.1:1 over TLS ({db_cluster.ca_file})"
    assert db_cluster.repl_password not in repr(ret)
    # A real change to a port nobody listens on, and back: the statement runs for real.
    try:
        ret = single(salt_call, "sqlgate_replication.following", *moved)
        assert ret["result"] is True and ret["changes"]["source"]["new"].startswith(
            "repl@127.0.0.1:1 over TLS"), ret
        assert db_cluster.repl_password not in repr(ret)
    finally:
        ret = single(salt_call, "sqlgate_replication.following", *source)
    assert ret["result"] is True, ret
    assert ret["changes"]["source"]["new"] == where
    db_cluster.wait_for_replicas()

    # A replica set up before TLS (the primary refuses it now) is switched to TLS and catches up.
    replica.sql("STOP REPLICA")
    replica.sql("CHANGE MASTER TO MASTER_SSL=0, MASTER_SSL_CA=''")
    replica.sql("START REPLICA")
    ret = {}
    try:
        ret = single(salt_call, "sqlgate_replication.following", *source)
    finally:
        if ret.get("result") is not True:  # leave the shared replica as it was
            replica.sql("STOP REPLICA")
            replica.sql(f"CHANGE MASTER TO MASTER_SSL=1, MASTER_SSL_CA='{db_cluster.ca_file}'")
            replica.sql("START REPLICA")
    assert ret["result"] is True, ret
    assert ret["changes"]["source"] == {"old": f"repl@127.0.0.1:{db_cluster.primary.port}",
                                        "new": where}
    db_cluster.wait_for_replicas()

    threads = ["name=sqlgate-db-replication-running", *common]
    replica.sql("STOP REPLICA SQL_THREAD")
    try:
        ret = single(salt_call, "sqlgate_replication.running", *threads)
        assert ret["result"] is True, ret
        assert ret["changes"]["Replica_SQL_Running"] == {"old": "No", "new": "Yes"}
    finally:
        replica.sql("START REPLICA")
    ret = single(salt_call, "sqlgate_replication.running", *threads)
    assert (ret["result"], ret["changes"]) == (True, {}), ret
    db_cluster.wait_for_replicas()
