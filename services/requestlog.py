"""Where a finished request is accounted for, once, in each service: its metrics and its log line.

Tornado calls the application's ``log_function`` exactly once per answered request; that is
the one place both the request metrics and the JSON line are written, from what the handler
noted on the way (``RequestTrace``, the endpoint, the key's name, the request id). The line is
one ``json.dumps`` of fixed fields, on the ``sqlgate.requests`` logger (stderr, no other
formatting), and never holds SQL text, parameter values, API keys or passwords: none of them
is a field.

    {"ts": "2025-01-01T12:00:00.123Z", "service": "proxy", "worker": 0, "request_id": "...",
     "key": "ci", "endpoint": "POST /query", "mode": "random", "query_type": "read",
     "node": "replica1", "status": 200, "elapsed_ms": 1.234, "attempts": 1, "waited_ms": null}

With ``log_requests`` off, only failures (5xx) and slow answers (over 1 s) get a line, in the
service's ordinary log.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

REQUESTS_LOGGER = "sqlgate.requests"
WORKER_ENV = "SQLGATE_WORKER"
SLOW_SECONDS = 1.0

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


def request_logger() -> logging.Logger:
    """``sqlgate.requests``: message only, on stderr, not through the root logger's format."""
    logger = logging.getLogger(REQUESTS_LOGGER)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def utc_timestamp(now: float) -> str:
    """ISO 8601 in UTC with milliseconds, ``2025-01-01T12:00:00.123Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


class _Clock:
    """``utc_timestamp`` with the formatting of the seconds done once a second, not once a
    line (``strftime`` is most of its cost)."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second, self._prefix = -1, ""

    def now(self) -> str:
        now = time.time()
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
    away."""

    def __init__(self, service: str, metrics: Callable[[], Any], enabled: bool = True) -> None:
        self.service = service
        self._metrics_of = metrics
        self._metrics: Any = None
        self.enabled = enabled
        self.logger = request_logger()
        self._clock = _Clock()
        self._worker: int | None = None
        os.register_at_fork(after_in_child=self._forget_worker)

    def _forget_worker(self) -> None:
        self._worker = None  # a forked worker learns its own index from its environment

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
        self.metrics.record(handler, status, seconds)
        if self.enabled:
            self.write(handler, status, seconds)
        elif status >= 500 or seconds > SLOW_SECONDS:
            log.warning("%d %s %s %.1fms request_id=%s", status, handler.request.method,
                        handler.endpoint, 1000.0 * seconds, handler.request_id)

    def write(self, handler: Any, status: int, seconds: float) -> None:
        """One line: json.dumps with its default (cached) encoder, and a log record made
        directly (``Logger.info`` would also walk the stack for the caller's file and line,
        which nobody reads here)."""
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        trace = handler.trace
        waited_ms = trace.waited_ms
        line = json.dumps({
            "ts": self._clock.now(),
            "service": self.service,
            "worker": self.worker,
            "request_id": handler.request_id,
            "key": handler.key_name,
            "endpoint": handler.endpoint,
            "mode": trace.mode,
            "query_type": trace.query_type,
            "node": trace.node,
            "status": status,
            "elapsed_ms": round(1000.0 * seconds, 3),
            "attempts": trace.attempts,
            "waited_ms": None if waited_ms is None else round(waited_ms, 3),
        })
        logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, line, None,
                                        None))
