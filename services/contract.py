"""The HTTP contract shared by both services: the query request and the JSON errors.

The Gatekeeper validates with the same code the Proxy uses, so a request the Gatekeeper lets
through is one the Proxy accepts, and bad input is refused at the edge.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

REQUEST_ID_HEADER = "X-Request-Id"
# Request ids are echoed in a response header, so only header-safe characters are accepted.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
DEFAULT_MODE = "direct"
FIELDS = frozenset({"sql", "mode", "request_id"})


class ApiError(Exception):
    """An error answered as ``{"error": message, ...details}`` with an HTTP status."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None,
                 **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.details = details

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, **self.details}


@dataclass(frozen=True)
class QueryRequest:
    sql: str
    mode: str
    request_id: str | None


def new_request_id() -> str:
    return uuid.uuid4().hex


def checked_request_id(value: str | None, source: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not REQUEST_ID_PATTERN.fullmatch(value):
        raise ApiError(400, f"{source} must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return value


def parse_query_request(body: bytes, modes: Collection[str]) -> QueryRequest:
    """Decode and check a ``POST /query`` body, or raise ApiError(400)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, f"malformed JSON body: {error}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}", allowed=sorted(FIELDS))
    sql = data.get("sql")
    if sql is None:
        raise ApiError(400, "missing field 'sql'")
    if not isinstance(sql, str):
        raise ApiError(400, "'sql' must be a string")
    if not sql.strip():
        raise ApiError(400, "'sql' is empty")
    mode = data.get("mode", DEFAULT_MODE)
    if not isinstance(mode, str):
        raise ApiError(400, "'mode' must be a string", modes=sorted(modes))
    if mode not in modes:
        raise ApiError(400, f"unknown mode {mode!r}", modes=sorted(modes))
    request_id = checked_request_id(data.get("request_id"), "'request_id'")
    return QueryRequest(sql=sql, mode=mode, request_id=request_id)
