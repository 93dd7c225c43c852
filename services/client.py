"""A small synchronous client of the sqlgate HTTP API, on one keep-alive connection.

For tools and tests that talk to a Gatekeeper (or a Proxy, without a key): every answer comes
back as ``Answer(status, json)``, errors included, so callers check statuses rather than catch
exceptions. Not thread-safe: one client per thread.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

API_KEY_HEADER = "X-API-Key"


@dataclass(frozen=True)
class Answer:
    status: int
    json: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == 200


class Client:
    def __init__(self, url: str, api_key: str = "", timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not an http:// URL: {url!r}")
        self._address = (parts.hostname, parts.port or 80)
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers[API_KEY_HEADER] = api_key
        self._timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def post(self, path: str, body: dict[str, Any] | None = None) -> Answer:
        return self._send("POST", path, json.dumps(body or {}).encode())

    def get(self, path: str) -> Answer:
        return self._send("GET", path, None)

    def query(self, sql: str, params: list | dict | None = None, **fields: Any) -> Answer:
        body = {"sql": sql, **fields}
        if params is not None:
            body["params"] = params
        return self.post("/query", body)

    def batch(self, statements: list[dict[str, Any]], **fields: Any) -> Answer:
        return self.post("/batch", {"statements": statements, **fields})

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, body: bytes | None) -> Answer:
        """One request. A failure closes the connection (the next request opens a new one)
        and is raised: a POST is never sent twice, since the first may have been applied."""
        if self._connection is None:
            self._connection = http.client.HTTPConnection(*self._address, timeout=self._timeout)
        try:
            self._connection.request(method, path, body=body, headers=self._headers)
            response = self._connection.getresponse()
            data = response.read()
        except BaseException:
            self.close()
            raise
        try:
            payload = json.loads(data) if data else {}
        except ValueError:
            payload = {"error": data[:200].decode(errors="replace")}
        return Answer(response.status, payload)
