"""A small synchronous client of the sqlgate HTTP API, on one keep-alive connection.

For the tools and tests that talk to a Gatekeeper (or to a Proxy, without a key): the demo,
the consistency check, the bench and the tests. Every answer comes back as an ``Answer``,
errors included, so callers check statuses rather than catch exceptions; an answer that is not
JSON raises, since the API never sends one. Not thread-safe: one
client per thread. (The load generators keep their own: aiohttp for the report's concurrent
clients, Locust's FastHttpUser for Locust.)

``https://`` URLs are verified: against the CA file of ``TlsFiles`` (the cluster's CA) when
given, else the system's trust store (a public certificate). A client certificate is only for
talking to a Proxy directly, which accepts nobody without one. ``http://`` stays for plain
development set-ups.
"""

from __future__ import annotations

import http.client
import json
import select
import ssl
import urllib.parse
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from services.contract import API_KEY_HEADER


@dataclass(frozen=True)
class TlsFiles:
    """What a client needs for an HTTPS service: the CA to verify it with (empty: the system's
    trust store) and, for a service that asks for one, a client certificate and its key."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    def context(self) -> ssl.SSLContext:
        """A client context that checks the server's certificate and name."""
        context = ssl.create_default_context(cafile=self.ca_file or None)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file or None)
        return context


@dataclass(frozen=True)
class Answer:
    status: int
    json: Any
    headers: Message = field(default_factory=Message, repr=False)  # case-insensitive names

    @property
    def ok(self) -> bool:
        return self.status == 200


class Client:
    """``headers`` go with every request (a request's own win over them)."""

    def __init__(self, url: str, api_key: str = "", timeout: float = 30.0,
                 tls: TlsFiles | None = None, headers: dict[str, str] | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {url!r}")
        if tls is not None and parts.scheme != "https":
            raise ValueError(f"TLS files given for a plain http:// URL: {url!r}")
        self._https = parts.scheme == "https"
        self._context = (tls or TlsFiles()).context() if self._https else None
        self._address = (parts.hostname, parts.port or (443 if self._https else 80))
        self._headers = {"Content-Type": "application/json", **(headers or {})}
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
        if self._connection is not None and _closed_by_peer(self._connection):
            self.close()  # nothing was sent on it: a new connection is safe
        if self._connection is None:
            self._connection = (
                http.client.HTTPSConnection(*self._address, timeout=self._timeout,
                                            context=self._context) if self._https
                else http.client.HTTPConnection(*self._address, timeout=self._timeout))
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


def _closed_by_peer(connection: http.client.HTTPConnection) -> bool:
    """Whether the server (or a balancer in front of it) closed a kept-alive connection while
    it was idle: a closed socket reads as ready, and an idle one has nothing else to say. A
    request is then sent on a new connection rather than lost on the old one (urllib3 does the
    same before reusing a pooled connection)."""
    sock = connection.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def request(url: str, body: dict[str, Any] | bytes | None = None,
            headers: dict[str, str] | None = None, method: str | None = None,
            timeout: float = 20.0, tls: TlsFiles | None = None) -> Answer:
    """One request to a full URL on a connection of its own (POST when there is a body)."""
    parts = urllib.parse.urlsplit(url)
    path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    with Client(f"{parts.scheme}://{parts.netloc}", timeout=timeout, tls=tls) as client:
        return client.request(method or ("GET" if body is None else "POST"), path, body, headers)
