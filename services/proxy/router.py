"""Running requests: classify each statement, pick the nodes, try them in order, shape answers.

Outside a transaction every statement runs on a pooled connection that goes back clean: a
statement whose only purpose is session state is refused (it would outlive the request and
reach another client), and one that may have left state anyway is followed by a reset.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from services.classify import Classification, Kind, StatementError, classify
from services.contract import ApiError, BatchRequest, QueryRequest
from services.health import ClusterHealth, HealthMonitor, NodeHealth
from services.pools import (
    Lease,
    NodeBusy,
    NodeUnavailable,
    QueryResult,
    QueryTimeout,
    SqlError,
    TransactionLeftOpen,
)
from services.proxy.transactions import Transaction, TransactionManager, refuse_inside
from services.routing import STRATEGIES
from services.statements import Statement


def classified(statement: Statement) -> Classification:
    try:
        classification = classify(statement.shape)
    except StatementError as error:
        raise ApiError(400, str(error)) from None
    if classification.kind is Kind.ACCOUNT:
        raise ApiError(403, f"{classification.reason}: not available through sqlgate")
    if classification.kind is Kind.CONNECTION:
        raise ApiError(400, f"{classification.reason}: the proxy keeps utf8mb4 and MySQL's "
                       "default quoting on every connection, so that parameters stay safe")
    return classification


def refuse_outside(classification: Classification) -> None:
    """Session statements only make sense inside a transaction, where they cannot leak."""
    if classification.kind is Kind.TRANSACTION:
        raise ApiError(400, f"{classification.reason}, which would outlive this request: open "
                       "one with POST /transactions and end it with /transactions/{id}/commit "
                       "or /rollback, or send the statements together to POST /batch")
    if classification.kind is Kind.SESSION:
        raise ApiError(400, f"{classification.reason}, which would outlive this request on a "
                       "shared connection: run it inside a transaction (POST /transactions, "
                       "then send transaction_id) or a /batch, or put the setting in the "
                       "statement itself (e.g. a schema-qualified table name)")


def result_json(result: QueryResult) -> dict[str, Any]:
    return {"columns": result.columns, "rows": result.rows, "rowcount": result.rowcount,
            "last_insert_id": result.last_insert_id, "truncated": result.truncated}


def sql_error(error: SqlError, **details: Any) -> ApiError:
    return ApiError(error.http_status, error.message, mysql_errno=error.code, **details)


@dataclass
class QueryRouter:
    cluster: ClusterHealth
    monitor: HealthMonitor
    transactions: TransactionManager
    max_rows: int

    # --- POST /query --------------------------------------------------------------------------

    async def run(self, request: QueryRequest, request_id: str) -> dict[str, Any]:
        """Answer a query request, or raise ApiError with the right status."""
        began = time.perf_counter()
        classification = classified(request.statement)
        if request.transaction_id is not None:
            async with self.transactions.using(request.transaction_id) as transaction:
                result = await self._in_transaction(transaction, request.statement,
                                                    classification)
            node, attempts, extra = self.cluster.primary, 1, {
                "transaction_id": transaction.id}
            ended = self.transactions.ending(transaction.id)
            if ended:  # the statement itself ended it (a procedure's COMMIT, say)
                extra["transaction_ended"] = ended
        else:
            refuse_outside(classification)
            node, result, attempts = await self._execute(request.statement, classification,
                                                         request.mode)
            extra = {}
        return {
            "request_id": request_id,
            "mode": request.mode,
            "query_type": classification.query_type,
            "node": node.name,
            "node_role": node.role,
            "attempts": attempts,
            **result_json(result),
            **extra,
            "elapsed_ms": round((time.perf_counter() - began) * 1000.0, 3),
        }

    async def _in_transaction(self, transaction: Transaction, statement: Statement,
                              classification: Classification) -> QueryResult:
        try:
            return await self.transactions.execute(transaction, statement, classification)
        except SqlError as error:
            raise sql_error(error, node=transaction.node,
                            transaction_id=transaction.id) from None
        except QueryTimeout as error:
            raise ApiError(504, f"{error}; the transaction was rolled back",
                           transaction_id=transaction.id) from None
        except NodeUnavailable as error:
            await self.monitor.mark_down(self.cluster.primary, error.reason)
            raise ApiError(503, f"lost the primary: the transaction was rolled back: "
                           f"{error.reason}", transaction_id=transaction.id) from None

    async def _execute(self, statement: Statement, classification: Classification,
                       mode: str) -> tuple[NodeHealth, QueryResult, int]:
        targets = (STRATEGIES[mode].read_targets(self.cluster)
                   if classification.is_read else [self.cluster.primary])
        failures: list[str] = []
        for attempt, node in enumerate(targets, 1):
            try:
                result = await node.pool.execute(statement, self.max_rows,
                                                 reset=classification.leaves_state)
                return node, result, attempt
            except SqlError as error:
                raise sql_error(error, node=node.name) from None
            except QueryTimeout as error:
                raise ApiError(504, str(error), node=node.name) from None
            except TransactionLeftOpen:
                raise ApiError(400, f"{classification.reason}, and it left a transaction open "
                               "(autocommit turned off?): its changes were rolled back, not "
                               "applied; run it inside a transaction (POST /transactions)",
                               node=node.name) from None
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

    # --- POST /batch --------------------------------------------------------------------------

    async def run_batch(self, request: BatchRequest, request_id: str) -> dict[str, Any]:
        began = time.perf_counter()
        classifications = []
        for index, statement in enumerate(request.statements):
            try:
                classification = classified(statement)
                if request.transaction:
                    refuse_inside(classification)
                if request.transaction_id is not None and classification.savepoint:
                    raise ApiError(400, f"{classification.reason}: a batch inside a transaction "
                                   "keeps its own savepoint to undo itself; send savepoint "
                                   "statements with /query")
                classifications.append(classification)
            except ApiError as error:
                error.message = f"statements[{index}]: {error.message}; nothing was run"
                error.details["failed_statement"] = index
                raise
        if request.transaction_id is not None:
            answer = await self._batch_in_transaction(request, classifications)
        elif request.transaction:
            answer = await self._atomic_batch(request, classifications)
        else:
            answer = await self._independent_batch(request, classifications)
        return {"request_id": request_id, "mode": request.mode,
                "transaction": request.transaction, **answer,
                "elapsed_ms": round((time.perf_counter() - began) * 1000.0, 3)}

    async def _atomic_batch(self, request: BatchRequest,
                            classifications: list[Classification]) -> dict[str, Any]:
        """All statements in one transaction on the primary: all apply, or none."""
        primary = self.cluster.primary
        try:
            lease = await primary.pool.lease()
        except NodeBusy as error:
            raise ApiError(503, f"no database node could serve this batch: {error}") from None
        except NodeUnavailable as error:
            await self.monitor.mark_down(primary, error.reason)
            raise ApiError(503, f"no database node could serve this batch: {error}") from None
        index = -1
        committing = False
        try:
            await lease.run(_BEGIN, 0)
            results = []
            lease.schema_changed = any(c.sets_schema for c in classifications)
            for statement in request.statements:
                index += 1  # read by the handlers below: which statement failed
                results.append(await lease.run(statement, self.max_rows))
                if not lease.in_transaction:
                    raise ImplicitCommit(index)
            committing = True
            await lease.run(_COMMIT, 0)
        except SqlError as error:
            await _rollback(lease)
            raise sql_error(error, node=primary.name, rolled_back=True,
                            **_failed(index)) from None
        except ImplicitCommit:
            raise ApiError(400, f"statements[{index}]: {classifications[index].reason}, and "
                           f"it committed the batch's transaction: statements 0 to {index} were "
                           "applied and cannot be undone, the rest did not run",
                           failed_statement=index, rolled_back=False) from None
        except QueryTimeout as error:
            raise ApiError(504, f"{error}; nothing was applied", rolled_back=True,
                           **_failed(index)) from None
        except NodeUnavailable as error:
            await self.monitor.mark_down(primary, error.reason)
            if committing:
                raise ApiError(503, f"lost the primary during COMMIT: the batch may or may not "
                               f"have been applied: {error.reason}") from None
            raise ApiError(503, f"lost the primary: nothing was applied: {error.reason}",
                           rolled_back=True, **_failed(index)) from None
        finally:
            await lease.release()
        return {"node": primary.name, "node_role": primary.role,
                "results": [_statement_json(c, r) for c, r in zip(classifications, results,
                                                                  strict=True)]}

    async def _batch_in_transaction(self, request: BatchRequest,
                                    classifications: list[Classification]) -> dict[str, Any]:
        """Inside an open transaction: all or none of the batch, and the transaction stays."""
        async with self.transactions.using(request.transaction_id) as transaction:
            results = []
            await self._savepoint(transaction, "SAVEPOINT")
            for index, (statement, classification) in enumerate(
                    zip(request.statements, classifications, strict=True)):
                try:
                    results.append(await self._in_transaction(transaction, statement,
                                                              classification))
                except ApiError as error:
                    if self.transactions.is_open(transaction.id):
                        await self._savepoint(transaction, "ROLLBACK TO SAVEPOINT")
                        error.details["rolled_back"] = "batch"
                    else:
                        error.details["rolled_back"] = "transaction"
                    error.message = f"statements[{index}]: {error.message}"
                    error.details["failed_statement"] = index
                    raise
            await self._savepoint(transaction, "RELEASE SAVEPOINT")
        primary = self.cluster.primary
        return {"node": primary.name, "node_role": primary.role,
                "transaction_id": transaction.id,
                "results": [_statement_json(c, r) for c, r in zip(classifications, results,
                                                                  strict=True)]}

    async def _savepoint(self, transaction: Transaction, action: str) -> None:
        try:
            await self.transactions.savepoint(transaction, action)
        except SqlError as error:
            raise sql_error(error, transaction_id=transaction.id) from None

    async def _independent_batch(self, request: BatchRequest,
                                 classifications: list[Classification]) -> dict[str, Any]:
        """Each statement on its own, as separate /query requests would run."""
        results = []
        for statement, classification in zip(request.statements, classifications, strict=True):
            try:
                refuse_outside(classification)
                node, result, attempts = await self._execute(statement, classification,
                                                             request.mode)
                results.append({"status": 200, "node": node.name, "node_role": node.role,
                                "attempts": attempts, **_statement_json(classification, result)})
            except ApiError as error:
                results.append({"status": error.status, **error.to_json()})
        return {"results": results}


class ImplicitCommit(Exception):
    """A statement of an atomic batch committed its transaction (a procedure's COMMIT, FLUSH)."""


def _statement_json(classification: Classification, result: QueryResult) -> dict[str, Any]:
    return {"query_type": classification.query_type, **result_json(result)}


def _failed(index: int) -> dict[str, int]:
    """The failing statement's index; -1 is the START TRANSACTION before the first."""
    return {"failed_statement": index} if index >= 0 else {}


async def _rollback(lease: Lease) -> None:
    """Best effort: the reset on release rolls back too, should this fail."""
    with contextlib.suppress(SqlError, NodeUnavailable, QueryTimeout):
        await lease.run(_ROLLBACK, 0)


_BEGIN, _COMMIT, _ROLLBACK = (Statement.plain("START TRANSACTION"), Statement.plain("COMMIT"),
                              Statement.plain("ROLLBACK"))
