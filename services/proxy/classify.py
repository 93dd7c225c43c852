"""What a statement is, decided by its leading keywords and sqlglot's MySQL parser.

Two questions are answered per statement:

* **Where may it run?** Only a plain, single read may go to a replica. Everything else,
  including whatever the parser cannot read, runs on the primary: sending a write to a
  replica fails (or worse, with a misconfigured replica, succeeds), while sending a read to
  the primary only costs some load.
* **What does it leave behind on its connection?** Pooled connections serve one client after
  another, so a statement whose purpose is session state (``SET``, ``USE``, a lone ``BEGIN``,
  ``LOCK TABLES``, ``GET_LOCK``, a temporary table...) would leak into other clients' requests.
  Those are refused outside a transaction, and any connection that ran more than a plain read
  or plain DML is reset before it is reused.

Session statements are recognised by their leading keywords first, because sqlglot cannot
parse several of them (``XA``, ``HANDLER``, ``DO``, ``RELEASE SAVEPOINT``, ``LOCK TABLE``) and
because the keyword is what the server itself dispatches on.
"""

from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass
from functools import lru_cache

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from services import sqltext

# sqlglot logs a warning for every statement it falls back to parsing as a Command (CALL, LOCK).
logging.getLogger("sqlglot").setLevel(logging.ERROR)

# Functions whose result or effect belongs to the primary (this session's last insert,
# sequences, lock inspection), so a SELECT calling them must not be load-balanced.
PRIMARY_ONLY_FUNCTIONS = frozenset({
    "IS_FREE_LOCK", "IS_USED_LOCK", "LAST_INSERT_ID", "FOUND_ROWS", "ROW_COUNT",
    "NEXTVAL", "SETVAL", "LASTVAL",
})
# Session variables the Proxy relies on to bind parameters and decode answers.
CONNECTION_VARIABLES = frozenset({
    "character_set_client", "character_set_connection", "character_set_results",
    "collation_connection", "character_set_database", "collation_database",
})
LEXICAL_SQL_MODES = ("NO_BACKSLASH_ESCAPES", "ANSI_QUOTES", "ANSI")
# Functions that take or drop a named lock held by the session until it ends.
LOCK_FUNCTIONS = frozenset({"GET_LOCK", "RELEASE_LOCK", "RELEASE_ALL_LOCKS"})


class Kind(enum.Enum):
    READ = "read"              # may run on a replica
    WRITE = "write"            # plain DML (or a read that belongs to the primary)
    DDL = "ddl"                # schema change: commits implicitly, so never inside a transaction
    SESSION = "session"        # sets session state: only inside a transaction
    TRANSACTION = "transaction"  # BEGIN/COMMIT/ROLLBACK/XA: the transaction API does this
    ACCOUNT = "account"        # passwords, users, grants, others' sessions: never through it
    CONNECTION = "connection"  # character set, quoting rules: the Proxy's own, never changed
    OTHER = "other"            # CALL, DO, admin and unparsed statements: primary, then reset


class StatementError(ValueError):
    """The request is not one acceptable SQL statement (empty, several, executable comment)."""


@dataclass(frozen=True)
class Classification:
    kind: Kind
    reason: str
    commits_implicitly: bool = False  # the server commits an open transaction first
    sets_schema: bool = False  # USE: a reset keeps the default schema, so it needs more
    savepoint: bool = False  # SAVEPOINT, ROLLBACK TO, RELEASE: would meddle with a batch's own
    needs: str = ""  # the weakest scope that may run it, when not the kind's (see ``scope``)

    @property
    def is_read(self) -> bool:
        return self.kind is Kind.READ

    @property
    def scope(self) -> str:
        """The weakest request scope that may run the statement (services.contract.SCOPES).

        Reads need ``read``; plain DML and the session statements that only make sense inside
        a transaction need ``write``; schema changes need ``admin``, and so does whatever the
        Proxy cannot see into (CALL, DO, unparsed statements), which may do anything.
        """
        return self.needs or _KIND_SCOPES[self.kind]

    @property
    def query_type(self) -> str:
        """``read`` or ``write``, as the answer reports it."""
        return "read" if self.kind is Kind.READ else "write"

    @property
    def leaves_state(self) -> bool:
        """True when the connection must be reset before another request uses it."""
        return self.kind not in (Kind.READ, Kind.WRITE)


_KIND_SCOPES = {
    Kind.READ: "read", Kind.WRITE: "write", Kind.SESSION: "write", Kind.TRANSACTION: "write",
    Kind.DDL: "admin", Kind.OTHER: "admin", Kind.ACCOUNT: "admin", Kind.CONNECTION: "admin",
}
READ = Classification(Kind.READ, "plain read")
WRITE = Classification(Kind.WRITE, "plain write")

# Leading comments, white space and opening parentheses, as MySQL's lexer skips them.
_LEADING = re.compile(r"(?:\s+|\(|#[^\n]*|--(?:[\s\x00-\x1f][^\n]*)?(?=\n|$)|/\*.*?\*/)*", re.S)
_WORDS = re.compile(r"([A-Za-z_]+)" + r"(?:\s+([A-Za-z_]+))?" * 3)

_TRANSACTION_WORDS = frozenset({"BEGIN", "START", "COMMIT", "ROLLBACK", "XA"})
_SESSION_WORDS = {
    "HANDLER": "HANDLER keeps an open table cursor",
    "PREPARE": "PREPARE keeps a named prepared statement",
    "EXECUTE": "EXECUTE runs a named prepared statement",
    "DEALLOCATE": "DEALLOCATE PREPARE drops a named prepared statement",
    "SAVEPOINT": "SAVEPOINT marks a point in a transaction",
    "RELEASE": "RELEASE SAVEPOINT ends a savepoint",
}
_ACCOUNT_STATEMENTS = (("SET", "PASSWORD"), ("ALTER", "USER"), ("CREATE", "USER"),
                       ("DROP", "USER"), ("RENAME", "USER"), ("GRANT",), ("REVOKE",),
                       ("CREATE", "ROLE"), ("DROP", "ROLE"), ("SET", "ROLE"),
                       ("SET", "DEFAULT", "ROLE"))
# Clients of one scope share its database user, and a user sees and may end its own sessions
# and read its own account: these would show one client the others' statements, end them, or
# hand out the account's password hash.
_PRIVATE_STATEMENTS = {
    ("SHOW", "GRANTS"): "SHOW GRANTS shows the database account and its password hash",
    ("SHOW", "CREATE", "USER"): "SHOW CREATE USER shows the database account",
    ("SHOW", "PROCESSLIST"): "SHOW PROCESSLIST shows other clients' statements",
    ("SHOW", "FULL", "PROCESSLIST"): "SHOW PROCESSLIST shows other clients' statements",
    ("KILL",): "KILL ends other clients' statements",
}
_DML_WORDS = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE"})
_DDL_WORDS = frozenset({"CREATE", "ALTER", "DROP", "RENAME", "TRUNCATE"})
# sqlglot's Insert also derives from its DDL class, so schema changes are named one by one.
_DDL_TYPES = (exp.Create, exp.Drop, exp.Alter, exp.TruncateTable)

# Statements are cached by their text; long ones are rare and would make the cache large.
CACHED_LENGTH = 2048


def classify(sql: str) -> Classification:
    """Classify one statement; raise StatementError for none, several, or a hidden one.

    ``sql`` is the statement text with ``?`` placeholders (named ones already turned into
    ``?``), so the cache holds one entry per statement shape, whatever the values.
    """
    return _classify_cached(sql) if len(sql) <= CACHED_LENGTH else _classify(sql)


@lru_cache(maxsize=8192)
def _classify_cached(sql: str) -> Classification:
    return _classify(sql)


def leading_words(sql: str) -> tuple[str, ...]:
    """The first (up to four) keywords, upper case, after comments and parentheses."""
    start = _LEADING.match(sql).end()
    match = _WORDS.match(sql, start)
    return tuple(word.upper() for word in match.groups() if word) if match else ()


def _classify(sql: str) -> Classification:
    if sqltext.has_executable_comment(sql):
        raise StatementError(
            "executable comments (/*! ... */, /*M! ... */) are not accepted: the server runs "
            "their content, so they could hide a statement; write it as plain SQL (a '--' "
            "right after a number's exponent, as in 1e--, is refused too: MySQL and MariaDB "
            "read it differently)")
    words = leading_words(sql)
    by_keyword = _classify_by_keyword(words)
    try:
        statements = [s for s in sqlglot.parse(sql, read="mysql") if s is not None]
    except (SqlglotError, RecursionError):  # the parser recurses: deep nesting exhausts it
        if not words:
            raise StatementError("empty SQL statement") from None
        return by_keyword or Classification(
            Kind.OTHER, "not understood by the parser: runs on the primary")
    if not statements:
        raise StatementError("empty SQL statement")
    if len(statements) > 1:
        raise StatementError(f"one statement per request, got {len(statements)}")
    return by_keyword or _classify_statement(statements[0], words[0] if words else "")


def _classify_by_keyword(words: tuple[str, ...]) -> Classification | None:
    if not words:
        return None
    first = words[0]
    for prefix in _ACCOUNT_STATEMENTS:
        if words[:len(prefix)] == prefix:
            return Classification(Kind.ACCOUNT, f"{' '.join(prefix)} manages accounts")
    for prefix, reason in _PRIVATE_STATEMENTS.items():
        if words[:len(prefix)] == prefix:
            return Classification(Kind.ACCOUNT, reason)
    if first in _TRANSACTION_WORDS:
        if first == "ROLLBACK" and "TO" in words[1:]:
            return Classification(Kind.SESSION, "ROLLBACK TO SAVEPOINT", savepoint=True)
        return Classification(Kind.TRANSACTION, f"{first} controls a transaction")
    if first == "SET":
        if len(words) > 1 and words[1] == "STATEMENT":  # MariaDB: SET STATEMENT ... FOR stmt
            return Classification(Kind.OTHER, "SET STATEMENT ... FOR runs another statement")
        if len(words) > 1 and words[1] == "TRANSACTION":
            return Classification(Kind.SESSION, "SET TRANSACTION sets the next transaction's "
                                  "characteristics")
        return None  # parsed below, to look at the variables it sets
    if first in ("LOCK", "UNLOCK"):
        return Classification(Kind.SESSION, f"{first} TABLES changes the session's table locks",
                              commits_implicitly=True, needs="admin")
    if first == "USE":
        return Classification(Kind.SESSION, "USE changes the default schema", sets_schema=True)
    if first in ("SAVEPOINT", "RELEASE"):
        return Classification(Kind.SESSION, _SESSION_WORDS[first], savepoint=True)
    if first in _SESSION_WORDS:
        return Classification(Kind.SESSION, _SESSION_WORDS[first])
    if first == "DROP" and len(words) > 1 and words[1] in ("TEMPORARY", "PREPARE"):
        return Classification(Kind.SESSION, f"DROP {words[1]} changes session state")
    if first == "CREATE" and "TEMPORARY" in words[1:]:
        return Classification(Kind.SESSION, "CREATE TEMPORARY TABLE lives as long as the "
                              "session", needs="admin")
    if first in ("DO", "CALL"):
        return Classification(Kind.OTHER, f"{first} may do anything: runs on the primary")
    return None


def _classify_statement(statement: exp.Expression, keyword: str) -> Classification:
    """``keyword``: the statement's first word, to name it in reasons."""
    if isinstance(statement, exp.Set):
        return _classify_set(statement)
    if isinstance(statement, exp.Show):
        return READ
    if isinstance(statement, exp.Describe):
        # EXPLAIN/DESCRIBE of a table, or of a read, only inspects; EXPLAIN ANALYZE <write> runs it.
        target = statement.this
        if isinstance(target, exp.Table) or _classify_query(target).is_read:
            return READ
        return Classification(Kind.WRITE, "EXPLAIN of a statement that is not a read")
    if isinstance(statement, exp.DML) or (
            isinstance(statement, exp.Command) and str(statement.this).upper() in _DML_WORDS):
        return _session_effects(statement) or WRITE
    if isinstance(statement, _DDL_TYPES) or (
            isinstance(statement, exp.Command) and str(statement.this).upper() in _DDL_WORDS):
        return Classification(Kind.DDL, f"{keyword} changes the schema",
                              commits_implicitly=True)
    return _classify_query(statement, keyword)


def _classify_query(statement: exp.Expression | None, keyword: str = "") -> Classification:
    while isinstance(statement, (exp.Subquery, exp.Paren)):
        statement = statement.this
    if not isinstance(statement, exp.Query):
        return Classification(Kind.OTHER, f"{keyword or 'this'} statement: runs on the primary")
    effect = _session_effects(statement)
    if effect is not None:
        return effect
    for table in statement.find_all(exp.Table):
        if table.name.lower() == "processlist" and table.db.lower() in ("", "information_schema"):
            return Classification(Kind.ACCOUNT, "information_schema.PROCESSLIST shows other "
                                  "clients' statements")
    for select in statement.find_all(exp.Select):
        if select.args.get("locks"):
            return Classification(Kind.WRITE, "locking read (FOR UPDATE / FOR SHARE)")
        if select.args.get("into"):
            return Classification(Kind.WRITE, "SELECT ... INTO")
    for node in statement.find_all(exp.Func):
        name = _function_name(node)
        if name in PRIMARY_ONLY_FUNCTIONS:  # a read, though one only the primary answers
            return Classification(Kind.WRITE, f"calls {name}()", needs="read")
    for node in statement.find_all(exp.DML, exp.DDL):
        return Classification(Kind.WRITE, f"contains {type(node).__name__.upper()}")
    return READ


def _classify_set(statement: exp.Set) -> Classification:
    """SET is session state; some settings would also break how values are bound and decoded.

    Parameters are spliced in where ``services.sqltext`` finds placeholders, which agrees with
    the server's lexer only under utf8mb4 and without NO_BACKSLASH_ESCAPES or ANSI_QUOTES; the
    answers are decoded as utf8mb4. Those settings are refused even inside a transaction.
    """
    for item in statement.expressions:
        kind = str(item.args.get("kind") or "").upper()
        if kind in ("NAMES", "CHARACTER SET", "CHARSET"):
            return Classification(Kind.CONNECTION, f"SET {kind} changes the connection's "
                                  "character set")
        target = item.this
        if isinstance(target, exp.EQ):
            name = target.this.name.lower()
            if name in ("autocommit", "completion_type"):
                return Classification(Kind.TRANSACTION, f"SET {name} controls transactions")
            if name in CONNECTION_VARIABLES:
                return Classification(Kind.CONNECTION, f"SET {name} changes how the proxy "
                                      "encodes and decodes")
            if name == "sql_mode":
                value = target.expression
                if not (isinstance(value, exp.Literal) and value.is_string) or any(
                        mode in value.this.upper() for mode in LEXICAL_SQL_MODES):
                    return Classification(Kind.CONNECTION, "SET sql_mode may change how "
                                          "quotes and backslashes are read: only a literal "
                                          "without NO_BACKSLASH_ESCAPES or ANSI_QUOTES")
    return Classification(Kind.SESSION, "SET changes session or user variables")


def _session_effects(statement: exp.Expression) -> Classification | None:
    """Session state set from inside a query or DML: user variables and named locks."""
    for node in statement.find_all(exp.PropertyEQ):
        if isinstance(node.this, exp.Parameter):
            return Classification(Kind.SESSION, "assigns a user variable (@name := ...)")
    for into in statement.find_all(exp.Into):
        if into.find(exp.Parameter):
            return Classification(Kind.SESSION, "SELECT ... INTO @variable sets a user variable")
    for node in statement.find_all(exp.Func):
        name = _function_name(node)
        if name in LOCK_FUNCTIONS:
            return Classification(Kind.SESSION, f"{name}() holds a named lock for the session")
    return None


def _function_name(node: exp.Func) -> str:
    return node.name.upper() if isinstance(node, exp.Anonymous) else node.sql_name()
