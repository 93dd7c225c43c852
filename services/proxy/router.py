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

from services.contract import ApiError, BatchRequest, QueryRequest
from services.proxy.classify import Classification, Kind, StatementError, classify
from services.proxy.health import (
    READ_ONLY_ERROR,
    ClusterHealth,
    HealthMonitor,
    NodeHealth,
    NoPrimary,
)
from services.proxy.metrics import ProxyMetrics
from services.proxy.pools import (
    Lease,
    NodeBusy,
    NodeUnavailable,
    NotCaughtUp,
    QueryResult,
    QueryTimeout,
    SqlError,
    TransactionLeftOpen,
)
from services.proxy.routing import STRATEGIES, read_targets
from services.proxy.scopes import Caller
from services.proxy.shares import StatementShares
from services.proxy.tokens import TokenCodec
from services.proxy.transactions import (
    Transaction,
    TransactionManager,
    position_after_commit,
    refuse_inside,
)
from services.requestlog import RequestTrace
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


def sql_error(error: SqlError, caller: Caller | None = None, **details: Any) -> ApiError:
    """The server's refusal; a privilege error also names the scope whose user it hit."""
    if caller is not None and error.http_status == 403:
        details.setdefault("scope", caller.scope)
    return ApiError(error.http_status, error.message, mysql_errno=error.code, **details)


@dataclass
class Executed:
    """One statement run outside a transaction: where, how, and what it answered."""

    node: NodeHealth
    result: QueryResult
    attempts: int
    waited_ms: float | None  # time spent waiting for read-your-writes positions
    token: str | None  # a write's read-your-writes token

    def to_json(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.waited_ms is not None:
            extra["waited_ms"] = round(self.waited_ms, 3)
        if self.token is not None:
            extra["token"] = self.token
        return {"node": self.node.name, "node_role": self.node.role,
                "attempts": self.attempts, **result_json(self.result), **extra}


@dataclass
class QueryRouter:
    cluster: ClusterHealth
    monitor: HealthMonitor
    transactions: TransactionManager
    tokens: TokenCodec
    max_rows: int
    causal_wait: float = 0.5
    primary_fallback: bool = True  # reads with no replica in rotation: primary, or 503
    max_result_bytes: int = 8 * 1024 * 1024  # per answer: a batch's results share it
    metrics: ProxyMetrics | None = None  # retries and read-your-writes waits
    write_hold: float = 15.0  # how long a write waits for a primary during a failover
    allow_async: bool = False  # accept writes while the primary's semi-sync is off
    # Each key's share of the requests in flight outside transactions (None: no share).
    shares: StatementShares | None = None

    def _share(self, caller: Caller) -> contextlib.AbstractContextManager:
        """The caller's key holds one more of its share for the block (429 past it, before
        anything is sent); inside a transaction nothing is taken: see services/proxy/shares."""
        if self.shares is None:
            return contextlib.nullcontext()
        return self.shares.hold(caller.key)

    # --- POST /query --------------------------------------------------------------------------

    async def run(self, request: QueryRequest, request_id: str, caller: Caller,
                  trace: RequestTrace | None = None) -> dict[str, Any]:
        """Answer a query request, or raise ApiError with the right status. ``trace`` learns
        what the request did, for its metrics and log line."""
        began = time.perf_counter()
        trace = trace or RequestTrace()
        classification = classified(request.statement)
        trace.query_type = classification.query_type
        after = self._position(request.after)
        if request.transaction_id is not None:
            async with self.transactions.using(request.transaction_id) as transaction:
                trace.node = transaction.node
                inside = caller.within(transaction.scope)
                inside.check(classification)
                result = await self._in_transaction(transaction, request.statement,
                                                    classification, inside)
            answer = {**Executed(self.cluster.node(transaction.node), result, 1, None,
                                 None).to_json(),
                      "transaction_id": transaction.id}
            ended = self.transactions.ending(transaction.id)
            if ended:  # the statement itself ended it (a procedure's COMMIT, say)
                answer["transaction_ended"] = ended
        else:
            caller.check(classification)
            refuse_outside(classification)
            if classification.is_read:
                trace.mode = request.mode
            with self._share(caller):
                answer = (await self._execute(request.statement, classification, request.mode,
                                              caller, after, trace=trace)).to_json()
        return {
            "request_id": request_id,
            "mode": request.mode,
            "query_type": classification.query_type,
            **answer,
            "elapsed_ms": round((time.perf_counter() - began) * 1000.0, 3),
        }

    def _position(self, tokens: tuple[str, ...]) -> str | None:
        """The replication position a read must see: the tokens' merged position."""
        return self.tokens.position(list(tokens), self.cluster.flavour) if tokens else None

    def issue_token(self, position: str | None) -> str | None:
        return self.tokens.issue(self.cluster.flavour, position) if position else None

    async def _in_transaction(self, transaction: Transaction, statement: Statement,
                              classification: Classification, caller: Caller,
                              max_bytes: int | None = None) -> QueryResult:
        try:
            return await self.transactions.execute(transaction, statement, classification,
                                                   max_bytes)
        except SqlError as error:
            raise sql_error(error, caller, node=transaction.node,
                            transaction_id=transaction.id) from None
        except QueryTimeout as error:
            raise ApiError(504, f"{error}; the transaction was rolled back",
                           transaction_id=transaction.id) from None
        except NodeUnavailable as error:
            await self.monitor.mark_down(self.cluster.node(transaction.node), error.reason)
            raise ApiError(503, f"lost the primary: the transaction was rolled back: "
                           f"{error.reason}", transaction_id=transaction.id) from None

    async def _write_node(self, deadline: float | None = None) -> NodeHealth:
        """The primary, waited for up to ``write_hold`` (or ``deadline``) while a failover may
        be under way."""
        try:
            return await self.cluster.writable_primary(self.allow_async, self.write_hold,
                                                       deadline)
        except NoPrimary as refusal:
            raise ApiError(503, f"no database node can take this write: {refusal.reason}",
                           cause=refusal.cause) from None

    def check_replicated(self, replicated: bool | None, what: str, **details: Any) -> None:
        """Fail closed after the fact: semi-sync was off once the write returned, so it may be
        on the primary's disk only, and a failover would lose it. Not acknowledged."""
        if replicated is False and not self.allow_async:
            raise ApiError(503, f"{what} committed on the primary, but semi-synchronous "
                           "replication was off when it returned: no replica is known to have "
                           "it, so it is not acknowledged (it survives only if the primary "
                           "does)", outcome="unknown", cause="semi_sync_off", **details)

    async def _targets(self, classification: Classification, mode: str,
                       deadline: float) -> list[NodeHealth]:
        if not classification.is_read:
            return [await self._write_node(deadline)]
        targets = read_targets(STRATEGIES[mode], self.cluster, self.primary_fallback)
        if not targets:
            raise ApiError(503, "no replica is in rotation for this read, and reads do not "
                           "fall back to the primary (PROXY_READ_FALLBACK=error)",
                           cause="no_node",
                           replicas={node.name: node.rotation_reason or "down"
                                     for node in self.cluster.replicas})
        return targets

    async def _execute(self, statement: Statement, classification: Classification,
                       mode: str, caller: Caller, after: str | None = None,
                       max_bytes: int | None = None,
                       trace: RequestTrace | None = None,
                       deadline: float | None = None) -> Executed:
        """Run outside a transaction, as the caller's scope's database user: a read on its
        targets in turn (waiting on each replica for ``after``, the position it must see), a
        write on the primary, once. A write that could not even be sent waits for a primary
        again, until ``deadline`` (``write_hold`` from the first try)."""
        if deadline is None:
            deadline = time.monotonic() + self.write_hold
        flavour = self.cluster.flavour
        primary = self.cluster.primary
        metrics = self.metrics
        trace = trace or RequestTrace()
        position = None if classification.is_read else flavour.position_statement()
        failures: list[str] = []
        all_busy = True
        waited_ms = 0.0 if after is not None else None
        targets = await self._targets(classification, mode, deadline)
        for attempt, node in enumerate(targets, 1):
            retrying = metrics is not None and attempt < len(targets)
            wait = (flavour.wait_statement(after, self.causal_wait)
                    if after is not None and node is not primary else None)
            trace.node, trace.attempts, trace.waited_ms = node.name, attempt, waited_ms
            node.in_flight += 1
            began = time.perf_counter()
            try:
                result = await node.pool.execute(statement, self.max_rows, scope=caller.scope,
                                                 max_bytes=max_bytes,
                                                 reset=classification.leaves_state,
                                                 wait=wait, position=position)
                node.observe((time.perf_counter() - began) * 1000.0)
                if result.waited_ms is not None:
                    waited_ms += result.waited_ms
                    if metrics is not None:
                        metrics.read_waited(node.name, result.waited_ms)
                trace.waited_ms = waited_ms
                if not classification.is_read:
                    self.check_replicated(result.replicated, "the write", node=node.name)
                return Executed(node, result, attempt, waited_ms,
                                self.issue_token(result.position))
            except NotCaughtUp as error:  # the next candidate may be further along
                node.observe((time.perf_counter() - began) * 1000.0)  # `least` learns of it
                waited_ms += error.waited_ms
                trace.waited_ms = waited_ms
                all_busy = False
                if metrics is not None:
                    metrics.read_waited(node.name, error.waited_ms)
                if retrying:
                    metrics.retried(node.name, "not_caught_up")
                failures.append(str(error))
            except SqlError as error:
                if error.code == READ_ONLY_ERROR and not classification.is_read:
                    # Refused, so not applied: the node was fenced or switched over since the
                    # last check. The write waits for the primary the checks elect next.
                    node.writable = False
                    self.cluster.elect()
                    return await self._execute(statement, classification, mode, caller,
                                               after, max_bytes, trace, deadline)
                raise sql_error(error, caller, node=node.name) from None
            except QueryTimeout as error:
                if classification.is_read:
                    raise ApiError(504, str(error), node=node.name) from None
                # Killed on the server if it could be reached; if not, it may still commit.
                raise ApiError(504, f"{error}; the write may or may not have been applied",
                               node=node.name, outcome="unknown") from None
            except TransactionLeftOpen:
                raise ApiError(400, f"{classification.reason}, and it left a transaction open "
                               "(autocommit turned off?): its changes were rolled back, not "
                               "applied; run it inside a transaction (POST /transactions)",
                               node=node.name) from None
            except NodeBusy as error:  # shed load: another node may have room, none is down
                if retrying:
                    metrics.retried(node.name, "busy")
                failures.append(str(error))
            except NodeUnavailable as error:
                all_busy = False
                await self.monitor.mark_down(node, error.reason)
                if retrying:
                    metrics.retried(node.name, "unavailable")
                failures.append(str(error))
                if not classification.is_read:
                    if error.maybe_applied:
                        raise ApiError(
                            503, f"lost the primary during the write; it may or may not have "
                            f"been applied: {error.reason}", node=node.name,
                            outcome="unknown") from None
                    # Never sent: it waits for the next primary (a failover) like any write.
                    return await self._execute(statement, classification, mode, caller,
                                               after, max_bytes, trace, deadline)
            finally:
                node.in_flight -= 1
        what = "read" if classification.is_read else "write"
        trace.node = None
        raise ApiError(503, f"no database node could serve this {what}", failures=failures,
                       cause="busy" if all_busy else "no_node")

    # --- POST /batch --------------------------------------------------------------------------

    async def run_batch(self, request: BatchRequest, request_id: str, caller: Caller,
                        trace: RequestTrace | None = None) -> dict[str, Any]:
        began = time.perf_counter()
        trace = trace or RequestTrace()
        after = self._position(request.after)  # a bad token is refused before anything runs
        if request.transaction_id is not None:
            # Inside a transaction: no more than it was opened with (an unknown or ended one
            # is answered by the lookup below).
            caller = caller.within(self.transactions.scope_of(request.transaction_id)
                                   or caller.scope)
        elif request.transaction:
            caller.check_transaction("atomic batches (send 'transaction': false to run "
                                     "statements one by one)")
        classifications = []
        for index, statement in enumerate(request.statements):
            try:
                classification = classified(statement)
                caller.check(classification)
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
        reads_only = all(classification.is_read for classification in classifications)
        trace.query_type = "read" if reads_only else "write"
        if request.transaction_id is not None:
            answer = await self._batch_in_transaction(request, classifications, caller)
        elif request.transaction:
            with self._share(caller):  # once per request: one connection at a time
                answer = await self._atomic_batch(request, classifications, caller)
        else:
            if reads_only:
                trace.mode = request.mode
            with self._share(caller):
                answer = await self._independent_batch(request, classifications, caller,
                                                       after, trace)
        if request.transaction_id is not None or request.transaction:
            trace.node = answer["node"]
        return {"request_id": request_id, "mode": request.mode,
                "transaction": request.transaction, **answer,
                "elapsed_ms": round((time.perf_counter() - began) * 1000.0, 3)}

    async def _atomic_batch(self, request: BatchRequest, classifications: list[Classification],
                            caller: Caller) -> dict[str, Any]:
        """All statements in one transaction on the primary: all apply, or none."""
        primary = await self._write_node()
        budget = self.max_result_bytes
        try:
            lease = await primary.pool.lease(caller.scope)
        except NodeBusy as error:
            raise ApiError(503, f"no database node could serve this batch: {error}",
                           cause="busy") from None
        except NodeUnavailable as error:
            await self.monitor.mark_down(primary, error.reason)
            raise ApiError(503, f"no database node could serve this batch: {error}",
                           cause="no_node") from None
        index = -1
        committing = False
        try:
            await lease.run(_BEGIN, 0)
            results = []
            lease.schema_changed = any(c.sets_schema for c in classifications)
            for statement in request.statements:
                index += 1  # read by the handlers below: which statement failed
                result = await lease.run(statement, self.max_rows, budget)
                budget -= result.size
                results.append(result)
                if not lease.in_transaction:
                    raise ImplicitCommit(index)
            committing = True
            await lease.run(_COMMIT, 0)
            position, replicated = await position_after_commit(lease, self.cluster.flavour)
            self.check_replicated(replicated, "the batch", node=primary.name)
            token = self.issue_token(position)
        except SqlError as error:
            await _rollback(lease)
            raise sql_error(error, caller, node=primary.name, rolled_back=True,
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
                               f"have been applied: {error.reason}", outcome="unknown") from None
            raise ApiError(503, f"lost the primary: nothing was applied: {error.reason}",
                           rolled_back=True, **_failed(index)) from None
        finally:
            await lease.release()
        return {"node": primary.name, "node_role": primary.role, "token": token,
                "results": [_statement_json(c, r) for c, r in zip(classifications, results,
                                                                  strict=True)]}

    async def _batch_in_transaction(self, request: BatchRequest,
                                    classifications: list[Classification],
                                    caller: Caller) -> dict[str, Any]:
        """Inside an open transaction: all or none of the batch, and the transaction stays."""
        async with self.transactions.using(request.transaction_id) as transaction:
            results = []
            budget = self.max_result_bytes
            await self._savepoint(transaction, "SAVEPOINT")
            for index, (statement, classification) in enumerate(
                    zip(request.statements, classifications, strict=True)):
                try:
                    result = await self._in_transaction(transaction, statement,
                                                        classification, caller, budget)
                    budget -= result.size
                    results.append(result)
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
        primary = self.cluster.node(transaction.node)
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
                                 classifications: list[Classification], caller: Caller,
                                 after: str | None,
                                 trace: RequestTrace | None = None) -> dict[str, Any]:
        """Each statement on its own, as separate /query requests would run; the answer's
        token is the last write's, which covers the earlier ones."""
        results = []
        token = None
        budget = self.max_result_bytes
        for statement, classification in zip(request.statements, classifications, strict=True):
            try:
                refuse_outside(classification)
                executed = await self._execute(statement, classification, request.mode, caller,
                                               after, budget, trace)
                budget -= executed.result.size
                token = executed.token or token
                results.append({"status": 200, "query_type": classification.query_type,
                                **executed.to_json()})
            except ApiError as error:
                results.append({"status": error.status, **error.to_json()})
        return {"token": token, "results": results}


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
