"""The report's server-side view: what the Proxy itself measured during a run, from Prometheus.

The client-side table times each request at the client (network, TLS and the Gatekeeper
included); the Proxy's own ``sqlgate_proxy_requests_total`` and
``sqlgate_proxy_request_duration_seconds`` histogram, as Prometheus scraped them over the run's
time window, show how many requests it served per mode and how long it took. ``collect``
queries ``/api/v1/query_range`` and ``/api/v1/query``; ``plot`` draws requests/s and p95 by
mode over the run; ``markdown`` is the report's section.

The totals of the run are exact: the counters' (and buckets') sums at the run's end minus
those at its start, where a label set that only appeared during the run counts from zero (a
fresh Proxy's first requests of a mode). The charts use ``rate``, as a dashboard would: it
extrapolates between scrapes and sees nothing of a label set's first scrape, so on a fresh Proxy
a mode's first few requests are missing from them, and with a long scrape interval a short run
is only a few points.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI

import matplotlib.pyplot as plt

from services.client import TlsFiles

ENDPOINT = "POST /query"  # what the report sends
REQUESTS = f'sqlgate_proxy_requests_total{{endpoint="{ENDPOINT}"}}'
BUCKETS = f'sqlgate_proxy_request_duration_seconds_bucket{{endpoint="{ENDPOINT}"}}'
# Requests/s by mode: the histogram's count, labelled by endpoint and mode only. The counter's
# series also carry node, status and key, and a series born during the run (a node a mode had
# not used before) has no earlier sample for ``rate`` to count its first requests from.
COUNTS = f'sqlgate_proxy_request_duration_seconds_count{{endpoint="{ENDPOINT}"}}'
DEFAULT_SCRAPE_S = 15.0  # when Prometheus does not say how often it scrapes the Proxy
POINTS = 200  # per series over the run


class PrometheusError(RuntimeError):
    """Prometheus could not be asked, or refused the query."""


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    times: list[float]  # Unix seconds
    values: list[float]

    @property
    def mode(self) -> str:
        return self.labels.get("mode", "")


@dataclass(frozen=True)
class ModeTotal:
    """One mode and query type over the whole run, as the Proxy counted and timed it."""

    mode: str
    query_type: str
    requests: float  # the Proxy's count during the run
    p50_ms: float  # by mode (the histogram has no query type); NaN without requests
    p95_ms: float


@dataclass
class ServerView:
    url: str
    start: float
    end: float
    step_s: float
    window_s: float
    requests: list[Series] = field(default_factory=list)  # requests/s by mode
    p95: list[Series] = field(default_factory=list)  # seconds, by mode
    totals: list[ModeTotal] = field(default_factory=list)

    @property
    def points(self) -> int:
        return sum(len(s.values) for s in (*self.requests, *self.p95))

    @property
    def has_data(self) -> bool:
        return self.points > 0

    def summary(self) -> dict:
        """For run.json: the window and how much came back."""
        return {"url": self.url, "start": self.start, "end": self.end, "step_s": self.step_s,
                "window_s": self.window_s, "points": self.points,
                "series": {"requests": len(self.requests), "p95": len(self.p95)},
                "peak_requests_per_s": {s.mode: max(s.values) for s in self.requests},
                "totals": [t.__dict__ for t in self.totals]}


class Prometheus:
    """The HTTP API of one Prometheus (``https`` checked against ``tls``'s CA)."""

    def __init__(self, url: str, tls: TlsFiles | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._context = tls.context() if tls and self.url.startswith("https://") else None

    def _get(self, path: str, **params: object) -> object:
        address = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(address, timeout=self.timeout,
                                        context=self._context) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as error:  # a bad query answers 400 with a JSON error
            try:
                body = json.load(error)
            except ValueError:
                raise PrometheusError(f"{address}: HTTP {error.code}") from None
        except (OSError, ValueError) as error:
            raise PrometheusError(f"cannot ask Prometheus at {self.url}: {error}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"Prometheus refused {params.get('query')!r}: "
                                  f"{body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float) -> list[tuple[dict[str, str], float]]:
        result = self._get("query", query=expr, time=f"{at:.3f}")["result"]
        return [(r["metric"], float(r["value"][1])) for r in result]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        result = self._get("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}",
                           step=f"{step:g}")["result"]
        series = []
        for r in result:
            points = [(float(t), float(v)) for t, v in r["values"] if math.isfinite(float(v))]
            if points:
                series.append(Series(r["metric"], [t for t, _ in points],
                                     [v for _, v in points]))
        return sorted(series, key=lambda s: sorted(s.labels.items()))

    def scrape_interval(self, job: str = "proxy") -> float:
        """How often Prometheus scrapes ``job`` (its targets say), else DEFAULT_SCRAPE_S."""
        for target in self._get("targets", state="active")["activeTargets"]:
            if target.get("labels", {}).get("job") == job and target.get("scrapeInterval"):
                return _seconds(target["scrapeInterval"])
        return DEFAULT_SCRAPE_S

    def wait_for_scrape_after(self, moment: float, timeout: float) -> bool:
        """Wait until the Proxy's counters were scraped after ``moment`` (the run's last
        requests are in Prometheus only then); False if they never are, or do not exist."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.query(f"max(timestamp({REQUESTS}))", time.time())
            if not found:
                return False
            if found[0][1] >= moment:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


def _seconds(duration: str) -> float:
    """A Prometheus duration such as ``15s``, ``1m``, ``1m30s``, ``500ms``."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    total, number = 0.0, ""
    i = 0
    while i < len(duration):
        char = duration[i]
        if char.isdigit() or char == ".":
            number += char
            i += 1
            continue
        unit = "ms" if duration.startswith("ms", i) else char
        total += float(number) * units[unit]
        number, i = "", i + len(unit)
    return total


def collect(prometheus: Prometheus, start: float, end: float) -> ServerView:
    """Requests/s and p95 by mode over [start, end], and each mode's totals over the run."""
    scrape = prometheus.scrape_interval()
    prometheus.wait_for_scrape_after(end, timeout=2 * scrape + 5)
    span = max(end - start, 1.0)
    step = max(1.0, round(span / POINTS))
    # A rate needs two samples in its window; four scrapes smooth it without hiding the run.
    window = max(4 * scrape, 2 * step)
    view = ServerView(prometheus.url, start, end, step, window)
    w = f"{window:g}s"
    # The run's last requests reach Prometheus at the first scrape after it ended: the charts
    # go on for one window past the end (waiting for it to pass), or the last mode shows 0.
    until = end + window
    time.sleep(max(0.0, until - time.time()))
    view.requests = prometheus.query_range(
        f"sum by (mode) (rate({COUNTS}[{w}]))", start, until, step)
    view.p95 = prometheus.query_range(
        f"histogram_quantile(0.95, sum by (mode, le) (rate({BUCKETS}[{w}])))", start, until,
        step)
    # The whole run: the sums after its last scrape (now) minus those before it started.
    at = max(time.time(), end)
    quantiles = {
        q: {labels.get("mode", ""): value * 1000 for labels, value in prometheus.query(
            f"histogram_quantile({q}, {during(BUCKETS, 'mode, le', at - start)})", at)}
        for q in (0.5, 0.95)}
    counts = prometheus.query(during(REQUESTS, "mode, query_type", at - start), at)
    view.totals = sorted(
        (ModeTotal(labels.get("mode", ""), labels.get("query_type", ""), value,
                   quantiles[0.5].get(labels.get("mode", ""), math.nan),
                   quantiles[0.95].get(labels.get("mode", ""), math.nan))
         for labels, value in counts if value > 0),
        key=lambda t: (t.mode, t.query_type))
    return view


def during(selector: str, by: str, seconds: float) -> str:
    """PromQL for how much the counters of ``selector`` grew, per ``by`` group, over the
    ``seconds`` before the query's time: the sum now minus the sum then, or the whole sum for a
    group that did not exist then."""
    now = f"sum by ({by}) ({selector})"
    return f"(({now} - sum by ({by}) ({selector} offset {round(seconds * 1000)}ms)) or {now})"


def mode_name(mode: str) -> str:
    return mode or "(no mode: writes)"


def plot(view: ServerView, path: Path, title: str) -> None:
    """Two panels over the run's time: the Proxy's requests/s and its p95 (ms), by mode."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), dpi=120, sharex=True)
    modes = sorted({s.mode for s in (*view.requests, *view.p95)})
    colors = {mode: plt.cm.tab10(i % 10) for i, mode in enumerate(modes)}
    for axis, series, scale, label in ((top, view.requests, 1.0, "requests/s"),
                                       (bottom, view.p95, 1000.0, "p95 (ms)")):
        for s in series:
            axis.plot([t - view.start for t in s.times], [v * scale for v in s.values],
                      color=colors[s.mode], label=mode_name(s.mode), linewidth=1.6)
        axis.set_ylabel(label)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        if not series:
            axis.text(0.5, 0.5, "no data", transform=axis.transAxes, ha="center", va="center",
                      color="grey")
    if view.requests:
        top.legend(loc="upper left", ncol=min(len(modes), 5), fontsize=8)
    bottom.set_xlabel(f"seconds since the run started (step {view.step_s:g} s, "
                      f"rate over {view.window_s:g} s)")
    top.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(view: ServerView, image: str | None) -> str:
    """The report's section: how the figures were made, the totals table, the image."""
    start = time.strftime("%H:%M:%S", time.gmtime(view.start))
    end = time.strftime("%H:%M:%S", time.gmtime(view.end))
    parts = [
        "## Server side (Prometheus)\n",
        f"From `{view.url}`: the Proxy's `sqlgate_proxy_requests_total` and "
        f"`sqlgate_proxy_request_duration_seconds` for `{ENDPOINT}`, {start}-{end} UTC, step "
        f"{view.step_s:g} s, rates over {view.window_s:g} s. The Proxy's own time per request, "
        "without the network, TLS and the Gatekeeper; the table counts every request the Proxy "
        "served from the run's start to its end (other clients' too).\n",
    ]
    if not view.has_data:
        parts.append("Prometheus had no `sqlgate_proxy_*` series for this window: is the "
                     "Proxy's metrics port scraped?\n")
        return "\n".join(parts)
    lines = ["| Mode | Type | Requests (Proxy) | P50 (ms) | P95 (ms) |",
             "|---|---|---:|---:|---:|"]
    for total in view.totals:
        lines.append(f"| {mode_name(total.mode)} | {total.query_type or '-'} | "
                     f"{total.requests:.0f} | {_ms(total.p50_ms)} | {_ms(total.p95_ms)} |")
    parts.append("\n".join(lines) + "\n")
    if image:
        parts.append(f"![server side]({image})\n")
    return "\n".join(parts)


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"
