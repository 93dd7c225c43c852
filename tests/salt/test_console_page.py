"""The monitor role's console page (salt/sqlgate/monitor/files/consoles/sqlgate.html), served by
a real Prometheus scraping a real Proxy and Gatekeeper (tests/monitoring.py) and looked at in
headless Chromium: every chart drew data points from /api/v1/query_range, and the tables that
Prometheus filled in on the server show the cluster's values.

The services' metrics endpoints (PROXY_METRICS_PORT, GATEKEEPER_METRICS_PORT) are what is
scraped; nothing stands in for them.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from html.parser import HTMLParser

import pytest

from tests.monitoring import dump_dom, png_size, screenshot

TABLE = "sqlgate_test.console_page"
MODES = ("direct", "random", "ping", "least")
# Charts that must have drawn something after a few seconds of traffic; "errors" may be empty.
CHARTS_WITH_DATA = ("requests", "latency", "reads", "lag", "pools")
# Where a copy of the screenshot goes, if set (the test's own is under its tmp_path).
SCREENSHOT_ENV = "SQLGATE_CONSOLE_SCREENSHOT"


class Page(HTMLParser):
    """The charts' <svg> attributes, their paths, and the tables' cell texts, by id."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, dict[str, str]] = {}
        self.paths: dict[str, list[dict[str, str]]] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self._chart: str | None = None
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "svg" and "data-chart" in attributes:
            self._chart = attributes["data-chart"]
            self.charts[self._chart] = attributes
            self.paths[self._chart] = []
        elif tag == "path" and self._chart:
            self.paths[self._chart].append(attributes)
        elif tag == "table":
            self._table = attributes.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._chart = None
        elif tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def rows(self, table: str) -> dict[str, list[str]]:
        """Data rows by their first cell (the header row left out)."""
        return {row[0]: row for row in self.tables[table][1:] if row}


def send_traffic(services, seconds: float) -> int:
    """Reads in every mode and writes, through the Gatekeeper, for ``seconds``."""
    sent = 0
    deadline = time.monotonic() + seconds
    with services.gatekeeper.client(services.api_key) as client:
        answer = client.query(f"CREATE TABLE IF NOT EXISTS {TABLE} "
                              "(id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
        assert answer.ok, answer.json
        while time.monotonic() < deadline:
            for mode in MODES:
                answer = client.query("SELECT COUNT(*) FROM sakila.actor", mode=mode)
                assert answer.ok, answer.json
            answer = client.query(f"INSERT INTO {TABLE} (v) VALUES (?)", [sent])
            assert answer.ok, answer.json
            sent += len(MODES) + 1
            time.sleep(0.02)
    return sent


@pytest.fixture(scope="module")
def page_url(metrics_services, prometheus) -> str:
    """The console page once Prometheus has a few seconds of real traffic of every kind."""
    send_traffic(metrics_services, seconds=6)
    prometheus.wait_for('sum(rate(sqlgate_proxy_requests_total{query_type="read"}[1m])) > 0')
    prometheus.wait_for("sum(rate(sqlgate_gatekeeper_requests_total[1m])) > 0")
    prometheus.wait_for("sqlgate_proxy_replica_lag_seconds")
    send_traffic(metrics_services, seconds=2)
    time.sleep(2)  # two more scrapes of the last requests (interval 1 s)
    return prometheus.url + "/consoles/sqlgate.html?range=5m"


def test_charts_draw_the_scraped_series(page_url):
    page = Page()
    page.feed(dump_dom(page_url))
    assert set(CHARTS_WITH_DATA) | {"errors"} <= set(page.charts), page.charts
    for name in CHARTS_WITH_DATA:
        chart = page.charts[name]
        assert chart["data-state"] == "ok", (name, chart)
        assert int(chart["data-series"]) >= 1 and int(chart["data-points"]) >= 2, (name, chart)
        drawn = [p for p in page.paths[name] if p.get("data-name")]
        assert len(drawn) == int(chart["data-series"]), (name, drawn)
        assert all(p["d"].startswith("M") and int(p["data-points"]) >= 1 for p in drawn), name
    assert page.charts["errors"]["data-state"] in ("ok", "empty"), page.charts["errors"]

    def names(chart: str) -> set[str]:
        return {p["data-name"] for p in page.paths[chart] if p.get("data-name")}

    assert set(MODES) <= names("requests") and "gatekeeper" in names("requests")
    assert {f"p95 {mode}" for mode in MODES} <= names("latency")
    # Reads went to the replicas (direct mode: the primary); the lag is the replicas'.
    assert {"replica1", "replica2", "primary"} <= names("reads")
    assert {"replica1", "replica2"} <= names("lag")
    assert {"primary", "replica1", "replica2"} <= names("pools")


def test_tables_show_current_values(page_url):
    page = Page()
    page.feed(dump_dom(page_url))
    number = re.compile(r"^\d+(\.\d+)?$")
    services = page.rows("table-services")
    assert set(services) == {"gatekeeper", "proxy"}, page.tables["table-services"]
    for row in services.values():
        assert row[2] == "yes", row  # scraped
        assert number.match(row[3]) and float(row[3]) > 0, row  # requests/s
        assert row[5] != "-", row  # a p95
    modes = page.rows("table-modes")
    assert set(MODES) <= set(modes), page.tables["table-modes"]
    assert all(float(modes[mode][1]) > 0 for mode in MODES), modes
    # The primary the Proxy elected, the epoch (the loopback trio's promotion wrote one), and
    # semi-sync on (writes went through).
    primary = page.rows("table-primary")
    assert set(primary) == {"proxy"}, page.tables["table-primary"]
    assert primary["proxy"][1] == "primary", primary
    assert number.match(primary["proxy"][2]) and int(primary["proxy"][2]) >= 1, primary
    assert primary["proxy"][3] == "on", primary
    assert primary["proxy"][4] == "0", primary  # no failover while the page was made
    nodes = page.rows("table-nodes")
    assert set(nodes) == {"primary", "replica1", "replica2"}, page.tables["table-nodes"]
    assert [nodes[n][1] for n in ("primary", "replica1", "replica2")] == \
        ["primary", "replica", "replica"]
    assert all(row[2] == "yes" for row in nodes.values()), nodes
    for replica in ("replica1", "replica2"):
        assert nodes[replica][3] == "yes", nodes[replica]  # in rotation
        assert nodes[replica][4] == "yes / yes", nodes[replica]  # I/O and SQL threads
        assert nodes[replica][5].endswith(" s"), nodes[replica]  # a lag in seconds


def test_screenshot(page_url, tmp_path):
    path = screenshot(page_url, tmp_path / "sqlgate-console.png")
    assert png_size(path) == (1280, 1400)
    assert path.stat().st_size > 30_000  # charts and tables, not a blank page
    if copy := os.environ.get(SCREENSHOT_ENV):
        shutil.copy(path, copy)
    print(f"console screenshot: {path}")
