"""Per database node: one asyncmy pool per database user, and running one statement on it.

Each request scope connects as its own database user (``read``, ``write``, ``admin``), so the
server enforces the scope again whatever the classifier decided; the health monitor has a user
of its own. Pools are made on first use, so scopes sharing a user (a single-user development
set-up) share one pool, and a scope nobody uses costs nothing.

Errors come out in three kinds the router can act on: ``SqlError`` (the statement failed: the
client's problem, the node is fine), ``NodeUnavailable`` (the node could not be reached or the
connection died: try elsewhere if that is safe) and ``QueryTimeout``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any, Literal

import asyncmy
from asyncmy.cursors import DictCursor, SSCursor
from asyncmy.errors import InterfaceError, InternalError, MySQLError
from asyncmy.pool import Pool

from services.config import NodeAddress, ProxyConfig
from services.contract import SCOPES
from services.proxy import session
from services.proxy.readahead import limit_read_ahead, parsed_rows
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
NO_SUCH_THREAD = 1094  # KILL QUERY of a statement that has just ended on its own
MONITOR = "monitor"  # the health monitor's credentials, beside the scopes'


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
    size: int = 0  # the rows' estimated size in the JSON answer, bytes
    waited_ms: float | None = None  # waiting for a read-your-writes position first
    position: str | None = None  # the primary's replication position after a write
    # After a write: whether the primary's semi-sync was still on (None: not read)
    replicated: bool | None = None


def read_position(answer: QueryResult) -> tuple[str | None, bool | None]:
    """The position statement's answer (``Flavour.position_statement``): the position, and
    whether semi-sync was on (None when the server has no such status)."""
    if not answer.rows:
        return None, None
    row = answer.rows[0]
    position = str(row[0]) if row[0] else None
    status = row[1] if len(row) > 1 else None
    return position, None if status is None else str(status).upper() == "ON"


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
# Set on every pooled connection: the database user (and so the pool) it belongs to.
USER_MARK = "_sqlgate_user"


def _driver_failure(node: str, error: Exception, *, maybe_applied: bool) -> NodeUnavailable:
    """An exception the driver was not meant to raise (asyncmy lets a few through while a
    connection dies under it: a RuntimeError for a transport without a socket, an
    AttributeError on one already gone): the connection is lost all the same. Logged with its
    traceback, since it is a driver bug to report."""
    log.warning("%s: the database driver failed: %r", node, error, exc_info=error)
    return NodeUnavailable(node, f"the connection failed ({type(error).__name__})",
                           maybe_applied=maybe_applied)


def db_tls_context(ca_file: str) -> ssl.SSLContext:
    """TLS for every database connection: the server's certificate must chain to ``ca_file``.

    The chain is verified (``CERT_REQUIRED``), so only a server holding a key the cluster CA
    signed can answer, and credentials never cross the network in clear. The name is not
    checked (``check_hostname`` off): the Proxy reaches each node by address, and a node's
    certificate can only name the addresses known when it was issued (on AWS the private
    address comes after the certificate), so a name check would refuse real nodes. The
    cluster CA signs only the cluster's own hosts, which is what the chain proves; what it does
    not prove is which of them answers (a host of the cluster whose key leaked could pose as a
    database node).
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


# Column types whose values have a bounded width (numbers, dates and times): each is counted at
# FIXED_WIDTH bytes in a row's size, and only the other columns are measured, value by value.
FIXED_WIDTH_TYPES = frozenset({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 246})
FIXED_WIDTH = 24


def _measured_columns(description: Any) -> tuple[int, tuple[int, ...]]:
    """For a result's columns: the bytes a row's fixed-width values take in the JSON answer,
    and the positions of the columns whose values must be measured."""
    measured = tuple(index for index, column in enumerate(description)
                     if column[1] not in FIXED_WIDTH_TYPES)
    return 2 + FIXED_WIDTH * (len(description) - len(measured)), measured


def _value_size(value: Any) -> int:
    """About how many bytes a value takes in the JSON answer: text as itself (non-ASCII
    escaped as ``\\uXXXX``), binary as hex, anything else as its text."""
    if value.__class__ is str:
        return len(value) + 3 if value.isascii() else 6 * len(value) + 3
    if isinstance(value, bytes | bytearray):
        return 2 * len(value) + 5
    return 5 if value is None else len(str(value)) + 3


class Lease:
    """One pooled connection kept by a transaction between its requests."""

    def __init__(self, pool: NodePool, conn: Any) -> None:
        self.pool = pool
        self.conn = conn
        self.broken = False
        self.schema_changed = False

    async def run(self, statement: Statement, max_rows: int,
                  max_bytes: int | None = None) -> QueryResult:
        try:
            return await self.pool._run_on(self.conn, statement, max_rows, max_bytes,
                                           drain=True)
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


class QueryKiller:
    """The connection ``KILL QUERY`` goes over: one per node and database user, outside the
    pools, opened on first use and again after a failure.

    A timed-out statement must be stopped on the server, or it runs on holding a connection
    slot and locks. Borrowing a pooled connection for the KILL fails exactly when it matters
    most, with the pool saturated by slow statements. The same user is needed because no
    scope user has PROCESS or CONNECTION ADMIN: a user may only kill its own statements. The
    KILLs take turns on the connection; each is one short round trip.
    """

    def __init__(self, node: str, connect_args: dict[str, Any], timeout: float) -> None:
        self.node = node
        self._connect_args = connect_args
        self._timeout = timeout
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def kill_query(self, thread_id: int) -> bool:
        """Stop what ``thread_id`` is running; True when the server took the KILL (or the
        statement had ended already). Tries a second, new connection if the kept one died."""
        async with self._lock:
            for _ in range(2):
                try:
                    if self._conn is None:
                        self._conn = await asyncio.wait_for(
                            asyncmy.connect(**self._connect_args), self._timeout)
                    async with self._conn.cursor() as cursor:
                        await asyncio.wait_for(cursor.execute(f"KILL QUERY {int(thread_id)}"),
                                               self._timeout)
                    return True
                except MySQLError as error:
                    if _error_code(error) == NO_SUCH_THREAD:
                        return True
                    if not _is_connection_failure(error):
                        log.warning("KILL QUERY %d on %s refused: %s", thread_id, self.node,
                                    _error_message(error))
                        return False
                    self.close()  # it died since it was last used: once more, on a new one
                except (TimeoutError, OSError) as error:
                    self.close()
                    log.warning("KILL QUERY %d on %s: %s", thread_id, self.node,
                                _error_message(error) if not isinstance(error, TimeoutError)
                                else "timed out")
                except BaseException:  # cancelled mid-command: the protocol state is lost
                    self.close()
                    raise
            return False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class NodePool:
    """Lazily connected pools to one node, one per database user; a dead node costs a connect
    timeout, not a hang."""

    def __init__(self, address: NodeAddress, role: Role, config: ProxyConfig) -> None:
        self.address = address
        self.role = role
        self.name = address.name
        self._config = config
        self._credentials = {scope: config.db_credentials(scope) for scope in (*SCOPES, MONITOR)}
        self._pools: dict[str, Pool] = {}  # by database user
        self._killers: dict[str, QueryKiller] = {}  # by database user
        self._probe: Any = None  # the health monitor's own connection, outside the pools
        self.waiting = 0  # statements waiting for a pooled connection now
        self._base_args: dict[str, Any] = {
            "host": address.host, "port": address.port, "db": config.db_name or None,
            "autocommit": True, "connect_timeout": config.connect_timeout,
            "charset": "utf8mb4", "program_name": "sqlgate-proxy",
        }
        if config.db_tls_ca:
            self._base_args["ssl"] = db_tls_context(config.db_tls_ca)

    def connect_args(self, scope: str) -> dict[str, Any]:
        """What ``asyncmy.connect`` takes for this node as the user of ``scope`` (or
        ``monitor``)."""
        user, password = self._credentials[scope]
        return {**self._base_args, "user": user, "password": password}

    def user(self, scope: str) -> str:
        return self._credentials[scope][0]

    def _pool(self, scope: str) -> Pool:
        """The pool of the scope's database user, made on first use (it connects on demand:
        a node that is down costs only the requests that try it)."""
        user = self.user(scope)
        pool = self._pools.get(user)
        if pool is None:
            pool = Pool(minsize=0, maxsize=self._config.pool_max_size, pool_recycle=600,
                        **self.connect_args(scope))
            self._pools[user] = pool
        return pool

    def usage(self) -> tuple[int, int, int]:
        """Connections open, lent out (or being opened), and statements waiting for one, over
        every user's pool of this node: what the metrics show."""
        opened = lent = 0
        for pool in self._pools.values():
            size = pool.size
            opened += size
            lent += size - pool.freesize
        return opened, lent, self.waiting

    def _killer(self, user: str) -> QueryKiller:
        killer = self._killers.get(user)
        if killer is None:
            scope = next(scope for scope, (name, _) in self._credentials.items()
                         if name == user)
            killer = QueryKiller(self.name, self.connect_args(scope),
                                 self._config.connect_timeout)
            self._killers[user] = killer
        return killer

    async def close(self) -> None:
        self._close_probe()
        for killer in self._killers.values():
            killer.close()
        for pool in self._pools.values():
            pool.close()
        for pool in self._pools.values():
            await pool.wait_closed()

    async def drop_idle_connections(self) -> None:
        """After the node failed, forget connections that died with it: closed at once.

        Not asyncmy's ``Pool.clear()``, which says goodbye on each and waits for the TLS
        close to be answered: a node whose host is cut off never answers, and asyncio waits
        30 s for each of them, while the health check that marked the node down waits too and
        the Proxy learns of no new primary meanwhile."""
        for pool in list(self._pools.values()):
            async with pool._cond:  # asyncmy's pool: its free connections, under its lock
                while pool._free:
                    pool._free.popleft().close()
                pool._cond.notify()
        for killer in self._killers.values():
            killer.close()

    def abort_in_flight(self) -> int:
        """Cut every connection in use (statements running, transactions open): the node was
        replaced as the primary while unreachable, and what runs there waits on a host that
        may never answer. Each statement then fails at once as a lost connection (a write:
        outcome unknown; a transaction: rolled back). How many were cut."""
        aborted = 0
        for pool in self._pools.values():
            for conn in list(pool._used):  # asyncmy's pool: the connections handed out
                transport = conn._transport
                if transport is not None and not transport.is_closing():
                    transport.abort()
                    aborted += 1
        return aborted

    async def _acquire(self, scope: str) -> Any:
        pool = self._pool(scope)
        # One bound for connecting (a server that accepts but never greets included) and for
        # waiting on a saturated pool: either way the node cannot take the statement now.
        limit = self._config.connect_timeout
        self.waiting += 1
        try:
            conn = await asyncio.wait_for(pool.acquire(), limit)
        except TimeoutError:
            if pool.size >= pool.maxsize:
                raise NodeBusy(f"{self.name}: all {pool.maxsize} connections busy for "
                               f"{limit:g}s") from None
            raise NodeUnavailable(self.name, f"no connection within {limit:g}s",
                                  maybe_applied=False) from None
        except (OSError, MySQLError) as error:
            raise NodeUnavailable(self.name, _error_message(error),
                                  maybe_applied=False) from error
        except Exception as error:  # the driver's own failure while connecting: nothing sent
            raise _driver_failure(self.name, error, maybe_applied=False) from error
        finally:
            self.waiting -= 1
        if not getattr(conn, PREPARED_MARK, False):
            setattr(conn, USER_MARK, self.user(scope))
            limit_read_ahead(conn)  # a result cut at max_result_bytes is not read whole
            try:
                await asyncio.wait_for(session.prepare(conn), limit)
            except Exception as error:  # a connection failure or the driver's: nothing sent
                self._give_back(conn, keep=False)
                if not isinstance(error, TimeoutError | OSError | MySQLError):
                    raise _driver_failure(self.name, error, maybe_applied=False) from error
                raise NodeUnavailable(self.name, f"could not prepare a connection: "
                                      f"{_error_message(error)}", maybe_applied=False) from None
            setattr(conn, PREPARED_MARK, True)
        return conn

    def _give_back(self, conn: Any, keep: bool) -> None:
        if not keep:
            conn.close()  # unknown protocol or session state: never reuse
        self._pools[getattr(conn, USER_MARK)].release(conn)

    async def _clean(self, conn: Any, schema_changed: bool = False) -> bool:
        """Reset the session (see ``services.proxy.session``); False when that failed, or when the
        session's default schema was changed and there is none to go back to (a connection
        cannot be made to have no default schema again: it is closed instead)."""
        if schema_changed and not self._base_args["db"]:
            return False
        try:
            await asyncio.wait_for(session.reset(conn, self._base_args["db"]),
                                   self._config.connect_timeout)
        except Exception:  # whatever failed, the session is not known to be clean
            return False
        return True

    async def execute(self, statement: Statement, max_rows: int, *, scope: str,
                      max_bytes: int | None = None, reset: bool = False,
                      wait: Statement | None = None,
                      position: Statement | None = None) -> QueryResult:
        """Run one statement (autocommit) as the user of ``scope``, and fetch at most
        ``max_rows`` rows and ``max_bytes`` bytes of them (default ``max_result_bytes``).

        ``reset``: the statement may have left session state, so the connection is reset
        (or closed) before another request can have it. ``wait``: a statement answering 0
        once this node has applied a replication position, run first on the same connection
        (``NotCaughtUp`` otherwise). ``position``: a statement reading the replication
        position, run after a write; its answer goes in ``result.position``.
        """
        conn = await self._acquire(scope)
        keep = False
        try:
            if wait is not None:
                began = time.perf_counter()
                answer = await self._run_on(conn, wait, 1, None, drain=True)
                waited_ms = (time.perf_counter() - began) * 1000.0
                if not answer.rows or answer.rows[0][0] is None or int(answer.rows[0][0]) != 0:
                    keep = True
                    raise NotCaughtUp(self.name, waited_ms)
            else:
                waited_ms = None
            result = await self._run_on(conn, statement, max_rows, max_bytes, drain=False)
            result.waited_ms = waited_ms
            keep = not result.truncated  # rows left unread: closing is cheaper than draining
            if keep and session.in_transaction(conn):
                reset = True  # the reset rolls it back
                raise TransactionLeftOpen(f"{self.name}: the statement left a transaction open")
            reset = reset or session.autocommit_off(conn)
            if position is not None and keep:
                answer = await self._run_on(conn, position, 1, None, drain=True)
                result.position, result.replicated = read_position(answer)
            return result
        except SqlError:
            keep = True
            raise
        finally:
            if keep and reset:
                keep = await self._clean(conn)
            self._give_back(conn, keep)

    async def lease(self, scope: str) -> Lease:
        """A connection held across requests (a transaction), as the user of ``scope``; give
        it back with release()."""
        return Lease(self, await self._acquire(scope))

    async def _run_on(self, conn: Any, statement: Statement, max_rows: int,
                      max_bytes: int | None, *, drain: bool) -> QueryResult:
        """Run on ``conn``; any error but SqlError leaves the connection unusable."""
        if max_bytes is None:
            max_bytes = self._config.max_result_bytes
        try:
            cursor = conn.cursor(SSCursor)  # unbuffered: a huge result is cut, not loaded
            return await asyncio.wait_for(self._run(cursor, statement, max_rows, max_bytes,
                                                    drain), self._config.query_timeout)
        except TimeoutError:
            await self._kill_running_query(conn)
            raise QueryTimeout(
                f"statement exceeded {self._config.query_timeout:g}s on {self.name}") from None
        except (MySQLError, OSError) as error:
            if _is_connection_failure(error):  # the statement may have reached the server
                raise NodeUnavailable(self.name, _error_message(error),
                                      maybe_applied=True) from error
            raise SqlError(_error_code(error), _error_message(error)) from None
        except Exception as error:  # the driver's own failure mid-statement: state unknown
            raise _driver_failure(self.name, error, maybe_applied=True) from error

    @staticmethod
    async def _run(cursor: SSCursor, statement: Statement, max_rows: int, max_bytes: int,
                   drain: bool) -> QueryResult:
        """Rows are read one at a time and counted as they come: the cut happens before the
        row that would pass a limit is kept, so memory stays near ``max_bytes`` whatever the
        result's size."""
        await cursor.execute(statement.text, statement.args)
        if cursor.description is None:
            last_id = cursor.lastrowid
            return QueryResult([], [], cursor.rowcount, last_id or None, False)
        columns = [column[0] for column in cursor.description]
        fixed, measured = _measured_columns(cursor.description)
        rows: list[tuple[Any, ...]] = []
        size = 0
        truncated = False
        while not truncated:
            first = await cursor.fetchone()
            if first is None:
                break
            batch = [first, *parsed_rows(cursor)]
            for row in batch:
                row_size = fixed
                for index in measured:
                    row_size += _value_size(row[index])
                if len(rows) >= max_rows or size + row_size > max_bytes:
                    truncated = True
                    break
                rows.append(row)
                size += row_size
            del first, batch  # rows past the cut are not kept while the rest drains
        if drain or not truncated:
            await cursor.close()  # reads what is left, so the connection can go on
        return QueryResult(columns, rows, len(rows), None, truncated, size)

    async def _kill_running_query(self, conn: Any) -> None:
        """Stop the statement on the server too, so a timed-out query does not run on: over
        the connection reserved for that (see ``QueryKiller``), bounded in time."""
        user = getattr(conn, USER_MARK)
        thread_id = conn.thread_id()
        try:
            killed = await asyncio.wait_for(self._killer(user).kill_query(thread_id),
                                            2 * self._config.connect_timeout)
        except TimeoutError:
            killed = False
        if not killed:
            log.warning("could not stop statement %d of %s on %s: it may run on until the "
                        "server's own time limit", thread_id, user, self.name)

    async def probe(self, sql: str, args: tuple | None, timeout: float) -> list[dict[str, Any]]:
        """Run one statement of the health monitor on its own connection, outside the pool,
        as the monitor's user, so a pool saturated by slow statements does not look like a
        dead node.

        Raises SqlError when the server refused the statement (the node is up) and
        NodeUnavailable when it could not be reached or refused the login (whatever else
        works there, the monitor cannot tell: the node counts as down).
        """
        if self._probe is None:
            try:
                self._probe = await asyncio.wait_for(
                    asyncmy.connect(**self.connect_args(MONITOR)), timeout)
            except (TimeoutError, OSError, MySQLError) as error:
                reason = "timed out" if isinstance(error, TimeoutError) else _error_message(error)
                raise NodeUnavailable(self.name, reason, maybe_applied=False) from error
        try:
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
