"""Prometheus metrics of both services: the registry, the metrics port's application, and what
both services' metric sets share.

One process, or several workers of one service (``services.workers``): when the environment
variable ``PROMETHEUS_MULTIPROC_DIR`` is set before ``prometheus_client`` is first imported,
every value lives in a per-process file of that directory and ``GET /metrics``, whichever
worker answers it, sums them all up with ``MultiProcessCollector``; gauges then say how
(``livesum`` for what each worker holds, ``livemostrecent`` for what each one measures of the
same database nodes). Without it, the default registry of the process is exposed, with
``prometheus_client``'s own process and Python collectors.

The metrics port is never the service's port: on the public Gatekeeper, ``/metrics`` would
tell anyone the key names and the traffic. See ``metrics_listener`` in each service's ``app``.
"""

from __future__ import annotations

import os
from functools import cache
from importlib import metadata
from typing import Any

import tornado.web
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from services.http import JsonHandler, NotFoundHandler
from services.requestlog import flush_all

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Request durations from 0.1 ms (a refusal) to 10 s (the query timeout).
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
           1, 2.5, 5, 10)


def version() -> str:
    """The installed sqlgate's version (the wheel the hosts run), or ``dev`` in a checkout."""
    try:
        return metadata.version("sqlgate")
    except metadata.PackageNotFoundError:
        return "dev"


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def values_follow_environment() -> None:
    """Make the metrics created from now on multiprocess ones if ``PROMETHEUS_MULTIPROC_DIR``
    is set now, even when ``prometheus_client`` was imported before it was (it picks its value
    class once, at import, with ``values.get_value_class()``; a service's modules import it
    before a worker runner can set the variable). Called before each metric set is made."""
    if multiprocess() and not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.get_value_class()


def exposition_registry(registry: CollectorRegistry = REGISTRY) -> CollectorRegistry:
    """What ``/metrics`` shows: every live and dead worker's values from the multiprocess
    directory, or ``registry`` (this process's) when there is none."""
    if not multiprocess():
        return registry
    aggregated = CollectorRegistry()
    MultiProcessCollector(aggregated)
    return aggregated


@cache
def build_info(registry: CollectorRegistry = REGISTRY) -> Gauge:
    """``sqlgate_build_info{service,version} 1``: which code answers, for dashboards and for
    telling two versions apart during a rolling deploy. One gauge per registry (a second
    would be refused as a duplicate)."""
    values_follow_environment()
    return Gauge("sqlgate_build_info", "The sqlgate service and version running (always 1)",
                 ("service", "version"), registry=registry, multiprocess_mode="livemax")


def announce(service: str, registry: CollectorRegistry = REGISTRY) -> None:
    """Set the build info of ``service`` in this process (each worker does, after its fork:
    a value set before it would stay in the parent's file)."""
    build_info(registry).labels(service, version()).set(1)


class LabelCache:
    """A metric's children by label values, looked up in one dict access.

    ``metric.labels(...)`` checks and joins its arguments and takes a lock on every call; on
    the request path the same few label tuples come back again and again, so each child is
    made once and kept."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*labels)
        return child


class MetricsHandler(JsonHandler):
    """``GET /metrics`` in Prometheus's text exposition format, version 0.0.4: the one every
    Prometheus 2 reads (``prometheus_client``'s newer default announces 1.0.0)."""

    def initialize(self, registry: CollectorRegistry | None) -> None:
        self.registry = registry

    def get(self) -> None:
        # Without a registry of its own, decided at each scrape: the application may be built
        # before the worker runner sets PROMETHEUS_MULTIPROC_DIR.
        flush_all()  # the requests this process answered and has not counted yet
        registry = self.registry or exposition_registry()
        self.set_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)
        self.finish(generate_latest(registry))


def _quiet(handler: tornado.web.RequestHandler) -> None:
    """Scrapes are not requests of the service: no log line, no metric."""


def metrics_app(registry: CollectorRegistry | None = None) -> tornado.web.Application:
    """The metrics port's application: ``GET /metrics`` only (``registry``: by default what
    ``exposition_registry`` gives at each scrape), a JSON 404 for anything else."""
    return tornado.web.Application(
        [(r"/metrics", MetricsHandler, {"registry": registry})],
        default_handler_class=NotFoundHandler, log_function=_quiet)
