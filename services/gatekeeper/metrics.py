"""The Gatekeeper's metrics: requests by endpoint, status and key; refusals at the edge; what
went wrong reaching the Proxy; and each Proxy's share (labelled with its configured name, so
a bounded set: ``proxy`` alone with ``GATEKEEPER_PROXY_URL``).

All written once per request from the request log (``record``), except the connection-limit
refusals, which never become requests (``services.http.LimitedHTTPServer`` calls
``connection_refused``), and what ``services.gatekeeper.proxies`` sees as it happens: the
requests outstanding at each Proxy, its failures, and whether its last check was good; and
whether the shared rate store answers (``services.gatekeeper.ratestore``).
"""

from __future__ import annotations

from functools import cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from services.metrics import BUCKETS, LabelCache, values_follow_environment
from services.requestlog import Finished

# The Gatekeeper's own refusals, by status; of the Proxy's answers it relays, these.
OWN_REFUSALS = {401: "unauthenticated", 429: "rate_limited", 413: "too_large",
                400: "bad_request", 404: "bad_request", 405: "bad_request"}
RELAYED_REFUSALS = {403: "scope", 413: "too_large"}
PROXY_ERROR_STATUSES = frozenset({502, 503, 504})


class GatekeeperMetrics:
    """Every metric of the Gatekeeper, made once per registry (``gatekeeper_metrics``)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        values_follow_environment()
        self.requests = Counter(
            "sqlgate_gatekeeper_requests_total", "Requests answered, by endpoint, status and key",
            ("endpoint", "status", "key"), registry=registry)
        self.duration = Histogram(
            "sqlgate_gatekeeper_request_duration_seconds", "Time to answer a request",
            ("endpoint",), registry=registry, buckets=BUCKETS)
        self.in_flight = Gauge("sqlgate_gatekeeper_in_flight_requests",
                               "Requests being answered", registry=registry,
                               multiprocess_mode="livesum")
        self.rate_limited = Counter("sqlgate_gatekeeper_rate_limited_total",
                                    "Requests refused 429 because their key was over its rate",
                                    ("key",), registry=registry)
        self.refusals = Counter("sqlgate_gatekeeper_refusals_total",
                                "Requests (and connections) refused, by reason", ("reason",),
                                registry=registry)
        self.proxy_errors = Counter("sqlgate_gatekeeper_proxy_errors_total",
                                    "Forwards that failed on the way to or from the Proxy",
                                    ("reason",), registry=registry)
        self.proxy_requests = Counter(
            "sqlgate_gatekeeper_proxy_requests_total",
            "Requests forwarded, by the Proxy that answered them (or failed them last)",
            ("proxy",), registry=registry)
        self.proxy_outstanding = Gauge(
            "sqlgate_gatekeeper_proxy_outstanding_requests",
            "Requests sent to each Proxy and not answered yet", ("proxy",), registry=registry,
            multiprocess_mode="livesum")
        self.proxy_failures = Counter(
            "sqlgate_gatekeeper_proxy_failures_total",
            "Forwards to each Proxy that failed: unreachable (nothing sent), busy (no free "
            "connection, nothing sent), bad_answer or timeout (sent, no whole answer)",
            ("proxy", "reason"), registry=registry)
        self.proxy_up = Gauge(
            "sqlgate_gatekeeper_proxy_up", "1 when the Proxy's last health check answered 200",
            ("proxy",), registry=registry, multiprocess_mode="livemostrecent")
        self.rate_store_up = Gauge(
            "sqlgate_gatekeeper_rate_store_up",
            "1 while the shared rate store (GATEKEEPER_RATE_STORE) answers; 0 while this "
            "Gatekeeper grants each key its share of the rate from its own buckets",
            registry=registry, multiprocess_mode="livemin")
        self.rate_store_fallbacks = Counter(
            "sqlgate_gatekeeper_rate_store_fallbacks_total",
            "Rate-limited requests decided by this Gatekeeper's own buckets (rate / peers) "
            "because the shared rate store did not answer in time", registry=registry)
        self._requests = LabelCache(self.requests)
        self._proxy_requests = LabelCache(self.proxy_requests)
        self._duration = LabelCache(self.duration)
        self._rate_limited = LabelCache(self.rate_limited)
        self._refusals = LabelCache(self.refusals)
        self._proxy_errors = LabelCache(self.proxy_errors)

    def record(self, request: Finished) -> None:
        endpoint, status = request.endpoint, request.status
        key = request.key or "-"
        self._requests(endpoint, str(status), key).inc()
        self._duration(endpoint).observe(request.seconds)
        if request.trace.node is not None:  # the Proxy it went to
            self._proxy_requests(request.trace.node).inc()
        if status < 400:
            return
        if request.relayed:
            reason = RELAYED_REFUSALS.get(status)
        elif status in PROXY_ERROR_STATUSES:
            reason = None
            if request.error_cause is not None:
                self._proxy_errors(request.error_cause).inc()
        else:
            reason = OWN_REFUSALS.get(status)
            if status == 429:
                self._rate_limited(key).inc()
        if reason is not None:
            self._refusals(reason).inc()

    def connection_refused(self) -> None:
        self._refusals("connection_limit").inc()


@cache
def gatekeeper_metrics(registry: CollectorRegistry = REGISTRY) -> GatekeeperMetrics:
    """The Gatekeeper's metrics in ``registry``: one set per process."""
    return GatekeeperMetrics(registry)
