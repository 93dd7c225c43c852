"""Routing strategies order the nodes for a read; the primary is always the last resort."""

from collections import Counter

import pytest

from services.config import NodeAddress, ProxyConfig
from services.health import ClusterHealth, NodeHealth
from services.pools import NodePool
from services.routing import STRATEGIES

CONFIG = ProxyConfig()


def node(name: str, role: str = "replica", *, up: bool | None = True,
         rtt: float | None = None) -> NodeHealth:
    pool = NodePool(NodeAddress(name, f"10.0.0.{len(name)}"), role, CONFIG)
    return NodeHealth(pool, up=up, icmp_rtt_ms=rtt)


def names(nodes: list[NodeHealth]) -> list[str]:
    return [n.name for n in nodes]


def test_direct_reads_only_from_the_primary():
    cluster = ClusterHealth(node("manager", "primary"), [node("worker1"), node("worker2")])
    assert names(STRATEGIES["direct"].read_targets(cluster)) == ["manager"]


def test_random_spreads_over_live_replicas_and_ends_on_the_primary():
    cluster = ClusterHealth(node("manager", "primary"),
                            [node("worker1"), node("worker2"), node("worker3", up=False)])
    firsts = Counter()
    for _ in range(400):
        order = names(STRATEGIES["random"].read_targets(cluster))
        assert sorted(order[:2]) == ["worker1", "worker2"] and order[2:] == ["manager"]
        firsts[order[0]] += 1
    assert set(firsts) == {"worker1", "worker2"}
    assert min(firsts.values()) > 120  # both replicas lead about half the time


def test_ping_prefers_the_nearest_replica():
    cluster = ClusterHealth(node("manager", "primary"), [
        node("worker1", rtt=0.9), node("worker2", rtt=0.2), node("worker3", rtt=None),
        node("worker4", rtt=0.1, up=False)])
    assert names(STRATEGIES["ping"].read_targets(cluster)) == [
        "worker2", "worker1", "worker3", "manager"]


def test_unchecked_nodes_count_as_usable():
    """Before the first health check a replica is tried rather than skipped."""
    cluster = ClusterHealth(node("manager", "primary"), [node("worker1", up=None)])
    assert names(STRATEGIES["random"].read_targets(cluster)) == ["worker1", "manager"]


@pytest.mark.parametrize("mode", ["random", "ping"])
def test_without_replicas_reads_go_to_the_primary(mode):
    cluster = ClusterHealth(node("manager", "primary"), [node("worker1", up=False)])
    assert names(STRATEGIES[mode].read_targets(cluster)) == ["manager"]
