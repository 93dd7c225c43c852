"""Routing strategies: which replicas a read may try, in order of preference.

Writes always go to the primary; a strategy only orders the replicas that are in rotation
(up, both replication threads running, lag under the limit: ``NodeHealth.usable``). The router
tries them in that order and then, unless the Proxy is told to fail instead, the primary, so
every strategy gets lag awareness and failover for free.
"""

from __future__ import annotations

import random
from typing import ClassVar, Protocol

from services.contract import MODES
from services.proxy.health import ClusterHealth, NodeHealth


class RoutingStrategy(Protocol):
    name: ClassVar[str]
    uses_replicas: ClassVar[bool]

    def order(self, replicas: list[NodeHealth]) -> list[NodeHealth]:
        """The usable replicas, best first."""
        ...


class DirectStrategy:
    """Everything on the primary: always up to date, no read scaling."""

    name = "direct"
    uses_replicas = False

    def order(self, replicas: list[NodeHealth]) -> list[NodeHealth]:
        return []


class RandomStrategy:
    """A random replica, then the others."""

    name = "random"
    uses_replicas = True

    def order(self, replicas: list[NodeHealth]) -> list[NodeHealth]:
        return random.sample(replicas, len(replicas))


class PingStrategy:
    """The replica with the best smoothed ICMP round trip (unmeasured ones last)."""

    name = "ping"
    uses_replicas = True

    def order(self, replicas: list[NodeHealth]) -> list[NodeHealth]:
        replicas = random.sample(replicas, len(replicas))  # ties spread the load
        replicas.sort(key=lambda node: (node.icmp_rtt_ms is None, node.icmp_rtt_ms or 0.0))
        return replicas


class LeastStrategy:
    """The less loaded of two random replicas (power of two choices), by the statements the
    Proxy has running there, ties broken by the latency it observed there; then the others,
    least loaded first. Two random candidates rather than the global minimum, so that a burst
    of requests arriving between two updates does not all pile onto one node."""

    name = "least"
    uses_replicas = True

    @staticmethod
    def _load(node: NodeHealth) -> tuple[int, float]:
        return node.in_flight, node.latency_ms if node.latency_ms is not None else 0.0

    def order(self, replicas: list[NodeHealth]) -> list[NodeHealth]:
        if len(replicas) <= 1:
            return list(replicas)
        first, second = random.sample(replicas, 2)
        best = min((first, second), key=self._load)
        rest = sorted((node for node in replicas if node is not best), key=self._load)
        return [best, *rest]


STRATEGIES: dict[str, RoutingStrategy] = {
    strategy.name: strategy
    for strategy in (DirectStrategy(), RandomStrategy(), PingStrategy(), LeastStrategy())
}
if tuple(STRATEGIES) != MODES:  # the contract names the modes clients may ask for
    raise ImportError(f"routing strategies {tuple(STRATEGIES)} differ from the contract's "
                      f"modes {MODES}")


def read_targets(strategy: RoutingStrategy, cluster: ClusterHealth,
                 primary_fallback: bool = True) -> list[NodeHealth]:
    """Where a read is tried, in order: the strategy's replicas, then the primary (always
    for ``direct``; for the others unless ``primary_fallback`` is off)."""
    primary = [cluster.primary] if cluster.primary is not None else []
    if not strategy.uses_replicas:
        return primary
    replicas = strategy.order([node for node in cluster.replicas if node.usable])
    return [*replicas, *primary] if primary_fallback else replicas
