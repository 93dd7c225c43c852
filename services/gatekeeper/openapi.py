"""The public API as an OpenAPI 3.1 document, served at ``GET /openapi.json``.

Built from ``services.contract`` (the field sets, modes, isolation levels, limits, id and token
patterns, the endpoint list) so that it cannot drift from what the services check: a field the
contract gains without a schema here fails at import, and the tests compare the two. Answers
are described as loosely as the services promise (extra fields allowed), errors as they always
are: an object with an ``error`` message.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from services.contract import (
    API_KEY_HEADER,
    BATCH_FIELDS,
    BATCH_STATEMENT_FIELDS,
    ENDPOINTS,
    ISOLATION_LEVELS,
    MAX_BATCH_STATEMENTS,
    MAX_TOKENS,
    MODES,
    QUERY_FIELDS,
    REQUEST_ID_HEADER,
    REQUEST_ID_PATTERN,
    SCOPES,
    TOKEN_PATTERN,
    TRANSACTION_FIELDS,
    TRANSACTION_ID_PATTERN,
)
from services.statements import TYPED_VALUES

VERSION = "1"


def _anchored(pattern: str) -> str:
    return f"^(?:{pattern})$"  # JSON Schema patterns match anywhere unless anchored


def _any_case(text: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in text)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


TOKEN = {"type": "string", "pattern": _anchored(TOKEN_PATTERN.pattern),
         "description": "a read-your-writes token, as a write's answer carries it"}
TRANSACTION_ID = {"type": "string", "pattern": _anchored(TRANSACTION_ID_PATTERN.pattern),
                  "description": "as POST /transactions answers it"}
REQUEST_ID = {"type": "string", "pattern": _anchored(REQUEST_ID_PATTERN.pattern)}

TYPED_VALUE_SCHEMAS = {
    "binary": {"type": "object", "required": ["type", "base64"], "additionalProperties": False,
               "properties": {"type": {"const": "binary"}, "base64": {"type": "string"}}},
    "decimal": {"type": "object", "required": ["type", "value"], "additionalProperties": False,
                "properties": {"type": {"const": "decimal"}, "value": {"type": "string"}}},
}

# One schema per request field; each request's properties are the contract's field set.
FIELD_SCHEMAS: dict[str, dict[str, Any]] = {
    "sql": {"type": "string", "minLength": 1, "description": "exactly one statement",
            "examples": ["SELECT COUNT(*) FROM sakila.actor"]},
    "params": _ref("Params"),
    "mode": {"enum": list(MODES), "default": MODES[0],
             "description": "where a read may run; writes always run on the primary"},
    "after": {"oneOf": [TOKEN, {"type": "array", "items": TOKEN, "minItems": 1,
                                "maxItems": MAX_TOKENS}]},
    "transaction_id": TRANSACTION_ID,
    "request_id": REQUEST_ID,
    "statements": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH_STATEMENTS,
                   "items": _ref("BatchStatement")},
    "transaction": {"type": "boolean", "default": True,
                    "description": "all or nothing on the primary (true), or one by one"},
    "isolation": {"type": "string", "description": "any case",
                  "pattern": "^(?:" + "|".join(map(_any_case, ISOLATION_LEVELS)) + ")$",
                  "examples": list(ISOLATION_LEVELS)},
    "read_only": {"type": "boolean", "default": False},
}


def _request(fields: frozenset[str], required: tuple[str, ...] = (),
             example: dict[str, Any] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False,
                              "properties": {name: FIELD_SCHEMAS[name] for name in sorted(fields)}}
    if required:
        schema["required"] = list(required)
    if example is not None:
        schema["examples"] = [example]
    return schema


def _schemas() -> dict[str, Any]:
    value = {"oneOf": [{"type": "null"}, {"type": "boolean"}, {"type": "integer"},
                       {"type": "number"}, {"type": "string"},
                       *(TYPED_VALUE_SCHEMAS[kind] for kind in TYPED_VALUES)]}
    result = {
        "type": "object",
        "properties": {
            "request_id": {"type": "string"}, "mode": {"type": "string"},
            "query_type": {"type": "string"}, "node": {"type": "string"},
            "node_role": {"type": "string"}, "attempts": {"type": "integer"},
            "columns": {"type": "array", "items": {"type": "string"}},
            "rows": {"type": "array", "items": {"type": "array"}},
            "rowcount": {"type": "integer"},
            "last_insert_id": {"type": ["integer", "null"]},
            "truncated": {"type": "boolean"}, "elapsed_ms": {"type": "number"},
            "token": {"type": ["string", "null"]},
        },
    }
    return {
        "Error": {
            "type": "object", "required": ["error"],
            "description": "every error, whatever its status",
            "properties": {
                "error": {"type": "string", "description": "what was wrong"},
                "request_id": {"type": "string"},
                "retry_after": {"type": "integer", "minimum": 1,
                                "description": "429: seconds until the key may call again"},
                "scope": {"enum": list(SCOPES),
                          "description": "403: the scope of the key that was refused"},
                "mysql_errno": {"type": "integer"},
                "failed_statement": {"type": "integer", "minimum": 0},
                "transaction_id": {"type": "string",
                                   "description": "the transaction the error is about"},
                "outcome": {"enum": ["unknown", "rolled back"],
                            "description": "unknown (503, 504): the write or commit may or may "
                            "not have been applied (its connection died after it was sent), "
                            "or it returned while semi-synchronous replication was off (on "
                            "the primary alone); rolled back (409): the transaction's Proxy "
                            "cannot be reached, nothing in it was committed"},
            },
        },
        "Value": value,
        "Params": {"oneOf": [{"type": "array", "items": _ref("Value")},
                             {"type": "object", "additionalProperties": _ref("Value")}],
                   "description": "an array for ? placeholders, an object for :name ones"},
        "BatchStatement": _request(BATCH_STATEMENT_FIELDS, ("sql",)),
        "QueryRequest": _request(QUERY_FIELDS, ("sql",), {"sql": "SELECT 1"}),
        "BatchRequest": _request(BATCH_FIELDS, ("statements",),
                                 {"statements": [{"sql": "SELECT 1"}], "transaction": False}),
        "TransactionRequest": _request(TRANSACTION_FIELDS, (), {"read_only": True}),
        "QueryResult": result,
        "BatchResult": {"type": "object", "required": ["results"],
                        "properties": {"results": {"type": "array", "items": {
                            "type": "object",
                            "description": "a statement's result, or with transaction "
                                           "false possibly {status, error}"}},
                                       "token": {"type": ["string", "null"]}}},
        "TransactionOpened": {"type": "object", "required": ["transaction_id"],
                              "properties": {"transaction_id": {"type": "string"},
                                             "node": {"type": "string"},
                                             "idle_timeout_s": {"type": "number"},
                                             "max_age_s": {"type": "number"}}},
        "TransactionEnded": {"type": "object", "required": ["status"],
                             "properties": {"transaction_id": {"type": "string"},
                                            "status": {"enum": ["committed", "rolled back"]},
                                            "statements": {"type": "integer"},
                                            "token": {"type": ["string", "null"]}}},
        "Health": {"type": "object", "required": ["service", "status"],
                   "properties": {"service": {"const": "gatekeeper"},
                                  "status": {"enum": ["ok", "unavailable", "draining"]}}},
    }


ERRORS = {
    "400": "malformed or invalid request, or a database error in the statement",
    "401": f"missing or wrong {API_KEY_HEADER}",
    "403": "beyond the key's scope, or refused by the database",
    "404": "unknown transaction",
    "409": "conflict: duplicate key, deadlock, a transaction that has ended (or whose Proxy "
           "cannot be reached)",
    "413": "body over the size cap",
    "429": "the key's rate limit, its share of open transactions, or its share of "
           "statements in flight (nothing of the request ran): retry after Retry-After "
           "seconds",
    "502": "the answer behind was unusable or too large",
    "503": "no node can serve now (or too many open transactions, the Proxy is lost, or the "
           "service is stopping)",
    "504": "the statement ran past the time limit (it is stopped on the server too)",
}


def _error(description: str, status: str) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {
        "application/json": {"schema": _ref("Error")}}}
    if status == "429":
        answer["headers"] = {"Retry-After": {"required": True, "schema": {
            "type": "string", "pattern": "^[1-9][0-9]*$"}}}
    return answer


def _operation(endpoint: str, body: str | None, answer: tuple[str, str], *,
               body_required: bool = True, path_id: bool = False) -> dict[str, Any]:
    status, schema = answer
    parameters: list[dict[str, Any]] = [
        {"in": "header", "name": REQUEST_ID_HEADER, "required": False, "schema": REQUEST_ID,
         "description": "the request's id (a body's request_id wins)"}]
    if path_id:
        parameters.insert(0, {"in": "path", "name": "id", "required": True,
                              "schema": TRANSACTION_ID})
    operation: dict[str, Any] = {
        "summary": ENDPOINTS[endpoint],
        "operationId": endpoint.split()[1].strip("/").replace("/{id}/", "_") or "index",
        "parameters": parameters,
        "responses": {status: {"description": "done", "content": {
            "application/json": {"schema": _ref(schema)}}},
            **{code: _error(text, code) for code, text in ERRORS.items()}},
    }
    if body is not None:
        operation["requestBody"] = {"required": body_required, "content": {
            "application/json": {"schema": _ref(body) if body != "empty" else {
                "type": "object", "maxProperties": 0}}}}
    return operation


def openapi_document() -> dict[str, Any]:
    paths = {
        "/query": {"post": _operation("POST /query", "QueryRequest", ("200", "QueryResult"))},
        "/batch": {"post": _operation("POST /batch", "BatchRequest", ("200", "BatchResult"))},
        "/transactions": {"post": _operation("POST /transactions", "TransactionRequest",
                                             ("201", "TransactionOpened"),
                                             body_required=False)},
        "/transactions/{id}/commit": {"post": _operation(
            "POST /transactions/{id}/commit", "empty", ("200", "TransactionEnded"),
            body_required=False, path_id=True)},
        "/transactions/{id}/rollback": {"post": _operation(
            "POST /transactions/{id}/rollback", "empty", ("200", "TransactionEnded"),
            body_required=False, path_id=True)},
        "/health": {"get": {
            "summary": ENDPOINTS["GET /health"], "operationId": "health", "security": [],
            "responses": {code: {"description": text, "content": {"application/json": {
                "schema": _ref("Health")}}} for code, text in
                (("200", "the service can serve"),
                 ("503", "it cannot, for now, or it is stopping (draining)"))}}},
    }
    documented = {f"{method.upper()} {path}" for path, item in paths.items() for method in item}
    assert documented == set(ENDPOINTS), f"documented {documented}, contract {set(ENDPOINTS)}"
    paths["/openapi.json"] = {"get": {
        "summary": "this document", "operationId": "openapi", "security": [],
        "responses": {"200": {"description": "OpenAPI 3.1", "content": {
            "application/json": {"schema": {"type": "object", "required": ["openapi"]}}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "sqlgate", "version": VERSION,
                 "description": "SQL over HTTPS in front of a replicated MySQL/MariaDB "
                                "cluster. Every answer is JSON; every error is "
                                '{"error": ...} with its status.'},
        "security": [{"apiKey": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header",
                                           "name": API_KEY_HEADER}},
            "schemas": _schemas(),
        },
    }


@cache
def openapi_bytes() -> bytes:
    return json.dumps(openapi_document(), indent=1).encode()
