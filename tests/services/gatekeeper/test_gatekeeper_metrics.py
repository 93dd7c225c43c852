"""The Gatekeeper's metrics and request log, on the real chain (a Gatekeeper of its own in
front of the session Proxy and the MariaDB trio): counters by label, refusals, rate limits,
the metrics port's mutual TLS, one request id in both services' logs, and no secret in either.
A Gatekeeper with nothing behind it shows the Proxy errors and the connection limit, over
plain HTTP and in multiprocess mode."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPConnection, RemoteDisconnected
from pathlib import Path

import pytest

from cluster.loopback import gatekeeper_service
from cluster.loopback.processes import free_port
from cluster.loopback.services import ServiceProcess
from cluster.waiting import wait_until
from services.client import TlsFiles, request
from services.metrics import version
from tests.conftest import scratch_tables
from tests.services.gatekeeper.conftest import Key, new_key, write_keys
from tests.services.scrape import Samples, get, request_lines, scrape

N = 5
REQUESTS = "sqlgate_gatekeeper_requests_total"
REFUSALS = "sqlgate_gatekeeper_refusals_total"


@dataclass(frozen=True)
class Front:
    service: ServiceProcess
    metrics_port: int
    client_tls: TlsFiles  # a client certificate of the cluster CA, as the monitor host has
    writer: Key
    reader: Key
    limited: Key

    def send(self, key: Key | None, body, path: str = "/query", **headers: str):
        secret = key.secret if key else "wrong-" + self.writer.secret
        return request(self.service.url + path, body, {"X-API-Key": secret, **headers},
                       tls=self.service.tls)

    def metrics(self) -> Samples:
        return scrape(self.metrics_port, self.client_tls)


@pytest.fixture(scope="module")
def front(db_cluster, proxy, tmp_path_factory) -> Iterator[Front]:
    root = tmp_path_factory.mktemp("gatekeeper-metrics")
    writer, reader = new_key("metrics-writer", "write"), new_key("metrics-reader", "read")
    limited = new_key("metrics-limited", "read", rate=0.01, burst=1)
    keys_file = write_keys(root / "keys.json", writer, reader, limited)
    port = free_port()
    service = gatekeeper_service(db_cluster, proxy.url, keys_file, root / "gatekeeper.log",
                                 GATEKEEPER_METRICS_PORT=str(port),
                                 GATEKEEPER_METRICS_CLIENT_CA=str(db_cluster.ca_file))
    with service.running():
        yield Front(service, port, db_cluster.pki.client_tls(), writer, reader, limited)


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return after.total(name, **labels) - before.total(name, **labels)


def test_requests_and_refusals_count_by_label(front, db_cluster):
    with scratch_tables(db_cluster, "gkmetrics") as make:
        table = make()
        before = front.metrics()
        for index in range(N):
            assert front.send(front.writer, {"sql": "SELECT 1"}).status == 200
            assert front.send(front.writer, {"sql": f"INSERT INTO {table} VALUES (?, 'x')",
                                             "params": [index]}).status == 200
            assert front.send(None, {"sql": "SELECT 1"}).status == 401
            assert front.send(front.writer, b"{nope").status == 400
            assert front.send(front.reader, {"sql": f"DELETE FROM {table}"}).status == 403
            assert request(front.service.url + "/health", tls=front.service.tls).status == 200
        assert front.send(front.limited, {"sql": "SELECT 1"}).status == 200
        for _ in range(N):
            assert front.send(front.limited, {"sql": "SELECT 1"}).status == 429
        after = front.metrics()

    def requests(**labels: str) -> float:
        return grew(before, after, REQUESTS, **labels)

    writer, reader, limited = front.writer.name, front.reader.name, front.limited.name
    assert requests(endpoint="POST /query", status="200", key=writer) == 2 * N
    assert requests(endpoint="POST /query", status="401", key="-") == N
    assert requests(endpoint="POST /query", status="400", key=writer) == N
    assert requests(endpoint="POST /query", status="403", key=reader) == N
    assert requests(endpoint="POST /query", status="429", key=limited) == N
    assert requests(endpoint="GET /health", status="200", key="-") >= N  # and the fixture's
    assert grew(before, after, REFUSALS, reason="unauthenticated") == N
    assert grew(before, after, REFUSALS, reason="bad_request") == N
    assert grew(before, after, REFUSALS, reason="scope") == N
    assert grew(before, after, REFUSALS, reason="rate_limited") == N
    assert grew(before, after, "sqlgate_gatekeeper_rate_limited_total", key=limited) == N
    assert grew(before, after, "sqlgate_gatekeeper_rate_limited_total", key=writer) == 0
    assert grew(before, after, "sqlgate_gatekeeper_proxy_errors_total") == 0
    assert grew(before, after, "sqlgate_gatekeeper_request_duration_seconds_count",
                endpoint="POST /query") == 6 * N + 1
    assert after.value("sqlgate_gatekeeper_in_flight_requests") == 0
    assert after.value("sqlgate_build_info", service="gatekeeper", version=version()) == 1


def test_metrics_only_on_the_metrics_port_and_only_with_a_client_certificate(front):
    answer = request(front.service.url + "/metrics", tls=front.service.tls)
    assert answer.status == 404 and "error" in answer.json
    status, content_type, text = get(front.metrics_port, "/metrics", front.client_tls)
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    assert "sqlgate_gatekeeper_requests_total" in text
    assert front.writer.secret not in text
    for tls in (TlsFiles(front.client_tls.ca_file), None):  # no certificate; no TLS at all
        with pytest.raises((ssl.SSLError, ConnectionError, RemoteDisconnected)):
            get(front.metrics_port, "/metrics", tls)


def test_one_request_id_in_both_logs_and_no_secret_in_either(front, proxy):
    secret = "secret-value-" + uuid.uuid4().hex
    by_header, in_body = "e2e-" + uuid.uuid4().hex, "e2e-body-" + uuid.uuid4().hex
    assert front.send(front.writer, {"sql": "SELECT ? AS echoed", "params": [secret],
                                     "mode": "random"},
                      **{"X-Request-Id": by_header}).status == 200
    assert front.send(front.writer, {"sql": "SELECT ?", "params": [secret],
                                     "request_id": in_body}).status == 200
    # The server's error quotes the value: the answer may, the logs may not.
    refused = front.send(front.writer, {"sql": "INSERT INTO sqlgate_test.items (id) VALUES (?)",
                                        "params": [secret]})
    assert 400 <= refused.status < 500, refused.json
    ids = (by_header, in_body)
    gatekeeper_log, proxy_log = front.service.log_path, proxy.log_path

    def lines(path: Path) -> dict[str, dict]:
        found = [line for line in request_lines(path) if line["request_id"] in ids]
        assert len(found) <= 2, found  # one line per request, never two
        return {line["request_id"]: line for line in found}

    wait_until(lambda: len(lines(gatekeeper_log)) == len(lines(proxy_log)) == 2, 10,
               "a line per request in both logs")
    at_gatekeeper, at_proxy = lines(gatekeeper_log), lines(proxy_log)
    for request_id in ids:
        assert at_gatekeeper[request_id]["service"] == "gatekeeper"
        assert at_proxy[request_id]["service"] == "proxy"
        assert at_gatekeeper[request_id]["key"] == at_proxy[request_id]["key"] == front.writer.name
        assert at_gatekeeper[request_id]["status"] == at_proxy[request_id]["status"] == 200
        assert at_gatekeeper[request_id]["endpoint"] == "POST /query"
    assert at_gatekeeper[by_header]["mode"] == at_proxy[by_header]["mode"] == "random"
    assert at_proxy[by_header]["node"] is not None and at_proxy[by_header]["query_type"] == "read"
    for path in (gatekeeper_log, proxy_log):
        text = path.read_text()
        assert secret not in text
        for key in (front.writer, front.reader, front.limited):
            assert key.secret not in text
    assert "SELECT" not in gatekeeper_log.read_text()


def test_proxy_errors_and_the_connection_limit_over_plain_http_in_multiprocess_mode(tmp_path):
    directory = tmp_path / "multiproc"
    directory.mkdir(mode=0o700)
    port, api_key = free_port(), "development-key-" + uuid.uuid4().hex
    service = ServiceProcess("services.gatekeeper", {
        "GATEKEEPER_LISTEN_ADDRESS": "127.0.0.1", "GATEKEEPER_INSECURE_HTTP": "true",
        "GATEKEEPER_PROXY_URL": f"http://127.0.0.1:{free_port()}",  # nothing there
        "GATEKEEPER_API_KEY": api_key, "GATEKEEPER_METRICS_PORT": str(port),
        "GATEKEEPER_MAX_CONNECTIONS": "2", "PROMETHEUS_MULTIPROC_DIR": str(directory),
    }, log_path=tmp_path / "gatekeeper.log")
    with service.running(expect_healthy=False):
        for _ in range(N):
            answer = request(service.url + "/query", {"sql": "SELECT 1"},
                             {"X-API-Key": api_key})
            assert answer.status == 503
        held = []
        try:
            for _ in range(2):  # each served once and kept open (keep-alive): the limit
                connection = HTTPConnection("127.0.0.1", service.port, timeout=5)
                connection.request("GET", "/openapi.json")
                assert connection.getresponse().read()
                held.append(connection)
            assert _refused(service.port)
        finally:
            for connection in held:
                connection.close()
        samples = scrape(port)  # plain HTTP: the Gatekeeper has no certificate
    assert samples.value("sqlgate_gatekeeper_proxy_errors_total", reason="unreachable") == N
    assert samples.value(REQUESTS, endpoint="POST /query", status="503", key="default") == N
    assert samples.value(REFUSALS, reason="connection_limit") >= 1
    assert samples.value(REFUSALS, reason="unauthenticated") == 0
    assert list(directory.glob("counter_*.db"))  # the values went through the directory


def _refused(port: int) -> bool:
    connection = HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/health")
        answer = connection.getresponse()
        return answer.status == 503 and b"connection limit" in answer.read()
    finally:
        connection.close()
