"""Routing strategies order the replicas in rotation for a read; the primary is the last resort
unless reads are told to fail instead. Rotation itself (lag, threads, hysteresis) is decided
by the health monitor, so every strategy gets it."""

import logging
from collections import Counter

import pytest

from services.config import NodeAddress, ProxyConfig
from services.proxy.health import ClusterHealth, HealthMonitor, NodeHealth
from services.proxy.pools import NodePool
from services.proxy.replication import ReplicaStatus
from services.proxy.routing import STRATEGIES, read_targets

CONFIG = ProxyConfig()


def node(name: str, role: str = "replica", *, up: bool | None = True, rtt: float | None = None,
         in_rotation: bool | None = True, in_flight: int = 0,
         latency: float | None = None) -> NodeHealth:
    pool = NodePool(NodeAddress(name, f"10.0.0.{len(name)}"), role, CONFIG)
    return NodeHealth(pool, up=up, icmp_rtt_ms=rtt, in_rotation=in_rotation,
                      in_flight=in_flight, latency_ms=latency)


def names(nodes: list[NodeHealth]) -> list[str]:
    return [n.name for n in nodes]


def targets(mode: str, cluster: ClusterHealth, fallback: bool = True) -> list[str]:
    return names(read_targets(STRATEGIES[mode], cluster, fallback))


def test_direct_reads_only_from_the_primary():
    cluster = ClusterHealth(node("primary", "primary"), [node("replica1"), node("replica2")])
    assert targets("direct", cluster) == ["primary"]
    assert targets("direct", cluster, fallback=False) == ["primary"]


def test_random_spreads_over_live_replicas_and_ends_on_the_primary():
    cluster = ClusterHealth(node("primary", "primary"),
                            [node("replica1"), node("replica2"), node("replica3", up=False)])
    firsts = Counter()
    for _ in range(400):
        order = targets("random", cluster)
        assert sorted(order[:2]) == ["replica1", "replica2"] and order[2:] == ["primary"]
        firsts[order[0]] += 1
    assert set(firsts) == {"replica1", "replica2"}
    assert min(firsts.values()) > 120  # both replicas lead about half the time


def test_ping_prefers_the_nearest_replica():
    cluster = ClusterHealth(node("primary", "primary"), [
        node("replica1", rtt=0.9), node("replica2", rtt=0.2), node("replica3", rtt=None),
        node("replica4", rtt=0.1, up=False)])
    assert targets("ping", cluster) == ["replica2", "replica1", "replica3", "primary"]


def test_least_prefers_fewer_statements_in_flight_then_lower_latency():
    busy, idle_slow, idle_fast = (node("replica1", in_flight=5, latency=0.3),
                                  node("replica2", in_flight=0, latency=2.0),
                                  node("replica3", in_flight=0, latency=0.5))
    cluster = ClusterHealth(node("primary", "primary"), [busy, idle_slow, idle_fast])
    firsts = Counter(targets("least", cluster)[0] for _ in range(300))
    # Two random candidates: the busy one never wins a comparison, so it never leads.
    assert set(firsts) == {"replica2", "replica3"}
    assert firsts["replica3"] > firsts["replica2"]  # wins whenever it is drawn
    assert targets("least", cluster)[1:] in (["replica3", "replica1", "primary"],
                                             ["replica2", "replica1", "primary"])


def test_out_of_rotation_replicas_get_no_reads_in_any_mode():
    cluster = ClusterHealth(node("primary", "primary"),
                            [node("replica1", in_rotation=False), node("replica2")])
    for mode in ("random", "ping", "least"):
        assert targets(mode, cluster) == ["replica2", "primary"]


def test_unchecked_nodes_count_as_usable():
    """Before the first health check a replica is tried rather than skipped."""
    cluster = ClusterHealth(node("primary", "primary"), [node("replica1", up=None,
                                                              in_rotation=None)])
    assert targets("random", cluster) == ["replica1", "primary"]


@pytest.mark.parametrize("mode", ["random", "ping", "least"])
def test_without_replicas_reads_go_to_the_primary_or_nowhere(mode):
    cluster = ClusterHealth(node("primary", "primary"), [node("replica1", up=False),
                                                         node("replica2", in_rotation=False)])
    assert targets(mode, cluster) == ["primary"]
    assert targets(mode, cluster, fallback=False) == []


RUNNING = ReplicaStatus(True, True, None, 0)


@pytest.fixture(autouse=True)
def quiet_monitor(caplog):
    """The monitor logs every change of rotation; these tests read the state instead."""
    with caplog.at_level(logging.CRITICAL, logger="services.proxy.health"):
        yield


def monitor(**settings) -> tuple[HealthMonitor, NodeHealth]:
    replica = node("replica1", in_rotation=None)
    config = ProxyConfig(**{"max_replica_lag": 1.0, "replica_recovery_checks": 3, **settings})
    return HealthMonitor(ClusterHealth(node("primary", "primary"), [replica]), config), replica


def check(health: HealthMonitor, replica: NodeHealth, status: ReplicaStatus,
          lag_ms: float | None) -> bool | None:
    health._rotate(replica, health._out_of_rotation_reason(status, lag_ms))
    return replica.in_rotation


def test_lag_over_the_limit_takes_a_replica_out_at_once_and_back_after_good_checks():
    health, replica = monitor()
    assert check(health, replica, RUNNING, 10.0) is True  # the first good check decides
    assert check(health, replica, RUNNING, 1250.0) is False
    assert replica.rotation_reason == "lag 1250 ms over 1000 ms"
    # Hysteresis: one good sample is not enough, nor two; a bad one starts the count again.
    assert check(health, replica, RUNNING, 20.0) is False
    assert check(health, replica, RUNNING, 20.0) is False
    assert replica.rotation_reason == "recovering: 2 of 3 good checks"
    assert check(health, replica, RUNNING, 1001.0) is False
    assert [check(health, replica, RUNNING, 5.0) for _ in range(3)] == [False, False, True]
    assert replica.rotation_reason is None


def test_a_stopped_thread_takes_a_replica_out_whatever_its_lag():
    health, replica = monitor(replica_recovery_checks=1)
    stopped = ReplicaStatus(True, False, "Duplicate entry '7' for key 'PRIMARY'", 0)
    assert check(health, replica, stopped, 0.0) is False
    assert replica.rotation_reason == ("replication SQL thread stopped: Duplicate entry '7' "
                                       "for key 'PRIMARY'")
    assert check(health, replica, ReplicaStatus(False, True, None, 0), 0.0) is False
    assert "IO thread stopped" in replica.rotation_reason
    assert check(health, replica, RUNNING, 0.0) is True


def test_unknown_lag_keeps_a_replica_out():
    health, replica = monitor()
    assert check(health, replica, RUNNING, None) is False
    assert replica.rotation_reason == "lag unknown"


def test_replica_status_reads_both_servers_column_names():
    mariadb = ReplicaStatus.from_row({"Slave_IO_Running": "Yes", "Slave_SQL_Running": "No",
                                      "Last_IO_Error": "", "Last_SQL_Error": "boom",
                                      "Seconds_Behind_Master": None})
    mysql = ReplicaStatus.from_row({"Replica_IO_Running": "Yes", "Replica_SQL_Running": "Yes",
                                    "Last_IO_Error": "", "Last_SQL_Error": "",
                                    "Seconds_Behind_Source": 3})
    assert mariadb == ReplicaStatus(True, False, "boom", None)
    assert mysql == ReplicaStatus(True, True, None, 3) and mysql.running
    assert ReplicaStatus.from_row(None).last_error == "replication is not configured"


def test_heartbeat_lag_is_the_age_of_the_oldest_heartbeat_a_replica_lacks(monkeypatch):
    from services.proxy.health import Heartbeat
    heartbeat = Heartbeat(CONFIG)
    heartbeat.written.extend([(1, 100.0), (2, 100.25), (4, 100.75), (5, 101.0)])  # 3 failed
    monkeypatch.setattr("services.proxy.health.time.monotonic", lambda: 102.0)
    row = {"epoch": heartbeat.epoch}
    assert heartbeat.lag_ms([{**row, "seq": 5}]) == 0.0  # has them all
    assert heartbeat.lag_ms([{**row, "seq": 2}]) == 1250.0  # lacks 4, written at 100.75
    assert heartbeat.lag_ms([{**row, "seq": 3}]) == 1250.0
    assert heartbeat.lag_ms([{"epoch": heartbeat.epoch + 1, "seq": 9}]) == 2000.0  # none of ours
    assert heartbeat.lag_ms([]) == 2000.0
    # With the primary gone, only what some replica has counts: 5 went with the primary.
    assert heartbeat.lag_ms(applied=4, ceiling=4) == 0.0
    assert heartbeat.lag_ms(applied=2, ceiling=4) == 1250.0
