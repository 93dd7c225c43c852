"""The load tests for real, short: the report end to end, sysbench on loopback, the Locust UI.

Everything runs against the session's loopback stack (conftest's fixtures). The figures are
checked against the run itself: every request id answered, the rows written counted in the
database, the latencies consistent with the wall time, the nodes that answered per mode.
"""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from cluster.loopback.processes import free_port, terminate
from cluster.loopback.services import PROJECT_ROOT
from cluster.record import ClusterRecord, HostRecord, write_record
from cluster.waiting import wait_until
from loadtest import sysbench
from loadtest.nodes import loopback_nodes
from loadtest.summary import COLUMNS
from loadtest.workload import KINDS, MODES

N = 50
TABLE = "sqlgate_test.sqlgate_load"


@pytest.fixture(scope="module")
def cluster_env(db_cluster, gatekeeper, proxy, api_key, tmp_path_factory) -> dict[str, str]:
    """A loopback cluster file for the session's stack, as `python -m cluster.loopback` writes."""
    directory = tmp_path_factory.mktemp("cluster")
    write_record(ClusterRecord(
        provider="loopback", cluster_name="loopback", gatekeeper_url=gatekeeper.url,
        api_key=api_key, ca_file=str(db_cluster.ca_file),
        hosts=tuple(HostRecord(n.name, "primary" if n is db_cluster.primary else "replica",
                               "127.0.0.1", port=n.port) for n in db_cluster.nodes),
    ), directory)
    return {**os.environ, "SQLGATE_CLUSTER_DIR": str(directory), "SQLGATE_PROVIDER": "loopback"}


def run_report(env: dict[str, str], out: Path, *extra: str) -> tuple[subprocess.CompletedProcess,
                                                                    Path, float]:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "loadtest.report", "-n", str(N), "--table",
                           TABLE, "--out", str(out), *extra], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    wall = time.monotonic() - start
    directories = sorted(out.iterdir())
    assert len(directories) == 1, (directories, done.stdout, done.stderr)
    return done, directories[0], wall


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as rows:
        return list(csv.DictReader(rows))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    assert data[-8:-4] == b"IEND", "PNG is truncated"
    return struct.unpack(">II", data[16:24])


def test_report_end_to_end(cluster_env, db_cluster, tmp_path):
    done, directory, wall = run_report(cluster_env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    run = json.loads((directory / "run.json").read_text())
    assert run["failed"] == 0

    table = read_csv(directory / "latency.csv")
    assert list(table[0]) == COLUMNS
    assert [(r["mode"], r["type"]) for r in table] == [(m, k) for m in MODES for k in KINDS]
    samples = read_csv(directory / "requests.csv")
    assert len(samples) == len(MODES) * len(KINDS) * N
    assert len({s["request_id"] for s in samples}) == len(samples)
    assert all(s["ok"] == "True" and s["status"] == "200" for s in samples)
    for row in table:
        mine = [s for s in samples if (s["mode"], s["kind"]) == (row["mode"], row["type"])]
        latencies = sorted(float(s["latency_ms"]) for s in mine)
        assert int(row["requests"]) == len(mine) == N and int(row["failures"]) == 0
        assert 0 < latencies[0] <= float(row["p50_ms"]) <= float(row["p95_ms"]) \
            <= float(row["p99_ms"]) <= float(row["max_ms"]) == pytest.approx(latencies[-1], 1e-3)
        assert float(row["avg_ms"]) == pytest.approx(sum(latencies) / N, rel=1e-3)
        # The server's own time is part of what the client measured.
        assert all(float(s["server_ms"]) <= float(s["latency_ms"]) for s in mine)
        nodes = {s["node"] for s in mine}
        if row["type"] == "write" or row["mode"] == "direct":
            assert nodes == {"primary"}, row
        else:
            assert nodes <= {"replica1", "replica2"} and nodes, row
    # One sequential client: the requests' latencies add up to less than the whole run took.
    assert sum(float(s["latency_ms"]) for s in samples) / 1000 < wall
    for mode in MODES:
        rows = db_cluster.primary.sql(f"SELECT COUNT(*) AS n FROM {TABLE} WHERE "
                                      f"run_id = '{run['run_id']}' AND mode = '{mode}'")
        assert rows[0]["n"] == N, mode

    assert png_size(directory / "latency.png") > (400, 300)
    markdown = (directory / "report.md").read_text()
    assert "| direct | write | 50 | 0 |" in markdown and "0 failed" in markdown


def test_report_counts_failures_and_exits_non_zero(cluster_env, tmp_path):
    """Nothing can be sent after a zero deadline: every request is a counted failure."""
    done, directory, _ = run_report(cluster_env, tmp_path, "--modes", "direct", "--deadline", "0")
    assert done.returncode == 1, done.stdout + done.stderr
    table = read_csv(directory / "latency.csv")
    assert [(r["requests"], r["failures"]) for r in table] == [(str(N), str(N))] * 2
    assert f"{2 * N} request(s) failed" in done.stderr
    assert "deadline passed" in (directory / "report.md").read_text()
    png_size(directory / "latency.png")


def test_sysbench_baseline_on_loopback_nodes(db_cluster):
    options = sysbench.Options(tables=1, table_size=500, threads=2, time_s=2,
                               password="sb-test-password")
    nodes, runner = loopback_nodes(db_cluster, options)
    start = time.monotonic()
    results = sysbench.Baseline(nodes, options, runner, progress=lambda _: None).run()
    elapsed = time.monotonic() - start
    assert [(r.node, r.test) for r in results] == [
        ("primary", "oltp_read_write"), ("replica1", "oltp_read_only"),
        ("replica2", "oltp_read_only")]
    for result in results:
        assert result.tps > 0 and result.qps > result.tps, result
        assert 0 < result.latency_avg_ms <= result.latency_p95_ms * 1.5, result
        # A client can't finish more transactions than its threads fit in the run.
        assert result.tps * result.latency_avg_ms / 1000 <= options.threads * 1.05, result
    assert elapsed >= 3 * options.time_s
    tables = db_cluster.primary.sql("SELECT COUNT(*) AS n FROM information_schema.tables "
                                    "WHERE table_schema = 'sbtest'")
    assert tables[0]["n"] == 0, "sysbench cleanup left tables behind"
    assert "| primary | primary | oltp_read_write |" in sysbench.markdown_table(results)


def test_sysbench_output_is_parsed_or_refused():
    with pytest.raises(ValueError, match="tps"):
        sysbench.parse_run_output("FATAL: unable to connect")


def web(url: str, form: dict | None = None) -> bytes:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    with urllib.request.urlopen(url, data=data, timeout=10) as answer:
        return answer.read()


def test_locust_web_ui_runs_a_scenario(cluster_env, gatekeeper, tmp_path):
    """`locust -f loadtest/locustfile.py` with no target flags finds the cluster by its file."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "locust.log").open("wb") as log:
        locust = subprocess.Popen(
            [str(Path(sys.executable).with_name("locust")), "-f", "loadtest/locustfile.py",
             "--web-host", "127.0.0.1", "--web-port", str(port)],
            cwd=PROJECT_ROOT, env=cluster_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        page = wait_until(lambda: web(url + "/").decode(), 30, "the Locust web UI")
        for option in ("write_percent", "table", gatekeeper.url):
            assert option in page, f"{option} not in the web UI"
        assert json.loads(web(url + "/swarm", {
            "user_count": 2, "spawn_rate": 2, "mode": "random", "write_percent": 50,
            "table": TABLE}))["success"]

        def enough() -> dict | None:
            stats = json.loads(web(url + "/stats/requests"))
            counts = {s["name"]: s["num_requests"] for s in stats["stats"]}
            return stats if min(counts.get("random read", 0),
                                counts.get("random write", 0)) >= 20 else None

        stats = wait_until(enough, 30, "Locust to run 20 reads and 20 writes")
        web(url + "/stop", {})
        names = {s["name"] for s in stats["stats"]}
        assert names == {"random read", "random write", "Aggregated"}, names
        assert stats["fail_ratio"] == 0, json.loads(web(url + "/stats/requests"))["errors"]
    finally:
        terminate(locust, grace=15)


def test_report_without_a_cluster_says_so_in_one_line(tmp_path):
    env = {**os.environ, "SQLGATE_CLUSTER_DIR": str(tmp_path / "none")}
    env.pop("SQLGATE_PROVIDER", None)
    done = subprocess.run([sys.executable, "-m", "loadtest.report", "--out", str(tmp_path)],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2 and "no cluster file" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not list(tmp_path.glob("2*"))


def test_sb_password_stays_off_command_lines(tmp_path):
    options = sysbench.Options(password="s3cret-pw")
    node = sysbench.Node("replica1", "replica", socket="/run/mysqld/mysqld.sock")
    argvs = [sysbench.sysbench_argv("oltp_read_only", "run", node, options),
             sysbench.client_argv(node, options, "SELECT 1")]
    assert not any("s3cret-pw" in arg for argv in argvs for arg in argv)
    fake_salt = tmp_path / "salt"
    fake_salt.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$0.argv"; cat > "$0.stdin"\n'
                         'echo \'{"replica1": {"retcode": 0, "stdout": "ok", "stderr": ""}}\'\n')
    fake_salt.chmod(0o755)
    done = sysbench.ThroughSalt([str(fake_salt)])(node, argvs[1], 10,
                                                  sysbench.client_env(options))
    assert done == sysbench.Completed(0, "ok", "")
    assert "s3cret-pw" not in (tmp_path / "salt.argv").read_text()
    stdin = (tmp_path / "salt.stdin").read_text().splitlines()
    assert 'env={"MYSQL_PWD": "s3cret-pw"}' in stdin and "output_loglevel=quiet" in stdin
