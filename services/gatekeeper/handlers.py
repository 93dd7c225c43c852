"""The Gatekeeper's HTTP endpoints."""

from __future__ import annotations

import hmac

from services.contract import (
    REQUEST_ID_HEADER,
    ApiError,
    checked_request_id,
    new_request_id,
    parse_query_request,
)
from services.gatekeeper.forwarder import ProxyAnswer, ProxyForwarder
from services.http import JsonHandler
from services.routing import MODES

API_KEY_HEADER = "X-API-Key"


class GatekeeperHandler(JsonHandler):
    def initialize(self, forwarder: ProxyForwarder) -> None:
        self.forwarder = forwarder

    def relay(self, answer: ProxyAnswer) -> None:
        self.set_status(answer.status)
        self.set_header("Content-Type", answer.content_type)
        self.finish(answer.body)


class HealthHandler(GatekeeperHandler):
    """200 when the Proxy behind answers 200: the Gatekeeper alone cannot serve anything.

    Public, so it says only whether the service can serve: the Proxy's node list (addresses,
    errors) stays on the internal network.
    """

    async def get(self) -> None:
        self.request_id = new_request_id()
        try:
            answer = await self.forwarder.forward("GET", "/health", self.request_id, timeout=3)
        except ApiError:
            answer = None
        ok = answer is not None and answer.status == 200
        self.send_json({"service": "gatekeeper", "status": "ok" if ok else "unavailable"},
                       200 if ok else 503)


class QueryHandler(GatekeeperHandler):
    def initialize(self, forwarder: ProxyForwarder, api_key: str, max_body_bytes: int) -> None:
        super().initialize(forwarder)
        self.api_key = api_key.encode()
        self.max_body_bytes = max_body_bytes

    def prepare(self) -> None:
        # Checked before the body is read: without the key nothing is read, nothing forwarded.
        offered = self.request.headers.get(API_KEY_HEADER, "").encode()
        if not hmac.compare_digest(offered, self.api_key):
            raise ApiError(401, f"missing or wrong {API_KEY_HEADER} header",
                           headers={"WWW-Authenticate": API_KEY_HEADER})
        super().prepare()

    async def post(self) -> None:
        header_id = checked_request_id(self.request.headers.get(REQUEST_ID_HEADER),
                                       f"header {REQUEST_ID_HEADER}")
        self.request_id = header_id or new_request_id()
        body = self.body
        request = parse_query_request(body, MODES)
        self.request_id = request.request_id or self.request_id
        self.set_header(REQUEST_ID_HEADER, self.request_id)
        self.relay(await self.forwarder.forward("POST", "/query", self.request_id, body))
