"""No public answer names an internal address, port or database user: every error path this
test can provoke, through the real Proxy on the loopback MariaDB, and the Proxy down or slow."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator

import pytest

from cluster.loopback import gatekeeper_service
from cluster.loopback.processes import free_port
from cluster.loopback.services import ServiceProcess
from services.client import Answer, request
from tests.services.gatekeeper.conftest import https_connection, new_key, read_json, write_keys

LIMITED_RATE = 2


@pytest.fixture(scope="module")
def stack_keys(keys):
    return {"admin": keys.admin, "write": keys.write, "read": keys.read,
            "limited": new_key("trickle", "read", rate=LIMITED_RATE, burst=1)}


@pytest.fixture(scope="module")
def keys_path(stack_keys, tmp_path_factory):
    return write_keys(tmp_path_factory.mktemp("public-errors") / "keys.json",
                      *stack_keys.values())


@pytest.fixture(scope="module")
def front(db_cluster, proxy, keys_path, tmp_path_factory) -> Iterator[ServiceProcess]:
    """A Gatekeeper of this module's in front of the session's (TLS) Proxy."""
    service = gatekeeper_service(db_cluster, proxy.url, keys_path,
                                 tmp_path_factory.mktemp("logs") / "gatekeeper.log",
                                 GATEKEEPER_MAX_BODY_BYTES="4096",
                                 GATEKEEPER_PROXY_TIMEOUT="1.5")
    with service.running():
        yield service


def secrets_of_the_inside(db_cluster, proxy, *services: ServiceProcess) -> list[str]:
    """What no public answer may contain: addresses, ports, database user names."""
    words = ["127.0.0.1", "localhost", *(user.name for user in db_cluster.app_users.values()),
             db_cluster.monitor.name, "'root'", "repl"]
    ports = [proxy.port, *(node.port for node in db_cluster.nodes),
             *(service.port for service in services)]
    return words + [str(port) for port in ports]


def public_text(answer: Answer) -> str:
    return json.dumps(answer.json) + "\n" + "\n".join(
        f"{name}: {value}" for name, value in answer.headers.items())


def assert_quiet(answer: Answer, inside: list[str]) -> None:
    text = public_text(answer)
    leaked = [word for word in inside if re.search(rf"(?<![\w.]){re.escape(word)}(?![\w.])",
                                                   text)]
    assert not leaked, f"{leaked} in a public answer: {text}"


def post(front: ServiceProcess, body, key=None, path="/query", method=None) -> Answer:
    headers = {"X-API-Key": key.secret} if key else {}
    return request(front.url + path, body, headers, method, tls=front.tls, timeout=30)


CASES = [
    # (what, key, path, body, expected status)
    ("bad key", None, "/query", {"sql": "SELECT 1"}, 401),
    ("bad JSON", "read", "/query", b"{nope", 400),
    ("unknown field", "read", "/query", {"sql": "SELECT 1", "mod": "x"}, 400),
    ("syntax error", "write", "/query", {"sql": "SELEC 1"}, None),
    ("no such table", "read", "/query", {"sql": "SELECT * FROM sakila.nope"}, 400),
    ("the grant tables", "read", "/query", {"sql": "SELECT * FROM mysql.user"}, 403),
    ("a schema the users cannot touch", "admin", "/query",
     {"sql": "CREATE TABLE mysql.sqlgate_x (i INT)"}, 403),
    ("beyond the scope", "read", "/query",
     {"sql": "INSERT INTO sqlgate_test.nothing VALUES (1)"}, 403),
    ("account management", "admin", "/query", {"sql": "DROP USER 'root'@'localhost'"}, 403),
    ("grants", "admin", "/query", {"sql": "SHOW GRANTS"}, None),
    ("the processlist", "admin", "/query", {"sql": "SHOW PROCESSLIST"}, None),
    ("unknown transaction", "write", "/transactions/proxy.AAAAAAAAAAAAAAAAAAAAAAAA/commit",
     b"", 404),
    ("a batch that fails", "write", "/batch",
     {"statements": [{"sql": "SELECT 1"}, {"sql": "SELECT * FROM mysql.user"}],
      "transaction": False}, 200),
    ("the statement time limit", "read", "/query", {"sql": "SELECT SLEEP(1.4)"}, None),
    ("the proxy answers late", "read", "/query", {"sql": "SELECT SLEEP(3)"}, 504),
    ("404", "read", "/nowhere", {}, 404),
    ("405", "read", "/query", None, 405),
]


@pytest.mark.parametrize(("what", "key", "path", "body", "status"), CASES,
                         ids=[case[0] for case in CASES])
def test_no_public_error_names_the_inside(front, db_cluster, proxy, stack_keys, what, key,
                                          path, body, status):
    answer = post(front, body, stack_keys.get(key), path,
                  method="GET" if status == 405 else None)
    if status is not None:
        assert answer.status == status, answer.json
    assert_quiet(answer, secrets_of_the_inside(db_cluster, proxy, front))


def test_oversized_and_rate_limited_answers_are_quiet(front, db_cluster, proxy, stack_keys):
    inside = secrets_of_the_inside(db_cluster, proxy, front)
    conn = https_connection(front)
    conn.request("POST", "/query", body=b"x" * (3 * 1024 * 1024),
                 headers={"X-API-Key": stack_keys["write"].secret})
    answer = conn.getresponse()
    assert answer.status == 413
    assert_quiet(Answer(413, read_json(answer), answer.msg), inside)
    conn.close()
    answers = [post(front, {"sql": "SELECT 1"}, stack_keys["limited"]) for _ in range(3)]
    assert 429 in [answer.status for answer in answers]
    for answer in answers:
        assert_quiet(answer, inside)


def test_the_proxy_down_is_quiet_and_logged_with_the_request_id(db_cluster, proxy, keys_path,
                                                                 stack_keys, tmp_path):
    dead = f"https://127.0.0.1:{free_port()}"
    log_path = tmp_path / "gatekeeper.log"
    service = gatekeeper_service(db_cluster, dead, keys_path, log_path)
    with service.running(expect_healthy=False):
        request_id = uuid.uuid4().hex
        answer = request(service.url + "/query", {"sql": "SELECT 1"},
                         {"X-API-Key": stack_keys["read"].secret, "X-Request-Id": request_id},
                         tls=service.tls)
        assert (answer.status, answer.json["error"]) == (503, "the proxy is unreachable")
        assert_quiet(answer, [*secrets_of_the_inside(db_cluster, proxy, service),
                              dead.rsplit(":", 1)[1]])
        status, health = service.health()
        assert (status, health) == (503, {"service": "gatekeeper", "status": "unavailable"})
    log = log_path.read_text()
    (line,) = [line for line in log.splitlines() if f"request {request_id}:" in line]
    assert dead.rsplit(":", 1)[1] in line  # the detail is kept, for the operator


def test_redacted_details_stay_in_the_gatekeeper_log(front, stack_keys):
    request_id = uuid.uuid4().hex
    answer = request(front.url + "/query", {"sql": "SELECT * FROM mysql.user"},
                     {"X-API-Key": stack_keys["read"].secret, "X-Request-Id": request_id},
                     tls=front.tls)
    assert answer.status == 403
    assert "(internal)" in answer.json["error"]
    log = front.log_path.read_text()
    assert any(f"request {request_id}: internal details redacted" in line and "@" in line
               for line in log.splitlines())
