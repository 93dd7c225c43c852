"""Where a finished request is accounted for, once, in each service: its metrics and its log line.

Tornado calls the application's ``log_function`` exactly once per answered request; that is
the one place both the request metrics and the JSON line are written, from what the handler
noted on the way (``RequestTrace``, the endpoint, the key's name, the request id). The line is
one ``json.dumps`` of fixed fields, written straight to stderr (the service's log, beside its
``logging`` lines, with nothing else on the line), and never holds SQL text, parameter values,
API keys or passwords: none of them is a field.

    {"ts": "2025-01-01T12:00:00.123Z", "service": "proxy", "worker": 0, "request_id": "...",
     "client": "10.0.0.21", "key": "ci", "endpoint": "POST /query", "mode": "random",
     "query_type": "read", "node": "replica1", "status": 200, "elapsed_ms": 1.234,
     "attempts": 1, "waited_ms": null}

A request's metrics and line are made in batches, as nginx's ``access_log ... buffer= flush=``
writes its lines: at most ``FLUSH_SECONDS`` after the first request waiting, as soon as
``FLUSH_LINES`` wait, before every scrape of this process, and when the service stops. Made
in the middle of each answer they cost the request several times more (measured: 58 µs a
point select in the Proxy, against about 30 in a batch), and a line or a count a fifth of a
second late costs nobody anything. A process killed with SIGKILL loses the lines and the
counts of its last fifth of a second (a worker's other counts are in its multiprocess files).

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
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

WORKER_ENV = "SQLGATE_WORKER"
SLOW_SECONDS = 1.0
FLUSH_SECONDS = 0.2
FLUSH_LINES = 256

log = logging.getLogger(__name__)
# This process's request logs, for a scrape to flush (flush_all).
_LOGS: weakref.WeakSet[RequestLog] = weakref.WeakSet()


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


@dataclass(slots=True)
class Finished:
    """A request as its accounting saw it finish: what its metrics and its line are made of
    (the metric sets' ``record`` reads it). ``relayed``: the Gatekeeper relayed the Proxy's
    answer. ``client``: the peer's address (behind a load balancer that speaks the PROXY
    protocol, the client's it named); None for a request that came over a unix socket (the
    Proxy's workers pass each other requests so)."""

    at: float  # time.time() when it finished
    request_id: str | None
    key: str | None
    endpoint: str
    status: int
    seconds: float
    trace: RequestTrace
    error_cause: str | None = None
    relayed: bool = False
    client: str | None = None


def client_address(remote_ip: str) -> str | None:
    """A request's ``remote_ip`` for its line: Tornado says 0.0.0.0 for a unix socket's peer,
    which is no address at all."""
    return None if remote_ip == "0.0.0.0" else remote_ip


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
    worker, after any fork and once PROMETHEUS_MULTIPROC_DIR is set): its ``record(finished)``
    writes a request's metrics (in the batch, with its line), and its ``in_flight`` gauge is
    counted up once per request and down exactly once, whether the request finished or its
    client went away. ``metrics`` None: a service without a metrics port records none
    (nobody could read them)."""

    def __init__(self, service: str, metrics: Callable[[], Any] | None,
                 enabled: bool = True) -> None:
        self.service = service
        self._metrics_of = metrics
        self._metrics: Any = None
        self.enabled = enabled
        self._clock = _Clock()
        self._worker: int | None = None
        self._pending: list[Finished] = []  # counted and logged at the next flush
        # Requests of this process being answered (what a stopping service waits for).
        self.in_flight = 0
        self._flushing: asyncio.TimerHandle | None = None
        os.register_at_fork(after_in_child=self._forget_worker)
        atexit.register(self.flush)
        _LOGS.add(self)

    def _forget_worker(self) -> None:
        self._worker = None  # a forked worker learns its own index from its environment
        self._pending, self._flushing = [], None
        self.in_flight = 0

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
        self.in_flight += 1
        handler.in_flight_counted = True
        if self._metrics_of is not None:
            self.metrics.in_flight.inc()

    def abandoned(self, handler: Any) -> None:
        if handler.in_flight_counted:
            handler.in_flight_counted = False
            self.in_flight -= 1
            if self._metrics_of is not None:
                self.metrics.in_flight.dec()

    def finished(self, handler: Any) -> None:
        self.abandoned(handler)
        if getattr(handler, "passed_to", None) is not None:
            return  # another worker answered it: it counts the request and logs its line
        status = handler.get_status()
        seconds = handler.request.request_time()
        if self._metrics_of is not None or self.enabled:
            self._keep(Finished(time.time(), handler.request_id, handler.key_name,
                                handler.endpoint, status, seconds, handler.trace,
                                handler.error_cause, getattr(handler, "relayed", False),
                                client_address(handler.request.remote_ip)))
        if not self.enabled and (status >= 500 or seconds > SLOW_SECONDS):
            log.warning("%d %s %s %.1fms request_id=%s", status, handler.request.method,
                        handler.endpoint, 1000.0 * seconds, handler.request_id)

    def _keep(self, request: Finished) -> None:
        """Keep a finished request for the next batch, which counts it in the metrics and
        makes its line. Both cost a request a few times more when done in the middle of its
        answer than when done a hundred in a row (the code and its data are then in the
        caches), and nothing needs them sooner: a scrape of this process first writes what
        waits (``flush_all``)."""
        pending = self._pending
        pending.append(request)
        if len(pending) >= FLUSH_LINES:
            self.flush()
        elif self._flushing is None:
            try:
                self._flushing = asyncio.get_running_loop().call_later(FLUSH_SECONDS,
                                                                       self.flush)
            except RuntimeError:  # no event loop (a test calling it directly): now
                self.flush()

    def lines(self, pending: list[Finished]) -> str:
        """The JSON lines of ``pending``, joined: one ``json.dumps`` each (its default
        encoder is made once and cached). Not through ``logging``: a record, a handler lock
        and a formatter per line would cost more than the line, and the line is already what
        it should be (a service's stderr is its log)."""
        clock, service, worker, dumps = self._clock, self.service, self.worker, json.dumps
        return "".join([dumps({
            "ts": clock.format(request.at),
            "service": service,
            "worker": worker,
            "request_id": request.request_id,
            "client": request.client,
            "key": request.key,
            "endpoint": request.endpoint,
            "mode": request.trace.mode,
            "query_type": request.trace.query_type,
            "node": request.trace.node,
            "status": request.status,
            "elapsed_ms": round(1000.0 * request.seconds, 3),
            "attempts": request.trace.attempts,
            "waited_ms": (None if request.trace.waited_ms is None
                          else round(request.trace.waited_ms, 3)),
        }) + "\n" for request in pending])

    def flush(self) -> None:
        """Count the requests waiting and write their lines, in one write (a scrape and the
        service's stop call it)."""
        if self._flushing is not None:
            self._flushing.cancel()
            self._flushing = None
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        if self._metrics_of is not None:
            record = self.metrics.record
            for request in pending:
                record(request)
        if self.enabled:
            sys.stderr.write(self.lines(pending))
            sys.stderr.flush()


def flush_all() -> None:
    """Every request log of this process written out: what a scrape calls first, so that it
    counts every request answered before it (one service has one or two request logs)."""
    for requests in list(_LOGS):
        requests.flush()
