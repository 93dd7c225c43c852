"""Assembling the Proxy: pools, health monitor, router, handlers."""

from __future__ import annotations

import asyncio

import tornado.web

from services.config import ProxyConfig
from services.health import ClusterHealth, HealthMonitor, NodeHealth
from services.http import NotFoundHandler, log_failed_requests
from services.pools import NodePool
from services.proxy.handlers import HealthHandler, QueryHandler
from services.proxy.router import QueryRouter


async def make_proxy_app(config: ProxyConfig):
    """The application and the coroutine that releases what it holds."""
    primary = NodeHealth(NodePool(config.primary, "primary", config))
    replicas = [NodeHealth(NodePool(address, "replica", config)) for address in config.replicas]
    cluster = ClusterHealth(primary, replicas)
    await asyncio.gather(*(node.pool.start() for node in cluster.nodes))
    monitor = HealthMonitor(cluster, config)
    await monitor.check_nodes()  # know who is up before the first request
    monitor.start()
    router = QueryRouter(cluster, monitor, config.max_rows)
    app = tornado.web.Application(
        [
            (r"/health", HealthHandler, {"cluster": cluster}),
            (r"/query", QueryHandler, {"router": router,
                                       "max_body_bytes": config.max_body_bytes}),
        ],
        default_handler_class=NotFoundHandler,
        log_function=log_failed_requests,
    )

    async def close() -> None:
        await monitor.stop()
        await asyncio.gather(*(node.pool.close() for node in cluster.nodes))

    return app, close
