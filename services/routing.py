"""Routing strategies: where a read may run, in order of preference.

Writes always go to the primary; a strategy only orders the nodes for reads. The router tries
them in that order, so a strategy that puts the primary last gets the failover for free.
"""

from __future__ import annotations

import random
from typing import ClassVar, Protocol

from services.health import ClusterHealth, NodeHealth


class RoutingStrategy(Protocol):
    name: ClassVar[str]

    def read_targets(self, cluster: ClusterHealth) -> list[NodeHealth]:
        """The nodes to try for a read, best first."""
        ...


class DirectStrategy:
    """Everything on the primary: always up to date, no read scaling."""

    name = "direct"

    def read_targets(self, cluster: ClusterHealth) -> list[NodeHealth]:
        return [cluster.primary]


class RandomStrategy:
    """A random live replica, then the other live replicas, then the primary."""

    name = "random"

    def read_targets(self, cluster: ClusterHealth) -> list[NodeHealth]:
        replicas = [node for node in cluster.replicas if node.usable]
        return [*random.sample(replicas, len(replicas)), cluster.primary]


class PingStrategy:
    """The live replica with the best smoothed ICMP round trip (unmeasured ones last)."""

    name = "ping"

    def read_targets(self, cluster: ClusterHealth) -> list[NodeHealth]:
        replicas = [node for node in cluster.replicas if node.usable]
        random.shuffle(replicas)  # ties (equal or unknown round trips) spread the load
        replicas.sort(key=lambda node: (node.icmp_rtt_ms is None, node.icmp_rtt_ms or 0.0))
        return [*replicas, cluster.primary]


STRATEGIES: dict[str, RoutingStrategy] = {
    strategy.name: strategy for strategy in (DirectStrategy(), RandomStrategy(), PingStrategy())
}
MODES = tuple(STRATEGIES)
