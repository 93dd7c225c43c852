"""The load report's server side: ``--prometheus URL`` adds what the Proxy itself counted and
timed during the run, from a real Prometheus scraping the real services' metrics ports
(tests/monitoring.py), as a table and a PNG in report.md; a Prometheus that cannot answer
costs the report that section only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.loopback.processes import free_port
from cluster.loopback.services import PROJECT_ROOT
from cluster.record import ClusterRecord, HostRecord, write_record
from loadtest.workload import MODES
from tests.monitoring import png_size

N = 30
TABLE = "sqlgate_test.sqlgate_load_prometheus"


@pytest.fixture(scope="module")
def metrics_cluster_env(db_cluster, metrics_services, tmp_path_factory) -> dict[str, str]:
    """A loopback cluster file for the Gatekeeper whose Proxy Prometheus scrapes."""
    directory = tmp_path_factory.mktemp("metrics-cluster")
    write_record(ClusterRecord(
        provider="loopback", cluster_name="loopback",
        gatekeeper_url=metrics_services.gatekeeper.url, api_key=metrics_services.api_key,
        ca_file=str(db_cluster.ca_file),
        hosts=tuple(HostRecord(n.name, "primary" if n is db_cluster.primary else "replica",
                               "127.0.0.1", port=n.port) for n in db_cluster.nodes),
    ), directory)
    return {**os.environ, "SQLGATE_CLUSTER_DIR": str(directory), "SQLGATE_PROVIDER": "loopback"}


def run_report(env: dict[str, str], out: Path, *extra: str) -> tuple[subprocess.CompletedProcess,
                                                                    Path]:
    done = subprocess.run([sys.executable, "-m", "loadtest.report", "-n", str(N), "--table",
                           TABLE, "--out", str(out), *extra], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    directories = sorted(out.iterdir())
    assert len(directories) == 1, (directories, done.stdout, done.stderr)
    return done, directories[0]


def warm_up(services, prometheus) -> None:
    """Reads in every mode, scraped before the run, as on a Proxy that served before: ``rate``
    never sees a label set's first scrape, so the charts would miss a fresh Proxy's first
    requests of a mode (the totals would not)."""
    with services.gatekeeper.client(services.api_key) as client:
        for _ in range(10):
            for mode in MODES:
                assert client.query("SELECT 1", mode=mode).ok
    prometheus.wait_for(f"count(sum by (mode) (sqlgate_proxy_requests_total{{query_type='read',"
                        f"mode=~'{'|'.join(MODES)}'}})) == {len(MODES)}")
    time.sleep(1.5)  # one more scrape (interval 1 s): the run starts after it


def test_report_draws_the_proxys_own_figures(metrics_cluster_env, metrics_services, prometheus,
                                             tmp_path):
    warm_up(metrics_services, prometheus)
    done, directory = run_report(metrics_cluster_env, tmp_path, "--prometheus", prometheus.url)
    assert done.returncode == 0, done.stdout + done.stderr
    run = json.loads((directory / "run.json").read_text())
    assert run["started_at"] < run["finished_at"]
    seen = run["prometheus"]
    assert seen["url"] == prometheus.url and "error" not in seen, seen
    assert seen["start"] == run["started_at"] and seen["end"] == run["finished_at"]
    assert seen["points"] > 0, f"no data points: {seen}; targets {prometheus.targets_health()}"
    assert seen["series"]["requests"] >= len(MODES) - 1 and seen["series"]["p95"] >= 1, seen
    # The Proxy counted exactly the run's reads in every mode, and timed them.
    reads = {t["mode"]: t for t in seen["totals"] if t["query_type"] == "read"}
    assert set(MODES) <= set(reads), seen["totals"]
    for mode in MODES:
        assert reads[mode]["requests"] == N, reads[mode]
        assert 0 < reads[mode]["p50_ms"] <= reads[mode]["p95_ms"], reads[mode]
        assert seen["peak_requests_per_s"][mode] > 0, seen["peak_requests_per_s"]

    assert png_size(directory / "server.png") > (600, 400)
    markdown = (directory / "report.md").read_text()
    client, server = markdown.split("## Server side (Prometheus)")
    assert "![latency](latency.png)" in client and "| direct | write | 30 | 0 |" in client
    assert "![server side](server.png)" in server and prometheus.url in server
    for mode in MODES:
        assert f"| {mode} | read |" in server, server


def test_unreachable_prometheus_costs_only_the_server_side(metrics_cluster_env, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    done, directory = run_report(metrics_cluster_env, tmp_path, "--modes", "direct",
                                 "--prometheus", dead)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no server side: cannot ask Prometheus" in done.stderr
    markdown = (directory / "report.md").read_text()
    assert f"Not available: cannot ask Prometheus at {dead}" in markdown
    assert not (directory / "server.png").exists()
    assert "cannot ask Prometheus" in json.loads((directory / "run.json").read_text())[
        "prometheus"]["error"]
