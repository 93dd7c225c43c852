"""The HTTP contract shared by both services: requests, their checks and the JSON errors.

The Gatekeeper validates with the same code the Proxy uses, so a request the Gatekeeper lets
through is one the Proxy accepts, and bad input is refused at the edge. Nothing here imports
a database driver or the parser: the Gatekeeper stays light.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from services.errors import ApiError
from services.statements import Statement, parse_statement

__all__ = ["ApiError"]

REQUEST_ID_HEADER = "X-Request-Id"
API_KEY_HEADER = "X-API-Key"  # the Gatekeeper's credential
# What a key may do, weakest first: `read` runs reads only, `write` adds DML and transactions,
# `admin` adds DDL. The Gatekeeper tells the Proxy (which enforces it, and whose database user
# per scope enforces it again) the scope and the name of the key behind each request; the
# Proxy trusts these headers only because it accepts nobody but the Gatekeeper's certificate.
SCOPES = ("read", "write", "admin")
SCOPE_HEADER = "X-Sqlgate-Scope"
KEY_NAME_HEADER = "X-Sqlgate-Key"
# Request ids are echoed in a response header, so only header-safe characters are accepted.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
DEFAULT_MODE = "direct"
# The routing modes (services.proxy.routing has one strategy per name): named here, so that the
# Gatekeeper and the clients know them without importing the Proxy's database code.
MODES = ("direct", "random", "ping", "least")
MAX_BATCH_STATEMENTS = 100
# "<proxy instance>.<random>": the instance part lets a front route to the Proxy that holds
# the transaction; the random part (144 bits) makes ids unguessable.
TRANSACTION_ID_PATTERN = re.compile(r"([A-Za-z0-9-]{1,63})\.([A-Za-z0-9_-]{24})")
# A read-your-writes token as a write's answer carries it (services.proxy.tokens makes them).
TOKEN_PATTERN = re.compile(r"v1\.[A-Za-z0-9_-]{4,1400}\.[A-Za-z0-9_-]{22}")
MAX_TOKENS = 16
ISOLATION_LEVELS = ("READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE")

QUERY_FIELDS = frozenset({"sql", "params", "mode", "request_id", "transaction_id", "after"})
BATCH_FIELDS = frozenset({"statements", "mode", "transaction", "request_id", "transaction_id",
                          "after"})
BATCH_STATEMENT_FIELDS = frozenset({"sql", "params"})
TRANSACTION_FIELDS = frozenset({"isolation", "read_only", "request_id"})

# Every endpoint, for GET / and docs/api.md.
ENDPOINTS = {
    "POST /query": "run one statement: {sql, params?, mode?, after?, transaction_id?, "
                   "request_id?}; a write answers with a read-your-writes token",
    "POST /batch": "run up to 100 statements: {statements: [{sql, params?}], mode?, "
                   "transaction? (default true), after?, transaction_id?, request_id?}",
    "POST /transactions": "open a transaction on the primary: {isolation?, read_only?}; "
                          "answers 201 with transaction_id",
    "POST /transactions/{id}/commit": "commit it",
    "POST /transactions/{id}/rollback": "roll it back",
    "GET /health": "whether the service can serve",
}


@dataclass(frozen=True)
class QueryRequest:
    statement: Statement
    mode: str
    request_id: str | None
    transaction_id: str | None = None
    after: tuple[str, ...] = ()

    @property
    def sql(self) -> str:
        return self.statement.sql


@dataclass(frozen=True)
class BatchRequest:
    statements: tuple[Statement, ...]
    mode: str
    transaction: bool
    request_id: str | None
    transaction_id: str | None = None
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class TransactionRequest:
    isolation: str | None
    read_only: bool
    request_id: str | None


def new_request_id() -> str:
    return uuid.uuid4().hex


def checked_request_id(value: str | None, source: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not REQUEST_ID_PATTERN.fullmatch(value):
        raise ApiError(400, f"{source} must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return value


def checked_transaction_id(value: Any, source: str = "'transaction_id'") -> str:
    if not isinstance(value, str) or not TRANSACTION_ID_PATTERN.fullmatch(value):
        raise ApiError(400, f"{source} is not a transaction id (as POST /transactions "
                       "answers it)")
    return value


def _object(body: bytes, allowed: frozenset[str], empty_ok: bool = False) -> dict[str, Any]:
    if empty_ok and not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, f"malformed JSON body: {error}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}", allowed=sorted(allowed))
    return data


def _mode(data: dict[str, Any], modes: Collection[str]) -> str:
    mode = data.get("mode", DEFAULT_MODE)
    if not isinstance(mode, str):
        raise ApiError(400, "'mode' must be a string", modes=sorted(modes))
    if mode not in modes:
        raise ApiError(400, f"unknown mode {mode!r}", modes=sorted(modes))
    return mode


def _transaction_id(data: dict[str, Any]) -> str | None:
    value = data.get("transaction_id")
    return None if value is None else checked_transaction_id(value)


def _after(data: dict[str, Any]) -> tuple[str, ...]:
    """``after``: one token, or a list of them (a client that wrote several times)."""
    value = data.get("after")
    if value is None:
        return ()
    tokens = [value] if isinstance(value, str) else value
    if not isinstance(tokens, list) or not tokens or len(tokens) > MAX_TOKENS:
        raise ApiError(400, f"'after' must be a token or a list of 1 to {MAX_TOKENS} tokens, "
                       "as writes answer them in 'token'")
    for token in tokens:
        if not isinstance(token, str) or not TOKEN_PATTERN.fullmatch(token):
            raise ApiError(400, "'after' holds something that is not a token (send the "
                           "'token' of a write's answer, unchanged)")
    return tuple(tokens)


def parse_query_request(body: bytes, modes: Collection[str]) -> QueryRequest:
    """Decode and check a ``POST /query`` body, or raise ApiError(400)."""
    data = _object(body, QUERY_FIELDS)
    statement = parse_statement(data.get("sql"), data.get("params"))
    return QueryRequest(statement=statement, mode=_mode(data, modes),
                        request_id=checked_request_id(data.get("request_id"), "'request_id'"),
                        transaction_id=_transaction_id(data), after=_after(data))


def parse_batch_request(body: bytes, modes: Collection[str]) -> BatchRequest:
    """Decode and check a ``POST /batch`` body, or raise ApiError(400)."""
    data = _object(body, BATCH_FIELDS)
    items = data.get("statements")
    if not isinstance(items, list) or not items:
        raise ApiError(400, "'statements' must be a non-empty array of {sql, params}")
    if len(items) > MAX_BATCH_STATEMENTS:
        raise ApiError(400, f"at most {MAX_BATCH_STATEMENTS} statements per batch, got "
                       f"{len(items)}")
    statements = []
    for index, item in enumerate(items):
        where = f"statements[{index}]: "
        if not isinstance(item, dict):
            raise ApiError(400, f"{where}each statement is an object {{sql, params}}",
                           failed_statement=index)
        unknown = sorted(set(item) - BATCH_STATEMENT_FIELDS)
        if unknown:
            raise ApiError(400, f"{where}unknown field(s): {', '.join(unknown)}",
                           failed_statement=index)
        try:
            statements.append(parse_statement(item.get("sql"), item.get("params"), where))
        except ApiError as error:
            error.details.setdefault("failed_statement", index)
            raise
    transaction = data.get("transaction", True)
    if not isinstance(transaction, bool):
        raise ApiError(400, "'transaction' must be true or false")
    transaction_id = _transaction_id(data)
    if transaction_id is not None and not transaction:
        raise ApiError(400, "a batch inside a transaction (transaction_id) cannot have "
                       "'transaction': false")
    return BatchRequest(statements=tuple(statements), mode=_mode(data, modes),
                        transaction=transaction,
                        request_id=checked_request_id(data.get("request_id"), "'request_id'"),
                        transaction_id=transaction_id, after=_after(data))


def parse_transaction_request(body: bytes) -> TransactionRequest:
    """Decode and check a ``POST /transactions`` body (it may be empty), or raise ApiError."""
    data = _object(body, TRANSACTION_FIELDS, empty_ok=True)
    isolation = data.get("isolation")
    if isolation is not None:
        if not isinstance(isolation, str) or isolation.upper() not in ISOLATION_LEVELS:
            raise ApiError(400, f"unknown isolation {isolation!r}",
                           isolation_levels=list(ISOLATION_LEVELS))
        isolation = isolation.upper()
    read_only = data.get("read_only", False)
    if not isinstance(read_only, bool):
        raise ApiError(400, "'read_only' must be true or false")
    return TransactionRequest(isolation=isolation, read_only=read_only,
                              request_id=checked_request_id(data.get("request_id"),
                                                            "'request_id'"))
