"""What semi-synchronous replication costs writes: the deployed chain (HTTPS Gatekeeper,
mutual-TLS Proxy, TLS to MariaDB) inserting with semi-sync on (the default: a write is
acknowledged once a replica has it) and off (asynchronous, the Proxy told to accept that with
``PROXY_ALLOW_ASYNC``), on the same databases, in one run.

    python -m loadtest.bench_semisync [--seconds 5] [--clients 1 16] [--rounds 3]

Each round switches the primary's semi-sync side (``rpl_semi_sync_master_enabled``) and loads
the chain made for that setting with wrk, the settings taking turns, so that a machine getting
busier during the run favours neither. Every process shares this machine's cores, and the
replicas acknowledge over loopback: on a network, semi-sync adds a round trip to each commit.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

from cluster.loopback import gatekeeper_service, proxy_service
from cluster.loopback.mariadb import MariaDBCluster
from cluster.loopback.services import ServiceProcess
from cluster.waiting import wait_until
from loadtest.bench_overhead import (
    HttpTarget,
    Measurement,
    check_answers,
    measure_http,
    render,
)
from loadtest.bench_workers import bench_databases, mean_rate

OPERATION = "insert"
# The primary's semi-sync side per setting, and what the setting's Proxy is told.
SETTINGS = {"semi-sync": ("ON", {}), "async": ("OFF", {"PROXY_ALLOW_ASYNC": "true"})}


def mean_p50(measurements: list[Measurement], target: str, clients: int) -> float:
    values = [m.p50_ms for m in measurements if (m.target, m.clients) == (target, clients)]
    return sum(values) / len(values) if values else float("nan")


def cost(measurements: list[Measurement], clients: list[int]) -> str:
    """Semi-sync's rows against async's, per number of clients (means of the rounds)."""
    lines = ["What semi-sync costs inserts (against async, same run, mean of the rounds):"]
    for count in clients:
        rates = {name: mean_rate(measurements, name, OPERATION, count) for name in SETTINGS}
        p50 = {name: mean_p50(measurements, name, count) for name in SETTINGS}
        lines.append(f"  {count} client(s): {rates['semi-sync']:.0f} req/s against "
                     f"{rates['async']:.0f} ({rates['semi-sync'] / rates['async']:.0%}); p50 "
                     f"{p50['semi-sync']:.2f} ms against {p50['async']:.2f} ms "
                     f"({p50['semi-sync'] - p50['async']:+.2f} ms)")
    return "\n".join(lines)


def switch(db: MariaDBCluster, proxy: ServiceProcess, state: str) -> None:
    """The primary's semi-sync side ON or OFF, and, for ON, until the Proxy has seen it on
    again (the status comes back once a replica acknowledged a write: its heartbeat)."""
    db.primary.sql(f"SET GLOBAL rpl_semi_sync_master_enabled = {state}")
    if state == "ON":
        wait_until(lambda: proxy.health()[1]["nodes"]["primary"]["semi_sync"] is True, 10,
                   "semi-sync on again")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    measurements: list[Measurement] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as running:
        workdir = Path(tmp)
        db, keys_file, secret = bench_databases(running, workdir)
        targets, proxies = {}, {}
        for name, (_, settings) in SETTINGS.items():
            proxy = proxies[name] = proxy_service(db, workdir / f"proxy-{name}.log", **settings)
            gatekeeper = gatekeeper_service(db, proxy.url, keys_file,
                                            workdir / f"gatekeeper-{name}.log")
            running.enter_context(proxy.running())
            running.enter_context(gatekeeper.running())
            targets[name] = (HttpTarget(name, gatekeeper.url, (("X-API-Key", secret),)),
                             gatekeeper)
        for round_number in range(args.rounds):
            order = list(SETTINGS) if round_number % 2 == 0 else list(reversed(SETTINGS))
            for clients in args.clients:
                for name in order:
                    switch(db, proxies[name], SETTINGS[name][0])
                    target, gatekeeper = targets[name]
                    check_answers(target, gatekeeper, (OPERATION,))
                    measurements.append(measure_http(target, OPERATION, clients,
                                                     args.seconds, workdir))
                    print(render(measurements[-1:]).splitlines()[-1], flush=True)
        db.primary.sql("SET GLOBAL rpl_semi_sync_master_enabled = ON")
    print()
    print(render(measurements))
    print()
    print(cost(measurements, args.clients))
    if any(m.errors for m in measurements):
        raise SystemExit("some requests failed: see the errors column")


if __name__ == "__main__":
    main()
