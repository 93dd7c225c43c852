"""Forwarding to the Proxy over a pool of keep-alive connections, with mutual TLS.

A new TCP connection per forwarded request halved the throughput of the whole chain (930
against 2,060 req/s measured with wrk), so one aiohttp session is shared by all requests; with
TLS that also means one handshake per pooled connection, not per request.

The Proxy is reached by address, but its certificate must carry the name ``proxy_tls_name``
(``proxy``), and the Gatekeeper shows its own client certificate: the Proxy trusts the scope and
key headers only from a peer holding one. An answer is read up to ``max_answer_bytes`` and no
further. What goes wrong on the way is answered in general terms (the client needs to know that
the service failed, not where); the detail goes to the log with the request id.

Failures come in two kinds, because the request's fate differs (``services.gatekeeper.proxies``
acts on them): ``ProxyUnreachable`` when no connection could be made (refused, reset or
failed TLS while connecting, or no connection within ``CONNECT_TIMEOUT``), so nothing of the
request left; ``ProxyLost`` once a connection took it (a reset, a close or a timeout before
the whole answer came): the Proxy may have run it, and a write in it may or may not be done.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass

import aiohttp

from services.contract import KEY_NAME_HEADER, REQUEST_ID_HEADER, SCOPE_HEADER, ApiError
from services.gatekeeper.quiet import quiet_answer

log = logging.getLogger(__name__)

# A TCP and TLS connection to a Proxy on the internal network takes milliseconds; one not made
# in this time is a Proxy out of reach (a lost SYN is sent again after 1 s, then 2 s more).
CONNECT_TIMEOUT = 3.0


class ProxyUnreachable(ApiError):
    """No connection to the Proxy: nothing of the request was sent, so it may go elsewhere.
    ``timed_out``: none within the connect timeout (rather than refused or reset);
    ``detail``: what failed, for the log only."""

    def __init__(self, timed_out: bool = False, detail: str = "") -> None:
        super().__init__(503, "the proxy is unreachable", cause="unreachable")
        self.timed_out = timed_out
        self.detail = detail


class ProxyBusy(ApiError):
    """No connection to the Proxy within the time because its pool was full (every one of
    ``connections`` in use): nothing was sent, but the Proxy is up."""


class ProxyLost(ApiError):
    """The request went out on a connection and no whole answer came back (a reset, a close,
    a timeout): the Proxy may have run it. ``detail``: what failed, for the log only."""

    def __init__(self, status: int, message: str, cause: str, detail: str = "") -> None:
        super().__init__(status, message, cause=cause)
        self.detail = detail


def described(error: BaseException) -> str:
    """An exception and what caused it: aiohttp's errors often hide the real one (an SSL
    alert behind "Can not write request body") in ``__cause__``."""
    cause = error.__cause__ or error.__context__
    return repr(error) + (f" (from {cause!r})" if cause is not None else "")


@dataclass(frozen=True)
class ProxyAnswer:
    status: int
    body: bytes
    content_type: str
    location: str | None = None
    retry_after: str | None = None


class ProxyForwarder:
    """One Proxy's keep-alive pool (at most ``connections``), and the requests now on it
    (``in_flight``: when it reaches ``connections``, a new one waits for a free connection)."""

    def __init__(self, proxy_url: str, timeout: float, connections: int, *,
                 ssl_context: ssl.SSLContext | None = None, tls_name: str = "proxy",
                 max_answer_bytes: int = 16 * 1024 * 1024, fresh: bool = False) -> None:
        """``fresh``: a new connection for every request (the health checks': a Proxy whose
        host was cut off then fails to connect, instead of leaving a kept connection hanging
        on an answer that never comes)."""
        self._base = proxy_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout,
                                              sock_connect=min(timeout, CONNECT_TIMEOUT))
        self._connections = connections
        self.in_flight = 0
        self._ssl = ssl_context
        self._tls_name = tls_name if self._base.startswith("https://") else None
        self.max_answer_bytes = max_answer_bytes
        self._session: aiohttp.ClientSession | None = None
        self._fresh = fresh

    async def start(self) -> None:
        keep = {"force_close": True} if self._fresh else {"keepalive_timeout": 30}
        connector = aiohttp.TCPConnector(limit=self._connections,
                                         ssl=self._ssl if self._ssl is not None else True,
                                         **keep)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                              auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def forward(self, method: str, path: str, request_id: str,
                      body: bytes | None = None, timeout: float | None = None, *,
                      scope: str | None = None, key_name: str | None = None,
                      log_failures: bool = True,
                      connect_timeout: float | None = None) -> ProxyAnswer:
        """Send the body as it came (no re-encoding) with the caller's scope and key name;
        return the Proxy's answer, its errors redacted of internal details. Raises
        ``ProxyUnreachable``, ``ProxyBusy`` (nothing sent) or ``ProxyLost`` (maybe run).
        ``log_failures`` False: the caller logs them (the health checks, once a change).
        ``connect_timeout`` (with ``timeout``): how long a new connection may take, when not
        ``CONNECT_TIMEOUT``."""
        assert self._session is not None, "start() first"
        headers = {REQUEST_ID_HEADER: request_id}
        if scope is not None:
            headers[SCOPE_HEADER] = scope
        if key_name is not None:
            headers[KEY_NAME_HEADER] = key_name
        if body is not None:
            headers["Content-Type"] = "application/json"
        # The session's timeout unless the call has its own (None would mean no timeout).
        request_timeout = (aiohttp.ClientTimeout(
            total=timeout, sock_connect=min(timeout, connect_timeout or CONNECT_TIMEOUT))
            if timeout else self._timeout)
        pool_full = self.in_flight >= self._connections
        warn = log.warning if log_failures else log.debug
        self.in_flight += 1
        try:
            async with self._session.request(method, self._base + path, data=body,
                                             headers=headers, timeout=request_timeout,
                                             server_hostname=self._tls_name) as answer:
                data = await self._read(answer, request_id)
                status = answer.status
                content_type = answer.headers.get("Content-Type", "application/json")
                location = answer.headers.get("Location")
                retry_after = answer.headers.get("Retry-After")
        except aiohttp.ClientConnectorError as error:  # before ClientError: a subclass
            warn("request %s: the proxy %s is unreachable: %s", request_id, self._base, error)
            raise ProxyUnreachable(detail=str(error)) from None
        except aiohttp.ConnectionTimeoutError:  # before TimeoutError: a subclass
            # No connection in time: to a Proxy out of reach, or (its pool full) in the wait
            # for one of ours to come free. Either way nothing was sent.
            if pool_full:
                warn("request %s: no free connection to the proxy %s in time", request_id,
                     self._base)
                raise ProxyBusy(503, "the proxy is busy", cause="busy",
                                headers={"Retry-After": "1"}) from None
            detail = f"no connection within {request_timeout.sock_connect:.1f} s"
            warn("request %s: the proxy %s is unreachable: %s", request_id, self._base, detail)
            raise ProxyUnreachable(timed_out=True, detail=detail) from None
        except TimeoutError:
            warn("request %s: the proxy did not answer %s %s in time", request_id, method, path)
            raise ProxyLost(504, "the proxy did not answer in time", "timeout",
                            f"no answer to {method} {path} in time") from None
        except (aiohttp.ClientError, asyncio.IncompleteReadError, ssl.SSLError) as error:
            detail = described(error)
            warn("request %s: bad answer from the proxy: %s", request_id, detail)
            raise ProxyLost(502, "bad answer from the proxy", "bad_answer", detail) from None
        finally:
            self.in_flight -= 1
        return self._quiet(ProxyAnswer(status, data, content_type, location, retry_after),
                           request_id)

    async def _read(self, answer: aiohttp.ClientResponse, request_id: str) -> bytes:
        """The body, up to the cap: past it the connection is dropped, not read to its end."""
        cap = self.max_answer_bytes
        too_large = ApiError(502, f"the answer is larger than {cap} bytes", cause="too_large")
        if answer.content_length is not None and answer.content_length > cap:
            log.warning("request %s: the proxy's answer declares %d bytes, over the cap of %d",
                        request_id, answer.content_length, cap)
            _drop(answer)
            raise too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in answer.content.iter_any():
            size += len(chunk)
            if size > cap:
                log.warning("request %s: the proxy's answer passed the cap of %d bytes",
                            request_id, cap)
                _drop(answer)
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def _quiet(self, answer: ProxyAnswer, request_id: str) -> ProxyAnswer:
        try:
            quiet = quiet_answer(answer.status, answer.body)
        except ValueError as error:
            log.warning("request %s: the proxy answered %d without a JSON error (%s): %r",
                        request_id, answer.status, error, answer.body[:500])
            raise ApiError(502, "bad answer from the proxy", cause="bad_answer") from None
        if quiet is None:
            return answer
        log.info("request %s: internal details redacted from the proxy's %d answer: %s",
                 request_id, answer.status, answer.body[:2000].decode(errors="replace"))
        return ProxyAnswer(answer.status, quiet, "application/json", answer.location,
                           answer.retry_after)


def _drop(answer: aiohttp.ClientResponse) -> None:
    """Cut the connection an answer is still arriving on. A TLS close would wait for the
    peer's close_notify, reading (and discarding) whatever it goes on sending until then."""
    connection = answer.connection
    if connection is not None and connection.transport is not None:
        connection.transport.abort()
    answer.close()
