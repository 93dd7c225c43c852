"""Assembling the Gatekeeper: keys and where their rate limits are kept, the Proxies (their
pools and checks), the endpoints, the request log and the metrics port."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import tornado.web

from services.config import GatekeeperConfig, NamedProxy
from services.gatekeeper.forwarder import ProxyForwarder
from services.gatekeeper.handlers import (
    ForwardHandler,
    HealthHandler,
    IndexHandler,
    OpenApiHandler,
)
from services.gatekeeper.keys import KeyRing, LocalLimiter, RateLimiter, SharedBuckets
from services.gatekeeper.metrics import gatekeeper_metrics
from services.gatekeeper.proxies import Proxies, Proxy
from services.gatekeeper.proxylist import ProxyListFile
from services.gatekeeper.ratestore import RedisLimiter, redis_client
from services.gatekeeper.tls import (
    ServerCertificate,
    metrics_server_context,
    proxy_client_context,
)
from services.http import Drain, Listener, NotFoundHandler, ServerOptions
from services.metrics import announce, metrics_app
from services.requestlog import RequestLog

log = logging.getLogger(__name__)
RELOAD_INTERVAL = 1.0  # seconds between looks at the keys file and the certificate


def request_log(config: GatekeeperConfig) -> RequestLog:
    """One JSON line per request, and its metrics: who (the key's name, never its secret),
    which request, what, how it ended and how long it took. Never the body: it holds SQL
    parameter values. Shared by the service's port and the redirect port."""
    return RequestLog("gatekeeper", gatekeeper_metrics if config.metrics_port else None,
                      config.log_requests)


def metrics_listener(config: GatekeeperConfig) -> Listener | None:
    """``GET /metrics`` on ``metrics_port`` (None when it is 0): HTTPS with the Gatekeeper's
    certificate and, with ``metrics_client_ca``, only for that CA's client certificates (the
    monitor host's); plain HTTP without a certificate (development)."""
    if not config.metrics_port:
        return None
    context = (metrics_server_context(config.tls_cert, config.tls_key, config.metrics_client_ca)
               if config.tls_cert else None)
    options = ServerOptions(ssl_context=context, idle_timeout=30.0, body_timeout=10.0,
                            max_header_bytes=16 * 1024, max_connections=32)
    return Listener(metrics_app(), config.listen_address, config.metrics_port, options,
                    "metrics, https" if context else "metrics, http")


def proxies_for(config: GatekeeperConfig,
                listed: tuple[NamedProxy, ...] | None = None) -> Proxies:
    """The Proxies behind (``listed``, else the configuration's), each with its own keep-alive
    pool (``proxy_connections`` each) and a connection for its checks, the same client
    certificate, and the same name expected on their certificates; the Proxies of a new list
    are made alike."""
    ssl_context = (proxy_client_context(config.proxy_ca, config.proxy_client_cert,
                                        config.proxy_client_key)
                   if config.proxy_over_tls else None)

    def forwarder(url: str, connections: int, fresh: bool = False) -> ProxyForwarder:
        return ProxyForwarder(url, config.proxy_timeout, connections, ssl_context=ssl_context,
                              tls_name=config.proxy_tls_name,
                              max_answer_bytes=config.max_answer_bytes, fresh=fresh)

    def make(proxy: NamedProxy) -> Proxy:
        return Proxy(proxy.name, forwarder(proxy.url, config.proxy_connections),
                     checker=forwarder(proxy.url, 1, fresh=True), url=proxy.url)

    return Proxies([make(proxy) for proxy in listed or config.proxy_list],
                   by_name=bool(config.proxies or config.proxies_file),
                   metrics=gatekeeper_metrics() if config.metrics_port else None,
                   factory=make, retire_seconds=config.retire_seconds)


def rate_limiter(config: GatekeeperConfig, buckets: SharedBuckets | None) -> RateLimiter:
    """Where the keys' buckets are: this host's (``buckets``, shared by its workers), or the
    rate store every Gatekeeper shares, with this host's at rate / peers as its fallback.
    Made in each worker: a client's connections must not cross a fork."""
    local = LocalLimiter(buckets)
    if not config.rate_store:
        return local
    client = redis_client(config.rate_store, config.rate_store_password(),
                          config.rate_store_timeout,
                          (config.proxy_ca, config.proxy_client_cert, config.proxy_client_key))
    fallback = LocalLimiter(local.buckets, share=config.rate_store_peers)
    return RedisLimiter(client, fallback, config.rate_store_timeout,
                        gatekeeper_metrics() if config.metrics_port else None)


async def _reload_forever(keys: KeyRing, certificate: ServerCertificate | None) -> None:
    while True:
        await asyncio.sleep(RELOAD_INTERVAL)
        try:
            keys.reload_if_changed()
            if certificate is not None:
                certificate.reload_if_changed()
        except Exception:  # a reload must never stop the reloading
            log.exception("reloading the keys or the certificate failed")


async def _reload_proxies_forever(listed: ProxyListFile, proxies: Proxies) -> None:
    """This worker's look at the Proxy list file, every second: a new list is applied. The
    list read is applied at each look (nothing to do when it is in force), so that one whose
    update failed half-way is tried again without waiting for the file to change."""
    while True:
        await asyncio.sleep(RELOAD_INTERVAL)
        try:
            listed.reload_if_changed()
            await proxies.update(listed.proxies)
        except Exception:  # a reload must never stop the reloading
            log.exception("reloading the proxy list failed")


async def make_gatekeeper_app(config: GatekeeperConfig,
                              certificate: ServerCertificate | None = None,
                              requests: RequestLog | None = None,
                              buckets: SharedBuckets | None = None):
    """The application and the coroutine that releases what it holds. ``buckets``: the rate
    limits' table, shared with the other workers when it was made before they were forked."""
    if config.metrics_port:
        announce("gatekeeper")
    requests = requests or request_log(config)
    limiter = rate_limiter(config, buckets)
    await limiter.start()
    keys = KeyRing(config.keys_file, config.inline_api_key(), limiter=limiter)
    # Each worker reads the list file itself, and goes on from what it read.
    listed = (ProxyListFile(config.proxies_file, config.insecure_http)
              if config.proxies_file else None)
    proxies = proxies_for(config, listed.proxies if listed else None)
    await proxies.start()
    reloading = asyncio.create_task(_reload_forever(keys, certificate))
    relisting = (asyncio.create_task(_reload_proxies_forever(listed, proxies))
                 if listed else None)

    def forward(endpoint: str) -> dict:
        return {"endpoint": endpoint, "proxies": proxies, "keys": keys,
                "max_body_bytes": config.max_body_bytes}

    app = tornado.web.Application(
        [
            (r"/", IndexHandler, {"endpoint": "GET /"}),
            (r"/openapi.json", OpenApiHandler, {"endpoint": "GET /openapi.json"}),
            (r"/health", HealthHandler, {"endpoint": "GET /health",
                                         "proxies": proxies}),
            (r"/query", ForwardHandler, forward("POST /query")),
            (r"/batch", ForwardHandler, forward("POST /batch")),
            (r"/transactions", ForwardHandler, forward("POST /transactions")),
            (r"/transactions/([^/]+)/(commit)", ForwardHandler,
             forward("POST /transactions/{id}/commit")),
            (r"/transactions/([^/]+)/(rollback)", ForwardHandler,
             forward("POST /transactions/{id}/rollback")),
        ],
        default_handler_class=NotFoundHandler,
        log_function=requests.finished,
        request_log=requests,
        # SIGTERM: /health fails at once, requests are served for drain_seconds more (the
        # balancer's checks notice), then what is in flight gets up to the Proxy's timeout.
        drain=Drain(config.drain_seconds, config.finish_seconds),
    )

    async def close() -> None:
        for task in (reloading, relisting):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await proxies.close()
        await limiter.close()
        requests.flush()

    return app, close
