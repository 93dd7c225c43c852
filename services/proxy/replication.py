"""Replication positions and replica status: every MySQL/MariaDB difference the Proxy has.

Read-your-writes needs three things per flavour: the primary's position after a write (its
executed GTID set), a statement that makes a replica wait until it has applied a position,
and a way to merge positions from several writes. MariaDB writes a position as one
``domain-server-seqno`` per replication domain and waits with ``MASTER_GTID_WAIT``; MySQL
writes a GTID set (``uuid:1-5:7``, one entry per source) and waits with
``WAIT_FOR_EXECUTED_GTID_SET``. Both wait functions answer 0 once the position is reached.

No MySQL server runs where the tests run, so the MySQL side is covered by tests of the SQL
and the parsing here; keeping it in this one module keeps that coverage meaningful.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from services.statements import Statement


class PositionError(ValueError):
    """A position that is not one of this flavour's GTID positions."""


@dataclass(frozen=True)
class ReplicaStatus:
    """``SHOW REPLICA STATUS`` reduced to what routing needs, in one vocabulary."""

    io_running: bool
    sql_running: bool
    last_error: str | None
    seconds_behind: int | None  # the server's own figure: whole seconds, 0 while IO is down

    @classmethod
    def from_row(cls, row: dict[str, Any] | None) -> ReplicaStatus:
        """Both servers' column names (MySQL 8's ``Replica_``/``Source_``, MariaDB's
        ``Slave_``/``Master_``); no row at all means replication is not configured."""
        if row is None:
            return cls(False, False, "replication is not configured", None)

        def field(*names: str) -> Any:
            return next((row[name] for name in names if name in row), None)

        io = str(field("Replica_IO_Running", "Slave_IO_Running") or "").lower() == "yes"
        sql = str(field("Replica_SQL_Running", "Slave_SQL_Running") or "").lower() == "yes"
        errors = [str(field(name) or "").strip() for name in ("Last_IO_Error", "Last_SQL_Error")]
        behind = field("Seconds_Behind_Source", "Seconds_Behind_Master")
        return cls(io, sql, "; ".join(error for error in errors if error) or None,
                   None if behind is None else int(behind))

    @property
    def running(self) -> bool:
        return self.io_running and self.sql_running


class Flavour:
    """What differs between the servers; one instance per flavour."""

    name: ClassVar[str]
    position_variable: ClassVar[str]  # the executed GTID set, read on the primary
    wait_function: ClassVar[str]
    status_sql: ClassVar[str] = "SHOW REPLICA STATUS"
    # The global status table any user may read, and the primary side of semi-sync in it.
    status_table: ClassVar[str]
    semi_sync_status: ClassVar[str]
    semi_sync_clients: ClassVar[str]

    def _status(self, variable: str) -> str:
        return (f"(SELECT VARIABLE_VALUE FROM {self.status_table} "
                f"WHERE VARIABLE_NAME = '{variable}')")

    def position_statement(self) -> Statement:
        """After a write: the primary's position, and whether semi-sync was still on once the
        write returned (if it is, the write is on a replica too: docs/failover.md)."""
        return Statement.plain(f"SELECT @@GLOBAL.{self.position_variable}, "
                               f"{self._status(self.semi_sync_status)}")

    def role_sql(self, epoch_table: str | None) -> str:
        """What the health monitor reads on every node: writable or not, the epoch row (the
        promotion that made the current primary), and the primary side of semi-sync."""
        epoch = f"(SELECT epoch FROM {epoch_table} WHERE id = 1)" if epoch_table else "NULL"
        return (f"SELECT @@GLOBAL.read_only AS read_only, {epoch} AS epoch, "
                f"{self._status(self.semi_sync_status)} AS semi_sync, "
                f"{self._status(self.semi_sync_clients)} AS semi_sync_clients")

    @staticmethod
    def on(value: Any) -> bool | None:
        """A status variable's ON/OFF; None when the server does not have it."""
        return None if value is None else str(value).upper() == "ON"

    def wait_statement(self, position: str, timeout: float) -> Statement:
        """``SELECT <wait>(position, timeout)``: 0 once applied, else a timeout or NULL.

        The values are bound by the driver, as every parameter is."""
        self.parse(position)  # only a well-formed position reaches the server
        sql = f"SELECT {self.wait_function}(?, ?)"
        return Statement(sql, sql, f"SELECT {self.wait_function}(%s, %s)",
                         (position, round(max(timeout, 0.0), 3)))

    @staticmethod
    def wait_succeeded(value: Any) -> bool:
        return value is not None and int(value) == 0

    def parse(self, position: str) -> Any:
        raise NotImplementedError

    def merge(self, positions: list[str]) -> str:
        raise NotImplementedError


class MariaDB(Flavour):
    """``0-1-100,1-2-7``: the newest seqno per replication domain (strict mode keeps a
    domain's seqnos increasing, so the larger one covers the smaller)."""

    name = "mariadb"
    position_variable = "gtid_binlog_pos"
    wait_function = "MASTER_GTID_WAIT"
    status_table = "information_schema.GLOBAL_STATUS"
    semi_sync_status = "RPL_SEMI_SYNC_MASTER_STATUS"
    semi_sync_clients = "RPL_SEMI_SYNC_MASTER_CLIENTS"
    _GTID = re.compile(r"(\d{1,10})-(\d{1,10})-(\d{1,20})")

    def parse(self, position: str) -> dict[int, tuple[int, int]]:
        domains: dict[int, tuple[int, int]] = {}
        for item in filter(None, (part.strip() for part in position.split(","))):
            match = self._GTID.fullmatch(item)
            if match is None:
                raise PositionError(f"not a MariaDB GTID: {item[:40]!r}")
            domain, server, seqno = (int(group) for group in match.groups())
            if domain in domains and domains[domain][1] >= seqno:
                continue
            domains[domain] = (server, seqno)
        if not domains:
            raise PositionError("an empty position")
        return domains

    def merge(self, positions: list[str]) -> str:
        merged = self.parse(",".join(positions))  # parsing keeps the newest per domain
        return ",".join(f"{domain}-{server}-{seqno}"
                        for domain, (server, seqno) in sorted(merged.items()))


class MySQL(Flavour):
    """``uuid:1-5:7,uuid2:1-3``: a set of intervals per source; merging is their union."""

    name = "mysql"
    position_variable = "gtid_executed"
    wait_function = "WAIT_FOR_EXECUTED_GTID_SET"
    status_table = "performance_schema.global_status"
    semi_sync_status = "Rpl_semi_sync_source_status"
    semi_sync_clients = "Rpl_semi_sync_source_clients"
    _UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    _INTERVAL = re.compile(r"(\d{1,20})(?:-(\d{1,20}))?")

    def parse(self, position: str) -> dict[str, list[tuple[int, int]]]:
        sources: dict[str, list[tuple[int, int]]] = {}
        for item in filter(None, (part.strip() for part in position.split(","))):
            uuid, *intervals = item.lower().split(":")
            if not self._UUID.fullmatch(uuid) or not intervals:
                raise PositionError(f"not a MySQL GTID set: {item[:60]!r}")
            for interval in intervals:
                match = self._INTERVAL.fullmatch(interval)
                if match is None:
                    raise PositionError(f"not a GTID interval: {interval[:40]!r}")
                low = int(match.group(1))
                high = int(match.group(2) or low)
                if low < 1 or high < low:
                    raise PositionError(f"not a GTID interval: {interval[:40]!r}")
                sources.setdefault(uuid, []).append((low, high))
        if not sources:
            raise PositionError("an empty position")
        return {uuid: _union(intervals) for uuid, intervals in sources.items()}

    def merge(self, positions: list[str]) -> str:
        merged = self.parse(",".join(positions))  # parsing unites the intervals per source
        return ",".join(
            uuid + "".join(f":{low}" if low == high else f":{low}-{high}"
                           for low, high in intervals)
            for uuid, intervals in sorted(merged.items()))


def _union(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    joined: list[tuple[int, int]] = []
    for low, high in sorted(intervals):
        if joined and low <= joined[-1][1] + 1:
            joined[-1] = (joined[-1][0], max(joined[-1][1], high))
        else:
            joined.append((low, high))
    return joined


FLAVOURS: dict[str, Flavour] = {flavour.name: flavour for flavour in (MariaDB(), MySQL())}


def flavour_of(server_version: str) -> Flavour:
    """The flavour from the server's version string (``10.11.6-MariaDB-0+deb12u1``)."""
    return FLAVOURS["mariadb" if "mariadb" in server_version.lower() else "mysql"]
