"""The Proxy's HTTP endpoints."""

from __future__ import annotations

from services.contract import (
    REQUEST_ID_HEADER,
    ApiError,
    checked_request_id,
    new_request_id,
    parse_query_request,
)
from services.health import ClusterHealth
from services.http import JsonHandler
from services.proxy.router import QueryRouter
from services.routing import MODES


class HealthHandler(JsonHandler):
    """200 while some node can serve (``degraded`` without the primary), 503 when none can."""

    def initialize(self, cluster: ClusterHealth) -> None:
        self.cluster = cluster

    def get(self) -> None:
        nodes = {node.name: node.to_json() for node in self.cluster.nodes}
        primary_up = self.cluster.primary.up is True
        any_up = any(node.up is True for node in self.cluster.nodes)
        status = "ok" if primary_up else ("degraded" if any_up else "unavailable")
        self.send_json({"service": "proxy", "status": status, "modes": list(MODES),
                        "nodes": nodes}, 200 if any_up else 503)


class QueryHandler(JsonHandler):
    def initialize(self, router: QueryRouter, max_body_bytes: int) -> None:
        self.router = router
        self.max_body_bytes = max_body_bytes

    async def post(self) -> None:
        header_id = checked_request_id(self.request.headers.get(REQUEST_ID_HEADER),
                                       f"header {REQUEST_ID_HEADER}")
        self.request_id = header_id or new_request_id()
        self.set_header(REQUEST_ID_HEADER, self.request_id)
        request = parse_query_request(self.body, MODES)
        if request.request_id:
            self.request_id = request.request_id
            self.set_header(REQUEST_ID_HEADER, self.request_id)
        try:
            answer = await self.router.run(request, self.request_id)
        except ApiError as error:
            error.details.setdefault("request_id", self.request_id)
            raise
        self.send_json(answer)
