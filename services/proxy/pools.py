"""One asyncmy connection pool per database node, and running one statement on it.

Errors come out in three kinds the router can act on: ``SqlError`` (the statement failed: the
client's problem, the node is fine), ``NodeUnavailable`` (the node could not be reached or the
connection died: try elsewhere if that is safe) and ``QueryTimeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import asyncmy
from asyncmy.cursors import DictCursor, SSCursor
from asyncmy.errors import InterfaceError, InternalError, MySQLError

from services.config import NodeAddress, ProxyConfig
from services.proxy import session
from services.statements import Statement

log = logging.getLogger(__name__)

Role = Literal["primary", "replica"]

# Server errors that mean "this node cannot serve now" rather than "this statement is wrong".
UNAVAILABLE_SERVER_ERRORS = frozenset({
    1040,  # too many connections
    1053,  # server shutdown in progress
    1927,  # connection was killed
})
# Statement errors with a more precise status than 400.
# duplicate key, foreign key, lock wait timeout, deadlock
CONFLICT_ERRORS = frozenset({1062, 1451, 1452, 1205, 1213})
FORBIDDEN_ERRORS = frozenset({1044, 1142, 1143, 1227, 1370})  # access denied variants
TIMEOUT_ERRORS = frozenset({1969, 3024})  # statement time limit (MariaDB, MySQL)


class NodeUnavailable(Exception):
    """The node could not run the statement (connect failed, connection lost, shutting down).

    ``maybe_applied`` is true when the statement may have reached the server before the
    failure, so retrying it elsewhere is only safe for reads.
    """

    def __init__(self, node: str, reason: str, *, maybe_applied: bool) -> None:
        super().__init__(f"{node}: {reason}")
        self.node = node
        self.reason = reason
        self.maybe_applied = maybe_applied


class NodeBusy(Exception):
    """Every pooled connection to the node is in use: load to shed, not a node to mark down."""


class QueryTimeout(Exception):
    pass


class TransactionLeftOpen(Exception):
    """A statement run in autocommit mode left a transaction open (a procedure that turned
    autocommit off, say): its changes are rolled back rather than acknowledged and lost."""


class SqlError(Exception):
    """The server refused the statement; carries MySQL's error code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"({code}) {message}")
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        if self.code in CONFLICT_ERRORS:
            return 409
        if self.code in FORBIDDEN_ERRORS:
            return 403
        if self.code in TIMEOUT_ERRORS:
            return 504
        return 400


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    rowcount: int
    last_insert_id: int | None
    truncated: bool
    waited_ms: float | None = None  # waiting for a read-your-writes position first
    position: str | None = None  # the primary's replication position after a write


class NotCaughtUp(Exception):
    """The replica had not applied the position a read must see within the wait."""

    def __init__(self, node: str, waited_ms: float) -> None:
        super().__init__(f"{node}: not caught up after {waited_ms:.0f} ms")
        self.node = node
        self.waited_ms = waited_ms


def _error_code(error: BaseException) -> int:
    args = getattr(error, "args", ())
    return args[0] if args and isinstance(args[0], int) else 0


def _error_message(error: BaseException) -> str:
    args = getattr(error, "args", ())
    return str(args[1]) if len(args) > 1 else str(error) or type(error).__name__


def _is_connection_failure(error: BaseException) -> bool:
    """Anything but a server's answer about the statement: the connection can't be trusted.

    Client-side errors (codes 2000+, a packet out of sequence, an interface error without a
    code) mean the protocol state is lost; some server codes mean the server is going away.
    """
    if not isinstance(error, MySQLError) or isinstance(error, (InterfaceError, InternalError)):
        return True
    code = _error_code(error)
    return code == 0 or code >= 2000 or code in UNAVAILABLE_SERVER_ERRORS


# Set on a connection once ``session.prepare`` has run on it.
PREPARED_MARK = "_sqlgate_prepared"


class Lease:
    """One pooled connection kept by a transaction between its requests."""

    def __init__(self, pool: NodePool, conn: Any) -> None:
        self.pool = pool
        self.conn = conn
        self.broken = False
        self.schema_changed = False

    async def run(self, statement: Statement, max_rows: int) -> QueryResult:
        try:
            return await self.pool._run_on(self.conn, statement, max_rows, drain=True)
        except SqlError:
            raise
        except BaseException:
            self.broken = True  # timed out or lost: the server rolls the transaction back
            raise

    @property
    def in_transaction(self) -> bool:
        """What the server said after the last statement: is a transaction still open?"""
        return session.in_transaction(self.conn)

    async def release(self) -> None:
        """Reset the session (which rolls back anything left open) and give it back."""
        keep = not self.broken and await self.pool._clean(self.conn, self.schema_changed)
        self.pool._give_back(self.conn, keep)


class NodePool:
    """A lazily connected pool to one node; a dead node costs a connect timeout, not a hang."""

    def __init__(self, address: NodeAddress, role: Role, config: ProxyConfig) -> None:
        self.address = address
        self.role = role
        self.name = address.name
        self._config = config
        self._pool: asyncmy.Pool | None = None
        self._probe: Any = None  # the health monitor's own connection, outside the pool
        self._connect_args = {
            "host": address.host, "port": address.port, "user": config.db_user,
            "password": config.db_password, "db": config.db_name or None, "autocommit": True,
            "connect_timeout": config.connect_timeout, "charset": "utf8mb4",
            "program_name": "sqlgate-proxy",
        }

    async def start(self) -> None:
        """Connections are made on demand (minsize 0): a node that is down at start-up only
        costs the requests that try it."""
        self._pool = await asyncmy.create_pool(minsize=0, maxsize=self._config.pool_max_size,
                                               pool_recycle=600, **self._connect_args)

    async def close(self) -> None:
        self._close_probe()
        if self._pool is not None:
            self._pool.close()
            await self._pool.wait_closed()

    async def drop_idle_connections(self) -> None:
        """After the node failed, forget connections that died with it."""
        if self._pool is not None:
            await self._pool.clear()

    async def _acquire(self) -> Any:
        assert self._pool is not None, "start() first"
        # One bound for connecting (a server that accepts but never greets included) and for
        # waiting on a saturated pool: either way the node cannot take the statement now.
        limit = self._config.connect_timeout
        try:
            conn = await asyncio.wait_for(self._pool.acquire(), limit)
        except TimeoutError:
            if self._pool.size >= self._pool.maxsize:
                raise NodeBusy(f"{self.name}: all {self._pool.maxsize} connections busy for "
                               f"{limit:g}s") from None
            raise NodeUnavailable(self.name, f"no connection within {limit:g}s",
                                  maybe_applied=False) from None
        except (OSError, MySQLError) as error:
            raise NodeUnavailable(self.name, _error_message(error),
                                  maybe_applied=False) from error
        if not getattr(conn, PREPARED_MARK, False):
            try:
                await asyncio.wait_for(session.prepare(conn), limit)
            except (TimeoutError, OSError, MySQLError) as error:
                self._give_back(conn, keep=False)
                raise NodeUnavailable(self.name, f"could not prepare a connection: "
                                      f"{_error_message(error)}", maybe_applied=False) from None
            setattr(conn, PREPARED_MARK, True)
        return conn

    def _give_back(self, conn: Any, keep: bool) -> None:
        if not keep:
            conn.close()  # unknown protocol or session state: never reuse
        self._pool.release(conn)

    async def _clean(self, conn: Any, schema_changed: bool = False) -> bool:
        """Reset the session (see ``services.proxy.session``); False when that failed, or when the
        session's default schema was changed and there is none to go back to (a connection
        cannot be made to have no default schema again: it is closed instead)."""
        if schema_changed and not self._connect_args["db"]:
            return False
        try:
            await asyncio.wait_for(session.reset(conn, self._connect_args["db"]),
                                   self._config.connect_timeout)
        except (TimeoutError, OSError, MySQLError):
            return False
        return True

    async def execute(self, statement: Statement, max_rows: int, *,
                      reset: bool = False, wait: Statement | None = None,
                      position: Statement | None = None) -> QueryResult:
        """Run one statement (autocommit) and fetch at most ``max_rows`` rows.

        ``reset``: the statement may have left session state, so the connection is reset
        (or closed) before another request can have it. ``wait``: a statement answering 0
        once this node has applied a replication position, run first on the same connection
        (``NotCaughtUp`` otherwise). ``position``: a statement reading the replication
        position, run after a write; its answer goes in ``result.position``.
        """
        conn = await self._acquire()
        keep = False
        try:
            if wait is not None:
                began = time.perf_counter()
                answer = await self._run_on(conn, wait, 1, drain=True)
                waited_ms = (time.perf_counter() - began) * 1000.0
                if not answer.rows or answer.rows[0][0] is None or int(answer.rows[0][0]) != 0:
                    keep = True
                    raise NotCaughtUp(self.name, waited_ms)
            else:
                waited_ms = None
            result = await self._run_on(conn, statement, max_rows, drain=False)
            result.waited_ms = waited_ms
            keep = not result.truncated  # rows left unread: closing is cheaper than draining
            if keep and session.in_transaction(conn):
                reset = True  # the reset rolls it back
                raise TransactionLeftOpen(f"{self.name}: the statement left a transaction open")
            reset = reset or session.autocommit_off(conn)
            if position is not None and keep:
                answer = await self._run_on(conn, position, 1, drain=True)
                result.position = str(answer.rows[0][0]) if answer.rows else None
            return result
        except SqlError:
            keep = True
            raise
        finally:
            if keep and reset:
                keep = await self._clean(conn)
            self._give_back(conn, keep)

    async def lease(self) -> Lease:
        """A connection held across requests (a transaction); give it back with release()."""
        return Lease(self, await self._acquire())

    async def _run_on(self, conn: Any, statement: Statement, max_rows: int, *,
                      drain: bool) -> QueryResult:
        """Run on ``conn``; any error but SqlError leaves the connection unusable."""
        try:
            cursor = conn.cursor(SSCursor)  # unbuffered: a huge result is cut, not loaded
            return await asyncio.wait_for(self._run(cursor, statement, max_rows, drain),
                                          self._config.query_timeout)
        except TimeoutError:
            await self._kill_running_query(conn)
            raise QueryTimeout(
                f"statement exceeded {self._config.query_timeout:g}s on {self.name}") from None
        except (MySQLError, OSError) as error:
            if _is_connection_failure(error):  # the statement may have reached the server
                raise NodeUnavailable(self.name, _error_message(error),
                                      maybe_applied=True) from error
            raise SqlError(_error_code(error), _error_message(error)) from None

    @staticmethod
    async def _run(cursor: SSCursor, statement: Statement, max_rows: int,
                   drain: bool) -> QueryResult:
        await cursor.execute(statement.text, statement.args)
        if cursor.description is None:
            last_id = cursor.lastrowid
            return QueryResult([], [], cursor.rowcount, last_id or None, False)
        columns = [column[0] for column in cursor.description]
        rows = await cursor.fetchmany(max_rows + 1)
        truncated = len(rows) > max_rows
        if truncated:
            rows = rows[:max_rows]
        if drain or not truncated:
            await cursor.close()  # reads what is left, so the connection can go on
        return QueryResult(columns, rows, len(rows), None, truncated)

    async def _kill_running_query(self, conn: Any) -> None:
        """Stop the statement on the server too, so a timed-out query does not run on."""
        with contextlib.suppress(Exception):
            thread_id = conn.thread_id()
            helper = await asyncio.wait_for(self._pool.acquire(), self._config.connect_timeout)
            try:
                async with helper.cursor() as cursor:
                    await asyncio.wait_for(cursor.execute(f"KILL QUERY {int(thread_id)}"),
                                           self._config.connect_timeout)
            finally:
                self._pool.release(helper)

    async def probe(self, sql: str, args: tuple | None, timeout: float) -> list[dict[str, Any]]:
        """Run one statement of the health monitor on its own connection, outside the pool,
        so a pool saturated by slow statements does not look like a dead node.

        Raises SqlError when the server refused the statement (the node is up) and
        NodeUnavailable when it could not be reached.
        """
        try:
            if self._probe is None:
                self._probe = await asyncio.wait_for(asyncmy.connect(**self._connect_args),
                                                     timeout)
            async with self._probe.cursor(DictCursor) as cursor:
                await asyncio.wait_for(cursor.execute(sql, args), timeout)
                return list(await cursor.fetchall()) if cursor.description else []
        except (TimeoutError, OSError, MySQLError) as error:
            if isinstance(error, MySQLError) and not _is_connection_failure(error):
                raise SqlError(_error_code(error), _error_message(error)) from None
            self._close_probe()
            reason = "timed out" if isinstance(error, TimeoutError) else _error_message(error)
            raise NodeUnavailable(self.name, reason, maybe_applied=False) from error

    @property
    def server_version(self) -> str | None:
        """The version the server announced on the monitor's connection, once it connected."""
        return self._probe.get_server_info() if self._probe is not None else None

    def _close_probe(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None
