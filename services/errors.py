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
