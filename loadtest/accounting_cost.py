"""What accounting for one request costs inside a service: its metrics and its JSON line, as
``services.requestlog.RequestLog`` writes them, timed in a loop in this process.

    python -m loadtest.accounting_cost [--requests 20000]

A whole service's cost moves by more than this from one second to the next on a shared
machine; this is the part metrics and request logs add, measured alone, so that it can be set
against the CPU time a request takes in the services (``bench_overhead`` prints both).

Timed two ways: ``hot``, request after request (the code and its data stay in the caches),
and ``cold``, with 8 MiB copied between requests as the other processes of a loaded machine
(MariaDB, the other service, the load generator) would, which is nearer what a service pays.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from services.gatekeeper.metrics import GatekeeperMetrics
from services.proxy.metrics import ProxyMetrics
from services.requestlog import RequestLog, RequestTrace

SETTINGS = {"metrics": (True, False), "metrics and line": (True, True), "line": (False, True)}
EVICT_BYTES = 8 * 1024 * 1024


class _Request:
    method = "POST"
    remote_ip = "10.0.0.21"  # the client's address, as a request line names it

    @staticmethod
    def request_time() -> float:
        return 0.00123


@dataclass
class _Handler:
    """What RequestLog reads of a Tornado handler, for a routed point select."""

    trace: RequestTrace
    endpoint: str = "POST /query"
    key_name: str | None = "bench"
    request_id: str = "0123456789abcdef0123456789abcdef"
    request: Any = _Request  # request_time() is all that is read
    error_cause: str | None = None
    in_flight_counted: bool = False
    passed_to: int | None = None

    @staticmethod
    def get_status() -> int:
        return 200


def microseconds_per_request(service: str, metrics: bool, line: bool,
                             requests: int = 20_000, cold: bool = False) -> float:
    """``started`` and ``finished`` of one request, on an event loop as in the service (so
    lines are batched, and a batch's cost is shared by its requests), best of three runs; the
    lines go to /dev/null. ``cold``: the caches flushed before each request, which is timed
    alone."""
    metric_set = ProxyMetrics if service == "proxy" else GatekeeperMetrics
    accounting = RequestLog(service, (lambda: metric_set(CollectorRegistry())) if metrics
                            else None, enabled=line)
    handler = _Handler(RequestTrace("random", "read", "replica1", 1, None))
    other = bytearray(EVICT_BYTES)

    def timed_cold() -> float:
        spent = 0
        for _ in range(requests):
            bytes(other)  # what another process would do to the caches meanwhile
            began = time.perf_counter_ns()
            accounting.started(handler)
            accounting.finished(handler)
            spent += time.perf_counter_ns() - began
        return spent / 1e9

    def timed_hot() -> float:
        began = time.perf_counter()
        for _ in range(requests):
            accounting.started(handler)
            accounting.finished(handler)
        return time.perf_counter() - began

    async def run() -> float:
        best = min((timed_cold if cold else timed_hot)() for _ in range(3))
        accounting.flush()
        return best

    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        return asyncio.run(run()) / requests * 1e6


def costs(requests: int = 20_000, cold: bool = False) -> dict[tuple[str, str], float]:
    """µs per request, by service and setting."""
    return {(service, setting): microseconds_per_request(service, *flags, requests=requests,
                                                         cold=cold)
            for service in ("proxy", "gatekeeper") for setting, flags in SETTINGS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    hot, cold = costs(args.requests), costs(args.requests // 10, cold=True)
    for service, setting in hot:
        print(f"{service:<11} {setting:<17} {hot[(service, setting)]:6.1f} µs per request hot, "
              f"{cold[(service, setting)]:6.1f} cold")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
