"""The statements the load tests send: one write table of their own, and point reads on it.

Locust and the report send the same statements, so their figures compare: SQL text with
``?`` placeholders and the values as ``params``, so each kind is one statement shape for the
Proxy's classifier. The table is created if missing and every write is a plain INSERT tagged
with its run, so a run can be repeated (and counted afterwards) without clashing with an
earlier one.
"""

from __future__ import annotations

import re
import secrets

# Every routing strategy the Proxy offers, re-exported for the load tests.
from services.contract import MODES as MODES

KINDS = ("write", "read")
DEFAULT_TABLE = "sakila.sqlgate_load"
_TABLE_NAME = re.compile(r"[A-Za-z0-9_]{1,64}(\.[A-Za-z0-9_]{1,64})?")


def checked_table(name: str) -> str:
    """A table name safe to put in SQL text (``schema.table`` or ``table``)."""
    if not _TABLE_NAME.fullmatch(name):
        raise ValueError(f"table must be [schema.]name of letters, digits and _: {name!r}")
    return name


def create_table_sql(table: str) -> str:
    return (f"CREATE TABLE IF NOT EXISTS {checked_table(table)} ("
            "id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, "
            "run_id VARCHAR(40) NOT NULL, mode VARCHAR(16) NOT NULL, seq INT UNSIGNED NOT NULL, "
            "payload VARCHAR(64) NOT NULL, "
            "created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), "
            "KEY run_mode (run_id, mode)) ENGINE=InnoDB")


def write_statement(table: str, run_id: str, mode: str, seq: int) -> dict:
    """``{"sql", "params"}`` of one tagged INSERT: values bound, one statement shape."""
    return {"sql": f"INSERT INTO {checked_table(table)} (run_id, mode, seq, payload) "
                   "VALUES (?, ?, ?, ?)",
            "params": [run_id, mode, int(seq), secrets.token_hex(16)]}


def read_statement(table: str, row_id: int | None, token: str | None = None) -> dict:
    """A point read of a row written earlier (after its write's token, when given, so a
    replica serves it only once it has that write); the newest row when none is known yet."""
    table = checked_table(table)
    if row_id is None:
        return {"sql": f"SELECT id, run_id, seq, payload FROM {table} ORDER BY id DESC LIMIT 1"}
    statement = {"sql": f"SELECT id, run_id, seq, payload FROM {table} WHERE id = ?",
                 "params": [int(row_id)]}
    if token:
        statement["after"] = token
    return statement


def new_run_id() -> str:
    return secrets.token_hex(8)
