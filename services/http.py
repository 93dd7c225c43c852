"""What both Tornado services share: JSON handlers, the body cap, and the process runner."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer

from services.contract import REQUEST_ID_HEADER, ApiError

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


@tornado.web.stream_request_body
class JsonHandler(tornado.web.RequestHandler):
    """Answers in JSON, errors included, and refuses bodies over ``max_body_bytes``.

    The body is streamed so an oversized request is refused from its Content-Length (or as
    soon as it grows past the cap) without being buffered.
    """

    max_body_bytes: int = 64 * 1024
    request_id: str | None = None

    def set_default_headers(self) -> None:
        # Also runs when an error clears the headers, so the id survives into error answers.
        if self.request_id:
            self.set_header(REQUEST_ID_HEADER, self.request_id)

    def prepare(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        declared = self.request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self.oversized()
        # A chunked body has no length to check up front: past the cap it is read and dropped
        # (answered 413 once complete), and past this larger bound the connection is cut.
        self.request.connection.set_max_body_size(max(1 << 20, 4 * self.max_body_bytes))

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self.max_body_bytes:
            self._chunks.append(chunk)

    @property
    def body(self) -> bytes:
        """The whole body; raises the 413 for a chunked body that outgrew the cap."""
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
        if isinstance(exc, ApiError):
            self.set_status(exc.status)
            for name, value in exc.headers.items():
                self.set_header(name, value)
            payload = exc.to_json()
        else:
            payload = {"error": self._reason}
        if self.request_id:
            payload.setdefault("request_id", self.request_id)
        self.set_header("Content-Type", "application/json")
        self.finish(dump_json(payload))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ApiError):
            return  # an answered client error, not a failure of the service
        super().log_exception(typ, value, tb)


def log_failed_requests(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log costs a formatted line per request; keep only server-side failures
    and slow answers, where a line is worth its cost."""
    status = handler.get_status()
    elapsed_ms = 1000.0 * handler.request.request_time()
    if status >= 500 or elapsed_ms > 1000.0:
        log.warning("%d %s %s %.1fms", status, handler.request.method, handler.request.uri,
                    elapsed_ms)


class NotFoundHandler(JsonHandler):
    def prepare(self) -> None:
        raise ApiError(404, f"no such endpoint: {self.request.method} {self.request.path}")


def serve(make_app: Callable[[], Awaitable[tuple[tornado.web.Application, Callable]]],
          address: str, port: int, name: str) -> None:
    """Run an application until SIGTERM/SIGINT, on uvloop, then close its resources."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s")

    async def main() -> None:
        app, close = await make_app()
        server = HTTPServer(app, xheaders=False)
        server.listen(port, address)
        log.info("%s listening on %s:%d", name, address, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("%s stopping", name)
        server.stop()
        await server.close_all_connections()
        await close()

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        asyncio.run(main())
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
