"""The one error type both services answer with: a status and a JSON body naming the problem."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered as ``{"error": message, ...details}`` with an HTTP status.

    ``cause``: one fixed word for the metrics (``busy``, ``timeout``...), where the status
    alone does not tell refusals apart; never part of the answer."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None,
                 cause: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.cause = cause
        self.details = details

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, **self.details}


def internal_error() -> ApiError:
    """The answer to a request that failed on a bug rather than on its input or the database:
    503, not a bare 500, and the outcome said, since a write in it may have been applied. The
    traceback is in the service's log under the request id."""
    return ApiError(503, "internal error in the service: the request failed, and a write in it "
                    "may or may not have been applied (the service's log has the details under "
                    "the request id)", outcome="unknown", cause="internal")
