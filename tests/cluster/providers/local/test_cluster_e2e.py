"""End to end: ``bootstrap.py up --provider local`` through a real Salt master and minions, the
acceptance checks of the local cluster (HTTPS with the cluster CA, plain HTTP only redirected,
the Proxy closed to anyone without the cluster's certificate, scoped keys enforced, errors
that name no internal address, the Salt master as ``salt`` with a private pillar), a second
``up`` that changes nothing, another that applies a changed key set without restarting the
services, and ``down``. The monitor: Prometheus over HTTPS for the operator only, every target
of every job up, the Gatekeeper's request counter following a known load, a lag series per
replica from the Proxy and from mysqld_exporter, the exporter's database user and its grants,
and the replication alert firing and clearing.

The cluster has its own name, subnet and cluster directory, so it cannot collide with a
developer's running cluster; it is taken down even when a check fails. Run one at a time:
``flock /tmp/sqlgate-e2e.lock .venv/bin/python -m pytest <this file> -x -q``.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.pki import CertificateAuthority
from cluster.providers.local.hosts import RUNTIME_ROOT
from cluster.record import ClusterRecord, HostRecord, read_record
from cluster.state import PROJECT_ROOT
from cluster.topology import (
    GATEKEEPER_METRICS_PORT,
    MYSQLD_EXPORTER_PORT,
    NODE_EXPORTER_PORT,
    PROMETHEUS_PORT,
    PROXY_METRICS_PORT,
    PROXY_PORT,
    REDIRECT_PORT,
)
from cluster.waiting import wait_until
from loadtest.consistency import run_pairs
from loadtest.workload import DEFAULT_TABLE, create_table_sql
from services.client import Client, TlsFiles
from services.contract import REQUEST_ID_HEADER
from tests.ledger import Ledger, load

pytestmark = pytest.mark.cluster

CLUSTER_NAME = "sqlgate-e2e"
SUBNET = "10.213.251.0/24"
ACTOR_COUNT = "SELECT COUNT(*) FROM sakila.actor"
SECRET_LINE = re.compile(r"secret \(shown this once, stored nowhere\): (\S+)")
# Keys made before the first up: (scope, rate, burst); unlimited (rate 0), so that the checks
# never meet a rate limit, but for the one that shows the limit across the Gatekeepers.
KEYS = {"e2e-read": ("read", 0, 0), "e2e-write": ("write", 0, 0),
        "e2e-rated": ("read", 40, 4)}


@dataclass
class E2ECluster:
    directory: Path
    first_up: subprocess.CompletedProcess[str]
    record: ClusterRecord
    secrets: dict[str, str]  # key name -> secret, as `keys add` showed them

    def bootstrap(self, command: str, *extra: str,
                  timeout: float = 1500) -> subprocess.CompletedProcess[str]:
        return run_bootstrap(command, self.directory, *extra, timeout=timeout)

    def salt(self, *arguments: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
        """``bootstrap.py salt`` as an operator runs it: bootstrap.py's options before TARGET,
        since what follows FUNCTION is salt's."""
        return subprocess.run(
            [sys.executable, "bootstrap.py", "salt", "--provider", "local", "--cluster-name",
             CLUSTER_NAME, "--subnet", SUBNET, *arguments],
            cwd=PROJECT_ROOT, env={**os.environ, "SQLGATE_CLUSTER_DIR": str(self.directory)},
            capture_output=True, text=True, timeout=timeout, check=False)

    def host(self, name: str) -> HostRecord:
        return self.record.host(name)

    @property
    def namespaces(self) -> list[str]:
        return [h.namespace for h in self.record.hosts]

    @property
    def url(self) -> str:
        return self.record.gatekeeper_url

    @property
    def tls_dir(self) -> Path:
        """The cluster's certificates and keys on this machine (the hosts have copies)."""
        return Path(self.record.provider_data["state_dir"]) / "tls"

    def add_key(self, name: str, scope: str) -> str:
        added = self.bootstrap("keys", "add", name, "--scope", scope, "--rate", "0",
                               "--burst", "0", timeout=60)
        assert added.returncode == 0, added.stdout + added.stderr
        return SECRET_LINE.search(added.stdout).group(1)


def run_bootstrap(command: str, directory: Path, *extra: str,
                  timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "bootstrap.py", command, *extra, "--provider", "local",
         "--cluster-name", CLUSTER_NAME, "--subnet", SUBNET],
        cwd=PROJECT_ROOT, env={**os.environ, "SQLGATE_CLUSTER_DIR": str(directory)},
        capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def cluster() -> Iterator[E2ECluster]:
    if os.geteuid() != 0:
        pytest.skip("the local cluster needs root (namespaces, bridge, mounts)")
    directory = PROJECT_ROOT / ".cluster" / "e2e-test"
    try:
        run_bootstrap("down", directory, timeout=300)  # nothing of an earlier run is reused
        shutil.rmtree(directory, ignore_errors=True)  # its key set included
        secrets = {}
        for name, (scope, rate, burst) in KEYS.items():  # made before the cluster: up deploys them
            added = run_bootstrap("keys", directory, "add", name, "--scope", scope, "--rate",
                                  str(rate), "--burst", str(burst), timeout=60)
            assert added.returncode == 0, added.stdout + added.stderr
            secrets[name] = SECRET_LINE.search(added.stdout).group(1)
        first_up = run_bootstrap("up", directory, "--gatekeepers", "2", "--proxies", "2")
        assert first_up.returncode == 0, first_up.stdout + first_up.stderr
        record = read_record("local", directory)
        yield E2ECluster(directory, first_up, record, secrets)
    finally:
        # Idempotent: test_down_leaves_nothing normally did it already.
        run_bootstrap("down", directory, timeout=300)
        with contextlib.suppress(OSError):
            directory.rmdir()


def client(cluster: E2ECluster, api_key: str | None = None) -> Client:
    """A client of the Gatekeeper over HTTPS, checked against the cluster CA."""
    return Client(cluster.url, cluster.record.api_key if api_key is None else api_key,
                  timeout=10, tls=TlsFiles(ca_file=cluster.record.ca_file))


def post(cluster: E2ECluster, path: str, body: dict,
         api_key: str | None = None) -> tuple[int, dict]:
    with client(cluster, api_key) as gatekeeper:
        answer = gatekeeper.post(path, body)
    return answer.status, answer.json


def query(cluster: E2ECluster, sql: str, mode: str = "direct",
          api_key: str | None = None) -> dict:
    status, answer = post(cluster, "/query", {"sql": sql, "mode": mode}, api_key)
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
    assert cluster.url == f"https://{cluster.host('balancer').address}"
    assert f"Gatekeeper: {cluster.url}" in out
    assert cluster.record.provider_data["api_key_file"] in out
    curl = next(line.strip() for line in out.splitlines() if line.strip().startswith("curl "))
    assert f"--cacert {cluster.record.ca_file}" in curl
    reply = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30,
                           check=True)
    assert json.loads(reply.stdout)["rows"] == [[200]]
    # Without the cluster CA, curl refuses the certificate (exit 60): HTTPS is really checked.
    unchecked = subprocess.run(["bash", "-c", curl.replace(
        f"--cacert {cluster.record.ca_file} ", "")], capture_output=True, text=True, timeout=30)
    assert unchecked.returncode == 60, unchecked


def test_plain_http_does_not_reach_the_api(cluster):
    """Port 80 answers at most with a redirect to HTTPS, with the key or without."""
    address = cluster.host("balancer").address
    connection = http.client.HTTPConnection(address, REDIRECT_PORT, timeout=5)
    try:
        connection.request("POST", "/query", body=json.dumps({"sql": ACTOR_COUNT}),
                           headers={"X-API-Key": cluster.record.api_key,
                                    "Content-Type": "application/json"})
        response = connection.getresponse()
        body = response.read()
    except OSError:
        return  # nothing listens: nothing reached the API either
    finally:
        connection.close()
    assert response.status in (301, 302, 307, 308), (response.status, body)
    assert response.getheader("Location", "").startswith(f"https://{address}")
    assert b"rows" not in body


def test_cluster_file_is_private_and_complete(cluster):
    path = cluster.directory / "local.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cluster.record.api_key
    assert cluster.record.ca_file == str(cluster.directory / "local-ca.crt")
    assert Path(cluster.record.ca_file).read_text() == (cluster.tls_dir / "ca.crt").read_text()
    for key in cluster.tls_dir.rglob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    keys_file = Path(cluster.record.provider_data["keys_file"])
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    for secret in (cluster.record.api_key, *cluster.secrets.values()):
        assert secret not in keys_file.read_text()
    roles = {h.name: h.role for h in cluster.record.hosts}
    assert roles == {"saltmaster": "saltmaster", "balancer": "balancer",
                     "gatekeeper": "gatekeeper", "gatekeeper2": "gatekeeper",
                     "proxy": "proxy", "proxy2": "proxy", "primary": "primary",
                     "replica1": "replica", "replica2": "replica", "monitor": "monitor"}
    for host in cluster.record.hosts:
        assert host.namespace in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                   text=True, check=True).stdout
        assert host.address.startswith("10.213.251.")


@pytest.mark.parametrize(("mode", "nodes"), [("direct", {"primary"}),
                                             ("random", {"replica1", "replica2"}),
                                             ("ping", {"replica1", "replica2"})])
def test_sakila_actor_count_in_every_mode(cluster, mode, nodes):
    answer = query(cluster, ACTOR_COUNT, mode)
    assert answer["rows"] == [[200]]
    assert answer["node"] in nodes


def test_from_the_machine_only_the_balancer_answers(cluster):
    assert tcp_answers(cluster.host("balancer").address, 443)
    for name in ("gatekeeper", "gatekeeper2"):  # behind the balancer: nobody else reaches them
        assert not tcp_answers(cluster.host(name).address, 443), name
    assert not tcp_answers(cluster.host("proxy").address, PROXY_PORT)
    for name in ("primary", "replica1", "replica2"):
        assert not tcp_answers(cluster.host(name).address, 3306), name


def test_database_port_is_closed_to_the_gatekeeper_and_open_to_the_proxy(cluster):
    primary = cluster.host("primary").address
    assert not tcp_answers_from(cluster.host("gatekeeper").namespace, primary, 3306)
    assert tcp_answers_from(cluster.host("proxy").namespace, primary, 3306)


def proxy_health(cluster: E2ECluster, namespace: str, address: str,
                 cert: str | None) -> subprocess.CompletedProcess[str]:
    """curl the Proxy's /health from ``namespace`` over HTTPS (the Proxy's certificate checked
    for its name), with the client certificate of host ``cert`` or none."""
    tls = cluster.tls_dir
    own = ["--cert", str(tls / "hosts" / f"{cert}.crt"),
           "--key", str(tls / "hosts" / f"{cert}.key")] if cert else []
    return subprocess.run(
        ["ip", "netns", "exec", namespace, "curl", "-fsS", "--max-time", "5",
         "--cacert", str(tls / "ca.crt"), *own,
         "--resolve", f"proxy:{PROXY_PORT}:{address}", f"https://proxy:{PROXY_PORT}/health"],
        capture_output=True, text=True, timeout=30, check=False)


def test_the_proxy_refuses_a_client_without_the_cluster_certificate(cluster, tmp_path):
    gatekeeper, proxy = cluster.host("gatekeeper"), cluster.host("proxy")
    refused = proxy_health(cluster, gatekeeper.namespace, proxy.address, cert=None)
    assert refused.returncode != 0 and refused.stdout == "", refused
    # A certificate of another CA is refused too.
    other = tmp_path
    CertificateAuthority.create("other").issue("gatekeeper", client=True).write(other, "intruder")
    stranger = subprocess.run(
        ["ip", "netns", "exec", gatekeeper.namespace, "curl", "-fsS", "--max-time", "5",
         "--cacert", str(cluster.tls_dir / "ca.crt"), "--cert", str(other / "intruder.crt"),
         "--key", str(other / "intruder.key"), "--resolve",
         f"proxy:{PROXY_PORT}:{proxy.address}", f"https://proxy:{PROXY_PORT}/health"],
        capture_output=True, text=True, timeout=30, check=False)
    assert stranger.returncode != 0 and stranger.stdout == "", stranger
    # The Gatekeeper's own certificate opens it: the refusals above are the certificate's doing.
    admitted = proxy_health(cluster, gatekeeper.namespace, proxy.address, cert="gatekeeper")
    assert admitted.returncode == 0 and "nodes" in json.loads(admitted.stdout), admitted
    # From the machine nothing reaches the Proxy's port at all.
    assert not tcp_answers(proxy.address, PROXY_PORT)


def service_pids(namespace: str, module: str) -> set[int]:
    """The pids in ``namespace`` running ``python -m <module>``."""
    found = set()
    for pid in subprocess.run(["ip", "netns", "pids", namespace], capture_output=True,
                              text=True, check=True).stdout.split():
        with contextlib.suppress(OSError):
            if f"-m\0{module}\0" in Path(f"/proc/{pid}/cmdline").read_text():
                found.add(int(pid))
    return found


def uids(pid: int) -> list[str]:
    """Real, effective, saved and filesystem uid of ``pid``."""
    return Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split("\n")[0].split()


def proxy_service_uid(pid: str) -> str | None:
    """The real uid of ``pid`` if it is the Proxy service (None for others or gone ones)."""
    try:
        if b"services.proxy" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
        return uids(int(pid))[0]
    except OSError:
        return None


def test_proxy_pings_the_replicas_without_root(cluster):
    """The ping strategy's ICMP works for the unprivileged service user (namespaced sysctl)."""
    proxy = cluster.host("proxy")
    deadline = time.monotonic() + 30
    while True:
        health = proxy_health(cluster, proxy.namespace, "127.0.0.1", cert="proxy")
        assert health.returncode == 0, health
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
    assert f"Gatekeeper {cluster.url}/health: ok" in status.stdout


def test_the_salt_master_runs_as_salt_with_a_pillar_only_it_reads(cluster):
    master = cluster.host("saltmaster")
    pids = [int(pid) for pid in subprocess.run(["ip", "netns", "pids", master.namespace],
                                               capture_output=True, text=True,
                                               check=True).stdout.split()
            if b"salt-master" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert pids
    (ids,) = {tuple(uids(pid)) for pid in pids}  # every process: the same four uids
    uid = ids[0]
    assert set(ids) == {uid} and uid != "0"
    passwd = subprocess.run(["nsenter", f"--mount={RUNTIME_ROOT / CLUSTER_NAME}/saltmaster.mnt",
                             "getent", "passwd", "salt"], capture_output=True, text=True,
                            check=True).stdout
    assert passwd.split(":")[2] == uid
    pillar = Path(cluster.record.provider_data["state_dir"]) / "pillar"
    for path in [pillar, *pillar.rglob("*")]:
        info = path.stat()
        assert str(info.st_uid) == uid, path
        assert stat.S_IMODE(info.st_mode) == (0o700 if path.is_dir() else 0o600), path


def test_scopes_are_enforced_and_a_write_key_cannot_drop_a_table(cluster):
    table = "sakila.sqlgate_e2e_scopes"
    query(cluster, f"CREATE TABLE IF NOT EXISTS {table} (id INT PRIMARY KEY)")  # admin key
    write, read = cluster.secrets["e2e-write"], cluster.secrets["e2e-read"]
    status, refused = post(cluster, "/query", {"sql": f"DROP TABLE {table}"}, write)
    assert status == 403 and "write" in refused["error"], refused
    assert query(cluster, f"SELECT COUNT(*) FROM {table}")["rows"] == [[0]]  # still there
    status, refused = post(cluster, "/query",
                           {"sql": f"INSERT INTO {table} VALUES (1)"}, read)
    assert status == 403 and "read" in refused["error"], refused
    status, inserted = post(cluster, "/query",
                            {"sql": f"REPLACE INTO {table} VALUES (1)"}, write)
    assert status == 200, inserted  # the write key does write
    assert query(cluster, f"SELECT COUNT(*) FROM {table}", api_key=read)["rows"] == [[1]]
    status, refused = post(cluster, "/query", {"sql": "SELECT 1"}, "not-a-key-of-the-cluster")
    assert status == 401, refused


def test_no_public_error_names_an_internal_address(cluster):
    internal = [h.address for h in cluster.record.hosts if h.role != "gatekeeper"]
    write = cluster.secrets["e2e-write"]
    errors = [
        post(cluster, "/query", {"sql": "SELECT * FROM sakila.no_such_table"}),
        post(cluster, "/query", {"sql": "SELEC broken"}),
        post(cluster, "/query", {"sql": "SELECT * FROM mysql.user"}, write),
        post(cluster, "/query", {"sql": "DROP TABLE sakila.actor"}, write),
        post(cluster, "/query", {"sql": "SET autocommit = 0"}),
        post(cluster, "/query", {"sql": "SELECT 1", "mode": "nope"}),
        post(cluster, "/transactions/x.y/commit", {}),
    ]
    for status, answer in errors:
        text = json.dumps(answer)
        assert 400 <= status < 600, answer
        assert not any(address in text for address in internal), text
        assert f":{PROXY_PORT}" not in text and ":3306" not in text, text
        assert "app_read" not in text and "app_write" not in text and "'app'@" not in text


def test_a_transfer_in_a_transaction_through_the_gatekeeper(cluster):
    """Parameters, a transaction and its commit across the real hosts and firewall; a lone
    session statement is refused rather than leaked into the pool."""
    table = "sakila.sqlgate_e2e_accounts"
    assert post(cluster, "/batch", {"statements": [
        {"sql": f"CREATE TABLE IF NOT EXISTS {table} (id INT PRIMARY KEY, "
                "balance DECIMAL(12,2) NOT NULL)"}], "transaction": False})[0] == 200
    seeded = post(cluster, "/batch", {"statements": [
        {"sql": f"REPLACE INTO {table} VALUES (?, ?)", "params": [account, "100.00"]}
        for account in (1, 2)]})
    assert seeded[0] == 200, seeded
    status, opened = post(cluster, "/transactions", {})
    assert status == 201, opened
    tx = opened["transaction_id"]
    for sql, params in ((f"UPDATE {table} SET balance = balance - :amount WHERE id = :id",
                         {"amount": {"type": "decimal", "value": "25.50"}, "id": 1}),
                        (f"UPDATE {table} SET balance = balance + :amount WHERE id = :id",
                         {"amount": {"type": "decimal", "value": "25.50"}, "id": 2})):
        status, moved = post(cluster, "/query", {"sql": sql, "params": params,
                                                 "transaction_id": tx})
        assert (status, moved["rowcount"]) == (200, 1), moved
    outside = query(cluster, f"SELECT balance FROM {table} ORDER BY id")
    assert outside["rows"] == [["100.00"], ["100.00"]]  # not visible before the commit
    status, committed = post(cluster, f"/transactions/{tx}/commit", {})
    assert (status, committed["status"]) == (200, "committed"), committed
    after = query(cluster, f"SELECT balance FROM {table} ORDER BY id")
    assert after["rows"] == [["74.50"], ["125.50"]]
    status, refused = post(cluster, "/query", {"sql": "SET autocommit = 0"})
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
    with client(cluster) as gatekeeper:
        assert gatekeeper.query(create_table_sql(DEFAULT_TABLE)).ok
    salt_sql(cluster, "replica1", "STOP REPLICA SQL_THREAD")
    try:
        status = cluster.bootstrap("status", timeout=120)
        assert "OUT of rotation: replication SQL thread stopped" in status.stdout, status.stdout
        # A connection of its own: the Gatekeeper closes idle ones (status takes a while).
        with client(cluster) as gatekeeper:
            with_token = run_pairs(gatekeeper, 1000, "random", with_token=True)
            without = run_pairs(gatekeeper, 1000, "random", with_token=False)
    finally:
        salt_sql(cluster, "replica1", "START REPLICA SQL_THREAD")
    print(f"\n{with_token.line()}\n{without.line()}")
    assert (with_token.failed, with_token.pairs, with_token.stale) == (0, 1000, 0), \
        with_token.errors[:5]
    assert without.failed == 0 and without.pairs == 1000
    assert set(with_token.nodes) <= {"replica2", "primary"}  # never the stopped replica
    wait_until(lambda: "OUT of rotation" not in cluster.bootstrap("status", timeout=120).stdout,
               60, "replica1 back in rotation", interval=1)


# --- the monitor -----------------------------------------------------------------------------

SCRAPE_JOBS = {"gatekeeper", "proxy", "node", "mysqld", "prometheus"}
LOAD_REQUESTS = 200
ALERT = "SqlgateReplicationStopped"


def prometheus(cluster: E2ECluster, path: str, **params: str) -> dict:
    """GET Prometheus's HTTP API from this machine (the operator), over HTTPS checked against
    the cluster CA; its ``data``."""
    url = f"{cluster.record.monitor_url.rstrip('/')}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    context = ssl.create_default_context(cafile=cluster.record.ca_file)
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]


def instant(cluster: E2ECluster, expression: str) -> list[dict]:
    return prometheus(cluster, "/api/v1/query", query=expression)["result"]


def scalar(cluster: E2ECluster, expression: str) -> float | None:
    result = instant(cluster, expression)
    return float(result[0]["value"][1]) if result else None


def targets(cluster: E2ECluster) -> list[dict]:
    return prometheus(cluster, "/api/v1/targets", state="active")["activeTargets"]


def test_up_prints_the_prometheus_url_and_the_record_carries_it(cluster):
    monitor = cluster.host("monitor").address
    url = f"https://{monitor}:{PROMETHEUS_PORT}/"
    assert cluster.record.monitor_url == url
    assert f"Prometheus: {url}" in cluster.first_up.stdout
    assert f"{url}consoles/sqlgate.html" in cluster.first_up.stdout
    status = cluster.bootstrap("status", timeout=120)
    assert f"Prometheus {url}" in status.stdout and "ready" in status.stdout, status.stdout


def test_prometheus_and_the_exporters_answer_only_whom_they_must(cluster):
    monitor = cluster.host("monitor")
    # The operator (this machine) reaches Prometheus; nobody reaches the exporters from here.
    assert tcp_answers(monitor.address, PROMETHEUS_PORT)
    assert prometheus(cluster, "/api/v1/status/buildinfo")["version"]
    for name in ("gatekeeper", "proxy", "primary"):
        assert not tcp_answers(cluster.host(name).address, NODE_EXPORTER_PORT), name
    assert not tcp_answers(cluster.host("primary").address, MYSQLD_EXPORTER_PORT)
    assert not tcp_answers(cluster.host("gatekeeper").address, GATEKEEPER_METRICS_PORT)
    # Another host of the cluster does not reach Prometheus; the monitor reaches the exporters.
    assert not tcp_answers_from(cluster.host("gatekeeper").namespace, monitor.address,
                                PROMETHEUS_PORT)
    assert not tcp_answers_from(cluster.host("gatekeeper").namespace,
                                cluster.host("primary").address, MYSQLD_EXPORTER_PORT)
    assert tcp_answers_from(monitor.namespace, cluster.host("replica1").address,
                            MYSQLD_EXPORTER_PORT)
    assert tcp_answers_from(monitor.namespace, cluster.host("proxy").address, NODE_EXPORTER_PORT)
    # Plain HTTP gets nothing: Prometheus speaks HTTPS only (Go answers 400, or closes).
    connection = http.client.HTTPConnection(monitor.address, PROMETHEUS_PORT, timeout=5)
    try:
        connection.request("GET", "/api/v1/targets")
        plain: int | None = connection.getresponse().status
    except (OSError, http.client.HTTPException):
        plain = None
    finally:
        connection.close()
    assert plain in (None, 400), plain


def test_the_scrape_config_has_every_job_host_and_role(cluster):
    found = targets(cluster)
    assert {t["labels"]["job"] for t in found} == SCRAPE_JOBS
    by_job: dict[str, dict[str, str]] = {}
    for target in found:
        labels = target["labels"]
        by_job.setdefault(labels["job"], {})[labels["host"]] = labels["role"]
    roles = {h.name: h.role for h in cluster.record.hosts if h.role != "saltmaster"}
    assert by_job["node"] == roles
    assert by_job["mysqld"] == {n: r for n, r in roles.items() if r in ("primary", "replica")}
    assert by_job["gatekeeper"] == {"gatekeeper": "gatekeeper", "gatekeeper2": "gatekeeper"}
    assert by_job["proxy"] == {"proxy": "proxy", "proxy2": "proxy"}
    assert by_job["prometheus"] == {"monitor": "monitor"}
    schemes = {t["labels"]["job"]: t["scrapeUrl"].split(":")[0] for t in found}
    assert schemes == {"gatekeeper": "https", "proxy": "https", "prometheus": "https",
                       "node": "http", "mysqld": "http"}
    ports = {t["labels"]["job"]: int(t["scrapeUrl"].split(":")[2].split("/")[0]) for t in found}
    assert ports == {"gatekeeper": GATEKEEPER_METRICS_PORT, "proxy": PROXY_METRICS_PORT,
                     "node": NODE_EXPORTER_PORT, "mysqld": MYSQLD_EXPORTER_PORT,
                     "prometheus": PROMETHEUS_PORT}


def test_every_target_of_every_job_is_up(cluster):
    def all_up() -> bool:
        return all(t["health"] == "up" for t in targets(cluster))

    try:
        wait_until(all_up, 30, "every target up", interval=1)
    except TimeoutError:
        down = {(t["labels"]["job"], t["labels"]["host"]): t.get("lastError")
                for t in targets(cluster) if t["health"] != "up"}
        pytest.fail(f"targets not up: {down}")
    assert scalar(cluster, "count(up == 1)") == len(targets(cluster))


def test_the_exporters_database_user_has_its_grants_only(cluster):
    for host in ("primary", "replica1"):  # made on the primary, replicated
        done = subprocess.run(
            [*cluster.record.salt_command, "--out=json", "--static", host, "cmd.run",
             "mariadb -N -e \"SHOW GRANTS FOR 'sqlgate_exporter'@'127.0.0.1'\""],
            capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        grants = json.loads(done.stdout)[host]
        on_all = next(line for line in grants.splitlines() if " ON *.* " in line)
        privileges = {p.strip() for p in on_all.removeprefix("GRANT ").split(" ON ")[0]
                      .split(",")}
        assert privileges == {"PROCESS", "BINLOG MONITOR", "SLAVE MONITOR"}, grants
        assert "REQUIRE SSL" in grants and "MAX_USER_CONNECTIONS 3" in grants, grants
        # MariaDB escapes the `_` of the schema's name in SHOW GRANTS, and the client's
        # batch output escapes that backslash again.
        assert re.search(r"GRANT SELECT ON `performance\\*_schema`\.\* TO", grants), grants
        assert len([line for line in grants.splitlines() if line.strip()]) == 2, grants
        assert not any(word in grants for word in ("SUPER", "FILE", "GRANT OPTION", "ALL "))


def test_the_gatekeeper_request_counter_follows_a_known_load(cluster):
    counter = 'sum(sqlgate_gatekeeper_requests_total{endpoint="POST /query"})'
    wait_until(lambda: scalar(cluster, counter) is not None, 30, "the Gatekeeper's counter",
               interval=1)
    time.sleep(2)  # one scrape after the last request of the tests before
    before = scalar(cluster, counter)
    with client(cluster) as gatekeeper:
        for _ in range(LOAD_REQUESTS):
            assert gatekeeper.query(ACTOR_COUNT, mode="random").status == 200
    wait_until(lambda: scalar(cluster, counter) >= before + LOAD_REQUESTS, 10,
               f"the counter to grow by {LOAD_REQUESTS}", interval=0.5)
    assert scalar(cluster, counter) == before + LOAD_REQUESTS


def test_a_lag_series_per_replica_from_the_proxy_and_from_mysqld_exporter(cluster):
    replicas = {h.name for h in cluster.record.hosts if h.role == "replica"}

    def series(expression: str, label: str) -> set[str]:
        return {r["metric"].get(label) for r in instant(cluster, expression)}

    wait_until(lambda: series("mysql_slave_status_seconds_behind_master", "host") == replicas,
               15, "mysqld_exporter's lag of every replica", interval=1)
    wait_until(lambda: series("sqlgate_proxy_replica_lag_seconds", "node") == replicas, 15,
               "the Proxy's lag of every replica", interval=1)


def firing(cluster: E2ECluster) -> list[dict]:
    return [a for a in prometheus(cluster, "/api/v1/alerts")["alerts"]
            if a["labels"].get("alertname") == ALERT and a["state"] == "firing"]


def test_the_replication_alert_fires_when_a_replica_stops_and_clears_after(cluster):
    assert not firing(cluster)
    started = time.monotonic()
    salt_sql(cluster, "replica2", "STOP SLAVE")
    try:
        wait_until(lambda: firing(cluster), 60, f"{ALERT} to fire", interval=1)
        fired = time.monotonic() - started
        labels = firing(cluster)[0]["labels"]
        assert "replica2" in labels.values(), labels
    finally:
        salt_sql(cluster, "replica2", "START SLAVE")
    wait_until(lambda: not firing(cluster), 60, f"{ALERT} to clear", interval=1)
    print(f"\n{ALERT}: fired after {fired:.1f}s, cleared "
          f"{time.monotonic() - started - fired:.1f}s later")


def service_log(cluster: E2ECluster, host: str, service: str) -> str:
    """A service's log on its host: supervisor's file for the program, after the one it last
    rotated away (at 10 MB), if any."""
    logs = Path(cluster.record.provider_data["state_dir"]) / "hosts" / host / "var-log" / \
        "supervisor"
    return "".join(path.read_text() for path in (logs / f"{service}.log.1",
                                                  logs / f"{service}.log") if path.exists())


def test_requests_spread_over_both_gatekeepers_and_proxies_which_log_the_client(cluster):
    """New connections through the balancer reach both Gatekeepers (least connections), each
    of them both Proxies (least outstanding), and the Gatekeepers log the client's own
    address (the machine's, on the bridge), from the balancer's PROXY protocol header."""
    ids = [f"spread-{os.getpid()}-{i}" for i in range(40)]
    for request_id in ids:  # a connection each: the balancer chooses per connection
        with client(cluster) as gatekeeper:
            answer = gatekeeper.post("/query", {"sql": ACTOR_COUNT, "mode": "random"},
                                     headers={REQUEST_ID_HEADER: request_id})
            assert answer.status == 200, answer.json
    machine = str(ipaddress.IPv4Network(SUBNET)[1])

    def lines(host: str, service: str) -> list[dict]:
        return [json.loads(line) for line in service_log(cluster, host, service).splitlines()
                if line.startswith("{") and '"spread-' in line]

    def seen() -> dict[str, list[dict]]:
        return {host: [line for line in lines(host, "sqlgate-gatekeeper")
                       if line.get("request_id") in ids]
                for host in ("gatekeeper", "gatekeeper2")}

    # A request's line is written once it was answered: the last ones may still be on their way.
    wait_until(lambda: sum(map(len, seen().values())) == len(ids), 15,
               "a log line for every request", interval=0.5)
    served = seen()
    assert all(served.values()), {host: len(found) for host, found in served.items()}
    assert {line["client"] for found in served.values() for line in found} == {machine}
    proxies = {line["node"] for found in served.values() for line in found}
    assert proxies == {"proxy", "proxy2"}, proxies
    print(f"\nthrough the balancer: {({h: len(f) for h, f in served.items()})} requests per "
          f"Gatekeeper; Proxies used: {sorted(proxies)}")


def test_a_keys_rate_holds_once_across_both_gatekeepers(cluster):
    """e2e-rated (40 requests/s, burst 4) sent as fast as 8 connections go, spread over both
    Gatekeepers by the balancer, for 8 s: about 40 accepted per second (within 10%), not 80:
    the Gatekeepers take from one bucket in the rate store on the monitor host."""
    _, rate, burst = KEYS["e2e-rated"]
    secret, seconds = cluster.secrets["e2e-rated"], 8.0
    marker = f"rated-{os.getpid()}-{time.monotonic_ns()}"
    statuses: collections.Counter = collections.Counter()
    lock = threading.Lock()
    began = time.monotonic()

    def send(index: int) -> None:
        sent = 0
        with client(cluster, secret) as own:
            while time.monotonic() - began < seconds:
                answer = own.post("/query", {"sql": "SELECT 1"},
                                  headers={REQUEST_ID_HEADER: f"{marker}-{index}-{sent}"})
                sent += 1
                with lock:
                    statuses[answer.status] += 1

    threads = [threading.Thread(target=send, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    accepted = (statuses[200] - burst) / seconds
    logged = {host: service_log(cluster, host, "sqlgate-gatekeeper").count(f'"{marker}-')
              for host in ("gatekeeper", "gatekeeper2")}
    print(f"\nrate {rate}/s through both Gatekeepers: {accepted:.1f}/s accepted, "
          f"{dict(statuses)}, requests per Gatekeeper {logged}")
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[429] > statuses[200]  # the clients asked for far more
    assert all(logged.values()), logged  # both Gatekeepers took part
    assert abs(accepted - rate) <= rate * 0.10, (accepted, statuses)


def test_a_highstate_through_bootstrap_salt_changes_nothing(cluster):
    """The design card's `salt '*' state.highstate`, as an operator runs it: every minion
    answers, no state fails and none changes anything."""
    done = cluster.salt("*", "state.highstate", "--out=json", "--static")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    answers = json.loads(done.stdout)
    minions = {h.name for h in cluster.record.hosts if h.role != "saltmaster"}
    assert set(answers) == minions
    failed = {(minion, sid) for minion, states in answers.items() for sid, state in
              states.items() if not state["result"]}
    changed = {(minion, sid) for minion, states in answers.items() for sid, state in
               states.items() if state["changes"]}
    assert failed == set() and changed == set(), (failed, changed)


def test_second_up_reports_no_changes(cluster):
    again = cluster.bootstrap("up")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "no changes" in again.stdout, again.stdout


def answers(cluster: E2ECluster, api_key: str) -> int:
    with client(cluster, api_key) as gatekeeper:
        return gatekeeper.query(ACTOR_COUNT).status


def test_a_changed_key_set_is_applied_without_restarting_the_services(cluster):
    services = {"gatekeeper": "services.gatekeeper", "gatekeeper2": "services.gatekeeper",
                "proxy": "services.proxy", "proxy2": "services.proxy"}
    before = {name: service_pids(cluster.host(name).namespace, module)
              for name, module in services.items()}
    assert all(before.values()), before
    new = cluster.add_key("e2e-new", "read")
    revoked = cluster.bootstrap("keys", "revoke", "e2e-read", timeout=60)
    assert revoked.returncode == 0 and "next 'bootstrap.py up' applies" in revoked.stdout
    assert answers(cluster, new) == 401  # not yet: the file only
    assert answers(cluster, cluster.secrets["e2e-read"]) == 200

    again = cluster.bootstrap("up")
    assert again.returncode == 0, again.stdout + again.stderr
    changed = {line.split(":")[0].strip() for line in again.stdout.splitlines()
               if "state(s) changed" in line}
    assert changed == {"gatekeeper", "gatekeeper2"}, again.stdout  # their keys file only
    # The Gatekeeper picks the new file up by itself within a second or so.
    wait_until(lambda: answers(cluster, new) == 200, 15, "the new key to work")
    wait_until(lambda: answers(cluster, cluster.secrets["e2e-read"]) == 401, 15,
               "the revoked key to be refused")
    after = {name: service_pids(cluster.host(name).namespace, module)
             for name, module in services.items()}
    assert after == before, again.stdout  # nothing was restarted


def acknowledged_present(cluster: E2ECluster, table: str, *ledgers: Ledger) -> None:
    """Every acknowledged write of the ledgers is in the table (counted, as a result holds
    fewer rows than a load writes)."""
    acknowledged = sorted(set().union(*(ledger.acknowledged for ledger in ledgers)))
    assert acknowledged
    found = 0
    for start in range(0, len(acknowledged), 2000):  # a request body holds at most 64 KiB
        chunk = acknowledged[start:start + 2000]
        found += query(cluster, f"SELECT COUNT(*) FROM {table} WHERE id IN "
                                f"({', '.join(map(str, chunk))})")["rows"][0][0]
    assert found == len(acknowledged)


def ledger_table(cluster: E2ECluster, name: str) -> str:
    table = f"sakila.{name}"
    with client(cluster) as admin:
        assert admin.query(f"CREATE TABLE IF NOT EXISTS {table} (id BIGINT AUTO_INCREMENT "
                           "PRIMARY KEY, tag VARCHAR(64) NOT NULL)").status == 200
    return table


def under_load(cluster: E2ECluster, table: str, what: str, command: str, *arguments: str,
               writers: int = 8) -> tuple[subprocess.CompletedProcess[str], Ledger]:
    """A bootstrap.py command run under ``writers`` writers and a reader through the balancer,
    its figures printed: it succeeded, and no request failed nor had an unknown outcome."""
    ledger = Ledger(table)
    began = time.monotonic()
    with load(ledger, lambda: client(cluster), writers=writers):
        done = cluster.bootstrap(command, *arguments, timeout=1500)
        took = time.monotonic() - began
        time.sleep(1.0)
    print(f"\n{what}: {took:.0f} s, {dict(ledger.outcomes)}, reads {dict(ledger.reads)}\n"
          f"{done.stdout}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert ledger.outcomes["failed"] == ledger.outcomes["unknown"] == 0, ledger.refusals[:5]
    assert ledger.read_failures == [], ledger.read_failures[:5]
    assert ledger.outcomes["ok"] > 50
    return done, ledger


def test_a_rolling_restart_under_load_fails_no_request(cluster):
    """``bootstrap.py restart --rolling`` (salt/orch/rolling.sls) under 8 writers and a
    reader through the balancer: every service process is new afterwards, and no request
    failed nor had an unknown outcome."""
    table = ledger_table(cluster, "e2e_rolling")
    services = {"proxy": "services.proxy", "proxy2": "services.proxy",
                "gatekeeper": "services.gatekeeper", "gatekeeper2": "services.gatekeeper"}
    before = {name: service_pids(cluster.host(name).namespace, module)
              for name, module in services.items()}
    restarted, ledger = under_load(cluster, table, "rolling restart", "restart", "--rolling")
    assert "4 host(s) restarted" in restarted.stdout
    acknowledged_present(cluster, table, ledger)
    after = {name: service_pids(cluster.host(name).namespace, module)
             for name, module in services.items()}
    for name in services:
        assert after[name] and not after[name] & before[name], name  # all new processes


def table_rows(cluster: E2ECluster, host: str, table: str) -> str:
    """A database host's rows of ``table`` in one line (count, sum of ids and a checksum of
    every row), read as root on the host through the cluster's Salt master."""
    sql = (f"SELECT COUNT(*), COALESCE(SUM(id), 0), BIT_XOR(CRC32(CONCAT(id, ':', tag))) "
           f"FROM {table}")
    done = subprocess.run([*cluster.record.salt_command, "--out=json", "--static", host,
                           "cmd.run", f"mariadb -N -B -e {shlex.quote(sql)}"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)[host]


def namespaces_present() -> set[str]:
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                              check=True).stdout.split())


def served_by(cluster: E2ECluster, host: str, service: str, request_ids: list[str]) -> int:
    """How many of the requests a service's log on ``host`` has a line for."""
    wanted = set(request_ids)
    return sum(1 for line in service_log(cluster, host, service).splitlines()
               if line.startswith("{") and json.loads(line).get("request_id") in wanted)


@pytest.mark.timeout(2700)  # three scale runs of up to 10 minutes each on a loaded machine
def test_scale_out_to_three_of_each_and_back_under_load_fails_no_request(cluster):
    """``bootstrap.py scale --gatekeepers 3 --proxies 3 --replicas 3`` under 4 writers and a
    reader through the balancer, then back to 2, 2 and 2: no request failed nor had an unknown
    outcome; the new Gatekeeper and Proxy serve, the new replica (cloned from a running one)
    has every row the primary has; a second run changes nothing; the removed hosts are gone
    from the machine and from the record, and every acknowledged write is on the primary."""
    table = ledger_table(cluster, "e2e_scale")
    three = ("--gatekeepers", "3", "--proxies", "3", "--replicas", "3")
    out, grown = under_load(cluster, table, "scale to 3/3/3", "scale", *three, writers=4)
    assert "adding gatekeeper3, proxy3, replica3" in out.stdout
    cluster.record = read_record("local", cluster.directory)
    assert {"gatekeeper3", "proxy3", "replica3"} <= {h.name for h in cluster.record.hosts}
    # The clone caught up: the same rows as the primary.
    wait_until(lambda: table_rows(cluster, "replica3", table) ==
               table_rows(cluster, "primary", table), 60, "replica3 to hold the primary's rows")
    # New connections reach the new Gatekeeper, and the Gatekeepers the new Proxy; reads the
    # new replica.
    ids = [f"scaled-{os.getpid()}-{i}" for i in range(60)]
    nodes = collections.Counter()
    for request_id in ids:
        with client(cluster) as fresh:
            answer = fresh.post("/query", {"sql": ACTOR_COUNT, "mode": "random"},
                                headers={REQUEST_ID_HEADER: request_id})
            assert answer.status == 200, answer.json
            nodes[answer.json["node"]] += 1
    wait_until(lambda: served_by(cluster, "gatekeeper3", "sqlgate-gatekeeper", ids) > 0, 15,
               "gatekeeper3 to log a request", interval=0.5)
    assert served_by(cluster, "proxy3", "sqlgate-proxy", ids) > 0
    assert nodes["replica3"] > 0, nodes

    again = cluster.bootstrap("scale", *three, timeout=1500)
    print(again.stdout)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "no changes: every host was already in its configured state" in again.stdout

    removed = [f"{CLUSTER_NAME}-{name}" for name in ("gatekeeper3", "proxy3", "replica3")]
    back, shrunk = under_load(cluster, table, "scale back to 2/2/2", "scale", "--gatekeepers",
                              "2", "--proxies", "2", "--replicas", "2", writers=4)
    assert "removing gatekeeper3, proxy3, replica3" in back.stdout
    cluster.record = read_record("local", cluster.directory)
    assert not {"gatekeeper3", "proxy3", "replica3"} & {h.name for h in cluster.record.hosts}
    assert not set(removed) & namespaces_present()
    acknowledged_present(cluster, table, grown, shrunk)
    for replica in ("replica1", "replica2"):
        wait_until(lambda r=replica: table_rows(cluster, r, table) ==
                   table_rows(cluster, "primary", table), 60, f"{replica} to hold every row")


def open_transaction(cluster: E2ECluster, table: str, tag: str) -> tuple[Client, str] | None:
    """A transaction through the balancer, on a connection of its own, that inserted ``tag``;
    None when the key holds its share of the Proxy worker's transactions already (429)."""
    own = client(cluster)
    opened = own.post("/transactions", {})
    if opened.status == 429:
        own.close()
        return None
    assert opened.status == 201, opened.json
    tid = opened.json["transaction_id"]
    inserted = own.query(f"INSERT INTO {table} (tag) VALUES (?)", [tag], transaction_id=tid)
    assert inserted.status == 200, inserted.json
    return own, tid


def test_a_proxy_host_cut_off_ends_its_transactions_and_the_others_go_on(cluster):
    """proxy2's link goes down under 8 writers and a reader, with 10 transactions open on
    both Proxies: 5 s later no request fails; proxy2's transactions end with a 4xx (rolled
    back) and their rows are absent, proxy's commit and theirs are present. Then the link
    comes back and proxy2 takes requests again."""
    table = "sakila.e2e_cut"
    with client(cluster) as admin:
        assert admin.query(f"CREATE TABLE IF NOT EXISTS {table} "
                           "(tag VARCHAR(64) PRIMARY KEY)").status == 200
    ledger_tbl = ledger_table(cluster, "e2e_cut_ledger")
    held: dict[str, list[tuple[Client, str, str]]] = {"proxy": [], "proxy2": []}
    for i in range(40):
        if sum(map(len, held.values())) >= 10 and all(held.values()):
            break
        tag = f"cut-{os.getpid()}-{i}"
        opened = open_transaction(cluster, table, tag)
        if opened is not None:
            own, tid = opened
            held["proxy2" if tid.startswith("proxy2") else "proxy"].append((own, tid, tag))
    assert all(held.values()), {name: len(found) for name, found in held.items()}
    namespace = cluster.host("proxy2").namespace
    during, after = Ledger(ledger_tbl), Ledger(ledger_tbl)
    try:
        commits = {}
        with load(during, lambda: client(cluster)):
            time.sleep(1.0)
            subprocess.run(["ip", "netns", "exec", namespace, "ip", "link", "set", "eth0",
                            "down"], check=True)
            cut = time.monotonic()
            time.sleep(5.0)
            # 6 s idle, within the Proxy's 10 s idle timeout.
            for name, found in held.items():
                for own, tid, tag in found:
                    began = time.monotonic()
                    answer = own.post(f"/transactions/{tid}/commit", {})
                    commits[tag] = (name, answer.status, answer.json.get("outcome"),
                                    time.monotonic() - began)
        # The writers and the reader again (those in flight on proxy2 waited out their
        # timeouts above): from now on, more than 5 s after the cut, nothing may fail.
        with load(after, lambda: client(cluster)):
            time.sleep(5.0)
    finally:
        subprocess.run(["ip", "netns", "exec", namespace, "ip", "link", "set", "eth0", "up"],
                       check=True)
        for found in held.values():
            for own, _, _ in found:
                own.close()
    print(f"\nproxy2 cut under load: until +5 s {dict(during.outcomes)} "
          f"({collections.Counter(during.refusals)}), after {dict(after.outcomes)}; commits "
          f"{sorted((n, s, o, round(t, 2)) for n, s, o, t in commits.values())}; "
          f"{time.monotonic() - cut:.0f} s")
    assert after.outcomes["failed"] == after.outcomes["unknown"] == 0, after.refusals[:5]
    assert after.read_failures == [], after.read_failures[:5]
    assert after.outcomes["ok"] > 20
    for tag, (name, status, outcome, took) in commits.items():
        if name == "proxy2":
            assert status == 409 and outcome == "rolled back" and took < 2.0, (tag, status)
        else:
            assert status == 200, (tag, status, outcome)
    present = {row[0] for row in query(cluster, f"SELECT tag FROM {table}")["rows"]}
    for name, found in held.items():
        for _, _, tag in found:
            assert (tag in present) is (name == "proxy"), (name, tag)
    acknowledged_present(cluster, ledger_tbl, during, after)
    wait_until(lambda: proxy_in_use(cluster, "proxy2"), 60, "proxy2 back in use", interval=1)


def proxy_in_use(cluster: E2ECluster, name: str) -> bool:
    """Whether some of 10 requests went to the Proxy ``name`` (the Gatekeepers' log says)."""
    marker = f"back-{os.getpid()}-{time.monotonic_ns()}"
    for i in range(10):
        with client(cluster) as own:
            own.post("/query", {"sql": ACTOR_COUNT, "mode": "random"},
                     headers={REQUEST_ID_HEADER: f"{marker}-{i}"})
    return any(f'"{marker}-' in line and f'"node": "{name}"' in line
               for host in ("gatekeeper", "gatekeeper2")
               for line in service_log(cluster, host, "sqlgate-gatekeeper").splitlines())


def test_a_gatekeeper_host_cut_off_and_the_transactions_go_on_through_the_other(cluster):
    """gatekeeper2's link goes down under 8 writers and a reader, with up to 10 transactions
    open through the balancer (on connections to either Gatekeeper): the balancer marks it down
    and cuts its clients' connections; 5 s later no request fails, and every transaction
    commits through the other Gatekeeper (a transaction lives on its Proxy). Then the link
    comes back and gatekeeper2 takes connections again."""
    table, ledger_name = "sakila.e2e_gk_cut", "e2e_gk_cut_ledger"
    with client(cluster) as admin:
        assert admin.query(f"CREATE TABLE IF NOT EXISTS {table} "
                           "(tag VARCHAR(64) PRIMARY KEY)").status == 200
    ledger_tbl = ledger_table(cluster, ledger_name)
    held: list[tuple[Client, str, str]] = []
    for i in range(40):
        if len(held) >= 10:
            break
        tag = f"gkcut-{os.getpid()}-{i}"
        opened = open_transaction(cluster, table, tag)
        if opened is not None:
            held.append((*opened, tag))
    assert len(held) >= 4  # as many as the key's share on each Proxy allows, up to 10
    namespace = cluster.host("gatekeeper2").namespace
    during, after = Ledger(ledger_tbl), Ledger(ledger_tbl)
    commits = {}
    try:
        with load(during, lambda: client(cluster)):
            time.sleep(1.0)
            subprocess.run(["ip", "netns", "exec", namespace, "ip", "link", "set", "eth0",
                            "down"], check=True)
            cut = time.monotonic()
            time.sleep(5.0)
        # The balancer has marked it down by now (2 checks of 1 s) and cut its connections;
        # the transactions have been idle for about 6 s, within the Proxy's idle timeout.
        with load(after, lambda: client(cluster)):
            for own, tid, tag in held:
                began = time.monotonic()
                try:
                    answer = own.post(f"/transactions/{tid}/commit", {})
                    commits[tag] = (answer.status, answer.json.get("outcome"),
                                    time.monotonic() - began)
                except OSError as error:
                    commits[tag] = (None, repr(error), time.monotonic() - began)
            time.sleep(5.0)
        assert balancer_status(cluster, "gatekeeper2") == "DOWN"
    finally:
        subprocess.run(["ip", "netns", "exec", namespace, "ip", "link", "set", "eth0", "up"],
                       check=True)
        for own, _, _ in held:
            own.close()
    print(f"\ngatekeeper2 cut under load: until +5 s {dict(during.outcomes)} "
          f"({collections.Counter(during.refusals)}), after {dict(after.outcomes)}; commits "
          f"{sorted((s, o, round(t, 2)) for s, o, t in commits.values())}; "
          f"{time.monotonic() - cut:.0f} s")
    assert after.outcomes["failed"] == after.outcomes["unknown"] == 0, after.refusals[:5]
    assert after.read_failures == [], after.read_failures[:5]
    assert after.outcomes["ok"] > 20
    assert all(status == 200 for status, _, _ in commits.values()), commits
    present = {row[0] for row in query(cluster, f"SELECT tag FROM {table}")["rows"]}
    assert {tag for _, _, tag in held} <= present
    acknowledged_present(cluster, ledger_tbl, during, after)
    wait_until(lambda: gatekeeper_in_use(cluster, "gatekeeper2"), 60,
               "gatekeeper2 back in use", interval=1)


def balancer_status(cluster: E2ECluster, name: str) -> str:
    """HAProxy's status of the Gatekeeper ``name`` (UP, DOWN, DRAIN...), asked through Salt
    (salt/_modules/sqlgate_balancer.py)."""
    answer = cluster.salt("balancer", "sqlgate_balancer.servers", "--out=json", timeout=120)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    return json.loads(answer.stdout)["balancer"][f"gatekeepers/{name}"]["status"]


def gatekeeper_in_use(cluster: E2ECluster, name: str) -> bool:
    """Whether some of 10 new connections through the balancer reached the Gatekeeper
    ``name`` (its log says)."""
    marker = f"gkback-{os.getpid()}-{time.monotonic_ns()}"
    for i in range(10):
        with client(cluster) as own:
            own.post("/query", {"sql": ACTOR_COUNT, "mode": "random"},
                     headers={REQUEST_ID_HEADER: f"{marker}-{i}"})
    return f'"{marker}-' in service_log(cluster, name, "sqlgate-gatekeeper")


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
