"""Background health of the database nodes: is each one up, and how far is each replica?

Requests never probe anything themselves: they read the latest figures kept here. The seed's
ping mode pinged inside the request and paid for it with a 2.2 s worst case.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from icmplib import async_multiping
from icmplib.exceptions import ICMPLibError

from services.config import ProxyConfig
from services.pools import NodePool, NodeUnavailable

log = logging.getLogger(__name__)


@dataclass
class NodeHealth:
    """What the monitor last learned about one node. ``up`` is None until the first check."""

    pool: NodePool
    up: bool | None = None
    last_error: str | None = None
    sql_rtt_ms: float | None = None
    icmp_rtt_ms: float | None = None  # smoothed (EWMA); None when unknown or unreachable
    icmp_loss: float | None = None

    @property
    def name(self) -> str:
        return self.pool.name

    @property
    def role(self) -> str:
        return self.pool.role

    @property
    def usable(self) -> bool:
        return self.up is not False

    def to_json(self) -> dict:
        return {
            "role": self.role,
            "address": f"{self.pool.address.host}:{self.pool.address.port}",
            "up": self.up,
            "last_error": self.last_error,
            "sql_rtt_ms": _rounded(self.sql_rtt_ms),
            "icmp_rtt_ms": _rounded(self.icmp_rtt_ms),
            "icmp_loss": self.icmp_loss,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass
class ClusterHealth:
    """The nodes as the router sees them: one primary, the replicas, and their health."""

    primary: NodeHealth
    replicas: list[NodeHealth] = field(default_factory=list)

    @property
    def nodes(self) -> list[NodeHealth]:
        return [self.primary, *self.replicas]


class HealthMonitor:
    """Checks every node with ``SELECT 1`` and pings the replicas, each on its own interval."""

    def __init__(self, cluster: ClusterHealth, config: ProxyConfig) -> None:
        self.cluster = cluster
        self._config = config
        self._tasks: list[asyncio.Task] = []
        self._ping_warning_logged = False

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._every(self._config.health_interval, self.check_nodes)),
            asyncio.create_task(self._every(self._config.ping_interval, self.ping_replicas)),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @staticmethod
    async def _every(interval: float, action) -> None:
        while True:
            try:
                await action()
            except Exception:  # a monitor that dies silently is worse than a noisy one
                log.exception("health check failed")
            await asyncio.sleep(interval)

    async def check_nodes(self) -> None:
        await asyncio.gather(*(self._check(node) for node in self.cluster.nodes))

    async def _check(self, node: NodeHealth) -> None:
        try:
            node.sql_rtt_ms = await node.pool.ping(self._config.connect_timeout)
        except NodeUnavailable as error:
            await self.mark_down(node, error.reason)
        else:
            if node.up is False:
                log.info("node %s is back", node.name)
            node.up, node.last_error = True, None

    async def mark_down(self, node: NodeHealth, reason: str) -> None:
        """Called by the monitor and by requests that found the node dead."""
        if node.up is not False:
            log.warning("node %s is down: %s", node.name, reason)
        node.up, node.last_error = False, reason
        await node.pool.drop_idle_connections()

    async def ping_replicas(self) -> None:
        replicas = self.cluster.replicas
        hosts = sorted({node.pool.address.host for node in replicas})
        if not hosts:
            return
        try:
            results = await async_multiping(
                hosts, count=1, timeout=1, privileged=self._config.ping_privileged)
        except (ICMPLibError, OSError) as error:
            if not self._ping_warning_logged:
                log.warning("ICMP ping unavailable (%s): ping mode orders replicas randomly",
                            error)
                self._ping_warning_logged = True
            return
        by_host = {result.address: result for result in results}
        alpha = self._config.ping_smoothing
        for node in replicas:
            result = by_host.get(node.pool.address.host)
            if result is None:
                continue
            node.icmp_loss = result.packet_loss
            if not result.is_alive:
                node.icmp_rtt_ms = None
            elif node.icmp_rtt_ms is None:
                node.icmp_rtt_ms = result.avg_rtt
            else:
                node.icmp_rtt_ms = alpha * result.avg_rtt + (1 - alpha) * node.icmp_rtt_ms
