"""services.metrics: the metrics port's application, the exposition, and the aggregation of
several processes' values through one PROMETHEUS_MULTIPROC_DIR (real processes)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter
from tornado.httpserver import HTTPServer

from cluster.loopback.processes import free_port
from cluster.loopback.services import PROJECT_ROOT
from services.gatekeeper.metrics import GatekeeperMetrics
from services.metrics import BUCKETS, LabelCache, announce, metrics_app, version
from services.proxy.metrics import ProxyMetrics
from services.requestlog import utc_timestamp
from tests.services.scrape import get, parse


@pytest.fixture
def serving() -> Iterator:
    """Serve a Tornado application on a free port in a thread; yields a starter."""
    stops = []

    def start(app) -> int:
        port = free_port()
        ready = threading.Event()
        holder = {}

        async def run() -> None:
            server = HTTPServer(app)
            server.listen(port, "127.0.0.1")
            holder["loop"], holder["stop"] = asyncio.get_running_loop(), asyncio.Event()
            ready.set()
            await holder["stop"].wait()
            server.stop()

        thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
        thread.start()
        assert ready.wait(10)
        stops.append((holder, thread))
        return port

    yield start
    for holder, thread in stops:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(10)


def test_the_metrics_app_serves_the_text_format_on_get_metrics_only(serving):
    registry = CollectorRegistry()
    counter = Counter("sqlgate_test_things_total", "things", ("kind",), registry=registry)
    children = LabelCache(counter)
    assert children("a") is children("a")  # made once, then looked up
    for _ in range(3):
        children("a").inc()
    announce("proxy", registry)
    port = serving(metrics_app(registry))

    status, content_type, text = get(port)
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    samples = parse(text)
    assert samples.value("sqlgate_test_things_total", kind="a") == 3
    assert samples.value("sqlgate_build_info", service="proxy", version=version()) == 1

    for path, expected in (("/", 404), ("/metrics/x", 404), ("/health", 404)):
        status, content_type, text = get(port, path)
        assert (status, content_type) == (expected, "application/json"), path
        assert "error" in json.loads(text)


def test_every_metric_of_the_contract_is_exposed_with_its_labels():
    registry = CollectorRegistry()
    ProxyMetrics(registry)
    GatekeeperMetrics(registry)
    families = {metric.name: metric for metric in registry.collect()}
    expected = {
        "sqlgate_proxy_requests": ("counter", {"endpoint", "mode", "query_type", "node",
                                               "status", "key"}),
        "sqlgate_proxy_request_duration_seconds": ("histogram", {"endpoint", "mode"}),
        "sqlgate_proxy_in_flight_requests": ("gauge", set()),
        "sqlgate_proxy_pool_connections": ("gauge", {"node"}),
        "sqlgate_proxy_pool_in_use": ("gauge", {"node"}),
        "sqlgate_proxy_pool_waiters": ("gauge", {"node"}),
        "sqlgate_proxy_node_up": ("gauge", {"node"}),
        "sqlgate_proxy_node_primary": ("gauge", {"node"}),
        "sqlgate_proxy_node_fenced": ("gauge", {"node"}),
        "sqlgate_proxy_epoch": ("gauge", set()),
        "sqlgate_proxy_primary_semi_sync": ("gauge", set()),
        "sqlgate_proxy_replica_io_running": ("gauge", {"node"}),
        "sqlgate_proxy_replica_sql_running": ("gauge", {"node"}),
        "sqlgate_proxy_replica_in_rotation": ("gauge", {"node"}),
        "sqlgate_proxy_replica_lag_seconds": ("gauge", {"node"}),
        "sqlgate_proxy_node_icmp_rtt_seconds": ("gauge", {"node"}),
        "sqlgate_proxy_node_latency_seconds": ("gauge", {"node"}),
        "sqlgate_proxy_read_waits": ("counter", {"node"}),
        "sqlgate_proxy_read_wait_seconds": ("counter", {"node"}),
        "sqlgate_proxy_retries": ("counter", {"node", "reason"}),
        "sqlgate_proxy_refusals": ("counter", {"reason"}),
        "sqlgate_proxy_open_transactions": ("gauge", set()),
        "sqlgate_gatekeeper_requests": ("counter", {"endpoint", "status", "key"}),
        "sqlgate_gatekeeper_request_duration_seconds": ("histogram", {"endpoint"}),
        "sqlgate_gatekeeper_in_flight_requests": ("gauge", set()),
        "sqlgate_gatekeeper_rate_limited": ("counter", {"key"}),
        "sqlgate_gatekeeper_refusals": ("counter", {"reason"}),
        "sqlgate_gatekeeper_proxy_errors": ("counter", {"reason"}),
        "sqlgate_gatekeeper_proxy_requests": ("counter", {"proxy"}),
        "sqlgate_gatekeeper_proxy_outstanding_requests": ("gauge", {"proxy"}),
        "sqlgate_gatekeeper_proxy_failures": ("counter", {"proxy", "reason"}),
        "sqlgate_gatekeeper_proxy_up": ("gauge", {"proxy"}),
        "sqlgate_gatekeeper_rate_store_up": ("gauge", set()),
        "sqlgate_gatekeeper_rate_store_fallbacks": ("counter", set()),
    }
    assert set(families) == set(expected)
    proxy, gatekeeper = ProxyMetrics(CollectorRegistry()), GatekeeperMetrics(CollectorRegistry())
    for name, (kind, labels) in expected.items():
        assert families[name].type == kind, name
        owner = proxy if name.startswith("sqlgate_proxy") else gatekeeper
        (metric,) = [m for m in vars(owner).values() if getattr(m, "_name", None) == name]
        assert set(metric._labelnames) == labels, name
    assert proxy.duration._upper_bounds[:-1] == list(BUCKETS)
    assert gatekeeper.duration._upper_bounds[:-1] == list(BUCKETS)


def test_utc_timestamps_are_iso_8601_with_milliseconds():
    assert utc_timestamp(1_700_000_000.25) == "2023-11-14T22:13:20.250Z"


WRITER = textwrap.dedent("""
    import os, sys
    from services.gatekeeper.metrics import gatekeeper_metrics
    from services.metrics import announce
    if len(sys.argv) > 2:  # set only after prometheus_client was imported, as a runner may
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[2]
    metrics = gatekeeper_metrics()
    announce("gatekeeper")
    for _ in range(int(sys.argv[1])):
        metrics.requests.labels("POST /query", "200", "ci").inc()
        metrics.duration.labels("POST /query").observe(0.002)
    metrics.in_flight.inc()
    metrics.connection_refused()
""")
READER = textwrap.dedent("""
    import sys
    from prometheus_client import generate_latest, multiprocess
    from services.metrics import exposition_registry
    for pid in sys.argv[1:]:
        multiprocess.mark_process_dead(int(pid))
    sys.stdout.write(generate_latest(exposition_registry()).decode())
""")


def _python(code: str, directory: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, check=True, timeout=60)


def test_two_processes_add_up_in_one_multiprocess_directory(tmp_path):
    directory = tmp_path / "multiproc"
    directory.mkdir(mode=0o700)
    early = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    late = {name: value for name, value in os.environ.items()
            if name != "PROMETHEUS_MULTIPROC_DIR"}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, "5"], cwd=PROJECT_ROOT, env=early),
               subprocess.Popen([sys.executable, "-c", WRITER, "7", str(directory)],
                                cwd=PROJECT_ROOT, env=late)]
    for writer in writers:
        assert writer.wait(60) == 0
    assert len(list(directory.glob("*.db"))) >= 2  # one file per process and kind

    samples = parse(_python(READER, directory).stdout)
    assert samples.value("sqlgate_gatekeeper_requests_total", endpoint="POST /query",
                         status="200", key="ci") == 12
    assert samples.value("sqlgate_gatekeeper_request_duration_seconds_count",
                         endpoint="POST /query") == 12
    assert samples.value("sqlgate_gatekeeper_request_duration_seconds_bucket",
                         endpoint="POST /query", le="0.0025") == 12
    assert samples.value("sqlgate_gatekeeper_request_duration_seconds_bucket",
                         endpoint="POST /query", le="0.001") == 0
    assert samples.value("sqlgate_gatekeeper_refusals_total", reason="connection_limit") == 2
    assert samples.value("sqlgate_gatekeeper_in_flight_requests") == 2  # livesum
    assert samples.value("sqlgate_build_info", service="gatekeeper", version=version()) == 1

    # A worker that died (marked so by the runner): its live gauges go, its counts stay.
    samples = parse(_python(READER, directory, str(writers[0].pid)).stdout)
    assert samples.value("sqlgate_gatekeeper_in_flight_requests") == 1
    assert samples.value("sqlgate_gatekeeper_requests_total", endpoint="POST /query",
                         status="200", key="ci") == 12
