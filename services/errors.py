"""The one error type both services answer with: a status and a JSON body naming the problem."""

from __future__ import annotations

from typing import Any


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
