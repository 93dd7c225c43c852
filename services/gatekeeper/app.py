"""Assembling the Gatekeeper."""

from __future__ import annotations

import tornado.web

from services.config import GatekeeperConfig
from services.gatekeeper.forwarder import ProxyForwarder
from services.gatekeeper.handlers import ForwardHandler, HealthHandler, IndexHandler
from services.http import NotFoundHandler, log_failed_requests


async def make_gatekeeper_app(config: GatekeeperConfig):
    """The application and the coroutine that releases what it holds."""
    api_key = config.resolved_api_key()
    forwarder = ProxyForwarder(config.proxy_url, config.proxy_timeout, config.proxy_connections)
    await forwarder.start()
    def forward(endpoint: str) -> dict:
        return {"forwarder": forwarder, "api_key": api_key,
                "max_body_bytes": config.max_body_bytes, "endpoint": endpoint}

    app = tornado.web.Application(
        [
            (r"/", IndexHandler),
            (r"/health", HealthHandler, {"forwarder": forwarder}),
            (r"/query", ForwardHandler, forward("query")),
            (r"/batch", ForwardHandler, forward("batch")),
            (r"/transactions", ForwardHandler, forward("transactions")),
            (r"/transactions/([^/]+)/(commit|rollback)", ForwardHandler,
             forward("transaction_end")),
        ],
        default_handler_class=NotFoundHandler,
        log_function=log_failed_requests,
    )
    return app, forwarder.close
