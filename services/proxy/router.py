"""Running one request's statement: pick the nodes, try them in order, shape the answer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from services.classify import Classification, StatementError, classify
from services.contract import ApiError, QueryRequest
from services.health import ClusterHealth, HealthMonitor, NodeHealth
from services.pools import NodeBusy, NodeUnavailable, QueryTimeout, SqlError
from services.routing import STRATEGIES


@dataclass
class QueryRouter:
    cluster: ClusterHealth
    monitor: HealthMonitor
    max_rows: int

    async def run(self, request: QueryRequest, request_id: str) -> dict[str, Any]:
        """Answer a query request, or raise ApiError with the right status."""
        began = time.perf_counter()
        try:
            classification = classify(request.sql)
        except StatementError as error:
            raise ApiError(400, str(error)) from None
        targets = (STRATEGIES[request.mode].read_targets(self.cluster)
                   if classification.is_read else [self.cluster.primary])
        node, result, attempts = await self._execute(request.sql, classification, targets)
        return {
            "request_id": request_id,
            "mode": request.mode,
            "query_type": classification.query_type,
            "node": node.name,
            "node_role": node.role,
            "attempts": attempts,
            "columns": result.columns,
            "rows": result.rows,
            "rowcount": result.rowcount,
            "last_insert_id": result.last_insert_id,
            "truncated": result.truncated,
            "elapsed_ms": round((time.perf_counter() - began) * 1000.0, 3),
        }

    async def _execute(self, sql: str, classification: Classification,
                       targets: list[NodeHealth]):
        failures: list[str] = []
        for attempt, node in enumerate(targets, 1):
            try:
                return node, await node.pool.execute(sql, self.max_rows), attempt
            except SqlError as error:
                raise ApiError(error.http_status, error.message, mysql_errno=error.code,
                               node=node.name) from None
            except QueryTimeout as error:
                raise ApiError(504, str(error), node=node.name) from None
            except NodeBusy as error:  # shed load: another node may have room, none is down
                failures.append(str(error))
            except NodeUnavailable as error:
                await self.monitor.mark_down(node, error.reason)
                failures.append(str(error))
                if not classification.is_read and error.maybe_applied:
                    raise ApiError(
                        503, f"lost the primary during the write; it may or may not have "
                        f"been applied: {error.reason}", node=node.name) from None
        what = "read" if classification.is_read else "write"
        raise ApiError(503, f"no database node could serve this {what}", failures=failures)
