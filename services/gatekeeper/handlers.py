"""The Gatekeeper's HTTP endpoints."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from services.contract import (
    API_KEY_HEADER,
    ENDPOINTS,
    MODES,
    REQUEST_ID_HEADER,
    ApiError,
    checked_request_id,
    checked_transaction_id,
    new_request_id,
    parse_batch_request,
    parse_query_request,
    parse_transaction_request,
)
from services.gatekeeper.forwarder import ProxyAnswer, ProxyForwarder
from services.http import JsonHandler


class GatekeeperHandler(JsonHandler):
    def initialize(self, forwarder: ProxyForwarder) -> None:
        self.forwarder = forwarder

    def relay(self, answer: ProxyAnswer) -> None:
        self.set_status(answer.status)
        self.set_header("Content-Type", answer.content_type)
        if answer.location:
            self.set_header("Location", answer.location)
        self.finish(answer.body)


class IndexHandler(JsonHandler):
    def get(self) -> None:
        self.send_json({"service": "gatekeeper", "endpoints": ENDPOINTS, "modes": list(MODES),
                        "authentication": f"header {API_KEY_HEADER}"})


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


def _no_body(body: bytes) -> Any:
    if body.strip() not in (b"", b"{}"):
        raise ApiError(400, "this endpoint takes no body")
    return None


# What each forwarded endpoint's body must be: the Proxy's own checks, run at the edge.
VALIDATORS: dict[str, Callable[[bytes], Any]] = {
    "query": lambda body: parse_query_request(body, MODES),
    "batch": lambda body: parse_batch_request(body, MODES),
    "transactions": parse_transaction_request,
    "transaction_end": _no_body,
}


class ForwardHandler(GatekeeperHandler):
    """Checks the key, then the body, then forwards the original bytes to the Proxy."""

    def initialize(self, forwarder: ProxyForwarder, api_key: str, max_body_bytes: int,
                   endpoint: str) -> None:
        super().initialize(forwarder)
        self.api_key = api_key.encode()
        self.max_body_bytes = max_body_bytes
        self.validate = VALIDATORS[endpoint]

    def prepare(self) -> None:
        # Checked before the body is read: without the key nothing is read, nothing forwarded.
        offered = self.request.headers.get(API_KEY_HEADER, "").encode()
        if not hmac.compare_digest(offered, self.api_key):
            raise ApiError(401, f"missing or wrong {API_KEY_HEADER} header",
                           headers={"WWW-Authenticate": API_KEY_HEADER})
        super().prepare()

    async def post(self, transaction_id: str | None = None, action: str | None = None) -> None:
        header_id = checked_request_id(self.request.headers.get(REQUEST_ID_HEADER),
                                       f"header {REQUEST_ID_HEADER}")
        self.request_id = header_id or new_request_id()
        if transaction_id is not None:
            checked_transaction_id(transaction_id, "the transaction id in the path")
        body = self.body
        request = self.validate(body)
        self.request_id = getattr(request, "request_id", None) or self.request_id
        self.set_header(REQUEST_ID_HEADER, self.request_id)
        self.relay(await self.forwarder.forward("POST", self.request.path, self.request_id,
                                                body))
