"""Assembling the Proxy: pools, health monitor, transactions, router, handlers, TLS, and the
metrics port."""

from __future__ import annotations

import asyncio
import logging
import ssl

import tornado.web

from services.config import ProxyConfig
from services.contract import SCOPES
from services.http import Drain, Listener, NotFoundHandler, ServerOptions
from services.metrics import announce, metrics_app
from services.proxy.affinity import Affinity
from services.proxy.handlers import (
    BatchHandler,
    HealthHandler,
    IndexHandler,
    QueryHandler,
    TransactionsHandler,
)
from services.proxy.health import ClusterHealth, HealthMonitor, NodeHealth
from services.proxy.metrics import proxy_metrics
from services.proxy.pools import MONITOR, NodePool
from services.proxy.quiet import Scrubber
from services.proxy.router import QueryRouter
from services.proxy.shares import StatementShares
from services.proxy.tokens import TokenCodec, derive_secret
from services.proxy.transactions import TransactionManager
from services.requestlog import RequestLog
from services.workers import Worker

TRANSACTION_PATH = r"/transactions/([^/]+)/(commit|rollback)"
log = logging.getLogger(__name__)


class ProxyDrain(Drain):
    """The Proxy's way out on SIGTERM (``services.http.Drain``): its health check fails and it
    opens no new transaction, while plain requests and the open transactions' are served as
    usual; it stops once every open transaction has ended (commit, rollback, idle timeout,
    max age), or after ``grace`` seconds (``PROXY_DRAIN_SECONDS``), rolling back those left."""

    def __init__(self, transactions: TransactionManager, grace: float, finish: float) -> None:
        super().__init__(grace, finish)
        self.transactions = transactions

    def start(self) -> None:
        super().start()
        self.transactions.drain()
        log.info("no new transactions from now on; waiting up to %gs for the %d open one(s) "
                 "to end", self.grace, self.transactions.open_count)

    async def settle(self) -> None:
        await self.transactions.wait_ended(self.grace)

    def left_over(self) -> str | None:
        count = self.transactions.open_count
        return f"{count} transaction(s) still open, to be rolled back" if count else None


def server_tls_context(config: ProxyConfig) -> ssl.SSLContext | None:
    """HTTPS with the Proxy's certificate when one is configured; with ``tls_client_ca``, a
    client without a certificate from that CA fails the handshake, before any HTTP is read.
    The scope headers are believed only because of this."""
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    if config.tls_client_ca:
        context.load_verify_locations(cafile=config.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_options(config: ProxyConfig) -> ServerOptions:
    return ServerOptions(ssl_context=server_tls_context(config))


def metrics_listener(config: ProxyConfig) -> Listener | None:
    """``GET /metrics`` on ``metrics_port`` (None when it is 0), with the service's own TLS:
    HTTPS and, with ``tls_client_ca``, only for a client certificate of that CA (the monitor
    host's); plain HTTP when the Proxy has no certificate (development)."""
    if not config.metrics_port:
        return None
    context = server_tls_context(config)
    options = ServerOptions(ssl_context=context, idle_timeout=30.0, body_timeout=10.0,
                            max_header_bytes=16 * 1024, max_connections=32)
    return Listener(metrics_app(), config.listen_address, config.metrics_port, options,
                    "metrics, https" if context else "metrics, http")


def request_log(config: ProxyConfig) -> RequestLog:
    return RequestLog("proxy", proxy_metrics if config.metrics_port else None,
                      config.log_requests)


def token_secret(config: ProxyConfig) -> bytes:
    """The read-your-writes tokens' key: the configured one, else one derived from every
    database password the Proxy holds (the same on every Proxy of the cluster, known to no
    client)."""
    if config.token_secret:
        return config.token_secret.encode()
    passwords = dict.fromkeys(config.db_credentials(scope)[1] for scope in (*SCOPES, MONITOR))
    return derive_secret("\n".join(passwords))


def scrubber_for(config: ProxyConfig) -> Scrubber:
    """What this Proxy's error answers must never name: its nodes and its database users."""
    return Scrubber([node.host for node in config.nodes],
                    [config.db_user, *(config.db_credentials(scope)[0]
                                       for scope in (*SCOPES, MONITOR))])


async def make_proxy_app(config: ProxyConfig, worker: Worker | None = None):
    """The application and the coroutine that releases what it holds. One ``worker`` of
    several has a name of its own, and passes transactions it does not hold to their worker."""
    affinity = None
    if worker is not None:
        affinity = Affinity.for_worker(worker, config)
        config = config.for_worker(worker.index)
    metrics = proxy_metrics() if config.metrics_port else None  # none without a port to read
    if metrics is not None:
        announce("proxy")
    requests = request_log(config)
    primary = NodeHealth(NodePool(config.primary, "primary", config))
    replicas = [NodeHealth(NodePool(address, "replica", config)) for address in config.replicas]
    cluster = ClusterHealth(primary, replicas)
    monitor = HealthMonitor(cluster, config, metrics)
    await monitor.check_nodes()  # know who is up before the first request
    monitor.start()
    transactions = TransactionManager(cluster, config, metrics)
    transactions.start()
    router = QueryRouter(cluster, monitor, transactions, TokenCodec(token_secret(config)),
                         config.max_rows, causal_wait=config.causal_wait,
                         primary_fallback=config.read_fallback == "primary",
                         max_result_bytes=config.max_result_bytes, metrics=metrics,
                         write_hold=config.write_hold, allow_async=config.allow_async,
                         shares=StatementShares(config.max_statements_per_key))
    handler_args = {"router": router, "max_body_bytes": config.max_body_bytes,
                    "default_scope": config.default_scope, "scrubber": scrubber_for(config),
                    "affinity": affinity}
    app = tornado.web.Application(
        [
            (r"/", IndexHandler),
            (r"/health", HealthHandler, {"cluster": cluster, "transactions": transactions,
                                         "worker": worker.index if worker else None}),
            (r"/query", QueryHandler, handler_args),
            (r"/batch", BatchHandler, handler_args),
            (r"/transactions", TransactionsHandler, handler_args),
            (TRANSACTION_PATH, TransactionsHandler, handler_args),
        ],
        default_handler_class=NotFoundHandler,
        log_function=requests.finished,
        request_log=requests,
        drain=ProxyDrain(transactions, config.drain_seconds, config.finish_seconds),
    )
    if affinity is not None:
        affinity.serve(app)

    async def close() -> None:
        if affinity is not None:
            await affinity.close()
        await transactions.stop()
        await monitor.stop()
        await asyncio.gather(*(node.pool.close() for node in cluster.nodes))
        requests.flush()

    return app, close
