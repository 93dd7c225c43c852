"""The Gatekeeper's metrics: requests by endpoint, status and key; refusals at the edge; what
went wrong reaching the Proxy.

All written once per request from the request log (``record``), except the connection-limit
refusals, which never become requests (``services.http.LimitedHTTPServer`` calls
``connection_refused``).
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
        self._requests = LabelCache(self.requests)
        self._duration = LabelCache(self.duration)
        self._rate_limited = LabelCache(self.rate_limited)
        self._refusals = LabelCache(self.refusals)
        self._proxy_errors = LabelCache(self.proxy_errors)

    def record(self, request: Finished) -> None:
        endpoint, status = request.endpoint, request.status
        key = request.key or "-"
        self._requests(endpoint, str(status), key).inc()
        self._duration(endpoint).observe(request.seconds)
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
