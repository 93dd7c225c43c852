"""Interactive transactions over stateless HTTP: each one holds a primary connection.

A transaction is opened by one request and used by later ones through its id, so the Proxy
keeps its connection (a ``Lease``) between requests. What that costs is bounded: at most
``max_transactions`` are open (fewer than the pool's connections, so ordinary requests always
find room), at most ``max_transactions_per_key`` of them by one key (so that no key keeps the
others out: 429 past it, where the global cap is a 503), an idle one is rolled back after
``transaction_idle_timeout`` and any one after ``transaction_max_age``. Ending a transaction,
whichever way, resets its connection.

A stopping Proxy drains (``drain``): it opens no new transaction (503, cause ``draining``, so
that a front may open it on another Proxy) and lets the open ones end as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from services.config import ProxyConfig
from services.contract import TRANSACTION_ID_PATTERN, ApiError, TransactionRequest
from services.proxy.classify import Classification, Kind
from services.proxy.health import ClusterHealth, NodeHealth, NoPrimary
from services.proxy.metrics import ProxyMetrics
from services.proxy.pools import (
    Lease,
    NodeBusy,
    NodeUnavailable,
    QueryResult,
    QueryTimeout,
    SqlError,
    read_position,
)
from services.proxy.replication import Flavour
from services.proxy.scopes import Caller
from services.statements import Statement

log = logging.getLogger(__name__)

# How many ended transactions are remembered, to tell "ended" (409) from "unknown" (404).
REMEMBERED_ENDINGS = 10_000
DEADLOCK = 1213  # InnoDB rolls the whole transaction back


@dataclass
class Transaction:
    id: str
    lease: Lease
    scope: str  # what it was opened with: statements inside are checked against it
    opened: float
    last_used: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    key: str = ""  # the key that opened it ("": a request without a key name)
    statements: int = 0
    position: str | None = None  # the primary's replication position after the commit
    replicated: bool | None = None  # semi-sync still on after the commit (None: not read)

    @property
    def node(self) -> str:
        return self.lease.pool.name


class TransactionManager:
    def __init__(self, cluster: ClusterHealth, config: ProxyConfig,
                 metrics: ProxyMetrics | None = None) -> None:
        self.cluster = cluster
        self._open_gauge = metrics.open_transactions if metrics is not None else None
        self.allow_async = config.allow_async
        self.write_hold = config.write_hold
        self.instance = config.instance_name
        self.max_open = config.max_transactions
        self.max_per_key = config.max_transactions_per_key
        self.idle_timeout = config.transaction_idle_timeout
        self.max_age = config.transaction_max_age
        self.max_rows = config.max_rows
        self.max_result_bytes = config.max_result_bytes
        self._open: dict[str, Transaction] = {}
        self._opening = 0
        self._held: Counter[str] = Counter()  # open or opening, by key
        self._ended: OrderedDict[str, str] = OrderedDict()
        self._reaper: asyncio.Task | None = None
        self.draining = False

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_forever())

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        left = list(self._open.values())
        if left:
            log.warning("the proxy stops with %d transaction(s) open: rolling them back (%s)",
                        len(left), ", ".join(transaction.id for transaction in left))
        for transaction in left:
            await self._end(transaction, "rolled back: the proxy stopped")

    def drain(self) -> None:
        """Open no new transaction from now on (the Proxy is stopping); the open ones go on
        until they end as usual."""
        self.draining = True

    async def wait_ended(self, limit: float) -> bool:
        """Wait, at most ``limit`` seconds, until no transaction is open (or opening); True
        when none is."""
        deadline = time.monotonic() + limit
        while self._open or self._opening:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    @property
    def open_count(self) -> int:
        return len(self._open)

    def is_open(self, transaction_id: str) -> bool:
        return transaction_id in self._open

    def scope_of(self, transaction_id: str) -> str | None:
        """The scope an open transaction was opened with; None when it is not open."""
        transaction = self._open.get(transaction_id)
        return transaction.scope if transaction is not None else None

    def ending(self, transaction_id: str) -> str | None:
        """How an ended transaction ended; None while it is open (or unknown)."""
        return self._ended.get(transaction_id)

    async def open(self, request: TransactionRequest, caller: Caller) -> Transaction:
        """Open one on the primary, as the caller's scope's database user, which it keeps."""
        caller.check_transaction("interactive transactions")
        if self.draining:
            raise ApiError(503, "this proxy is stopping (draining): it opens no new "
                           "transaction; open it on another proxy, or retry shortly",
                           headers={"Retry-After": "1"}, cause="draining", draining=True)
        if self.max_open == 0:
            raise ApiError(503, "transactions are turned off on this proxy "
                           "(PROXY_MAX_TRANSACTIONS=0)", cause="transactions_full")
        key = caller.key or ""
        if self._held[key] >= self.max_per_key:
            # The key's own doing, and only the key's own transactions can end it: 429, as a
            # rate limit, while the other keys still get theirs.
            raise ApiError(429, f"too many open transactions for this key "
                           f"({self.max_per_key}): commit or roll back one of them, or retry "
                           "later", headers={"Retry-After": "1"}, retry_after=1,
                           cause="transactions_per_key")
        if len(self._open) + self._opening >= self.max_open:
            raise ApiError(503, f"too many open transactions ({self.max_open}): commit or roll "
                           "back one, or retry later", headers={"Retry-After": "1"},
                           cause="transactions_full")
        self._opening += 1
        self._held[key] += 1
        opened = False
        node = None
        try:
            node = await self.cluster.writable_primary(self.allow_async, self.write_hold)
            lease = await self._lease(node, caller.scope)
            try:
                if request.isolation:
                    await lease.run(Statement.plain(
                        f"SET TRANSACTION ISOLATION LEVEL {request.isolation}"), 0)
                access = "READ ONLY" if request.read_only else "READ WRITE"
                await lease.run(Statement.plain(f"START TRANSACTION {access}"), 0)
            except BaseException:
                await lease.release()
                raise
        except NoPrimary as refusal:
            raise ApiError(503, f"could not open a transaction: {refusal.reason}",
                           cause=refusal.cause) from None
        except (NodeUnavailable, QueryTimeout, SqlError) as error:
            raise ApiError(503, f"could not open a transaction on the primary: {error}",
                           node=node.name, cause="no_node") from None
        else:
            opened = True
        finally:
            self._opening -= 1
            if not opened:
                self._release(key)
        now = time.monotonic()
        transaction = Transaction(f"{self.instance}.{secrets.token_urlsafe(18)}", lease,
                                  caller.scope, opened=now, last_used=now, key=key)
        self._open[transaction.id] = transaction
        if self._open_gauge is not None:
            self._open_gauge.inc()
        return transaction

    async def _lease(self, node: NodeHealth, scope: str) -> Lease:
        try:
            return await node.pool.lease(scope)
        except NodeBusy as error:
            raise ApiError(503, f"the primary has no free connection: {error}",
                           headers={"Retry-After": "1"}, cause="busy") from None

    @contextlib.asynccontextmanager
    async def using(self, transaction_id: str) -> AsyncIterator[Transaction]:
        """The open transaction, held for one request (requests on it run one at a time)."""
        transaction = self._find(transaction_id)
        async with transaction.lock:
            if self._open.get(transaction_id) is not transaction:  # ended while we waited
                self._find(transaction_id)
            transaction.last_used = time.monotonic()
            try:
                yield transaction
            finally:
                transaction.last_used = time.monotonic()

    def _find(self, transaction_id: str) -> Transaction:
        transaction = self._open.get(transaction_id)
        if transaction is not None:
            return transaction
        ended = self._ended.get(transaction_id)
        if ended is not None:
            raise ApiError(409, f"transaction {transaction_id} has ended: {ended}",
                           transaction_id=transaction_id)
        match = TRANSACTION_ID_PATTERN.fullmatch(transaction_id)
        if match and match.group(1) != self.instance:
            raise ApiError(404, f"transaction {transaction_id} is not held by this proxy "
                           f"({self.instance})", transaction_id=transaction_id)
        raise ApiError(404, f"no transaction {transaction_id}", transaction_id=transaction_id)

    # --- statements ---------------------------------------------------------------------------

    async def execute(self, transaction: Transaction, statement: Statement,
                      classification: Classification,
                      max_bytes: int | None = None) -> QueryResult:
        """Run one statement inside the transaction (the caller holds ``using`` and checked
        the statement against the transaction's scope)."""
        refuse_inside(classification)
        if classification.sets_schema:
            transaction.lease.schema_changed = True
        try:
            result = await transaction.lease.run(
                statement, self.max_rows,
                self.max_result_bytes if max_bytes is None else max_bytes)
        except SqlError as error:
            if error.code == DEADLOCK:
                await self._end(transaction, "rolled back by the server (deadlock)")
            raise
        except (NodeUnavailable, QueryTimeout) as error:
            await self._end(transaction, f"rolled back: {error}")
            raise
        finally:
            transaction.statements += 1
        if not transaction.lease.in_transaction:
            await self._end(transaction, f"committed implicitly by statement "
                            f"{transaction.statements}: {classification.reason}")
        return result

    async def savepoint(self, transaction: Transaction, action: str) -> None:
        """SAVEPOINT / ROLLBACK TO / RELEASE the batch savepoint of ``/batch`` inside it."""
        await transaction.lease.run(Statement.plain(f"{action} sqlgate_batch"), 0)

    async def commit(self, transaction_id: str, caller: Caller) -> Transaction:
        return await self._finish(transaction_id, "COMMIT", "committed", caller)

    async def rollback(self, transaction_id: str, caller: Caller) -> Transaction:
        return await self._finish(transaction_id, "ROLLBACK", "rolled back", caller)

    async def _finish(self, transaction_id: str, sql: str, ending: str,
                      caller: Caller) -> Transaction:
        async with self.using(transaction_id) as transaction:
            caller.within(transaction.scope).check_transaction("ending a transaction")
            try:
                await transaction.lease.run(Statement.plain(sql), 0)
            except SqlError as error:
                await self._end(transaction, f"rolled back: {sql} failed: {error.message}")
                raise
            except (NodeUnavailable, QueryTimeout) as error:
                outcome = ("its outcome is unknown" if sql == "COMMIT" else "rolled back")
                await self._end(transaction, f"lost during {sql}: {outcome}")
                raise ApiError(503, f"lost the primary during {sql}: {outcome}",
                               transaction_id=transaction_id, node=transaction.node) from error
            if sql == "COMMIT":
                transaction.position, transaction.replicated = await position_after_commit(
                    transaction.lease, self.cluster.flavour)
            await self._end(transaction, ending)
            return transaction

    def _release(self, key: str) -> None:
        self._held[key] -= 1
        if self._held[key] <= 0:
            del self._held[key]  # a key that holds none takes no room

    async def _end(self, transaction: Transaction, reason: str) -> None:
        if self._open.pop(transaction.id, None) is None:
            return
        self._release(transaction.key)
        if self._open_gauge is not None:
            self._open_gauge.dec()
        self._ended[transaction.id] = reason
        while len(self._ended) > REMEMBERED_ENDINGS:
            self._ended.popitem(last=False)
        await transaction.lease.release()  # the reset rolls back whatever is still open

    # --- timeouts -----------------------------------------------------------------------------

    async def _reap_forever(self) -> None:
        period = max(0.05, min(self.idle_timeout, self.max_age) / 10)
        while True:
            await asyncio.sleep(period)
            try:
                await self.reap()
            except Exception:  # never let the reaper die: log and go on
                log.exception("transaction reaper")

    async def reap(self) -> None:
        now = time.monotonic()
        for transaction in list(self._open.values()):
            if transaction.lock.locked():
                continue  # a statement is running: bounded by the query timeout, reaped after
            if now - transaction.opened > self.max_age:
                reason = f"rolled back: open longer than {self.max_age:g}s"
            elif now - transaction.last_used > self.idle_timeout:
                reason = f"rolled back: idle for more than {self.idle_timeout:g}s"
            else:
                continue
            log.info("transaction %s %s", transaction.id, reason)
            await self._end(transaction, reason)


async def position_after_commit(lease: Lease,
                                flavour: Flavour) -> tuple[str | None, bool | None]:
    """Where the primary is once a commit returned, for the read-your-writes token, and
    whether semi-sync was still on (``read_position``); (None, None) if that cannot be read:
    the commit stands, its answer carries no token, and whether a replica has it is unknown."""
    with contextlib.suppress(NodeUnavailable, QueryTimeout, SqlError):
        return read_position(await lease.run(flavour.position_statement(), 1))
    return None, None


def refuse_inside(classification: Classification) -> None:
    """Statements that would end the transaction behind the API's back, or leave it."""
    if classification.kind is Kind.TRANSACTION:
        raise ApiError(400, f"{classification.reason}: inside a transaction use "
                       "POST /transactions/{id}/commit or /rollback (SAVEPOINT and "
                       "ROLLBACK TO SAVEPOINT are allowed)")
    if classification.commits_implicitly:
        raise ApiError(400, f"{classification.reason} and would commit the transaction "
                       "implicitly: run it outside a transaction")
