"""The Proxy's metrics: requests, its pools, what the health monitor sees of each node, and how
the router fared (retries, read-your-writes waits, refusals).

Request metrics are written once per request, from the request log (``record``); node and
pool gauges at each health check, so a scrape costs the service nothing and the values are at
most one check interval old (and work in multiprocess mode, where a collector run at scrape
time would only see the worker that happened to answer).
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from services.metrics import BUCKETS, LabelCache, values_follow_environment
from services.requestlog import Finished

# Refusals told apart by their status alone; the others carry ApiError.cause.
REFUSALS_BY_STATUS = {400: "bad_request", 404: "bad_request", 405: "bad_request",
                      403: "scope", 413: "too_large"}
RETRY_REASONS = ("not_caught_up", "busy", "unavailable")


def _seconds(milliseconds: float | None) -> float:
    return math.nan if milliseconds is None else milliseconds / 1000.0


def _flag(value: bool | None) -> float:
    return math.nan if value is None else float(bool(value))


class ProxyMetrics:
    """Every metric of the Proxy, made once per registry (``proxy_metrics``)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        values_follow_environment()
        def counter(name: str, text: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, text, labels, registry=registry)

        def gauge(name: str, text: str, labels: tuple[str, ...] = (),
                  mode: str = "livesum") -> Gauge:
            return Gauge(name, text, labels, registry=registry, multiprocess_mode=mode)

        def measured(name: str, text: str) -> Gauge:  # what each worker measures of a node
            return gauge(name, text, ("node",), "livemostrecent")

        self.requests = counter(
            "sqlgate_proxy_requests_total", "Requests answered, by endpoint, routing mode "
            "(empty for writes and transactions), query type, node, status and key",
            ("endpoint", "mode", "query_type", "node", "status", "key"))
        self.duration = Histogram(
            "sqlgate_proxy_request_duration_seconds", "Time to answer a request",
            ("endpoint", "mode"), registry=registry, buckets=BUCKETS)
        self.in_flight = gauge("sqlgate_proxy_in_flight_requests", "Requests being answered")
        self.pool_connections = gauge("sqlgate_proxy_pool_connections",
                                      "Pooled database connections open", ("node",))
        self.pool_in_use = gauge("sqlgate_proxy_pool_in_use",
                                 "Pooled database connections lent out (or being opened)",
                                 ("node",))
        self.pool_waiters = gauge("sqlgate_proxy_pool_waiters",
                                  "Statements waiting for a pooled connection", ("node",))
        self.node_up = measured("sqlgate_proxy_node_up", "1 when the last check reached the node")
        self.node_primary = measured("sqlgate_proxy_node_primary",
                                     "1 for the node the Proxy writes to (the elected primary)")
        self.node_fenced = measured(
            "sqlgate_proxy_node_fenced", "1 for a writable node at an epoch below the "
            "cluster's (an old primary): never written to")
        self.epoch = gauge("sqlgate_proxy_epoch", "The highest failover epoch seen on any node",
                           mode="livemax")
        self.semi_sync = gauge(
            "sqlgate_proxy_primary_semi_sync", "1 while the primary's semi-synchronous "
            "replication is on with a replica connected (writes are refused at 0)",
            mode="livemostrecent")
        self.io_running = measured("sqlgate_proxy_replica_io_running",
                                   "1 while the replica's IO thread runs")
        self.sql_running = measured("sqlgate_proxy_replica_sql_running",
                                    "1 while the replica's SQL thread runs")
        self.in_rotation = measured("sqlgate_proxy_replica_in_rotation",
                                    "1 while the replica serves reads")
        self.lag = measured("sqlgate_proxy_replica_lag_seconds",
                            "How long ago the oldest heartbeat the replica lacks was written")
        self.icmp_rtt = measured("sqlgate_proxy_node_icmp_rtt_seconds",
                                 "Smoothed ICMP round trip to the node")
        self.latency = measured("sqlgate_proxy_node_latency_seconds",
                                "Smoothed latency of the statements the Proxy ran there")
        self.read_waits = counter("sqlgate_proxy_read_waits_total",
                                  "Reads that waited on a replica for a read-your-writes token",
                                  ("node",))
        self.read_wait_seconds = counter("sqlgate_proxy_read_wait_seconds_total",
                                         "Time reads spent waiting for their token's position",
                                         ("node",))
        self.retries = counter("sqlgate_proxy_retries_total",
                               "Reads moved on to the next node, by the node that failed and why",
                               ("node", "reason"))
        self.refusals = counter("sqlgate_proxy_refusals_total", "Requests refused, by reason",
                                ("reason",))
        self.open_transactions = gauge("sqlgate_proxy_open_transactions",
                                       "Interactive transactions open")
        self._requests = LabelCache(self.requests)
        self._duration = LabelCache(self.duration)
        self._refusals = LabelCache(self.refusals)
        self._retries = LabelCache(self.retries)
        self._read_waits = LabelCache(self.read_waits)
        self._read_wait_seconds = LabelCache(self.read_wait_seconds)

    # --- per request (the request log calls this once per answer) ------------------------------

    def record(self, request: Finished) -> None:
        trace, endpoint, status = request.trace, request.endpoint, request.status
        self._requests(endpoint, trace.mode, trace.query_type, trace.node or "none",
                       str(status), request.key or "-").inc()
        self._duration(endpoint, trace.mode).observe(request.seconds)
        if status >= 400:
            reason = request.error_cause or REFUSALS_BY_STATUS.get(status)
            if reason is not None:
                self._refusals(reason).inc()

    # --- the router -----------------------------------------------------------------------------

    def retried(self, node: str, reason: str) -> None:
        self._retries(node, reason).inc()

    def read_waited(self, node: str, milliseconds: float) -> None:
        self._read_waits(node).inc()
        self._read_wait_seconds(node).inc(milliseconds / 1000.0)

    # --- the health monitor ---------------------------------------------------------------------

    def observe_nodes(self, nodes: list[Any], epoch: int = 0) -> None:
        """Every node's health, round trips and pool, as the monitor last saw them (the ICMP
        figure as the last ping left it: pings run on their own interval); which node is the
        primary, the epoch, and the primary's semi-sync."""
        self.epoch.set(epoch)
        for node in nodes:
            name = node.name
            self.node_up.labels(name).set(1.0 if node.up else 0.0)
            self.node_primary.labels(name).set(1.0 if node.role == "primary" else 0.0)
            self.node_fenced.labels(name).set(1.0 if node.role == "fenced" else 0.0)
            if node.role == "primary":
                self.semi_sync.set(_flag(node.semi_sync_ready))
            self.latency.labels(name).set(_seconds(node.latency_ms))
            self.icmp_rtt.labels(name).set(_seconds(node.icmp_rtt_ms))
            opened, lent, waiting = node.pool.usage()
            self.pool_connections.labels(name).set(opened)
            self.pool_in_use.labels(name).set(lent)
            self.pool_waiters.labels(name).set(waiting)
            if node.role != "replica":
                continue
            status = node.replication
            self.io_running.labels(name).set(_flag(status.io_running if status else None))
            self.sql_running.labels(name).set(_flag(status.sql_running if status else None))
            self.in_rotation.labels(name).set(1.0 if node.in_rotation else 0.0)
            self.lag.labels(name).set(_seconds(node.lag_ms))


@cache
def proxy_metrics(registry: CollectorRegistry = REGISTRY) -> ProxyMetrics:
    """The Proxy's metrics in ``registry``: one set per process (prometheus_client's values
    are the process's, and a registry refuses a second metric of the same name)."""
    return ProxyMetrics(registry)
