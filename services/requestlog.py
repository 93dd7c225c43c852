"""Where a finished request is accounted for, once, in each service: its metrics and its log line.

Tornado calls the application's ``log_function`` exactly once per answered request; that is
the one place both the request metrics and the JSON line are written, from what the handler
noted on the way (``RequestTrace``, the endpoint, the key's name, the request id). The line is
one ``json.dumps`` of fixed fields, written straight to stderr (the service's log, beside its
``logging`` lines, with nothing else on the line), and never holds SQL text, parameter values,
API keys or passwords: none of them is a field.

    {"ts": "2025-01-01T12:00:00.123Z", "service": "proxy", "worker": 0, "request_id": "...",
     "key": "ci", "endpoint": "POST /query", "mode": "random", "query_type": "read",
     "node": "replica1", "status": 200, "elapsed_ms": 1.234, "attempts": 1, "waited_ms": null}

Lines are written in batches, as nginx's ``access_log ... buffer= flush=`` does: at most
``FLUSH_SECONDS`` after the first one waiting, as soon as ``FLUSH_LINES`` wait, and when the
service stops: a write per request (a system call and a file update each) and a line made per
request cost it more than the rest of its accounting, and a line a fifth of a second late
costs nobody anything. A process killed with SIGKILL loses the lines of its last fifth of a
second (its requests' metrics were counted at once).

With ``log_requests`` off, only failures (5xx) and slow answers (over 1 s) get a line, in the
service's ordinary log, at once.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

WORKER_ENV = "SQLGATE_WORKER"
SLOW_SECONDS = 1.0
FLUSH_SECONDS = 0.2
FLUSH_LINES = 256

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RequestTrace:
    """What a request did, as its handler and the Proxy's router learn it: the labels of its
    metrics and the fields of its log line. ``mode`` is the mode that routed it (empty for
    writes and transactions on the Proxy, the one asked for on the Gatekeeper); ``node`` the
    node that answered (or failed); for a batch, ``attempts`` and ``waited_ms`` are its last
    statement's."""

    mode: str = ""
    query_type: str = ""
    node: str | None = None
    attempts: int | None = None
    waited_ms: float | None = None


def utc_timestamp(now: float) -> str:
    """ISO 8601 in UTC with milliseconds, ``2025-01-01T12:00:00.123Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


class _Clock:
    """``utc_timestamp`` with the formatting of the seconds done once a second, not once a
    line (``strftime`` is most of its cost)."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second, self._prefix = -1, ""

    def format(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"


class RequestLog:
    """A service's accounting of requests: ``started`` (from the handler's ``prepare``),
    ``finished`` (the application's ``log_function``) and ``abandoned`` (the client left first).

    ``metrics()`` gives the service's metric set, asked for at the first request (in the
    worker, after any fork and once PROMETHEUS_MULTIPROC_DIR is set): its ``record(handler,
    status, seconds)`` writes the request metrics, and its ``in_flight`` gauge is counted up
    once per request and down exactly once, whether the request finished or its client went
    away. ``metrics`` None: a service without a metrics port records none (nobody could read
    them)."""

    def __init__(self, service: str, metrics: Callable[[], Any] | None,
                 enabled: bool = True) -> None:
        self.service = service
        self._metrics_of = metrics
        self._metrics: Any = None
        self.enabled = enabled
        self._clock = _Clock()
        self._worker: int | None = None
        self._pending: list[tuple] = []  # each waiting line's fields, made into lines at flush
        self._flushing: asyncio.TimerHandle | None = None
        os.register_at_fork(after_in_child=self._forget_worker)
        atexit.register(self.flush)

    def _forget_worker(self) -> None:
        self._worker = None  # a forked worker learns its own index from its environment
        self._pending, self._flushing = [], None

    @property
    def worker(self) -> int:
        if self._worker is None:
            try:
                self._worker = int(os.environ.get(WORKER_ENV, "0"))
            except ValueError:
                self._worker = 0
        return self._worker

    @property
    def metrics(self) -> Any:
        if self._metrics is None:
            self._metrics = self._metrics_of()
        return self._metrics

    def started(self, handler: Any) -> None:
        if self._metrics_of is not None:
            self.metrics.in_flight.inc()
            handler.in_flight_counted = True

    def abandoned(self, handler: Any) -> None:
        if handler.in_flight_counted:
            handler.in_flight_counted = False
            self.metrics.in_flight.dec()

    def finished(self, handler: Any) -> None:
        self.abandoned(handler)
        if getattr(handler, "passed_to", None) is not None:
            return  # another worker answered it: it counts the request and logs its line
        status = handler.get_status()
        seconds = handler.request.request_time()
        if self._metrics_of is not None:
            self.metrics.record(handler, status, seconds)
        if self.enabled:
            self.write(handler, status, seconds)
        elif status >= 500 or seconds > SLOW_SECONDS:
            log.warning("%d %s %s %.1fms request_id=%s", status, handler.request.method,
                        handler.endpoint, 1000.0 * seconds, handler.request_id)

    def write(self, handler: Any, status: int, seconds: float) -> None:
        """Keep the line's fields for the next batch, which makes them into lines, each one
        ``json.dumps`` (its default encoder is made once and cached). Making a line costs a
        request a few times more than making a hundred in a row costs each of them (the
        code and the encoder are then in the caches), and nothing needs a line sooner. Not
        through ``logging``: a record, a handler lock and a formatter per line would cost
        more than the line, and the line is already what it should be (a service's stderr is
        its log)."""
        trace = handler.trace
        pending = self._pending
        pending.append((time.time(), handler.request_id, handler.key_name, handler.endpoint,
                        trace.mode, trace.query_type, trace.node, status, seconds,
                        trace.attempts, trace.waited_ms))
        if len(pending) >= FLUSH_LINES:
            self.flush()
        elif self._flushing is None:
            try:
                self._flushing = asyncio.get_running_loop().call_later(FLUSH_SECONDS,
                                                                       self.flush)
            except RuntimeError:  # no event loop (a test calling it directly): now
                self.flush()

    def lines(self, pending: list[tuple]) -> str:
        """The JSON lines of ``pending``'s fields, joined."""
        clock, service, worker, dumps = self._clock, self.service, self.worker, json.dumps
        return "".join([dumps({
            "ts": clock.format(now),
            "service": service,
            "worker": worker,
            "request_id": request_id,
            "key": key,
            "endpoint": endpoint,
            "mode": mode,
            "query_type": query_type,
            "node": node,
            "status": status,
            "elapsed_ms": round(1000.0 * seconds, 3),
            "attempts": attempts,
            "waited_ms": None if waited_ms is None else round(waited_ms, 3),
        }) + "\n" for (now, request_id, key, endpoint, mode, query_type, node, status, seconds,
                       attempts, waited_ms) in pending])

    def flush(self) -> None:
        """Write the lines waiting, in one write (the services call it as they stop)."""
        if self._flushing is not None:
            self._flushing.cancel()
            self._flushing = None
        if self._pending:
            pending, self._pending = self._pending, []
            sys.stderr.write(self.lines(pending))
            sys.stderr.flush()
