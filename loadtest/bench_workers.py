"""What more worker processes buy: the deployed chain (HTTPS Gatekeeper, mutual-TLS Proxy, TLS
to MariaDB) with ``WORKERS`` 1 and then N, on the same databases, in one run.

    python -m loadtest.bench_workers [--workers 1 2] [--seconds 10] [--clients 16 64]

wrk (one thread) loads the Gatekeeper with point selects (``mode=random``, a replica) and
inserts, through the whole chain; each setting gets its own Proxy and Gatekeeper with that
many workers each. On a machine with as many cores as workers, everything shares them: wrk,
both services and three MariaDB servers.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

from cluster.keys import KeySet
from cluster.loopback import gatekeeper_service, proxy_service
from cluster.loopback.mariadb import MariaDBCluster
from loadtest.bench_overhead import (
    BENCH_KEY_NAME,
    BENCH_KEY_RATE,
    BENCH_KEY_SCOPE,
    ONE_KEY_WHOLE_POOL,
    HttpTarget,
    Measurement,
    check_answers,
    measure_http,
    render,
)


def mean_rate(measurements: list[Measurement], target: str, operation: str,
              clients: int) -> float:
    rates = [m.requests_per_second for m in measurements
             if (m.target, m.operation, m.clients) == (target, operation, clients)]
    return sum(rates) / len(rates) if rates else float("nan")


def gain(measurements: list[Measurement], workers: list[int], name: str = "gatekeeper") -> str:
    """Each setting's requests per second against the first's, per operation and clients (the
    mean of its rounds); the rows are called ``{name} x{workers}``."""
    first = f"{name} x{workers[0]}"
    lines = [f"What more workers buy (req/s against {first}, same run, mean of the rounds):"]
    for operation, clients in dict.fromkeys((m.operation, m.clients) for m in measurements):
        base = mean_rate(measurements, first, operation, clients)
        for count in workers[1:]:
            rate = mean_rate(measurements, f"{name} x{count}", operation, clients)
            lines.append(f"  {operation}, {clients} clients: x{count} {rate:.0f} req/s, "
                         f"x{workers[0]} {base:.0f}: {rate / base:.0%}")
    return "\n".join(lines)


def bench_databases(running: contextlib.ExitStack, workdir: Path) -> tuple[MariaDBCluster,
                                                                           Path, str]:
    """A loopback trio with the bench table, destroyed when ``running`` closes, and a keys
    file holding the bench key: the databases, the keys file and the key's secret."""
    db = MariaDBCluster(replicas=2)
    db.start()
    running.callback(db.destroy)
    keys, secret = KeySet().add(BENCH_KEY_NAME, BENCH_KEY_SCOPE, rate=BENCH_KEY_RATE,
                                burst=int(BENCH_KEY_RATE))
    keys_file = keys.save(workdir / "keys.json")
    db.primary.sql("CREATE TABLE IF NOT EXISTS sqlgate_test.bench (id BIGINT "
                   "AUTO_INCREMENT PRIMARY KEY, k BIGINT, v VARCHAR(32))")
    db.wait_for_replicas()
    return db, keys_file, secret


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--rounds", type=int, default=2,
                        help="measurements of each cell per setting, alternating")
    parser.add_argument("--operations", nargs="+", default=["point select", "insert"],
                        choices=["point select", "insert", "batch"])
    args = parser.parse_args()
    measurements: list[Measurement] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as running:
        workdir = Path(tmp)
        db, keys_file, secret = bench_databases(running, workdir)
        targets = []
        for workers in args.workers:
            proxy = proxy_service(db, workdir / f"proxy-{workers}.log",
                                  PROXY_WORKERS=str(workers), **ONE_KEY_WHOLE_POOL)
            gatekeeper = gatekeeper_service(db, proxy.url, keys_file,
                                            workdir / f"gatekeeper-{workers}.log",
                                            GATEKEEPER_WORKERS=str(workers),
                                            GATEKEEPER_LOG_REQUESTS="false")
            running.enter_context(proxy.running())
            running.enter_context(gatekeeper.running())
            target = HttpTarget(f"gatekeeper x{workers}", gatekeeper.url,
                                (("X-API-Key", secret),))
            check_answers(target, gatekeeper, tuple(args.operations))
            targets.append(target)
        # Every setting runs beside the others, and the cells alternate between them, so a
        # machine that gets busier during the run does not favour one of them.
        for operation in args.operations:
            for clients in args.clients:
                for _ in range(args.rounds):
                    for target in targets:
                        measurements.append(measure_http(target, operation, clients,
                                                         args.seconds, workdir))
                        print(render(measurements[-1:]).splitlines()[-1], flush=True)
    print()
    print(render(measurements))
    print()
    print(gain(measurements, args.workers))
    if any(m.errors for m in measurements):
        raise SystemExit("some requests failed: see the errors column")


if __name__ == "__main__":
    main()
