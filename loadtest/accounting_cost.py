"""What accounting for one request costs inside a service: its metrics and its JSON line, as
``services.requestlog.RequestLog`` writes them, timed in a loop in this process.

    python -m loadtest.accounting_cost [--requests 20000]

A whole service's cost moves by more than this from one second to the next on a shared
machine; this is the part metrics and request logs add, measured alone, so that it can be set
against the CPU time a request takes in the services (``bench_overhead`` prints both). The
loop runs the code hot: in a loaded service, between requests of other processes, the same
code runs from colder caches and can take a few times as long.
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


class _Request:
    method = "POST"

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
                             requests: int = 20_000) -> float:
    """``started`` and ``finished`` of one request, on an event loop as in the service (so
    lines are batched), best of three runs; the lines go to /dev/null."""
    metric_set = ProxyMetrics if service == "proxy" else GatekeeperMetrics
    accounting = RequestLog(service, (lambda: metric_set(CollectorRegistry())) if metrics
                            else None, enabled=line)
    handler = _Handler(RequestTrace("random", "read", "replica1", 1, None))

    async def run() -> float:
        best = float("inf")
        for _ in range(3):
            began = time.perf_counter()
            for _ in range(requests):
                accounting.started(handler)
                accounting.finished(handler)
            best = min(best, time.perf_counter() - began)
        accounting.flush()
        return best

    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        return asyncio.run(run()) / requests * 1e6


def costs(requests: int = 20_000) -> dict[tuple[str, str], float]:
    """µs per request, by service and setting."""
    return {(service, setting): microseconds_per_request(service, *flags, requests=requests)
            for service in ("proxy", "gatekeeper") for setting, flags in SETTINGS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    for (service, setting), cost in costs(args.requests).items():
        print(f"{service:<11} {setting:<17} {cost:6.1f} µs per request")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
