"""End to end: ``bootstrap.py up --provider local`` through a real Salt master and minions, the
acceptance checks of the local cluster, a second ``up`` that changes nothing, and ``down``.

The cluster has its own name, subnet and cluster directory, so it cannot collide with a
developer's running cluster; it is taken down even when a check fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.providers.local.hosts import RUNTIME_ROOT
from cluster.record import ClusterRecord, HostRecord, read_record
from cluster.state import PROJECT_ROOT
from cluster.waiting import wait_until
from loadtest.consistency import run_pairs
from loadtest.workload import DEFAULT_TABLE, create_table_sql
from services.client import Client

pytestmark = pytest.mark.cluster

CLUSTER_NAME = "sqlgate-e2e"
SUBNET = "10.213.251.0/24"
ACTOR_COUNT = "SELECT COUNT(*) FROM sakila.actor"


@dataclass
class E2ECluster:
    directory: Path
    first_up: subprocess.CompletedProcess[str]
    record: ClusterRecord

    def bootstrap(self, command: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
        return run_bootstrap(command, self.directory, timeout)

    def host(self, name: str) -> HostRecord:
        return self.record.host(name)

    @property
    def namespaces(self) -> list[str]:
        return [h.namespace for h in self.record.hosts]


def run_bootstrap(command: str, directory: Path,
                  timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "bootstrap.py", command, "--provider", "local",
         "--cluster-name", CLUSTER_NAME, "--subnet", SUBNET],
        cwd=PROJECT_ROOT, env={**os.environ, "SQLGATE_CLUSTER_DIR": str(directory)},
        capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def cluster() -> Iterator[E2ECluster]:
    if os.geteuid() != 0:
        pytest.skip("the local cluster needs root (namespaces, bridge, mounts)")
    directory = PROJECT_ROOT / ".cluster" / "e2e-test"
    try:
        first_up = run_bootstrap("up", directory)
        assert first_up.returncode == 0, first_up.stdout + first_up.stderr
        record = read_record("local", directory)
        yield E2ECluster(directory, first_up, record)
    finally:
        # Idempotent: test_down_leaves_nothing normally did it already.
        run_bootstrap("down", directory, timeout=300)
        with contextlib.suppress(OSError):
            directory.rmdir()


def post(url: str, api_key: str, path: str, body: dict) -> tuple[int, dict]:
    with Client(url, api_key, timeout=10) as client:
        answer = client.post(path, body)
    return answer.status, answer.json


def query(url: str, api_key: str, sql: str, mode: str) -> dict:
    status, answer = post(url, api_key, "/query", {"sql": sql, "mode": mode})
    assert status == 200, answer
    return answer


def tcp_answers(address: str, port: int, timeout: float = 2.0) -> bool:
    """True when a TCP connection is accepted; refused or timed out is False."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def tcp_answers_from(namespace: str, address: str, port: int) -> bool:
    probe = f"import socket; socket.create_connection(({address!r}, {port}), timeout=2)"
    result = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", probe],
                            capture_output=True, timeout=30, check=False)
    return result.returncode == 0


def running(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited; only its parent's reaping is left)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_up_prints_the_url_the_key_file_and_a_working_curl_line(cluster):
    out = cluster.first_up.stdout
    assert f"Gatekeeper: {cluster.record.gatekeeper_url}" in out
    assert cluster.record.provider_data["api_key_file"] in out
    curl = next(line.strip() for line in out.splitlines() if line.strip().startswith("curl "))
    reply = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30,
                           check=True)
    assert json.loads(reply.stdout)["rows"] == [[200]]


def test_cluster_file_is_private_and_complete(cluster):
    path = cluster.directory / "local.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cluster.record.api_key
    roles = {h.name: h.role for h in cluster.record.hosts}
    assert roles == {"saltmaster": "saltmaster", "gatekeeper": "gatekeeper", "proxy": "proxy",
                     "primary": "primary", "replica1": "replica", "replica2": "replica"}
    for host in cluster.record.hosts:
        assert host.namespace in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                   text=True, check=True).stdout
        assert host.address.startswith("10.213.251.")


@pytest.mark.parametrize(("mode", "nodes"), [("direct", {"primary"}),
                                             ("random", {"replica1", "replica2"}),
                                             ("ping", {"replica1", "replica2"})])
def test_sakila_actor_count_in_every_mode(cluster, mode, nodes):
    answer = query(cluster.record.gatekeeper_url, cluster.record.api_key, ACTOR_COUNT, mode)
    assert answer["rows"] == [[200]]
    assert answer["node"] in nodes


def test_from_the_machine_only_the_gatekeeper_answers(cluster):
    assert tcp_answers(cluster.host("gatekeeper").address, 80)
    assert not tcp_answers(cluster.host("proxy").address, 5000)
    for name in ("primary", "replica1", "replica2"):
        assert not tcp_answers(cluster.host(name).address, 3306), name


def test_database_port_is_closed_to_the_gatekeeper_and_open_to_the_proxy(cluster):
    primary = cluster.host("primary").address
    assert not tcp_answers_from(cluster.host("gatekeeper").namespace, primary, 3306)
    assert tcp_answers_from(cluster.host("proxy").namespace, primary, 3306)


def proxy_service_uid(pid: str) -> str | None:
    """The real uid of ``pid`` if it is the Proxy service (None for others or gone ones)."""
    try:
        if b"services.proxy" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
        return Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0]
    except OSError:
        return None


def test_proxy_pings_the_replicas_without_root(cluster):
    """The ping strategy's ICMP works for the unprivileged service user (namespaced sysctl)."""
    proxy = cluster.host("proxy")
    deadline = time.monotonic() + 30
    while True:
        health = subprocess.run(
            ["ip", "netns", "exec", proxy.namespace, "curl", "-fsS",
             "http://127.0.0.1:5000/health"], capture_output=True, text=True, check=True)
        nodes = json.loads(health.stdout)["nodes"]
        if all(nodes[name]["icmp_rtt_ms"] is not None for name in ("replica1", "replica2")):
            break
        assert time.monotonic() < deadline, health.stdout
        time.sleep(1)
    pids = subprocess.run(["ip", "netns", "pids", proxy.namespace], capture_output=True,
                          text=True, check=True).stdout.split()
    service_uids = {uid for pid in pids if (uid := proxy_service_uid(pid)) is not None}
    assert service_uids and "0" not in service_uids  # the Proxy does not run as root


def test_status_shows_both_replicas_running_without_lag(cluster):
    wanted = re.compile(r"Replica_IO_Running: Yes\s+Replica_SQL_Running: Yes\s+"
                        r"Seconds_Behind_Source: 0\b")
    deadline = time.monotonic() + 60
    while True:
        status = cluster.bootstrap("status", timeout=120)
        if status.returncode == 0 and len(wanted.findall(status.stdout)) == 2:
            break
        assert time.monotonic() < deadline, status.stdout + status.stderr
        time.sleep(2)
    for service in ("sqlgate-gatekeeper RUNNING", "sqlgate-proxy RUNNING", "mariadb RUNNING"):
        assert service in status.stdout


def test_a_transfer_in_a_transaction_through_the_gatekeeper(cluster):
    """Parameters, a transaction and its commit across the real hosts and firewall; a lone
    session statement is refused rather than leaked into the pool."""
    url, key = cluster.record.gatekeeper_url, cluster.record.api_key
    table = "sakila.sqlgate_e2e_accounts"
    assert post(url, key, "/batch", {"statements": [
        {"sql": f"CREATE TABLE IF NOT EXISTS {table} (id INT PRIMARY KEY, "
                "balance DECIMAL(12,2) NOT NULL)"}], "transaction": False})[0] == 200
    seeded = post(url, key, "/batch", {"statements": [
        {"sql": f"REPLACE INTO {table} VALUES (?, ?)", "params": [account, "100.00"]}
        for account in (1, 2)]})
    assert seeded[0] == 200, seeded
    status, opened = post(url, key, "/transactions", {})
    assert status == 201, opened
    tx = opened["transaction_id"]
    for sql, params in ((f"UPDATE {table} SET balance = balance - :amount WHERE id = :id",
                         {"amount": {"type": "decimal", "value": "25.50"}, "id": 1}),
                        (f"UPDATE {table} SET balance = balance + :amount WHERE id = :id",
                         {"amount": {"type": "decimal", "value": "25.50"}, "id": 2})):
        status, moved = post(url, key, "/query", {"sql": sql, "params": params,
                                                  "transaction_id": tx})
        assert (status, moved["rowcount"]) == (200, 1), moved
    outside = query(url, key, f"SELECT balance FROM {table} ORDER BY id", "direct")
    assert outside["rows"] == [["100.00"], ["100.00"]]  # not visible before the commit
    status, committed = post(url, key, f"/transactions/{tx}/commit", {})
    assert (status, committed["status"]) == (200, "committed"), committed
    after = query(url, key, f"SELECT balance FROM {table} ORDER BY id", "direct")
    assert after["rows"] == [["74.50"], ["125.50"]]
    status, refused = post(url, key, "/query", {"sql": "SET autocommit = 0"})
    assert status == 400 and "POST /transactions" in refused["error"]


def salt_sql(cluster: E2ECluster, host: str, sql: str) -> None:
    """Run a statement as root on one database host, through the cluster's Salt master."""
    done = subprocess.run([*cluster.record.salt_command, "--out=json", "--static", host,
                           "cmd.run", f"mariadb -e {shlex.quote(sql)}"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_reads_see_their_writes_while_a_replica_sql_thread_is_stopped(cluster):
    """The issue's measure: 1,000 write-then-read pairs through the Gatekeeper in random mode
    with the write's token, while replica1's SQL thread is stopped: no stale read. replica1
    leaves the rotation (shown by status), and comes back after START REPLICA."""
    url, key = cluster.record.gatekeeper_url, cluster.record.api_key
    with Client(url, key) as client:
        assert client.query(create_table_sql(DEFAULT_TABLE)).ok
        salt_sql(cluster, "replica1", "STOP REPLICA SQL_THREAD")
        try:
            status = cluster.bootstrap("status", timeout=120)
            assert "OUT of rotation: replication SQL thread stopped" in status.stdout, \
                status.stdout
            with_token = run_pairs(client, 1000, "random", with_token=True)
            without = run_pairs(client, 1000, "random", with_token=False)
        finally:
            salt_sql(cluster, "replica1", "START REPLICA SQL_THREAD")
    print(f"\n{with_token.line()}\n{without.line()}")
    assert (with_token.failed, with_token.pairs, with_token.stale) == (0, 1000, 0), \
        with_token.errors[:5]
    assert without.failed == 0 and without.pairs == 1000
    assert set(with_token.nodes) <= {"replica2", "primary"}  # never the stopped replica
    wait_until(lambda: "OUT of rotation" not in cluster.bootstrap("status", timeout=120).stdout,
               60, "replica1 back in rotation", interval=1)


def test_second_up_reports_no_changes(cluster):
    again = cluster.bootstrap("up")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "no changes" in again.stdout, again.stdout


def test_down_leaves_nothing(cluster):
    pids = [int(pid) for namespace in cluster.namespaces
            for pid in subprocess.run(["ip", "netns", "pids", namespace], capture_output=True,
                                      text=True, check=False).stdout.split()]
    assert len(pids) >= 7  # at least the master, five minions and the databases

    down = cluster.bootstrap("down", timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr

    assert [pid for pid in pids if running(pid)] == []
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=True).stdout
    assert not any(ns in namespaces for ns in cluster.namespaces)
    links = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True)
    bridge = cluster.record.provider_data["bridge"]
    assert bridge not in {link["ifname"] for link in json.loads(links.stdout)}
    mounts = Path("/proc/self/mountinfo").read_text()
    for marker in (str(RUNTIME_ROOT / CLUSTER_NAME), str(cluster.directory)):
        assert marker not in mounts
    assert not (cluster.directory / "local.json").exists()
    assert not (cluster.directory / "local" / CLUSTER_NAME).exists()
