"""What both Tornado services share: JSON handlers, the body cap, and the process runner.

A request refused from its headers alone (a wrong key, a body declared over the cap) is answered
at once, and its body is still read and dropped afterwards: a socket closed with unread data
resets the connection, and the client, still sending, would lose the answer. The server
options bound what a client can hold: connections, idle and body times, header size.
"""

from __future__ import annotations

import asyncio
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
from tornado.http1connection import HTTP1ConnectionParameters, HTTP1ServerConnection
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream

from services.contract import REQUEST_ID_HEADER, ApiError
from services.requestlog import RequestTrace

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

    def check_request(self) -> None:
        """What a handler checks from the headers alone (a key, say): raise ApiError to refuse
        the request before any of its body is read."""

    def prepare(self) -> None:
        self.trace = RequestTrace()
        requests = self.settings.get("request_log")
        if requests is not None:
            requests.started(self)
        self._chunks: list[bytes] = []
        self._size = 0
        try:
            self.check_request()
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

    def send_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(dump_json(payload))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if not isinstance(exc, ApiError):  # Tornado's own (405 for an unknown method, 500)
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
    """An HTTPServer that serves at most ``max_connections`` clients at once.

    One over the limit gets a 503 with ``Retry-After`` and a closed connection (so a client
    sees why, and retries), on a short header timeout; past a tenth more the connection is
    closed at once, so the refusals themselves stay bounded.
    """

    def initialize(self, *args: Any, max_connections: int = 0,
                   on_refused: Callable[[], None] | None = None, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        self.on_refused = on_refused
        self.open_connections = 0
        self.refusing = 0
        self._warned_at = -10.0
        self._refusal_params = HTTP1ConnectionParameters(
            no_keep_alive=True, header_timeout=2.0,
            max_header_size=self.conn_params.max_header_size)

    def handle_stream(self, stream: IOStream, address: tuple) -> None:
        if self.max_connections and self.open_connections >= self.max_connections:
            now = time_module.monotonic()
            if now - self._warned_at >= 10.0:  # a line now and then, not one per refusal
                self._warned_at = now
                log.warning("at the limit of %d connections: refusing new ones",
                            self.max_connections)
            if self.on_refused is not None:
                self.on_refused()
            if self.refusing >= max(16, self.max_connections // 10):
                stream.close()
                return
            self.refusing += 1
            HTTP1ServerConnection(stream, self._refusal_params).start_serving(_Refusal(self))
            return
        self.open_connections += 1
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        self.open_connections -= 1
        super().on_close(server_conn)


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
    server = LimitedHTTPServer(app, xheaders=False, ssl_options=options.ssl_context,
                               idle_connection_timeout=options.idle_timeout,
                               body_timeout=options.body_timeout,
                               max_header_size=options.max_header_bytes,
                               max_connections=options.max_connections,
                               on_refused=options.on_refused)
    if sockets is None:
        server.listen(port, address)
    else:
        server.add_sockets(sockets)
    return server


MakeApp = Callable[[], Awaitable[tuple[tornado.web.Application, Callable]]]
# What a worker process learns from its parent (services.workers sets them).
WORKER_VARIABLES = ("SQLGATE_WORKER", "SQLGATE_WORKERS", "SQLGATE_RUNTIME_DIR")


def serve(make_app: MakeApp, address: str, port: int, name: str,
          options: ServerOptions | None = None, also: Sequence[Listener] = (),
          workers: int = 1) -> None:
    """Run an application until SIGTERM/SIGINT, on uvloop, then close its resources.

    ``also``: more listeners of the same process (the Gatekeeper's plain-HTTP redirect).
    ``workers`` > 1: that many processes serve the same ports (``services.workers``); each
    calls ``make_app`` itself, after the fork."""
    if workers > 1:
        from services.workers import serve_workers  # the runner imports this module

        serve_workers(make_app, address, port, name, options, also, workers)
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
        listeners = [Listener(app, address, port, options,
                              "https" if options.ssl_context else "http"), *also]
        servers = []
        for number, listener in enumerate(listeners):
            servers.append(start_server(listener_app(listener), listener.address,
                                        listener.port, listener.options,
                                        None if sockets is None else sockets[number]))
            log.info("%s listening on %s:%d (%s)", name, listener.address, listener.port,
                     listener.what)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("%s stopping", name)
        for server in servers:
            server.stop()
        for server in servers:
            await server.close_all_connections()
        await close()

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
