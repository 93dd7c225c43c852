"""Assembling the Gatekeeper: keys, the forwarder, the endpoints, the request log and the
metrics port."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import tornado.web

from services.config import GatekeeperConfig
from services.gatekeeper.forwarder import ProxyForwarder
from services.gatekeeper.handlers import (
    ForwardHandler,
    HealthCheck,
    HealthHandler,
    IndexHandler,
    OpenApiHandler,
)
from services.gatekeeper.keys import KeyRing, SharedBuckets
from services.gatekeeper.metrics import gatekeeper_metrics
from services.gatekeeper.tls import (
    ServerCertificate,
    metrics_server_context,
    proxy_client_context,
)
from services.http import Listener, NotFoundHandler, ServerOptions
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


async def _reload_forever(keys: KeyRing, certificate: ServerCertificate | None) -> None:
    while True:
        await asyncio.sleep(RELOAD_INTERVAL)
        try:
            keys.reload_if_changed()
            if certificate is not None:
                certificate.reload_if_changed()
        except Exception:  # a reload must never stop the reloading
            log.exception("reloading the keys or the certificate failed")


async def make_gatekeeper_app(config: GatekeeperConfig,
                              certificate: ServerCertificate | None = None,
                              requests: RequestLog | None = None,
                              buckets: SharedBuckets | None = None):
    """The application and the coroutine that releases what it holds. ``buckets``: the rate
    limits' table, shared with the other workers when it was made before they were forked."""
    if config.metrics_port:
        announce("gatekeeper")
    requests = requests or request_log(config)
    keys = KeyRing(config.keys_file, config.inline_api_key(), buckets=buckets)
    ssl_context = (proxy_client_context(config.proxy_ca, config.proxy_client_cert,
                                        config.proxy_client_key)
                   if config.proxy_over_tls else None)
    forwarder = ProxyForwarder(config.proxy_url, config.proxy_timeout, config.proxy_connections,
                               ssl_context=ssl_context, tls_name=config.proxy_tls_name,
                               max_answer_bytes=config.max_answer_bytes)
    await forwarder.start()
    reloading = asyncio.create_task(_reload_forever(keys, certificate))

    def forward(endpoint: str) -> dict:
        return {"endpoint": endpoint, "forwarder": forwarder, "keys": keys,
                "max_body_bytes": config.max_body_bytes}

    app = tornado.web.Application(
        [
            (r"/", IndexHandler, {"endpoint": "GET /"}),
            (r"/openapi.json", OpenApiHandler, {"endpoint": "GET /openapi.json"}),
            (r"/health", HealthHandler, {"endpoint": "GET /health",
                                         "health": HealthCheck(forwarder)}),
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
    )

    async def close() -> None:
        reloading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reloading
        await forwarder.close()
        requests.flush()

    return app, close
