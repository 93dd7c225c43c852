"""The Proxy's metrics and request log, on a real Proxy over the MariaDB trio: N requests of
each kind make each counter by label grow by N; the health and pool gauges show every node;
the metrics port speaks the Proxy's mutual TLS and the public port has no /metrics."""

from __future__ import annotations

import math
import ssl
import uuid
from collections.abc import Iterator
from http.client import RemoteDisconnected

import pytest

from cluster.loopback.processes import free_port
from cluster.loopback.services import ServiceProcess
from cluster.waiting import wait_until
from services.client import TlsFiles
from services.contract import KEY_NAME_HEADER
from tests.conftest import http, proxy_service, scratch_tables
from tests.services.scrape import Samples, get, request_lines, scrape

N = 5
KEY = "metrics-probe"
REQUESTS = "sqlgate_proxy_requests_total"


@pytest.fixture(scope="module")
def observed(db_cluster, tmp_path_factory) -> Iterator[ServiceProcess]:
    # A lag limit no loaded machine reaches: these tests count where reads went, and a
    # replica briefly out of rotation would send them to the primary.
    service = proxy_service(db_cluster, tmp_path_factory.mktemp("logs") / "proxy.log",
                            PROXY_METRICS_PORT=str(free_port()), PROXY_MAX_REPLICA_LAG="30")
    with service.running():
        yield service


def metrics_port(service: ServiceProcess) -> int:
    return int(service.env["PROXY_METRICS_PORT"])


def metrics(service: ServiceProcess) -> Samples:
    return scrape(metrics_port(service), service.tls)


def send(service: ServiceProcess, path: str, body, scope: str = "admin", **headers: str):
    return http(service.url + path, body, {KEY_NAME_HEADER: KEY, **headers}, scope=scope)


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return after.total(name, **labels) - before.total(name, **labels)


@pytest.fixture
def table(db_cluster) -> Iterator[str]:
    with scratch_tables(db_cluster, "metrics") as make:
        yield make()


def in_rotation(service: ServiceProcess, db_cluster) -> None:
    wait_until(lambda: all(metrics(service).value("sqlgate_proxy_replica_in_rotation",
                                                   node=node.name) == 1
                           for node in db_cluster.replicas), 30, "both replicas in rotation")


def test_each_kind_of_request_counts_once_by_its_labels(observed, db_cluster, table):
    in_rotation(observed, db_cluster)
    primary = db_cluster.primary.name
    before = metrics(observed)
    for index in range(N):
        assert send(observed, "/query", {"sql": "SELECT 1", "mode": "direct"}).status == 200
        assert send(observed, "/query", {"sql": "SELECT 1", "mode": "random"}).status == 200
        assert send(observed, "/query", {"sql": f"INSERT INTO {table} VALUES (?, 'x')",
                                         "params": [index], "mode": "random"}).status == 200
        assert send(observed, "/batch", {"statements": [{"sql": "SELECT 1"}] * 2,
                                         "transaction": False, "mode": "least"}).status == 200
        opened = send(observed, "/transactions", {})
        assert opened.status == 201
        assert send(observed, f"/transactions/{opened.json['transaction_id']}/commit",
                    {}).status == 200
        assert send(observed, "/query", b"{nope").status == 400
        assert send(observed, "/query", {"sql": f"DELETE FROM {table}"}, scope="read"
                    ).status == 403
    after = metrics(observed)

    def requests(**labels: str) -> float:
        return grew(before, after, REQUESTS, key=KEY, **labels)

    assert requests(endpoint="POST /query", mode="direct", query_type="read", node=primary,
                    status="200") == N
    # On replicas, unless one left the rotation for a moment (a lag spike on a busy machine).
    assert requests(endpoint="POST /query", mode="random", query_type="read",
                    status="200") == N
    assert requests(endpoint="POST /query", mode="", query_type="write", node=primary,
                    status="200") == N
    assert requests(endpoint="POST /batch", mode="least", query_type="read", status="200") == N
    assert requests(endpoint="POST /transactions", mode="", node=primary, status="201") == N
    assert requests(endpoint="POST /transactions/{id}/commit", node=primary,
                    status="200") == N
    assert requests(endpoint="POST /query", status="400", node="none") == N
    assert requests(endpoint="POST /query", status="403", query_type="write") == N
    assert requests() == 8 * N
    assert grew(before, after, "sqlgate_proxy_refusals_total", reason="bad_request") == N
    assert grew(before, after, "sqlgate_proxy_refusals_total", reason="scope") == N

    # Durations: one observation per request, by endpoint and mode.
    histogram = "sqlgate_proxy_request_duration_seconds_count"
    assert grew(before, after, histogram, endpoint="POST /query", mode="direct") == N
    assert grew(before, after, histogram, endpoint="POST /query", mode="random") == N
    assert grew(before, after, histogram, endpoint="POST /query") == 5 * N
    assert grew(before, after, "sqlgate_proxy_request_duration_seconds_bucket",
                endpoint="POST /query", mode="direct", le="+Inf") == N
    assert after.value("sqlgate_proxy_in_flight_requests") == 0
    assert after.value("sqlgate_proxy_open_transactions") == 0


def test_a_read_with_a_token_waits_on_its_replica_and_is_counted(observed, db_cluster, table):
    in_rotation(observed, db_cluster)
    before = metrics(observed)
    for index in range(N):
        write = send(observed, "/query", {"sql": f"INSERT INTO {table} VALUES (?, 'w')",
                                          "params": [index]})
        read = send(observed, "/query", {"sql": f"SELECT v FROM {table} WHERE id = ?",
                                         "params": [index], "mode": "random",
                                         "after": write.json["token"]})
        assert read.status == 200 and read.json["node"] != db_cluster.primary.name
        assert read.json["rows"] == [["w"]] and "waited_ms" in read.json
    after = metrics(observed)
    replicas = {node.name for node in db_cluster.replicas}
    assert grew(before, after, "sqlgate_proxy_read_waits_total") == N
    assert {labels["node"] for labels in after.labelled("sqlgate_proxy_read_waits_total")
            } <= replicas
    assert grew(before, after, "sqlgate_proxy_read_wait_seconds_total") >= 0
    assert grew(before, after, "sqlgate_proxy_requests_total", key=KEY, mode="random",
                query_type="read", status="200") == N


def test_node_and_pool_gauges_show_every_node(observed, db_cluster):
    in_rotation(observed, db_cluster)
    send(observed, "/query", {"sql": "SELECT 1", "mode": "direct"})

    def settled() -> Samples | None:  # set at each health check: the pool is idle again
        samples = metrics(observed)
        idle = samples.value("sqlgate_proxy_pool_in_use", node=db_cluster.primary.name) == 0
        return samples if idle else None

    samples = wait_until(settled, 10, "the primary's pool idle")
    primary = db_cluster.primary.name
    assert samples.value("sqlgate_proxy_node_up", node=primary) == 1
    assert samples.value("sqlgate_proxy_node_primary", node=primary) == 1
    assert samples.value("sqlgate_proxy_primary_semi_sync") == 1
    assert samples.value("sqlgate_proxy_epoch") == db_cluster.epoch
    assert samples.value("sqlgate_proxy_pool_connections", node=primary) >= 1
    assert samples.value("sqlgate_proxy_pool_waiters", node=primary) == 0
    assert samples.value("sqlgate_proxy_node_latency_seconds", node=primary) > 0
    for node in db_cluster.replicas:
        assert samples.value("sqlgate_proxy_node_up", node=node.name) == 1
        assert samples.value("sqlgate_proxy_node_primary", node=node.name) == 0
        assert samples.value("sqlgate_proxy_replica_io_running", node=node.name) == 1
        assert samples.value("sqlgate_proxy_replica_sql_running", node=node.name) == 1
        assert samples.value("sqlgate_proxy_replica_in_rotation", node=node.name) == 1
        lag = samples.value("sqlgate_proxy_replica_lag_seconds", node=node.name)
        assert 0 <= lag < 10 and not math.isnan(lag)  # measured (a loaded machine lags)
        assert ("sqlgate_proxy_node_icmp_rtt_seconds",
                frozenset({("node", node.name)})) in samples
    build = [labels for labels in samples.labelled("sqlgate_build_info")]
    assert [labels["service"] for labels in build] == ["proxy"]


def test_metrics_only_on_the_metrics_port_and_only_with_a_client_certificate(observed):
    answer = http(observed.url + "/metrics", scope=None)
    assert answer.status == 404 and "error" in answer.json
    status, content_type, _ = get(metrics_port(observed), "/metrics", observed.tls)
    assert (status, content_type.split(";")[0]) == (200, "text/plain")
    status, content_type, _ = get(metrics_port(observed), "/elsewhere", observed.tls)
    assert (status, content_type) == (404, "application/json")
    without_certificate = TlsFiles(observed.tls.ca_file)
    with pytest.raises((ssl.SSLError, ConnectionError, RemoteDisconnected)):
        get(metrics_port(observed), "/metrics", without_certificate)


def test_one_json_line_per_request_without_sql_or_values(observed, table):
    secret = "secret-value-" + uuid.uuid4().hex
    request_id = "proxy-log-" + uuid.uuid4().hex
    answer = send(observed, "/query", {"sql": f"SELECT ? AS {table.split('.')[1]}",
                                       "params": [secret], "mode": "random",
                                       "request_id": request_id})
    assert answer.status == 200
    failing_id = "proxy-log-fail-" + uuid.uuid4().hex
    assert send(observed, "/query", {"sql": "SELECT * FROM sqlgate_test.no_such_table "
                                     "WHERE v = ?", "params": [secret]},
                **{"X-Request-Id": failing_id}).status == 400

    def lines() -> list[dict]:
        return [line for line in request_lines(observed.log_path)
                if line["request_id"] in (request_id, failing_id)]

    wait_until(lambda: len(lines()) == 2, 10, "both request lines")
    ok, failed = sorted(lines(), key=lambda line: line["request_id"] != request_id)
    assert set(ok) == {"ts", "service", "worker", "request_id", "client", "key", "endpoint",
                       "mode", "query_type", "node", "status", "elapsed_ms", "attempts",
                       "waited_ms"}
    assert ok["service"] == "proxy" and ok["worker"] == 0 and ok["key"] == KEY
    assert ok["client"] == "127.0.0.1"
    assert (ok["endpoint"], ok["mode"], ok["query_type"], ok["status"], ok["attempts"]) == (
        "POST /query", "random", "read", 200, 1)
    assert ok["node"] == answer.json["node"] and ok["ts"].endswith("Z")
    assert failed["status"] == 400 and failed["query_type"] == "read"
    text = observed.log_path.read_text()
    assert secret not in text and "no_such_table" not in text and "SELECT" not in text
