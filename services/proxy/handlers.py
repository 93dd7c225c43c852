"""The Proxy's HTTP endpoints."""

from __future__ import annotations

import logging
import re
from typing import Any

from services.contract import (
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
from services.http import JsonHandler
from services.proxy.affinity import Affinity
from services.proxy.health import ClusterHealth
from services.proxy.quiet import Scrubber
from services.proxy.router import QueryRouter
from services.proxy.scopes import Caller, caller_from_headers
from services.proxy.transactions import TransactionManager

log = logging.getLogger(__name__)
# A quoted string in a server's error text, unless it is half of an account ('user'@'host').
_QUOTED = re.compile(r"'(?:[^'\\]|\\.|'')*'")


def without_values(message: str) -> str:
    """A server's error text for the log: its quoted strings can be the statement's values
    (``Duplicate entry '...'``, ``Incorrect integer value: '...'``), so they become '?'; the
    account it names stays, which is what the log keeps it for."""
    def hide(match: re.Match) -> str:
        start, end = match.span()
        account = message[end:end + 1] == "@" or message[start - 1:start] == "@"
        return match.group() if account else "'?'"

    return _QUOTED.sub(hide, message)


class IndexHandler(JsonHandler):
    endpoint = "GET /"

    def get(self) -> None:
        self.send_json({"service": "proxy", "endpoints": ENDPOINTS, "modes": list(MODES)})


class HealthHandler(JsonHandler):
    """200 while some node can serve (``degraded`` without the primary), 503 when none can, or
    while the Proxy is stopping (``draining``: it opens no new transaction); which node is the
    primary now, and the cluster's epoch."""

    endpoint = "GET /health"

    def initialize(self, cluster: ClusterHealth, transactions: TransactionManager,
                   worker: int | None = None) -> None:
        self.cluster = cluster
        self.transactions = transactions
        self.worker = worker  # which worker answers, when there are several

    def get(self) -> None:
        cluster = self.cluster
        nodes = {node.name: node.to_json() for node in cluster.nodes}
        primary = cluster.primary
        primary_up = primary is not None and primary.up is True
        any_up = any(node.up is True for node in cluster.nodes)
        status = "ok" if primary_up else ("degraded" if any_up else "unavailable")
        if self.draining:
            status = "draining"
        answer = {"service": "proxy", "status": status, "modes": list(MODES),
                  "primary": primary.name if primary is not None else None,
                  "epoch": cluster.epoch, "open_transactions": self.transactions.open_count,
                  "nodes": nodes}
        if primary is None:
            answer["no_primary_reason"] = cluster.no_primary_reason
        if self.worker is not None:
            answer["worker"] = self.worker
        self.send_json(answer, 200 if any_up and not self.draining else 503)


class ProxyHandler(JsonHandler):
    """Request ids from the header or the body, echoed on every answer, errors included; the
    caller's scope from the Gatekeeper's headers; error answers scrubbed of internal names."""

    caller: Caller | None = None
    passed_to: int | None = None  # the worker that answered instead (it counts the request)

    def initialize(self, router: QueryRouter, max_body_bytes: int, default_scope: str,
                   scrubber: Scrubber, affinity: Affinity | None = None) -> None:
        self.router = router
        self.max_body_bytes = max_body_bytes
        self.default_scope = default_scope
        self.scrubber = scrubber
        self.affinity = affinity  # with several workers: to the one holding a transaction

    def start_request(self) -> Caller:
        header_id = checked_request_id(self.request.headers.get(REQUEST_ID_HEADER),
                                       f"header {REQUEST_ID_HEADER}")
        self.use_request_id(header_id or new_request_id())
        self.caller = caller_from_headers(self.request.headers, self.default_scope)
        self.key_name = self.caller.key
        return self.caller

    def use_request_id(self, request_id: str | None) -> None:
        if request_id:
            self.request_id = request_id
            self.set_header(REQUEST_ID_HEADER, request_id)

    async def passed_on(self, transaction_id: str | None) -> bool:
        """True when another worker holds the transaction: it answered, and so did we."""
        return (transaction_id is not None and self.affinity is not None
                and await self.affinity.pass_on(self, transaction_id))

    async def answer(self, work: Any, status: int = 200) -> None:
        try:
            payload = await work
        except ApiError as error:
            error.details.setdefault("request_id", self.request_id)
            raise
        self.send_json(payload, status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Every error answer leaves scrubbed; the log keeps what was hidden, and every
        refusal of a scope, with the request id and the key's name. (Other failures are in
        the access log already, by status.)"""
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, ApiError):
            full = (error.message, dict(error.details))
            hidden = self.scrubber.error(error)
            if hidden or "required_scope" in error.details:
                caller = self.caller
                message = without_values(full[0]) if "mysql_errno" in full[1] else full[0]
                log.log(logging.WARNING if hidden else logging.INFO,
                        "request %s key=%s scope=%s %s %s: %d %s %s", self.request_id,
                        caller.key if caller else None, caller.scope if caller else None,
                        self.request.method, self.request.path, error.status, message,
                        {k: v for k, v in full[1].items() if k != "request_id"})
        super().write_error(status_code, **kwargs)


class QueryHandler(ProxyHandler):
    endpoint = "POST /query"

    async def post(self) -> None:
        self.start_request()
        request = parse_query_request(self.body, MODES)
        self.use_request_id(request.request_id)
        if await self.passed_on(request.transaction_id):
            return
        await self.answer(self.router.run(request, self.request_id, self.caller, self.trace))


class BatchHandler(ProxyHandler):
    endpoint = "POST /batch"

    async def post(self) -> None:
        self.start_request()
        request = parse_batch_request(self.body, MODES)
        self.use_request_id(request.request_id)
        if await self.passed_on(request.transaction_id):
            return
        await self.answer(self.router.run_batch(request, self.request_id, self.caller,
                                                self.trace))


class TransactionsHandler(ProxyHandler):
    """``POST /transactions`` opens one (201); ``POST /transactions/{id}/commit|rollback``."""

    endpoint = "POST /transactions"

    async def post(self, transaction_id: str | None = None, action: str | None = None) -> None:
        if action is not None:
            self.endpoint = f"POST /transactions/{{id}}/{action}"  # action: the route's two words
        caller = self.start_request()
        transactions = self.router.transactions
        primary = self.router.cluster.primary
        self.trace.node = primary.name if primary is not None else None
        if transaction_id is None:
            request = parse_transaction_request(self.body)
            self.use_request_id(request.request_id)
            await self.answer(self._open(transactions, request, caller), 201)
            return
        checked_transaction_id(transaction_id, "the transaction id in the path")
        if self.body.strip() not in (b"", b"{}"):
            raise ApiError(400, f"{action} takes no body")
        if await self.passed_on(transaction_id):
            return
        end = transactions.commit if action == "commit" else transactions.rollback
        await self.answer(self._end(end, transaction_id, action, caller))

    async def _open(self, transactions: TransactionManager, request: Any,
                    caller: Caller) -> dict[str, Any]:
        transaction = await transactions.open(request, caller)
        self.trace.node = transaction.node
        self.set_header("Location", f"/transactions/{transaction.id}")
        return {"request_id": self.request_id, "transaction_id": transaction.id,
                "node": transaction.node, "idle_timeout_s": transactions.idle_timeout,
                "max_age_s": transactions.max_age}

    async def _end(self, end: Any, transaction_id: str, action: str,
                   caller: Caller) -> dict[str, Any]:
        transaction = await end(transaction_id, caller)
        self.trace.node = transaction.node
        if action == "commit":
            self.router.check_replicated(transaction.replicated, "the transaction",
                                         transaction_id=transaction.id, node=transaction.node)
        answer = {"request_id": self.request_id, "transaction_id": transaction.id,
                  "status": "committed" if action == "commit" else "rolled back",
                  "statements": transaction.statements}
        if action == "commit":
            answer["token"] = self.router.issue_token(transaction.position)
        return answer
