"""Dead and silent backends: a clear 503/504 in bounded time, never a 500 or a hang.

These tests stop real MariaDB servers, so they run their own Proxy and Gatekeeper and restart
every server they stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from cluster.loopback import gatekeeper_service
from cluster.loopback.processes import free_port
from cluster.loopback.services import ServiceProcess
from cluster.waiting import wait_until
from tests.conftest import http, proxy_service


@pytest.fixture
def own_proxy(db_cluster, tmp_path) -> Iterator[ServiceProcess]:
    service = proxy_service(db_cluster, tmp_path / "proxy.log")
    with service.running():
        yield service


def read(proxy: ServiceProcess, mode: str = "random",
         sql: str = "SELECT COUNT(*) FROM sakila.actor"):
    return http(proxy.url + "/query", {"sql": sql, "mode": mode})


def node_up(proxy: ServiceProcess, name: str) -> bool | None:
    return proxy.health()[1]["nodes"][name]["up"]


@pytest.fixture
def restart_stopped(db_cluster):
    """Whatever a test stops is started again, and caught up, before the next test."""
    yield
    for node in db_cluster.nodes:
        if not node.running:
            db_cluster.restart(node)
    db_cluster.wait_for_replicas()


def test_a_stopped_replica_is_skipped_within_the_request(own_proxy, db_cluster, restart_stopped):
    replica1 = db_cluster.replicas[0]
    replica1.stop()
    for _ in range(20):  # the very first ones may still pick replica1 and retry
        answer = read(own_proxy)
        assert answer.status == 200, answer.json
        assert answer.json["node"] == "replica2"
    assert node_up(own_proxy, "replica1") is False
    replica1.start()
    # Both: on a loaded machine replica2 may be briefly out too (over the lag limit).
    wait_until(lambda: all(own_proxy.health()[1]["nodes"][name]["in_rotation"]
                           for name in ("replica1", "replica2")), 15,
               "replica1 to be back in rotation, beside replica2")
    answers = [read(own_proxy).json for _ in range(30)]
    nodes = {answer["node"] for answer in answers}
    assert {"replica1", "replica2"} <= nodes, (answers, own_proxy.health()[1])
    # The primary only as the fallback of a moment when a loaded machine put both replicas
    # over the lag limit, never because a replica back in rotation failed the read.
    assert all(answer["attempts"] == 1 for answer in answers if answer["node"] == "primary"), \
        answers


def test_reads_fall_back_to_the_primary_without_replicas(own_proxy, db_cluster, restart_stopped):
    for replica in db_cluster.replicas:
        replica.stop()
    for mode in ("random", "ping"):
        answer = read(own_proxy, mode)
        assert answer.status == 200, answer.json
        assert answer.json["node"] == "primary"
    status, health = own_proxy.health()
    assert status == 200 and health["status"] == "ok"


def test_a_dead_primary_holds_writes_then_503_and_reads_go_on(db_cluster, restart_stopped,
                                                              tmp_path):
    """A write waits PROXY_WRITE_HOLD for a primary (a failover would bring one), then 503;
    never sent, so its outcome is known: not applied."""
    service = proxy_service(db_cluster, tmp_path / "proxy.log", PROXY_WRITE_HOLD="2")
    with service.running():
        check_dead_primary(service, db_cluster)


def check_dead_primary(own_proxy, db_cluster) -> None:
    db_cluster.primary.stop()
    began = time.monotonic()
    write = http(own_proxy.url + "/query",
                 {"sql": "INSERT INTO sqlgate_test.items (name) VALUES ('lost')"})
    held = time.monotonic() - began
    assert write.status == 503, write.json
    assert "primary" in str(write.json) and "outcome" not in write.json, write.json
    assert 1.5 < held < 6, held
    assert read(own_proxy, "random").status == 200
    direct = read(own_proxy, "direct")
    assert direct.status == 503
    wait_until(lambda: own_proxy.health()[1]["status"] == "degraded", 10, "degraded health")


def test_a_saturated_pool_is_busy_not_down(db_cluster, tmp_path):
    """Slow statements filling the pool shed load with a 503; the node stays up for others."""
    service = proxy_service(db_cluster, tmp_path / "proxy.log", PROXY_POOL_MAX_SIZE="2",
                            PROXY_CONNECT_TIMEOUT="1",
                            PROXY_MAX_STATEMENTS_PER_KEY="3")  # one key may fill the pool

    def both_in_rotation() -> None:
        wait_until(lambda: all(service.health()[1]["nodes"][name]["in_rotation"]
                               for name in ("replica1", "replica2")), 10,
                   "both replicas in rotation")

    with service.running():
        both_in_rotation()
        slow = [threading.Thread(target=read, args=(service, "direct", "SELECT SLEEP(3)"))
                for _ in range(2)]
        for thread in slow:
            thread.start()
        wait_until(lambda: db_cluster.primary.sql(
            "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST "
            "WHERE INFO = 'SELECT SLEEP(3)'")[0]["n"] == 2, 5, "both slow statements running")
        busy = read(service, "direct")
        assert busy.status == 503, busy.json
        assert "busy" in str(busy.json["failures"])
        # A loaded machine may put a replica over the 1 s lag limit for a moment: the read
        # that may go to a replica is sent once they are in rotation.
        both_in_rotation()
        other = read(service, "random")
        assert other.json.get("node") in {"replica1", "replica2"}, \
            (other.json, service.health()[1])
        assert node_up(service, "primary") is True  # busy, not down
        for thread in slow:
            thread.join(10)
        assert read(service, "direct").status == 200


def test_no_node_at_all_is_503_everywhere(db_cluster, tmp_path):
    closed = [free_port() for _ in range(3)]
    service = proxy_service(
        db_cluster, tmp_path / "proxy.log", PROXY_PRIMARY=f"primary=127.0.0.1:{closed[0]}",
        PROXY_REPLICAS=f"replica1=127.0.0.1:{closed[1]},replica2=127.0.0.1:{closed[2]}")
    with service.running(expect_healthy=False):
        status, health = service.health()
        assert status == 503 and health["status"] == "unavailable"
        answer = read(service)
        assert answer.status == 503
        assert answer.json["error"] == "no database node could serve this read"
        # Replicas the monitor knows are down are not even tried; the primary is the last resort.
        assert answer.json["failures"][-1].startswith("primary: ")
        assert all(not node["up"] for node in health["nodes"].values())


class SilentServer:
    """Accepts TCP connections and never says a word: a hung MySQL server, on loopback."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def test_a_silent_node_costs_a_timeout_not_a_hang(db_cluster, tmp_path):
    silent = SilentServer()
    service = proxy_service(db_cluster, tmp_path / "proxy.log",
                            PROXY_PRIMARY=f"primary=127.0.0.1:{silent.port}",
                            PROXY_CONNECT_TIMEOUT="1")
    try:
        service.start()  # healthy: the replicas answer
        began = time.monotonic()
        answer = read(service, "direct")
        assert answer.status == 503, answer.json
        assert time.monotonic() - began < 4
        assert read(service, "random").status == 200
    finally:
        service.stop()
        silent.close()


def test_the_gatekeeper_without_its_proxy_answers_503(db_cluster, keys_file, api_key, tmp_path):
    service = gatekeeper_service(db_cluster, f"https://127.0.0.1:{free_port()}", keys_file,
                                 tmp_path / "gatekeeper.log")
    with service.running(expect_healthy=False):
        answer = http(service.url + "/query", {"sql": "SELECT 1"}, {"X-API-Key": api_key})
        assert answer.status == 503
        assert "proxy is unreachable" in answer.json["error"]
        status, health = service.health()
        assert status == 503 and health["status"] == "unavailable"


def test_the_services_stop_cleanly_on_sigterm(own_proxy):
    process = own_proxy.process
    own_proxy.stop()
    assert process.returncode == 0


def primary_changes_seen(proxy: ServiceProcess, primary) -> list[float]:
    """How long the Proxy took to see the primary stop taking writes (read_only ON: no
    primary), then take them again: the seconds of each."""
    timings = []
    for read_only, expected in (("ON", None), ("OFF", "primary")):
        primary.sql(f"SET GLOBAL read_only = {read_only}")
        began = time.monotonic()
        assert wait_until(lambda e=expected: proxy.health()[1]["primary"] == e, 20,
                          f"the Proxy seeing read_only {read_only}", interval=0.05)
        timings.append(time.monotonic() - began)
    return timings


def test_a_silent_node_does_not_slow_the_election(db_cluster, restart_stopped, tmp_path):
    """A node whose host is cut off (here a server that accepts and never answers) costs each
    of its checks the connect timeout. It is checked beside the cycle, so the Proxy still
    learns within a check or two that the primary stopped or resumed taking writes (during a
    failover, held writes wait on exactly that), far below the connect timeout."""
    silent = SilentServer()
    replicas = ",".join(f"{node.name}=127.0.0.1:{node.port}" for node in db_cluster.replicas)
    service = proxy_service(db_cluster, tmp_path / "proxy.log",
                            PROXY_REPLICAS=f"{replicas},cut=127.0.0.1:{silent.port}",
                            PROXY_CONNECT_TIMEOUT="4")
    primary = db_cluster.primary
    try:
        service.start()
        assert wait_until(lambda: node_up(service, "cut") is False, 20, "the silent node down")
        timings = primary_changes_seen(service, primary)
        print(f"\nelection with a silent node (connect timeout 4 s): {timings}")
        assert all(seconds < 2.0 for seconds in timings), timings
    finally:
        primary.sql("SET GLOBAL read_only = OFF")
        service.stop()
        silent.close()


def test_a_frozen_replica_is_dropped_without_waiting_for_its_goodbye(
        own_proxy, db_cluster, restart_stopped):
    """A replica whose server stops answering (frozen: SIGSTOP, as a host cut off) with idle
    pooled TLS connections: the Proxy drops them at once when it marks the node down, instead
    of waiting for TLS goodbyes that never come (asyncio waits 30 s for each), so its checks
    go on and it learns of the primary's changes within a check or two."""
    replica = db_cluster.replicas[1]
    for _ in range(20):  # idle TLS connections to both replicas in the read pools
        assert read(own_proxy).status == 200
    primary = db_cluster.primary
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        assert wait_until(lambda: node_up(own_proxy, replica.name) is False, 20,
                          "the frozen replica down")
        timings = primary_changes_seen(own_proxy, primary)
        print(f"\nelection with a frozen replica: {timings}")
        assert all(seconds < 2.0 for seconds in timings), timings
    finally:
        primary.sql("SET GLOBAL read_only = OFF")
        os.kill(replica.process.pid, signal.SIGCONT)
