"""Assembling the Gatekeeper: keys, the forwarder, the endpoints, the audit log."""

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
from services.gatekeeper.tls import ServerCertificate, proxy_client_context
from services.http import NotFoundHandler

audit_log = logging.getLogger("sqlgate.audit")
log = logging.getLogger(__name__)
RELOAD_INTERVAL = 1.0  # seconds between looks at the keys file and the certificate


def audit(handler: tornado.web.RequestHandler) -> None:
    """One line per request: who (the key's name, never its secret), which request, what,
    how it ended and how long it took. Never the body: it holds SQL parameter values."""
    audit_log.info("key=%s request_id=%s endpoint=%s status=%d elapsed_ms=%.1f client=%s",
                   getattr(handler, "key_name", None) or "-",
                   getattr(handler, "request_id", None) or "-",
                   getattr(handler, "endpoint", "unknown").replace(" ", "_"),
                   handler.get_status(), 1000.0 * handler.request.request_time(),
                   handler.request.remote_ip)


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
                              buckets: SharedBuckets | None = None):
    """The application and the coroutine that releases what it holds. ``buckets``: the rate
    limits' table, shared with the other workers when it was made before they were forked."""
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
        log_function=audit,
    )

    async def close() -> None:
        reloading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reloading
        await forwarder.close()

    return app, close
