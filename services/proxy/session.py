"""A pooled connection's session: made safe when it is opened, made clean before reuse.

Two protocol commands do the work, sent through asyncmy's packet layer because the driver has
no call for them:

* ``COM_SET_OPTION`` with ``MYSQL_OPTION_MULTI_STATEMENTS_OFF``: asyncmy always asks for
  multi-statement support when it connects, which would let one request's text carry several
  statements past the classifier. Turned off once per connection, the server itself refuses a
  second statement.
* ``COM_RESET_CONNECTION``: rolls back an open transaction, drops temporary tables, releases
  table and named locks, prepared statements and HANDLERs, forgets user variables and sets
  session variables back to the server's global values, on the same connection (a reset costs
  about one round trip, 90 us on loopback, a new connection 300 us). It keeps the default
  schema, which is selected again (a connection cannot go back to having none: the pool
  closes it instead). MariaDB restores the character set the handshake agreed; MySQL's
  documentation says it takes the global one, so ``SET NAMES`` follows on both, as the driver
  keeps encoding in utf8mb4.
"""

from __future__ import annotations

from typing import Any

from asyncmy.errors import OperationalError
from asyncmy.protocol import EOFPacketWrapper, OKPacketWrapper

COM_QUERY = 0x03
COM_SET_OPTION = 0x1B
COM_RESET_CONNECTION = 0x1F
MULTI_STATEMENTS_OFF = b"\x01\x00"  # MYSQL_OPTION_MULTI_STATEMENTS_OFF, 2 bytes little-endian
SERVER_STATUS_IN_TRANS = 0x0001
SERVER_STATUS_AUTOCOMMIT = 0x0002
CR_COMMANDS_OUT_OF_SYNC = 2014


async def prepare(conn: Any) -> None:
    """Turn multi-statements off: the server answers EOF (MariaDB, MySQL) or OK."""
    await conn._execute_command(COM_SET_OPTION, MULTI_STATEMENTS_OFF)
    await _read_ok_or_eof(conn)


async def reset(conn: Any, database: str | None) -> None:
    """Bring the session back to what a new connection has (see the module docstring)."""
    await conn._execute_command(COM_RESET_CONNECTION, b"")
    await _read_ok_or_eof(conn)
    await _query_ok(conn, f"SET NAMES {conn._charset}")
    if database:
        await conn.select_db(database)
    conn.autocommit_mode = True


def server_status(conn: Any) -> int:
    """The status the server sent with its last answer.

    asyncmy's ``conn.server_status`` is not it: a streamed result's final status is kept only
    on the result, and a status of 0 (autocommit off, no transaction) is never stored.
    """
    result = conn._result
    return result.server_status if result is not None else conn.server_status


def in_transaction(conn: Any) -> bool:
    """The server's own flag, sent with every OK/EOF: is a transaction open?"""
    return bool(server_status(conn) & SERVER_STATUS_IN_TRANS)


def autocommit_off(conn: Any) -> bool:
    return not server_status(conn) & SERVER_STATUS_AUTOCOMMIT


async def _query_ok(conn: Any, sql: str) -> None:
    await conn._execute_command(COM_QUERY, sql)
    await _read_ok_or_eof(conn)


async def _read_ok_or_eof(conn: Any) -> None:
    """Read the command's answer (an error packet raises) and keep the server status bits."""
    packet = await conn.read_packet()
    if packet.is_ok_packet():
        conn.server_status = OKPacketWrapper(packet).server_status
    elif packet.is_eof_packet():
        conn.server_status = EOFPacketWrapper(packet).server_status
    else:
        raise OperationalError(CR_COMMANDS_OUT_OF_SYNC, "unexpected answer to a command")
