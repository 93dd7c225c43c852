"""The ``sqlgate_users`` states (salt/_states/sqlgate_users.py): loaded on their own over the real
``sqlgate_db`` module whose client answers like a server's ``mysql.user``, and through
``salt-call state.single`` against the loopback MariaDB primary."""

from __future__ import annotations

import json

import pymysql
import pytest
import yaml

from tests.salt.fakedb import FakeClient
from tests.salt.saltcall import MINION, SALT_TREE, load_salt_module

FLAVOURS = yaml.safe_load((SALT_TREE / "sqlgate" / "flavours.yaml").read_text())
PASSWORD = "s3cret-'pass\\word"
# MySQL's PASSWORD('password'), the published mysql_native_password example.
KNOWN_HASH = ("password", "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19")
LIMITS = {"max_user_connections": 60, "max_statement_time": 10}


def states(client: FakeClient, test: bool = False):
    db = load_salt_module("modules", "sqlgate_db", {"cmd.run_all": client.run_all})
    salt = {f"sqlgate_db.{name}": getattr(db, name) for name in ("account", "execute")}
    return load_salt_module("states", "sqlgate_users", salt, {"test": test})


def row(module, ssl_type="ANY", password=PASSWORD, limits=None) -> str:
    """The client's answer to the state's SELECT for an account in this shape."""
    values = ["mysql_native_password", module.native_password_hash(password), ssl_type,
              *(str(v) for v in (LIMITS if limits is None else limits).values())]
    return "\t".join(values) + "\n"


def present(module, flavour="mariadb", **overrides):
    args = {"name": "app_read", "host": "%", "password": PASSWORD, "require_ssl": True,
            "limits": dict(LIMITS), "identified": FLAVOURS[flavour]["identified_by_hash"],
            "client": FLAVOURS[flavour]["client"], **overrides}
    return module.present(**args)


def becomes(client: FakeClient, answer: str) -> None:
    """After the state's CREATE/ALTER/DROP, the account reads as ``answer``."""
    def run(sql: str) -> None:
        if sql.startswith(("CREATE USER", "ALTER USER", "DROP USER")):
            client.answer = answer
    client.on_run = run


def assert_no_secret(module, ret: dict, client: FakeClient) -> None:
    digest = module.native_password_hash(PASSWORD)
    for form in (PASSWORD, PASSWORD.replace("\\", "\\\\").replace("'", "\\'"), "s3cret",
                 digest):
        assert form not in repr(ret)
    for call in client.calls:
        assert PASSWORD not in " ".join(call.argv) and "s3cret" not in call.stdin
        assert digest not in " ".join(call.argv)
        assert call.kwargs["python_shell"] is False


def test_the_hash_is_mysql_native_passwords():
    module = states(FakeClient())
    assert module.native_password_hash(KNOWN_HASH[0]) == KNOWN_HASH[1]


def test_a_missing_user_is_created_with_tls_required_and_its_limits():
    client = FakeClient(answer="")
    module = states(client)
    becomes(client, row(module))
    ret = present(module)
    assert ret["result"] is True, ret
    assert ret["changes"] == {"user": {"old": None, "new": "app_read@%"}}
    select, create, _ = client.statements
    assert select.startswith("SELECT plugin, authentication_string, ssl_type, "
                             "max_user_connections, max_statement_time FROM mysql.user")
    digest = module.native_password_hash(PASSWORD)
    assert create == (f"CREATE USER 'app_read'@'%' IDENTIFIED BY PASSWORD '{digest}' "
                      "REQUIRE SSL WITH MAX_USER_CONNECTIONS 60 MAX_STATEMENT_TIME 10;\n")
    assert_no_secret(module, ret, client)


def test_mysql_gets_the_hash_through_its_own_clause_and_no_statement_limit():
    client = FakeClient(answer="")
    module = states(client)
    limits = {"max_user_connections": 60}
    becomes(client, row(module, limits=limits))
    ret = present(module, "mysql", limits=limits)
    assert ret["result"] is True, ret
    digest = module.native_password_hash(PASSWORD)
    assert client.statements[1] == (
        f"CREATE USER 'app_read'@'%' IDENTIFIED WITH mysql_native_password AS '{digest}' "
        "REQUIRE SSL WITH MAX_USER_CONNECTIONS 60;\n")
    assert client.calls[1].argv[0] == "mysql"


def test_a_user_as_wanted_is_left_alone():
    client = FakeClient()
    module = states(client)
    client.answer = row(module, limits={"max_user_connections": 60,
                                        "max_statement_time": "10.000000"})
    ret = present(module)
    assert (ret["result"], ret["changes"]) == (True, {}), ret
    assert len(client.statements) == 1  # the SELECT only


def test_each_difference_is_altered_and_shown_without_the_password():
    module = states(FakeClient())
    for current, expected in (
            (row(module, ssl_type=""), {"require_ssl": {"old": False, "new": True}}),
            (row(module, password="old"), {"password": "changed"}),
            (row(module, limits={"max_user_connections": 0, "max_statement_time": 10}),
             {"max_user_connections": {"old": "0", "new": 60}})):
        client = FakeClient(answer=current)
        module = states(client)
        becomes(client, row(module))
        ret = present(module)
        assert (ret["result"], ret["changes"]) == (True, expected), ret
        assert client.statements[1].startswith("ALTER USER 'app_read'@'%' IDENTIFIED BY ")
        assert_no_secret(module, ret, client)


def test_a_socket_user_may_go_without_tls():
    client = FakeClient(answer="")
    module = states(client)
    becomes(client, row(module, ssl_type="", limits={}))
    ret = present(module, name="sb", host="localhost", require_ssl=False, limits={})
    assert ret["result"] is True, ret
    assert client.statements[1].endswith("REQUIRE NONE;\n")


def test_test_mode_says_what_would_change_and_changes_nothing():
    client = FakeClient(answer="")
    ret = present(states(client, test=True))
    assert ret["result"] is None and ret["changes"] == {"user": {"old": None,
                                                                 "new": "app_read@%"}}
    assert len(client.statements) == 1


def test_a_failed_change_hides_the_password_and_its_hash():
    client = FakeClient(answer="")
    module = states(client)
    digest = module.native_password_hash(PASSWORD)

    def fail(sql: str) -> None:
        if sql.startswith("CREATE USER"):
            client.retcode = 1
            client.stderr = f"ERROR 1064 (42000): syntax near '{digest}' REQUIRE SSL"
    client.on_run = fail
    ret = present(module)
    assert ret["result"] is False and "ERROR 1064" in ret["comment"] and "********" in \
        ret["comment"]
    assert_no_secret(module, ret, client)


def test_a_change_that_does_not_take_fails():
    client = FakeClient(answer="")
    module = states(client)
    becomes(client, row(module, ssl_type=""))
    ret = present(module)
    assert ret["result"] is False and "still differs in require_ssl" in ret["comment"]


@pytest.mark.parametrize("limits", [{"max_user_connections": "60; DROP USER x"},
                                    {"max_user_connections": True},
                                    {"max user": 1}, {"max_user_connections": -1}])
def test_bad_limits_run_nothing(limits):
    client = FakeClient(answer="")
    ret = present(states(client), limits=limits)
    assert ret["result"] is False and "Bad limits" in ret["comment"]
    assert client.statements == []


def test_an_unreadable_account_is_a_failure():
    client = FakeClient(retcode=1, stderr="ERROR 2002 (HY000): Can't connect")
    ret = present(states(client))
    assert ret["result"] is False and "Cannot read the account app_read@%" in ret["comment"]


def test_absent_drops_a_user_and_leaves_a_missing_one_alone():
    client = FakeClient(answer="mysql_native_password\t*ABC\t\n")
    module = states(client)
    becomes(client, "")
    ret = module.absent("app", "%", client="mariadb")
    assert ret["result"] is True and ret["changes"] == {"user": {"old": "app@%", "new": None}}
    assert client.statements[1] == "DROP USER IF EXISTS 'app'@'%';\n"
    ret = module.absent("app", "%", client="mariadb")
    assert (ret["result"], ret["changes"]) == (True, {})


def test_the_states_need_the_sqlgate_db_module():
    module = load_salt_module("states", "sqlgate_users", {})
    assert module.__virtual__()[0] is False
    module.__salt__ = {"sqlgate_db.account": None}
    assert module.__virtual__() == "sqlgate_users"


# --- the real thing: salt-call state.single on the loopback MariaDB primary --------------------

def single(salt_call, function: str, *args: str, test: bool = False) -> dict:
    answer = salt_call.run(MINION, "state.single", function, *args,
                           *(["test=True"] if test else []))
    (ret,) = answer.values()
    return ret


def show_create_user(node, name: str) -> str:
    (created,) = node.sql(f"SHOW CREATE USER '{name}'@'%'")[0].values()
    return created


def test_the_states_on_a_real_primary(salt_call, db_cluster):
    primary = db_cluster.primary
    name, first, second = "sqlgate_salt_user", "first-'pass\\word", "second-pass"
    common = [f"socket={primary.socket}", "client=mariadb", "host=%"]
    identified = f"identified={FLAVOURS['mariadb']['identified_by_hash']}"

    def user(password: str, require_ssl: bool, limits: dict, test: bool = False) -> dict:
        return single(salt_call, "sqlgate_users.present", f"name={name}",
                      f"password={password}", identified, f"require_ssl={require_ssl}",
                      f"limits={json.dumps(limits)}", *common, test=test)

    def logs_in(password: str) -> bool:
        try:
            with primary.connect(name, password) as conn, conn.cursor() as cursor:
                cursor.execute("SELECT CURRENT_USER()")
                return cursor.fetchone()[0] == f"{name}@%"
        except pymysql.OperationalError as error:
            assert error.args[0] == 1045, error  # access denied, not another failure
            return False

    primary.sql(f"DROP USER IF EXISTS '{name}'@'%'")
    try:
        assert user(first, True, LIMITS, test=True)["result"] is None
        assert salt_call.run(MINION, "sqlgate_db.account", name, "%",
                             f"socket={primary.socket}") == {}
        ret = user(first, True, LIMITS)
        assert ret["result"] is True and ret["changes"] == {
            "user": {"old": None, "new": f"{name}@%"}}, ret
        assert first not in repr(ret)
        created = show_create_user(primary, name)
        assert "REQUIRE SSL" in created, created
        assert "MAX_USER_CONNECTIONS 60" in created and "MAX_STATEMENT_TIME 10" in created
        assert logs_in(first)  # over TLS: the hash given is the password's
        assert user(first, True, LIMITS)["changes"] == {}  # a second run changes nothing

        ret = user(second, True, {"max_user_connections": 5, "max_statement_time": 2.5})
        assert ret["result"] is True, ret
        assert ret["changes"] == {"password": "changed",
                                  "max_user_connections": {"old": "60", "new": 5},
                                  "max_statement_time": {"old": "10.000000", "new": 2.5}}
        assert logs_in(second) and not logs_in(first)

        ret = user(second, False, {"max_user_connections": 5, "max_statement_time": 2.5})
        assert ret["changes"] == {"require_ssl": {"old": True, "new": False}}, ret
        assert "REQUIRE" not in show_create_user(primary, name)
    finally:
        ret = single(salt_call, "sqlgate_users.absent", f"name={name}", *common)
    assert ret["result"] is True and ret["changes"] == {"user": {"old": f"{name}@%",
                                                                 "new": None}}, ret
    ret = single(salt_call, "sqlgate_users.absent", f"name={name}", *common)
    assert (ret["result"], ret["changes"]) == (True, {}), ret
    db_cluster.wait_for_replicas()


def test_saltext_grants_apply_once_to_a_user_of_these_states(salt_call, db_cluster):
    """users.sls grants with saltext.mysql's mysql_grants to the users made here: it must see
    its grant on a REQUIRE SSL user with limits (MariaDB prints them in SHOW GRANTS)."""
    primary = db_cluster.primary
    name, socket = "sqlgate_salt_grantee", f"socket={primary.socket}"
    grant = ["mysql_grants.present", "name=sqlgate-db-grants-test",
             f"connection_unix_socket={primary.socket}", "grant=SELECT, INSERT",
             "database=sqlgate_test.*", f"user={name}", "host=%"]
    try:
        ret = single(salt_call, "sqlgate_users.present", f"name={name}", "password=x-y-z",
                     f"identified={FLAVOURS['mariadb']['identified_by_hash']}",
                     f"limits={json.dumps(LIMITS)}", socket, "client=mariadb")
        assert ret["result"] is True, ret
        ret = single(salt_call, *grant)
        assert ret["result"] is True and ret["changes"], ret
        ret = single(salt_call, *grant)
        assert (ret["result"], ret["changes"]) == (True, {}), ret
        grants = [next(iter(row.values()))
                  for row in primary.sql(f"SHOW GRANTS FOR '{name}'@'%'")]
        # saltext escapes the name's `_` (a wildcard in GRANT): this schema, not a pattern.
        assert "GRANT SELECT, INSERT ON `sqlgate\\_test`.* TO `sqlgate_salt_grantee`@`%`" in \
            grants, grants
    finally:
        single(salt_call, "sqlgate_users.absent", f"name={name}", socket, "client=mariadb")
    db_cluster.wait_for_replicas()
