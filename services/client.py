"""A small synchronous client of the sqlgate HTTP API, on one keep-alive connection.

For the tools and tests that talk to a Gatekeeper (or to a Proxy, without a key): the demo,
the consistency check, the bench and the tests. Every answer comes back as an ``Answer``,
errors included, so callers check statuses rather than catch exceptions; an answer that is not
JSON raises, since the API never sends one. Not thread-safe: one
client per thread. (The load generators keep their own: aiohttp for the report's concurrent
clients, Locust's FastHttpUser for Locust.)
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from services.contract import API_KEY_HEADER


@dataclass(frozen=True)
class Answer:
    status: int
    json: Any
    headers: Message = field(default_factory=Message, repr=False)  # case-insensitive names

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

    def post(self, path: str, body: dict[str, Any] | bytes | None = None,
             headers: dict[str, str] | None = None) -> Answer:
        return self.request("POST", path, {} if body is None else body, headers)

    def get(self, path: str) -> Answer:
        return self.request("GET", path)

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

    def request(self, method: str, path: str, body: dict[str, Any] | bytes | None = None,
                headers: dict[str, str] | None = None) -> Answer:
        """One request (a dict body is sent as JSON, bytes as they are). A failure closes
        the connection (the next request opens a new one) and is raised: a POST is never
        sent twice, since the first may have been applied."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        if self._connection is None:
            self._connection = http.client.HTTPConnection(*self._address, timeout=self._timeout)
        try:
            self._connection.request(method, path, body=data,
                                     headers={**self._headers, **(headers or {})})
            response = self._connection.getresponse()
            raw = response.read()
        except BaseException:
            self.close()
            raise
        try:
            payload = json.loads(raw)
        except ValueError:  # every answer of the API is JSON, errors included
            raise ValueError(f"{method} {path}: answer {response.status} is not JSON: "
                             f"{raw[:200]!r}") from None
        return Answer(response.status, payload, response.headers)


def request(url: str, body: dict[str, Any] | bytes | None = None,
            headers: dict[str, str] | None = None, method: str | None = None,
            timeout: float = 20.0) -> Answer:
    """One request to a full URL on a connection of its own (POST when there is a body)."""
    parts = urllib.parse.urlsplit(url)
    path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    with Client(f"{parts.scheme}://{parts.netloc}", timeout=timeout) as client:
        return client.request(method or ("GET" if body is None else "POST"), path, body, headers)
