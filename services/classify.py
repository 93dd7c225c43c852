"""Read or write? Decided by parsing the statement with sqlglot's MySQL dialect.

Only a plain, single read may go to a replica. Everything else, including whatever the parser
cannot read, runs on the primary: sending a write to a replica fails (or worse, with a
misconfigured replica, succeeds), while sending a read to the primary only costs some load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

# sqlglot logs a warning for every statement it falls back to parsing as a Command (CALL, LOCK).
logging.getLogger("sqlglot").setLevel(logging.ERROR)

QueryType = Literal["read", "write"]

# Functions whose result or effect belongs to the primary (locks, this session's last insert,
# sequences), so a SELECT calling them must not be load-balanced.
PRIMARY_ONLY_FUNCTIONS = frozenset({
    "GET_LOCK", "RELEASE_LOCK", "RELEASE_ALL_LOCKS", "IS_FREE_LOCK", "IS_USED_LOCK",
    "LAST_INSERT_ID", "FOUND_ROWS", "ROW_COUNT",
    "NEXTVAL", "SETVAL", "LASTVAL",
})


class StatementError(ValueError):
    """The request is not one SQL statement (empty, or several)."""


@dataclass(frozen=True)
class Classification:
    query_type: QueryType
    reason: str

    @property
    def is_read(self) -> bool:
        return self.query_type == "read"


READ = Classification("read", "plain read")


# Statements are cached by their text; long ones are rare and would make the cache large.
CACHED_LENGTH = 2048


def classify(sql: str) -> Classification:
    """Classify one statement; raise StatementError for none or several."""
    return _classify_cached(sql) if len(sql) <= CACHED_LENGTH else _classify(sql)


@lru_cache(maxsize=8192)
def _classify_cached(sql: str) -> Classification:
    return _classify(sql)


def _classify(sql: str) -> Classification:
    try:
        statements = [s for s in sqlglot.parse(sql, read="mysql") if s is not None]
    except (SqlglotError, RecursionError):  # the parser recurses: deep nesting exhausts it
        if not sql.strip():
            raise StatementError("empty SQL statement") from None
        return Classification("write", "not understood by the parser: runs on the primary")
    if not statements:
        raise StatementError("empty SQL statement")
    if len(statements) > 1:
        raise StatementError(f"one statement per request, got {len(statements)}")
    return _classify_statement(statements[0])


def _classify_statement(statement: exp.Expression) -> Classification:
    if isinstance(statement, exp.Show):
        return READ
    if isinstance(statement, exp.Describe):
        # EXPLAIN/DESCRIBE of a table, or of a read, only inspects; EXPLAIN ANALYZE <write> runs it.
        target = statement.this
        if isinstance(target, exp.Table) or _classify_query(target).is_read:
            return READ
        return Classification("write", "EXPLAIN of a statement that is not a read")
    return _classify_query(statement)


def _classify_query(statement: exp.Expression | None) -> Classification:
    while isinstance(statement, (exp.Subquery, exp.Paren)):
        statement = statement.this
    if not isinstance(statement, exp.Query):
        return Classification("write", f"{_statement_keyword(statement)} statement")
    for select in statement.find_all(exp.Select):
        if select.args.get("locks"):
            return Classification("write", "locking read (FOR UPDATE / FOR SHARE)")
        if select.args.get("into"):
            return Classification("write", "SELECT ... INTO")
    for node in statement.find_all(exp.Func):
        name = node.name.upper() if isinstance(node, exp.Anonymous) else node.sql_name()
        if name in PRIMARY_ONLY_FUNCTIONS:
            return Classification("write", f"calls {name}()")
    for node in statement.find_all(exp.DML, exp.DDL):
        return Classification("write", f"contains {type(node).__name__.upper()}")
    return READ


def _statement_keyword(statement: exp.Expression | None) -> str:
    if isinstance(statement, exp.Command):  # statements sqlglot keeps as text: CALL, LOCK...
        return str(statement.this).upper()
    return type(statement).__name__.upper() if statement is not None else "UNKNOWN"
