"""The bench's own logic, without a stack: which rows are compared, and what wrk is told."""

from __future__ import annotations

from loadtest.bench_overhead import (
    HttpTarget,
    Measurement,
    render,
    target_headers,
    verdict,
)


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
