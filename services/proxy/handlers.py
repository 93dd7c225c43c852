"""The Proxy's HTTP endpoints."""

from __future__ import annotations

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
from services.proxy.health import ClusterHealth
from services.proxy.router import QueryRouter
from services.proxy.transactions import TransactionManager


class IndexHandler(JsonHandler):
    def get(self) -> None:
        self.send_json({"service": "proxy", "endpoints": ENDPOINTS, "modes": list(MODES)})


class HealthHandler(JsonHandler):
    """200 while some node can serve (``degraded`` without the primary), 503 when none can."""

    def initialize(self, cluster: ClusterHealth, transactions: TransactionManager) -> None:
        self.cluster = cluster
        self.transactions = transactions

    def get(self) -> None:
        nodes = {node.name: node.to_json() for node in self.cluster.nodes}
        primary_up = self.cluster.primary.up is True
        any_up = any(node.up is True for node in self.cluster.nodes)
        status = "ok" if primary_up else ("degraded" if any_up else "unavailable")
        self.send_json({"service": "proxy", "status": status, "modes": list(MODES),
                        "open_transactions": self.transactions.open_count,
                        "nodes": nodes}, 200 if any_up else 503)


class ProxyHandler(JsonHandler):
    """Request ids from the header or the body, echoed on every answer, errors included."""

    def initialize(self, router: QueryRouter, max_body_bytes: int) -> None:
        self.router = router
        self.max_body_bytes = max_body_bytes

    def start_request(self) -> None:
        header_id = checked_request_id(self.request.headers.get(REQUEST_ID_HEADER),
                                       f"header {REQUEST_ID_HEADER}")
        self.use_request_id(header_id or new_request_id())

    def use_request_id(self, request_id: str | None) -> None:
        if request_id:
            self.request_id = request_id
            self.set_header(REQUEST_ID_HEADER, request_id)

    async def answer(self, work: Any, status: int = 200) -> None:
        try:
            payload = await work
        except ApiError as error:
            error.details.setdefault("request_id", self.request_id)
            raise
        self.send_json(payload, status)


class QueryHandler(ProxyHandler):
    async def post(self) -> None:
        self.start_request()
        request = parse_query_request(self.body, MODES)
        self.use_request_id(request.request_id)
        await self.answer(self.router.run(request, self.request_id))


class BatchHandler(ProxyHandler):
    async def post(self) -> None:
        self.start_request()
        request = parse_batch_request(self.body, MODES)
        self.use_request_id(request.request_id)
        await self.answer(self.router.run_batch(request, self.request_id))


class TransactionsHandler(ProxyHandler):
    """``POST /transactions`` opens one (201); ``POST /transactions/{id}/commit|rollback``."""

    async def post(self, transaction_id: str | None = None, action: str | None = None) -> None:
        self.start_request()
        transactions = self.router.transactions
        if transaction_id is None:
            request = parse_transaction_request(self.body)
            self.use_request_id(request.request_id)
            await self.answer(self._open(transactions, request), 201)
            return
        checked_transaction_id(transaction_id, "the transaction id in the path")
        if self.body.strip() not in (b"", b"{}"):
            raise ApiError(400, f"{action} takes no body")
        end = transactions.commit if action == "commit" else transactions.rollback
        await self.answer(self._end(end, transaction_id, action))

    async def _open(self, transactions: TransactionManager, request: Any) -> dict[str, Any]:
        transaction = await transactions.open(request)
        self.set_header("Location", f"/transactions/{transaction.id}")
        return {"request_id": self.request_id, "transaction_id": transaction.id,
                "node": transaction.node, "idle_timeout_s": transactions.idle_timeout,
                "max_age_s": transactions.max_age}

    async def _end(self, end: Any, transaction_id: str, action: str) -> dict[str, Any]:
        transaction = await end(transaction_id)
        answer = {"request_id": self.request_id, "transaction_id": transaction.id,
                  "status": "committed" if action == "commit" else "rolled back",
                  "statements": transaction.statements}
        if action == "commit":
            answer["token"] = self.router.issue_token(transaction.position)
        return answer
