"""Who may run what: the scope a request carries, checked against each statement's class.

The Gatekeeper names, in headers, the scope of the key behind each request and the key's name
(never its secret). The Proxy trusts those headers only because it accepts no client but the
Gatekeeper's certificate; a request without the scope header gets ``default_scope``. Every
statement is checked before anything runs (a batch is refused whole), and the database checks
again: each scope connects as its own database user.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from services.contract import KEY_NAME_HEADER, SCOPE_HEADER, SCOPES, ApiError
from services.proxy.classify import Classification, Kind

RANKS = {scope: rank for rank, scope in enumerate(SCOPES)}
# Key names appear in log lines and in messages, quoted: no quotes, no control characters.
KEY_NAME_PATTERN = re.compile(r"[A-Za-z0-9 ._:@/+=-]{1,128}")
# What a refused statement is, by kind, to name it in the refusal.
WHAT = {
    Kind.READ: "this statement", Kind.WRITE: "writes", Kind.SESSION: "this session statement",
    Kind.TRANSACTION: "transaction statements", Kind.DDL: "schema changes",
    Kind.OTHER: "statements the proxy cannot see into", Kind.ACCOUNT: "this statement",
    Kind.CONNECTION: "this statement",
}


@dataclass(frozen=True)
class Caller:
    """A request's scope and, when the Gatekeeper named it, the key's name."""

    scope: str
    key: str | None = None

    def allows(self, scope: str) -> bool:
        return RANKS[self.scope] >= RANKS[scope]

    def within(self, scope: str) -> Caller:
        """This caller limited to ``scope``: inside a transaction, the weaker of the request's
        scope and the one the transaction was opened with."""
        return self if RANKS[self.scope] <= RANKS[scope] else Caller(scope, self.key)

    @property
    def who(self) -> str:
        return f"the key '{self.key}'" if self.key else "this request"

    def refuse(self, needed: str, what: str) -> ApiError:
        return ApiError(403, f"{self.who} has scope '{self.scope}', which does not allow "
                        f"{what}", scope=self.scope, required_scope=needed)

    def check(self, classification: Classification) -> None:
        """Raise the 403 naming the scope when the statement needs more than it."""
        needed = classification.scope
        if not self.allows(needed):
            raise self.refuse(needed, f"{WHAT[classification.kind]} "
                              f"({classification.reason})")

    def check_transaction(self, what: str) -> None:
        """Interactive transactions and atomic batches hold a primary connection and locks:
        they need ``write``."""
        if not self.allows("write"):
            raise self.refuse("write", what)


def caller_from_headers(headers: Mapping[str, str], default_scope: str) -> Caller:
    """The caller as the headers say, or a 400 naming the header that is wrong."""
    scope = headers.get(SCOPE_HEADER)
    if scope is None:
        scope = default_scope
    elif scope not in RANKS:
        raise ApiError(400, f"header {SCOPE_HEADER} must be one of {', '.join(SCOPES)}",
                       scopes=list(SCOPES))
    key = headers.get(KEY_NAME_HEADER)
    if key is not None and not KEY_NAME_PATTERN.fullmatch(key):
        raise ApiError(400, f"header {KEY_NAME_HEADER} must be 1-128 characters of "
                       "A-Z a-z 0-9, space and . _ : @ / + = -")
    return Caller(scope, key)
