"""What both Tornado services share: JSON handlers, the body cap, and the process runner.

A request refused from its headers alone (a wrong key, a body declared over the cap) is answered
at once, and its body is still read and dropped afterwards: a socket closed with unread data
resets the connection, and the client, still sending, would lose the answer. The server
options bound what a client can hold: connections, idle and body times, header size. Behind a
TCP load balancer, a port may take the client's address from the PROXY protocol header the
balancer sends before TLS (``services.proxyproto``, ``LimitedHTTPServer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import ssl
import time as time_module
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import tornado.web
from tornado import httputil
from tornado.http1connection import (
    HTTP1Connection,
    HTTP1ConnectionParameters,
    HTTP1ServerConnection,
)
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, StreamClosedError

from services.contract import REQUEST_ID_HEADER, ApiError
from services.errors import internal_error
from services.proxyproto import (
    IPNetwork,
    NothingSent,
    ProxyProtocolError,
    is_from,
    read_header,
    sends_signature,
)
from services.requestlog import RequestLog, RequestTrace

log = logging.getLogger(__name__)


def _json_default(value: Any) -> Any:
    """Values MySQL returns that JSON has no type for (json calls this only for those)."""
    if isinstance(value, Decimal):
        return format(value, "f")  # exact digits, never exponent notation; a float would round
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):  # a TIME column
        seconds = value.total_seconds()
        sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
        whole = int(seconds)
        text = f"{sign}{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
        micros = round((seconds - whole) * 1_000_000)
        return f"{text}.{micros:06d}" if micros else text
    if isinstance(value, (bytes, bytearray)):
        # The driver decodes text columns itself: bytes are binary data (BINARY, BLOB, BIT),
        # always hex in MySQL's literal notation, so a client never mistakes them for text.
        return "0x" + value.hex()
    if isinstance(value, (set, frozenset)):  # a SET column
        return sorted(value)
    return str(value)


def dump_json(payload: Any) -> bytes:
    return json.dumps(payload, default=_json_default, separators=(",", ":")).encode()


# A body refused before it was read is read and dropped, after the answer went out, up to this
# size; past it the connection is cut (a client that sends that much without waiting for an
# answer loses it).
DRAIN_LIMIT = 32 * 1024 * 1024
_LENGTH = re.compile(r"[0-9]{1,20}")


@tornado.web.stream_request_body
class JsonHandler(tornado.web.RequestHandler):
    """Answers in JSON, errors included, and refuses bodies over ``max_body_bytes``.

    The body is streamed so an oversized request is refused from its Content-Length (or as
    soon as it grows past the cap) without being buffered. Handlers put the checks that need
    only the headers in ``check_request``: a refusal there is answered before the body is read.
    """

    max_body_bytes: int = 64 * 1024
    request_id: str | None = None
    # What the request log and the metrics read (services.requestlog): the route's name (never
    # the path: a label per path would let any client grow the metrics without bound), the
    # key's name once known, what the request did, and why it was refused.
    endpoint: str = "unknown"
    key_name: str | None = None
    trace: RequestTrace = RequestTrace()  # replaced in prepare(); never written to
    error_cause: str | None = None
    in_flight_counted = False
    _answered_early = False  # the answer went out before the body was in
    _dropping = False        # the body is refused: dropped as it comes
    _done = False

    def set_default_headers(self) -> None:
        # Also runs when an error clears the headers, so the id survives into error answers.
        if self.request_id:
            self.set_header(REQUEST_ID_HEADER, self.request_id)

    def check_request(self) -> Awaitable[None] | None:
        """What a handler checks from the headers alone (a key, say): raise ApiError to refuse
        the request before any of its body is read. It may be a coroutine (a check that asks
        another host): the body is read once it is done."""

    async def prepare(self) -> None:
        self.trace = RequestTrace()
        requests = self.settings.get("request_log")
        if requests is not None:
            requests.started(self)
        self._chunks: list[bytes] = []
        self._size = 0
        try:
            checked = self.check_request()
            if checked is not None:
                await checked
            declared = self.request.headers.get("Content-Length")
            if declared is not None and not _LENGTH.fullmatch(declared.strip()):
                raise ApiError(400, "the Content-Length header is not a number")
            if declared is not None and int(declared) > self.max_body_bytes:
                raise self.oversized()
        except ApiError as error:
            if self._small_body():
                # A body within the cap is read (and dropped) before the answer: the
                # connection stays usable, and a client told 401 or 429 may go on with it.
                self._chunks.clear()
                self._answer_after_body(error)
            elif self._drainable():
                self.answer_early(error)
            else:
                raise  # nothing to read, or too much to: answered (and closed) as usual
            return
        # A chunked body has no length to check up front: it is refused once it outgrows the
        # cap, and the rest is dropped as it comes.
        self.request.connection.set_max_body_size(DRAIN_LIMIT)

    def _small_body(self) -> bool:
        """Whether the request declares a body within the cap (and is sending it)."""
        headers = self.request.headers
        declared = headers.get("Content-Length", "").strip()
        return (headers.get("Expect", "").lower() != "100-continue"
                and "chunked" not in headers.get("Transfer-Encoding", "").lower()
                and bool(_LENGTH.fullmatch(declared))
                and 0 < int(declared) <= self.max_body_bytes)

    def _answer_after_body(self, error: ApiError) -> None:
        self._dropping = True

        def refuse(*args: Any) -> None:
            raise error

        setattr(self, self.request.method.lower(), refuse)

    def _drainable(self) -> bool:
        """Whether the request has a body coming that can be read and dropped."""
        headers = self.request.headers
        if headers.get("Expect", "").lower() == "100-continue":
            return False  # the client waits, and sends no body after a final answer
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            return True
        declared = headers.get("Content-Length", "").strip()
        return bool(_LENGTH.fullmatch(declared)) and 0 < int(declared) <= DRAIN_LIMIT

    def answer_early(self, error: ApiError) -> None:
        """Send ``error`` now, whole (Content-Length, Connection: close), while the body is
        still coming; the body is dropped as it arrives and the connection closed after it."""
        self._answered_early = self._dropping = True
        self._chunks.clear()
        self.request.connection.set_max_body_size(DRAIN_LIMIT)
        data = self._error_body(error)
        self.set_header("Connection", "close")
        self.set_header("Content-Length", str(len(data)))
        self.write(data)
        self.flush()
        # Once the body is in, Tornado calls the handler's method for the request: all that is
        # left to do then is to finish the answer already sent.
        setattr(self, self.request.method.lower(), self._finish_early_answer)

    async def _finish_early_answer(self, *args: Any) -> None:
        await self.finish()
        self.request.connection.close()

    def data_received(self, chunk: bytes) -> None:
        if self._dropping:
            return
        self._size += len(chunk)
        if self._size <= self.max_body_bytes:
            self._chunks.append(chunk)
        else:
            self.answer_early(self.oversized())

    @property
    def body(self) -> bytes:
        """The whole body (a body over the cap has been answered 413 before it got here)."""
        if self._size > self.max_body_bytes:
            raise self.oversized()
        return b"".join(self._chunks)

    def oversized(self) -> ApiError:
        return ApiError(413, f"request body larger than {self.max_body_bytes} bytes")

    @property
    def draining(self) -> bool:
        """Whether the service is on its way out (``Drain``): its health check fails."""
        drain = self.settings.get("drain")
        return drain is not None and drain.draining

    def finish(self, chunk: Any = None) -> Any:
        if self.draining and not self._headers_written:
            # Keep-alive clients go elsewhere: the answer says Connection: close, and the
            # connection is closed once it is sent (Tornado's own flag for just that).
            connection = self.request.connection
            if isinstance(connection, HTTP1Connection):
                connection._disconnect_on_finish = True
        return super().finish(chunk)

    def send_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(dump_json(payload))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if status_code == 500 and not isinstance(exc, ApiError | tornado.web.HTTPError):
            exc = internal_error()  # a bug (its traceback is in the log): never a bare 500
        elif not isinstance(exc, ApiError):  # Tornado's own (405 for an unknown method)
            exc = ApiError(status_code, self._reason)
        self.finish(self._error_body(exc))

    def _error_body(self, error: ApiError) -> bytes:
        """Set the error's status and headers; return its JSON."""
        self.set_status(error.status)
        self.error_cause = error.cause
        for name, value in error.headers.items():
            self.set_header(name, value)
        if error.status == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        payload = error.to_json()
        if self.request_id:
            payload.setdefault("request_id", self.request_id)
        self.set_header("Content-Type", "application/json")
        return dump_json(payload)

    def allowed_methods(self) -> list[str]:
        """The methods this handler implements (a 405 names them in ``Allow``)."""
        base = tornado.web.RequestHandler
        return [method for method in self.SUPPORTED_METHODS
                if getattr(type(self), method.lower(), None) is not getattr(base, method.lower())]

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ApiError):
            return  # an answered client error, not a failure of the service
        super().log_exception(typ, value, tb)

    def on_finish(self) -> None:
        self._done = True

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if self._answered_early and not self._done:
            # Answered, then the client left (or the body timed out) before its body was in:
            # still one log line, as for every request.
            self._done = True
            self.application.log_request(self)
        elif not self._done:
            # Gone before its answer: no longer in flight, and logged only if the handler
            # still finishes it.
            requests = self.settings.get("request_log")
            if requests is not None:
                requests.abandoned(self)


class NotFoundHandler(JsonHandler):
    def check_request(self) -> None:
        raise ApiError(404, f"no such endpoint: {self.request.method} {self.request.path}")


@dataclass(frozen=True)
class ServerOptions:
    """What one listener allows each client; None or 0: Tornado's default (no limit)."""

    ssl_context: ssl.SSLContext | None = None
    idle_timeout: float | None = None      # waiting for a request's headers, the first included
    body_timeout: float | None = None      # reading one request's whole body
    max_header_bytes: int | None = None    # request line and headers
    max_connections: int = 0               # clients at once; past it a 503 with Retry-After
    on_refused: Callable[[], None] | None = None  # called for each client refused so
    # The load balancers (services.proxyproto) whose connections begin with a PROXY v2
    # header, read in clear before TLS: the client's address is taken from it. Empty: none is
    # read or looked for, as before the setting existed.
    proxy_protocol_from: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class Listener:
    """One more port a service listens on, with its own application and options. ``app`` may
    be a callable that makes the application, called in the process that serves it (with
    several workers, in each worker after the fork: a metrics application that must not touch
    ``prometheus_client`` in the parent, say)."""

    app: tornado.web.Application | Callable[[], tornado.web.Application]
    address: str
    port: int
    options: ServerOptions = ServerOptions()
    what: str = "http"


class LimitedHTTPServer(HTTPServer):
    """An HTTPServer that serves at most ``max_connections`` clients at once, and may sit
    behind a TCP load balancer that speaks the PROXY protocol.

    One over the limit gets a 503 with ``Retry-After`` and a closed connection (so a client
    sees why, and retries), on a short header timeout; past a tenth more the connection is
    closed at once, so the refusals themselves stay bounded.

    With ``proxy_protocol_from`` the server is made without ``ssl_options`` and each
    connection begins in clear (``_open``): from a balancer, its PROXY header must come first
    and names the client; from anyone else a PROXY header is refused (it would be a client
    choosing its own address), and anything else goes on as usual. TLS (``tls``) starts after
    that, on the same stream.
    """

    def initialize(self, *args: Any, max_connections: int = 0,
                   on_refused: Callable[[], None] | None = None,
                   proxy_protocol_from: tuple[IPNetwork, ...] = (),
                   tls: ssl.SSLContext | None = None, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        self.on_refused = on_refused
        self.proxy_protocol_from = proxy_protocol_from
        self.tls = tls
        self.open_connections = 0
        self.refusing = 0
        self._warned_at = -10.0
        self._refusal_params = HTTP1ConnectionParameters(
            no_keep_alive=True, header_timeout=2.0,
            max_header_size=self.conn_params.max_header_size)

    def handle_stream(self, stream: IOStream, address: tuple) -> Awaitable[None] | None:
        refused = bool(self.max_connections) and self.open_connections >= self.max_connections
        if refused:
            now = time_module.monotonic()
            if now - self._warned_at >= 10.0:  # a line now and then, not one per refusal
                self._warned_at = now
                log.warning("at the limit of %d connections: refusing new ones",
                            self.max_connections)
            if self.on_refused is not None:
                self.on_refused()
            if self.refusing >= max(16, self.max_connections // 10):
                stream.close()
                return None
            self.refusing += 1
        else:
            self.open_connections += 1
        if not self.proxy_protocol_from:
            self._serve(stream, address, refused)
            return None
        # Counted from now on, while its header and handshake come: they hold a socket too.
        return self._open_and_serve(stream, address, refused)

    def _serve(self, stream: IOStream, address: tuple, refused: bool) -> None:
        if refused:
            HTTP1ServerConnection(stream, self._refusal_params).start_serving(_Refusal(self))
        else:
            super().handle_stream(stream, address)

    async def _open_and_serve(self, stream: IOStream, address: tuple, refused: bool) -> None:
        """The connection's clear-text start and TLS, then HTTP; a connection closed before
        HTTP is no longer counted. The task Tornado runs this in has no one to raise to."""
        opened = None
        try:
            opened = await self._open(stream, address)
        except asyncio.CancelledError:  # the service stops
            pass
        finally:
            if opened is None:
                if refused:
                    self.refusing -= 1
                else:
                    self.open_connections -= 1
        if opened is not None:
            self._serve(*opened, refused)

    async def _open(self, stream: IOStream, address: tuple) -> tuple[IOStream, tuple] | None:
        """The stream to serve HTTP on (TLS started) and the client's address; None when the
        connection is closed instead."""
        idle = self.conn_params.header_timeout  # what a client has today for TLS and headers
        peer = address[0]
        try:
            if is_from(peer, self.proxy_protocol_from):
                header = await read_header(stream.socket)
                if header.source is not None:  # PROXY; LOCAL (a health check) keeps its own
                    address = header.source
            else:
                signature = await sends_signature(stream.socket, idle)
                if signature:
                    log.warning("refused a connection from %s: it sent a PROXY protocol header, "
                                "which only the load balancers may send", peer)
                if signature is not False:  # refused, or sent nothing, or closed
                    stream.close()
                    return None
        except ProxyProtocolError as error:
            if not isinstance(error, NothingSent):  # a bare TCP check is not worth a line
                log.warning("closed a connection from the load balancer %s: %s", peer, error)
            stream.close()
            return None
        except BaseException:
            stream.close()
            raise
        if self.tls is None:
            return stream, address
        try:
            # Cancelled on the timeout, the handshake's stream is closed by Tornado.
            tls_stream = await asyncio.wait_for(stream.start_tls(True, self.tls), idle)
        except (TimeoutError, StreamClosedError, ssl.SSLError, OSError):
            return None  # the stream Tornado made for TLS is closed, and it logged why
        return tls_stream, address

    def on_close(self, server_conn: object) -> None:
        self.open_connections -= 1
        super().on_close(server_conn)

    def stop(self) -> None:
        """Stop listening; the connections the kernel completed meanwhile are taken first and
        served, not reset with the socket (when this process holds the port's last copy)."""
        if not self._stopped:
            for sock in self._sockets.values():
                while True:
                    try:
                        connection, address = sock.accept()
                    except ConnectionAbortedError:
                        continue
                    except OSError:  # nothing waiting (BlockingIOError), or closed
                        break
                    self._handle_connection(connection, address)
        super().stop()

    def writing(self) -> bool:
        """Whether an answer is still on its way out on some connection."""
        return any(conn.stream.writing() for conn in self._connections
                   if conn.stream is not None and not conn.stream.closed())


class _Refusal(httputil.HTTPServerConnectionDelegate):
    def __init__(self, server: LimitedHTTPServer) -> None:
        self.server = server

    def start_request(self, server_conn: object,
                      request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        return _RefusalAnswer(request_conn)

    def on_close(self, server_conn: object) -> None:
        self.server.refusing -= 1


class _RefusalAnswer(httputil.HTTPMessageDelegate):
    def __init__(self, connection: httputil.HTTPConnection) -> None:
        self.connection = connection

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> None:
        body = dump_json({"error": "the service is at its connection limit: retry shortly"})
        self.connection.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", 503, "Service Unavailable"),
            httputil.HTTPHeaders({"Content-Type": "application/json", "Retry-After": "1",
                                  "Content-Length": str(len(body)), "Connection": "close"}),
            body)
        self.connection.finish()


def start_server(app: tornado.web.Application, address: str, port: int,
                 options: ServerOptions,
                 sockets: Sequence[socket.socket] | None = None) -> LimitedHTTPServer:
    """Serve ``app`` on ``address:port``, or on ``sockets`` already bound to it (a worker
    process serves the sockets its parent bound, shared by every worker)."""
    # A PROXY header comes before TLS: the server then starts TLS itself, after the header.
    after_header = bool(options.proxy_protocol_from)
    server = LimitedHTTPServer(app, xheaders=False,
                               ssl_options=None if after_header else options.ssl_context,
                               idle_connection_timeout=options.idle_timeout,
                               body_timeout=options.body_timeout,
                               max_header_size=options.max_header_bytes,
                               max_connections=options.max_connections,
                               on_refused=options.on_refused,
                               proxy_protocol_from=options.proxy_protocol_from,
                               tls=options.ssl_context if after_header else None)
    if sockets is None:
        server.listen(port, address)
    else:
        server.add_sockets(sockets)
    return server


# Once a draining service stopped listening: how long its connections without a request in
# flight have to send one before they are closed (one accepted last, still in its handshake).
LAST_REQUEST_SECONDS = 0.5


class Drain:
    """How a service stops on SIGTERM (``run_server``), so that no client sees a request fail.

    1. ``start``: ``draining`` is set. The health check answers 503 from now on (a load
       balancer stops sending new connections), every answer closes its connection
       (``Connection: close``: keep-alive clients reconnect, elsewhere once the balancer
       knows), and the service decides what else it refuses (the Proxy: new transactions).
    2. ``settle``: the service serves on as usual, new connections included, until it may stop
       taking them: after ``grace`` seconds (long enough for the balancer's checks to notice);
       the Proxy's returns once its open transactions have ended, within ``grace``.
    3. It stops listening, and the requests in flight get up to ``finish`` seconds to be
       answered and sent; then every connection is closed and the service's resources too.

    SIGINT, or a second SIGTERM, skips what is left of it: the service stops at once.
    """

    def __init__(self, grace: float = 0.0, finish: float = 10.0) -> None:
        self.grace = grace
        self.finish = finish
        self.draining = False

    def start(self) -> None:
        self.draining = True

    async def settle(self) -> None:
        """Return when the service may stop taking connections."""
        if self.grace > 0:
            await asyncio.sleep(self.grace)

    def left_over(self) -> str | None:
        """What the service still holds when ``settle`` was cut short (None: nothing)."""
        return None


async def _until(event: asyncio.Event, work: Awaitable[Any]) -> bool:
    """Run ``work`` unless ``event`` comes first (then ``work`` is cancelled): True when
    ``work`` finished."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, stop):
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending
    return task.done() and not task.cancelled()


async def drain_servers(drain: Drain, servers: Sequence[LimitedHTTPServer],
                        logs: Sequence[RequestLog], name: str, now: asyncio.Event) -> None:
    """Steps 1 to 3 of ``Drain`` (``now``: stop at once, whatever step it is at)."""
    began = time_module.monotonic()
    log.info("%s: SIGTERM, draining: health check failing, serving on for up to %gs "
             "(SIGTERM again or SIGINT: stop at once)", name, drain.grace)
    drain.start()
    settled = await _until(now, drain.settle())
    left = drain.left_over()
    if left:
        log.warning("%s stops %s: %s", name, "at once" if now.is_set() else
                    f"after its drain limit of {drain.grace:g}s", left)
    for server in servers:
        server.stop()
    if now.is_set():
        return
    log.info("%s no longer accepting connections (after %.1fs%s)", name,
             time_module.monotonic() - began, "" if settled else ", cut short")

    def busy() -> bool:
        return (any(requests.in_flight > 0 for requests in logs)
                or any(server.writing() for server in servers))

    async def quiet() -> None:
        stopped = time_module.monotonic()
        deadline = stopped + drain.finish
        # A connection accepted last has a moment to send its request (then counted in flight).
        while ((busy() or time_module.monotonic() < stopped + LAST_REQUEST_SECONDS)
               and time_module.monotonic() < deadline):
            await asyncio.sleep(0.02)

    await _until(now, quiet())
    if busy():
        log.warning("%s: %d request(s) still in flight after %gs: cut", name,
                    sum(requests.in_flight for requests in logs), drain.finish)


MakeApp = Callable[[], Awaitable[tuple[tornado.web.Application, Callable]]]
# What a worker process learns from its parent (services.workers sets them).
WORKER_VARIABLES = ("SQLGATE_WORKER", "SQLGATE_WORKERS", "SQLGATE_RUNTIME_DIR")


def serve(make_app: MakeApp, address: str, port: int, name: str,
          options: ServerOptions | None = None, also: Sequence[Listener] = (),
          workers: int = 1, stop_seconds: float | None = None) -> None:
    """Run an application until SIGTERM/SIGINT, on uvloop, then close its resources: SIGTERM
    drains first (the application's ``Drain``, in its settings), SIGINT stops at once.

    ``also``: more listeners of the same process (the Gatekeeper's plain-HTTP redirect).
    ``workers`` > 1: that many processes serve the same ports (``services.workers``); each
    calls ``make_app`` itself, after the fork, and one still running ``stop_seconds`` after
    SIGTERM is killed."""
    if workers > 1:
        from services.workers import serve_workers  # the runner imports this module

        serve_workers(make_app, address, port, name, options, also, workers, stop_seconds)
        return
    for variable in WORKER_VARIABLES:
        # One process is no worker, whatever its environment inherited from elsewhere says.
        os.environ.pop(variable, None)
    run_server(make_app, address, port, name, options, also)


def run_server(make_app: MakeApp, address: str, port: int, name: str,
               options: ServerOptions | None = None, also: Sequence[Listener] = (),
               sockets: Sequence[Sequence[socket.socket]] | None = None) -> None:
    """``serve`` in this process. ``sockets``: pre-bound sockets, one list per listener (the
    service's first, then ``also``'s), instead of binding the ports here."""
    # force: a worker replaces the handler it inherited from its parent (named differently).
    logging.basicConfig(level=logging.INFO, force=True,
                        format=f"%(asctime)s {name} %(levelname)s %(message)s")
    options = options or ServerOptions()

    async def main() -> None:
        app, close = await make_app()
        drain = app.settings.setdefault("drain", Drain())
        what = "https" if options.ssl_context else "http"
        if options.proxy_protocol_from:
            what += ", PROXY protocol from " + ", ".join(map(str, options.proxy_protocol_from))
        listeners = [Listener(app, address, port, options, what), *also]
        servers, logs = [], {}
        for number, listener in enumerate(listeners):
            served = listener_app(listener)
            served.settings.setdefault("drain", drain)  # the same way out for every port
            requests = served.settings.get("request_log")
            if requests is not None:
                logs[id(requests)] = requests
            servers.append(start_server(served, listener.address, listener.port,
                                        listener.options,
                                        None if sockets is None else sockets[number]))
            log.info("%s listening on %s:%d (%s)", name, listener.address, listener.port,
                     listener.what)
        # The first SIGTERM drains (Drain); SIGINT, or a second SIGTERM, stops at once. A
        # worker takes only SIGINT for "at once": a service manager stopping the whole process
        # group (systemd's default, supervisor's stopasgroup) sends it SIGTERM itself, and the
        # parent passes its own on, so a worker gets two; the parent sends SIGINT for a second.
        worker = sockets is not None
        asked, now = asyncio.Event(), asyncio.Event()

        def signalled(signo: int) -> None:
            if signo == signal.SIGTERM and asked.is_set() and worker:
                return
            if signo != signal.SIGTERM or asked.is_set():
                if not now.is_set():
                    log.info("%s: %s, stopping at once", name, signal.Signals(signo).name)
                now.set()
            asked.set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, signalled, sig)
        await asked.wait()
        if not now.is_set():
            await drain_servers(drain, servers, list(logs.values()), name, now)
        log.info("%s stopping", name)
        for server in servers:
            server.stop()
        for server in servers:
            await server.close_all_connections()
        await close()
        log.info("%s stopped", name)

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        asyncio.run(main())
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())


def listener_app(listener: Listener) -> tornado.web.Application:
    """A listener's application: given, or made by the callable given (in the process that
    serves it: a worker makes its own, after the fork)."""
    app = listener.app
    return app if isinstance(app, tornado.web.Application) else app()
