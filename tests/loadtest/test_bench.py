"""The bench's own logic, without a stack: which rows are compared, and what wrk is told."""

from __future__ import annotations

import pytest

from loadtest import accounting_cost
from loadtest.bench_overhead import (
    HttpTarget,
    Measurement,
    cells,
    render,
    target_headers,
    verdict,
)
from loadtest.bench_workers import gain


def row(target: str, rps: float, p50: float, operation: str = "point select",
        clients: int = 16) -> Measurement:
    return Measurement(target, operation, clients, rps, p50, p50 * 2, 0)


def test_security_is_priced_against_plain_and_the_baseline_against_plain():
    rows = [row("gatekeeper (TLS)", 1500, 2.0), row("gatekeeper (plain)", 2000, 1.5),
            row("proxy (TLS)", 3000, 1.0), row("proxy (plain)", 4000, 0.8),
            row("gatekeeper @v1", 2500, 1.2), row("driver (TLS)", 9000, 0.2)]
    text = verdict(rows, 16)
    assert "Gatekeeper (TLS) point select, 16 clients: 1500 req/s (target >= 2000: MISSED)" \
        in text
    assert "gatekeeper point select, 16 client(s): 75.0% of plain's req/s, p50 +0.500 ms" in text
    assert "proxy point select, 16 client(s): 75.0% of plain's req/s, p50 +0.200 ms" in text
    assert "gatekeeper (plain) point select, 16 client(s): 80.0% of v1's req/s" in text
    assert "driver point select" not in text  # no plain driver row to compare with
    table = render(rows)
    assert table.splitlines()[2].startswith("gatekeeper (TLS)")


def test_a_proxy_is_told_each_operations_scope_and_a_gatekeeper_its_key():
    proxy = HttpTarget("proxy (TLS)", "https://127.0.0.1:1", proxy=True)
    gatekeeper = HttpTarget("gatekeeper (TLS)", "https://127.0.0.1:2", (("X-API-Key", "k"),))
    assert target_headers(proxy, "insert") == {"X-Sqlgate-Scope": "write"}
    assert target_headers(proxy, "point select") == {"X-Sqlgate-Scope": "read"}
    assert target_headers(gatekeeper, "insert") == {"X-API-Key": "k"}


def test_metrics_are_priced_against_the_quiet_twin_round_by_round():
    rounds = []
    for plain, quiet in ((980, 1000), (1100, 1000), (900, 1000)):  # the rows took turns
        rounds += [Measurement("proxy (plain)", "point select", 1, plain, 1.0, 2.0, 0, 1, 1.02),
                   Measurement("proxy (plain, quiet)", "point select", 1, quiet, 1.0, 2.0, 0, 1,
                               1.0)]
    table = cells(rounds)
    assert [m.target for m in table] == ["proxy (plain)", "proxy (plain, quiet)"]
    assert table[0].requests_per_second == pytest.approx(993.33, abs=0.01)  # the mean rate
    costs = {("proxy", "metrics and line"): 20.0, ("gatekeeper", "metrics and line"): 30.0}
    text = verdict(table, 1, rounds, {"cold": costs, "hot": {k: v / 4 for k, v in costs.items()}})
    assert ("proxy point select, 1 client(s): 99.3% of plain, quiet's req/s, rounds "
            "98%, 110%, 90%; CPU per request +0.020 ms (+2.0%)") in text
    assert "proxy point select, 1 client: 20.0 µs of 1000 µs: 2.0% (met; hot: 0.5%)" in text
    costs[("proxy", "metrics and line")] = 60.0
    text = verdict(table, 1, rounds, {"cold": costs, "hot": costs})
    assert "proxy point select, 1 client: 60.0 µs of 1000 µs: 6.0% (MISSED; hot: 6.0%)" in text


def test_the_accounting_of_a_request_is_timed_for_each_service_and_setting():
    for costs in (accounting_cost.costs(requests=200), accounting_cost.costs(20, cold=True)):
        assert set(costs) == {(service, setting) for service in ("proxy", "gatekeeper")
                              for setting in accounting_cost.SETTINGS}
        assert all(0 < cost < 10_000 for cost in costs.values()), costs


def test_the_workers_gain_compares_each_setting_with_the_first():
    rows = [Measurement(f"cluster x{workers}", "point select", 16, rate, 1.0, 2.0, 0)
            for workers, rate in ((1, 400), (2, 500), (1, 400), (2, 460))]
    assert "point select, 16 clients: x2 480 req/s, x1 400: 120%" in gain(rows, [1, 2], "cluster")
