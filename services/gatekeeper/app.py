"""Assembling the Gatekeeper."""

from __future__ import annotations

import tornado.web

from services.config import GatekeeperConfig
from services.gatekeeper.forwarder import ProxyForwarder
from services.gatekeeper.handlers import HealthHandler, QueryHandler
from services.http import NotFoundHandler, log_failed_requests


async def make_gatekeeper_app(config: GatekeeperConfig):
    """The application and the coroutine that releases what it holds."""
    api_key = config.resolved_api_key()
    forwarder = ProxyForwarder(config.proxy_url, config.proxy_timeout, config.proxy_connections)
    await forwarder.start()
    app = tornado.web.Application(
        [
            (r"/health", HealthHandler, {"forwarder": forwarder}),
            (r"/query", QueryHandler, {"forwarder": forwarder, "api_key": api_key,
                                       "max_body_bytes": config.max_body_bytes}),
        ],
        default_handler_class=NotFoundHandler,
        log_function=log_failed_requests,
    )
    return app, forwarder.close
