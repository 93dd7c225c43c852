"""Keeping internal details out of public answers.

The Proxy's error messages come from the database and the network, which name addresses,
ports and database users (``Access denied for user 'app_read'@'10.0.0.4'``, ``Can't connect to
MySQL server on '10.0.0.5' (111)``). The Gatekeeper is the boundary: before an error answer
leaves, every string in it has those replaced, and the original goes to the Gatekeeper's log
with the request id, next to the Proxy's own log line.
"""

from __future__ import annotations

import json
import re
from typing import Any

REDACTED = "(internal)"
_PATTERNS = [
    # MySQL's account notation, with either quoting, and "user 'x'" alone.
    re.compile(r"""(['`"])[^'`"\s]*\1@(['`"])[^'`"\s]*\2"""),
    re.compile(r"""\b[Uu][Ss][Ee][Rr]\s+(['`"])[^'`"]*\1"""),
    # IPv4, with a port or not; IPv6 written with "::" or in full, bracketed or not.
    re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?\b"),
    re.compile(r"\[?\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b\]?(?::\d{1,5})?"),
    re.compile(r"\[?(?<![\w:])(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6})?::"
               r"(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6})?(?![\w:])\]?(?::\d{1,5})?"),
    # host:port (a name starting with a letter, so "12:30" stays).
    re.compile(r"\b[A-Za-z][A-Za-z0-9.-]*:\d{2,5}\b"),
    # "port 3306", "(port 5000)".
    re.compile(r"\bport\s+\d{1,5}\b", re.IGNORECASE),
]


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


def _redact_all(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redact_all(item) for item in value]
    if isinstance(value, dict):
        return {key: _redact_all(item) for key, item in value.items()}
    return value


def _redact_errors(value: Any) -> Any:
    """In a successful answer only the errors of its parts (a non-transactional batch's
    statements) are redacted: rows are the client's data, whatever they look like."""
    if isinstance(value, list):
        return [_redact_errors(item) for item in value]
    if isinstance(value, dict):
        if "error" in value:
            return {key: item if key in ("rows", "columns") else _redact_all(item)
                    for key, item in value.items()}
        return {key: _redact_errors(item) for key, item in value.items()}
    return value


def quiet_answer(status: int, body: bytes) -> bytes | None:
    """The answer's body with internal details redacted, or None when it has none to redact
    (the body goes out as it came). Raises ValueError for an error answer that is not a JSON
    object, which the Gatekeeper does not pass on."""
    if status < 400:
        if b'"error"' not in body:
            return None  # the common case, at the cost of one scan
        payload = json.loads(body)
        quiet = _redact_errors(payload)
    else:
        payload = json.loads(body)
        if not isinstance(payload, dict) or not isinstance(payload.get("error"), str):
            raise ValueError("an error answer without an 'error' message")
        quiet = _redact_all(payload)
    if quiet == payload:
        return None
    return json.dumps(quiet, separators=(",", ":")).encode()
