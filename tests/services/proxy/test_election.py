"""Which node the Proxy writes to (``ClusterHealth.elect``), from what its checks last saw:
the one writable node at the highest epoch seen on any node; an older writable node fenced;
two at one epoch, or a writable node whose epoch could not be read, get no write. The fault
tests (test_replication_faults.py) show the same on real servers; these cover the cases a
test cluster reaches only by accident (a node being rebuilt, without its epoch table)."""

from __future__ import annotations

import asyncio

import pytest

from services.config import NodeAddress, ProxyConfig
from services.proxy.health import ClusterHealth, NodeHealth, NoPrimary
from services.proxy.pools import NodePool

CONFIG = ProxyConfig(instance_name="election")


def node(name: str, *, writable: bool, epoch: int | None, up: bool = True,
         role: str = "replica") -> NodeHealth:
    health = NodeHealth(NodePool(NodeAddress(name, "127.0.0.1"), role, CONFIG))
    health.up, health.writable, health.epoch = up, writable, epoch
    health.semi_sync, health.semi_sync_clients = True, 1
    return health


def cluster(*nodes: NodeHealth) -> ClusterHealth:
    return ClusterHealth(nodes[0], list(nodes[1:]))


def test_the_writable_node_at_the_highest_epoch_is_the_primary_and_an_older_one_fenced():
    old = node("primary", writable=True, epoch=1, role="primary")
    new = node("replica2", writable=True, epoch=2)
    health = cluster(old, node("replica1", writable=False, epoch=2), new)
    assert health.elect() is new
    assert (old.role, new.role, health.epoch) == ("fenced", "primary", 2)
    assert [replica.name for replica in health.replicas] == ["replica1"]


def test_two_writable_nodes_at_one_epoch_get_no_write():
    health = cluster(node("primary", writable=True, epoch=3, role="primary"),
                     node("replica1", writable=True, epoch=3))
    assert health.elect() is None
    with pytest.raises(NoPrimary, match="2 writable nodes at epoch 3"):
        health.write_target(allow_async=False, hold=15)


def test_an_epoch_that_could_not_be_read_never_elects_once_the_cluster_had_one():
    """A node rebuilt from scratch answers without the epoch table for a while: the highest
    epoch seen stays, so the primary whose row is missing for a check is not replaced by
    nothing, and a writable node without an epoch is not taken for the primary."""
    primary = node("replica2", writable=True, epoch=2, role="primary")
    rebuilt = node("primary", writable=False, epoch=None)
    health = cluster(primary, rebuilt)
    assert health.elect() is primary
    primary.epoch = None  # its epoch unreadable for one check
    assert health.elect() is None and health.epoch == 2
    primary.epoch = 2
    assert health.elect() is primary


def test_without_any_epoch_the_one_writable_node_is_the_primary():
    """A cluster set up before failover has no epoch table: epoch 0 everywhere."""
    primary = node("primary", writable=True, epoch=None, role="primary")
    health = cluster(primary, node("replica1", writable=False, epoch=None))
    assert health.elect() is primary and health.epoch == 0


def test_a_primary_that_is_down_stays_the_primary_and_writes_wait_for_it():
    primary = node("primary", writable=True, epoch=1, role="primary", up=False)
    health = cluster(primary, node("replica1", writable=False, epoch=1))
    assert health.elect() is primary
    with pytest.raises(NoPrimary) as refused:
        health.write_target(allow_async=False, hold=15)
    assert refused.value.hold and refused.value.cause == "no_primary"


def test_semi_sync_off_refuses_at_once_unless_just_promoted_or_async_allowed():
    primary = node("primary", writable=True, epoch=1, role="primary")
    health = cluster(primary, node("replica1", writable=False, epoch=1))
    health.elect()
    primary.semi_sync = False
    with pytest.raises(NoPrimary) as refused:
        health.write_target(allow_async=False, hold=15)
    assert not refused.value.hold and refused.value.cause == "semi_sync_off"
    assert health.write_target(allow_async=True, hold=15) is primary
    # A new primary whose replicas are still connecting: worth waiting for.
    successor = health.nodes[1]
    successor.writable, successor.epoch, primary.writable = True, 2, False
    successor.semi_sync_clients = 0
    assert health.elect() is successor
    with pytest.raises(NoPrimary) as waiting:
        health.write_target(allow_async=False, hold=15)
    assert waiting.value.hold


def test_a_held_write_goes_to_the_primary_elected_meanwhile():
    async def scenario() -> str:
        old = node("primary", writable=False, epoch=1, role="primary")
        new = node("replica1", writable=False, epoch=1)
        health = cluster(old, new)
        health.elect()  # no writable node: a switchover under way
        waiting = asyncio.create_task(health.writable_primary(False, hold=5))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        new.writable, new.epoch = True, 2
        health.elect()
        return (await asyncio.wait_for(waiting, 2)).name

    assert asyncio.run(scenario()) == "replica1"
