"""Quiet errors: no answer names an internal address, port or database user; the Proxy's log
keeps the full detail under the request id."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from cluster.loopback.processes import free_port
from cluster.loopback.services import ServiceProcess
from services.contract import REQUEST_ID_HEADER
from services.errors import ApiError
from services.proxy.handlers import without_values
from services.proxy.quiet import Scrubber
from tests.conftest import http, proxy_service


def internal_names(db_cluster, *ports: int) -> list[str]:
    """What no answer may contain: addresses, the nodes' ports, the database users."""
    return ["127.0.0.1", "localhost",
            *(str(port) for port in (*(node.port for node in db_cluster.nodes), *ports)),
            *(user.name for user in db_cluster.app_users.values()), db_cluster.monitor.name]


def assert_quiet(answer_json: dict, names: list[str]) -> None:
    text = json.dumps({key: value for key, value in answer_json.items()
                       if key not in ("request_id", "elapsed_ms")})
    leaked = [name for name in names if re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", text)]
    assert not leaked, (leaked, text)


def logged(service: ServiceProcess, request_id: str) -> str:
    return "\n".join(line for line in service.log_path.read_text().splitlines()
                     if request_id in line)


@pytest.fixture(scope="module")
def quiet_proxy(db_cluster, tmp_path_factory) -> Iterator[ServiceProcess]:
    service = proxy_service(db_cluster, tmp_path_factory.mktemp("logs") / "proxy.log")
    with service.running():
        yield service


def test_a_privilege_error_keeps_its_code_and_hides_the_account(quiet_proxy, db_cluster):
    answer = http(quiet_proxy.url + "/query", {"sql": "SELECT * FROM mysql.user"},
                  {REQUEST_ID_HEADER: "quiet-grant-probe"}, scope="read")
    assert answer.status == 403, answer.json
    assert answer.json["mysql_errno"] == 1142
    assert answer.json["error"].startswith("SELECT command denied to user "), answer.json
    assert "`mysql`.`user`" in answer.json["error"]  # the useful part stays
    assert answer.json["scope"] == "read"
    assert_quiet(answer.json, internal_names(db_cluster))
    detail = logged(quiet_proxy, "quiet-grant-probe")
    assert f"'{db_cluster.app_users['read'].name}'@'127.0.0.1'" in detail, detail


def test_an_unreachable_node_is_not_named_by_address(db_cluster, tmp_path):
    closed = free_port()
    service = proxy_service(db_cluster, tmp_path / "proxy.log",
                            PROXY_PRIMARY=f"primary=127.0.0.1:{closed}", PROXY_WRITE_HOLD="1")
    with service.running():  # healthy: the replicas serve reads
        answer = http(service.url + "/query",
                      {"sql": "INSERT INTO sqlgate_test.nowhere VALUES (1)"},
                      {REQUEST_ID_HEADER: "quiet-connect-probe"}, scope="write")
        assert answer.status == 503, answer.json
        assert "the primary primary is down" in answer.json["error"]  # which node, by name
        assert_quiet(answer.json, internal_names(db_cluster, closed))
        transaction = http(service.url + "/transactions", {}, scope="write")
        assert transaction.status == 503, transaction.json
        assert_quiet(transaction.json, internal_names(db_cluster, closed))
        detail = logged(service, "quiet-connect-probe")
        assert "127.0.0.1" in detail, detail


def test_a_refused_login_names_no_user(db_cluster, tmp_path):
    """Without TLS the servers refuse the users (they require it): 'Access denied for user
    ...@...' must reach the client without the account."""
    service = proxy_service(db_cluster, tmp_path / "proxy.log", PROXY_DB_TLS_CA="")
    with service.running(expect_healthy=False):
        for mode in ("direct", "random"):
            answer = http(service.url + "/query", {"sql": "SELECT 1", "mode": mode},
                          {REQUEST_ID_HEADER: f"quiet-login-{mode}"}, scope="read")
            assert answer.status == 503, answer.json
            assert "Access denied for user" in json.dumps(answer.json["failures"])
            assert_quiet(answer.json, internal_names(db_cluster))
        detail = logged(service, "quiet-login-direct")
        assert db_cluster.app_users["read"].name in detail, detail


@pytest.mark.parametrize(("message", "quiet"), [
    ("Access denied for user 'app_read'@'10.1.2.3' (using password: YES)",
     "Access denied for user '(hidden)'@'(hidden)' (using password: YES)"),
    ("INSERT command denied to user 'app_read'@'%' for table `shop`.`orders`",
     "INSERT command denied to user '(hidden)'@'(hidden)' for table `shop`.`orders`"),
    ("Can't connect to MySQL server on '10.0.0.5' ([Errno 111] Connect call failed "
     "('10.0.0.5', 3306))",
     "Can't connect to MySQL server on '(internal address)' ([Errno 111] Connect call "
     "failed ((internal address)))"),
    ("Can't connect to MySQL server on 'db1.internal.example' ([Errno -2] Name or service "
     "not known)",
     "Can't connect to MySQL server on '(internal address)' ([Errno -2] Name or service "
     "not known)"),
    ("User 'app_write' has exceeded the 'max_user_connections' resource (current value: 60)",
     "User '(hidden)' has exceeded the 'max_user_connections' resource (current value: 60)"),
    ("replica1: lost db1.internal.example:3306 and 10.0.0.6:3306 at 10:30:00",
     "replica1: lost (internal address) and (internal address) at 10:30:00"),
    ("no route to [fd00::5]:3306 nor 2001:db8::7", "no route to (internal address) nor "
     "(internal address)"),
    # What is not internal stays: values, times, versions, names of nodes and tables.
    ("Duplicate entry 'app_read' for key 'PRIMARY'", "Duplicate entry 'app_read' for key "
     "'PRIMARY'"),
    ("Incorrect datetime value: '2024-01-01 10:30:00' on MariaDB 10.11.19",
     "Incorrect datetime value: '2024-01-01 10:30:00' on MariaDB 10.11.19"),
])
def test_the_scrubber(message, quiet):
    scrubber = Scrubber(["10.0.0.5", "db1.internal.example", "primary"],
                        ["app_read", "app_write", "app_admin"])
    assert scrubber.text(message) == quiet


def test_the_scrubber_reaches_into_details():
    scrubber = Scrubber(["10.0.0.5"], ["app_read"])
    error = ApiError(503, "no database node could serve this read",
                     failures=["primary: Can't connect to MySQL server on '10.0.0.5'"],
                     replicas={"replica1": "down: 10.0.0.6:3306"}, mysql_errno=2003)
    assert scrubber.error(error) is True
    assert error.to_json() == {
        "error": "no database node could serve this read",
        "failures": ["primary: Can't connect to MySQL server on '(internal address)'"],
        "replicas": {"replica1": "down: (internal address)"}, "mysql_errno": 2003}
    assert scrubber.error(ApiError(400, "unknown mode 'x'")) is False


def test_the_log_keeps_a_server_errors_account_but_never_its_quoted_values():
    assert without_values("SELECT command denied to user 'app_read'@'127.0.0.1' for table "
                          "`mysql`.`user`") == ("SELECT command denied to user "
                                                "'app_read'@'127.0.0.1' for table `mysql`.`user`")
    assert without_values("Duplicate entry 'secret-1' for key 'PRIMARY'") == \
        "Duplicate entry '?' for key '?'"
    assert without_values("Incorrect integer value: 'it''s \\' x' for column `t`.`id`") == \
        "Incorrect integer value: '?' for column `t`.`id`"
