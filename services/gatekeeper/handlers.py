"""The Gatekeeper's HTTP endpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.contract import (
    API_KEY_HEADER,
    ENDPOINTS,
    MODES,
    REQUEST_ID_HEADER,
    REQUEST_ID_PATTERN,
    ApiError,
    checked_request_id,
    checked_transaction_id,
    new_request_id,
    parse_batch_request,
    parse_query_request,
    parse_transaction_request,
)
from services.gatekeeper.forwarder import ProxyAnswer
from services.gatekeeper.keys import KeyRing
from services.gatekeeper.openapi import openapi_bytes
from services.gatekeeper.proxies import Action, Proxies
from services.http import JsonHandler


class GatekeeperHandler(JsonHandler):
    """``endpoint`` names the route in the request log and the metrics; ``key_name`` the
    caller, once known; ``relayed``: the answer is the Proxy's."""

    relayed = False

    def initialize(self, endpoint: str) -> None:
        self.endpoint = endpoint


class IndexHandler(GatekeeperHandler):
    def get(self) -> None:
        self.send_json({"service": "gatekeeper", "endpoints": ENDPOINTS, "modes": list(MODES),
                        "authentication": f"header {API_KEY_HEADER}",
                        "openapi": "/openapi.json"})


class OpenApiHandler(GatekeeperHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(openapi_bytes())


class HealthHandler(GatekeeperHandler):
    """200 when a Proxy behind answered its last check (every second, in the background) with
    200: the Gatekeeper alone cannot serve anything. Read, never asked for: ``/health`` needs no
    key, and must not let anyone make the Gatekeeper call the Proxies at will. 503
    ``draining`` from the first SIGTERM on (``services.http.Drain``).

    Public, so it says only whether the service can serve: the Proxies (how many, which are
    up) and their node lists (addresses, errors) stay on the internal network.
    """

    def initialize(self, endpoint: str, proxies: Proxies) -> None:
        super().initialize(endpoint)
        self.proxies = proxies

    def get(self) -> None:
        if self.draining:  # stopping: the balancer is to send nothing new here
            self.send_json({"service": "gatekeeper", "status": "draining"}, 503)
            return
        ok = self.proxies.healthy
        self.send_json({"service": "gatekeeper", "status": "ok" if ok else "unavailable"},
                       200 if ok else 503)


def _no_body(body: bytes) -> Any:
    if body.strip() not in (b"", b"{}"):
        raise ApiError(400, "this endpoint takes no body")
    return None


# What each forwarded endpoint's body must be: the Proxy's own checks, run at the edge.
VALIDATORS: dict[str, Callable[[bytes], Any]] = {
    "POST /query": lambda body: parse_query_request(body, MODES),
    "POST /batch": lambda body: parse_batch_request(body, MODES),
    "POST /transactions": parse_transaction_request,
    "POST /transactions/{id}/commit": _no_body,
    "POST /transactions/{id}/rollback": _no_body,
}


class ForwardHandler(GatekeeperHandler):
    """Checks the key and its rate, then the body, then forwards the original bytes to a
    Proxy with the key's scope and name: the one holding the transaction the request names,
    if it names one (the body was parsed to be checked: its ``transaction_id`` is known)."""

    def initialize(self, endpoint: str, proxies: Proxies, keys: KeyRing,
                   max_body_bytes: int) -> None:
        super().initialize(endpoint)
        self.proxies = proxies
        self.keys = keys
        self.max_body_bytes = max_body_bytes
        self.validate = VALIDATORS[endpoint]

    async def check_request(self) -> None:
        # Run before the body is read: without the key nothing is read, nothing forwarded.
        # The client's id names even a refusal, when it is a good one.
        header_id = self.request.headers.get(REQUEST_ID_HEADER)
        good = header_id is not None and REQUEST_ID_PATTERN.fullmatch(header_id)
        self.request_id = header_id if good else new_request_id()
        key = self.keys.authenticate(self.request.headers.get(API_KEY_HEADER))
        self.key_name = key.name
        self.key_scope = key.scope
        checked_request_id(header_id, f"header {REQUEST_ID_HEADER}")
        await self.keys.admit(key)

    async def post(self, transaction_id: str | None = None, action: str | None = None) -> None:
        if transaction_id is not None:
            checked_transaction_id(transaction_id, "the transaction id in the path")
        request = self.validate(self.body)
        self.trace.mode = getattr(request, "mode", "")
        self.request_id = getattr(request, "request_id", None) or self.request_id
        self.set_header(REQUEST_ID_HEADER, self.request_id)
        transaction_id = transaction_id or getattr(request, "transaction_id", None)
        what: Action = "commit" if action == "commit" else (
            "rollback" if action == "rollback" else "statement")
        self.relay(await self.proxies.forward("POST", self.request.path, self.request_id,
                                              self.body, scope=self.key_scope,
                                              key_name=self.key_name,
                                              transaction_id=transaction_id, action=what,
                                              trace=self.trace))

    def relay(self, answer: ProxyAnswer) -> None:
        self.relayed = True
        self.set_status(answer.status)
        self.set_header("Content-Type", answer.content_type)
        if answer.location:
            self.set_header("Location", answer.location)
        if answer.retry_after:
            self.set_header("Retry-After", answer.retry_after)
        self.finish(answer.body)
