"""Assembling the Proxy: pools, health monitor, transactions, router, handlers."""

from __future__ import annotations

import asyncio

import tornado.web

from services.config import ProxyConfig
from services.http import NotFoundHandler, log_failed_requests
from services.proxy.handlers import (
    BatchHandler,
    HealthHandler,
    IndexHandler,
    QueryHandler,
    TransactionsHandler,
)
from services.proxy.health import ClusterHealth, HealthMonitor, NodeHealth
from services.proxy.pools import NodePool
from services.proxy.router import QueryRouter
from services.proxy.tokens import TokenCodec, derive_secret
from services.proxy.transactions import TransactionManager

TRANSACTION_PATH = r"/transactions/([^/]+)/(commit|rollback)"


async def make_proxy_app(config: ProxyConfig):
    """The application and the coroutine that releases what it holds."""
    primary = NodeHealth(NodePool(config.primary, "primary", config))
    replicas = [NodeHealth(NodePool(address, "replica", config)) for address in config.replicas]
    cluster = ClusterHealth(primary, replicas)
    await asyncio.gather(*(node.pool.start() for node in cluster.nodes))
    monitor = HealthMonitor(cluster, config)
    await monitor.check_nodes()  # know who is up before the first request
    monitor.start()
    transactions = TransactionManager(cluster, config)
    transactions.start()
    secret = (config.token_secret.encode() if config.token_secret
              else derive_secret(config.db_password))
    router = QueryRouter(cluster, monitor, transactions, TokenCodec(secret), config.max_rows,
                         causal_wait=config.causal_wait,
                         primary_fallback=config.read_fallback == "primary")
    handler_args = {"router": router, "max_body_bytes": config.max_body_bytes}
    app = tornado.web.Application(
        [
            (r"/", IndexHandler),
            (r"/health", HealthHandler, {"cluster": cluster, "transactions": transactions}),
            (r"/query", QueryHandler, handler_args),
            (r"/batch", BatchHandler, handler_args),
            (r"/transactions", TransactionsHandler, handler_args),
            (TRANSACTION_PATH, TransactionsHandler, handler_args),
        ],
        default_handler_class=NotFoundHandler,
        log_function=log_failed_requests,
    )

    async def close() -> None:
        await transactions.stop()
        await monitor.stop()
        await asyncio.gather(*(node.pool.close() for node in cluster.nodes))

    return app, close
