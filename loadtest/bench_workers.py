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
    HttpTarget,
    Measurement,
    check_answers,
    measure_http,
    render,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--operations", nargs="+", default=["point select", "insert"],
                        choices=["point select", "insert", "batch"])
    args = parser.parse_args()
    measurements: list[Measurement] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as running:
        workdir = Path(tmp)
        db = MariaDBCluster(replicas=2)
        db.start()
        running.callback(db.destroy)
        keys, secret = KeySet().add(BENCH_KEY_NAME, BENCH_KEY_SCOPE, rate=BENCH_KEY_RATE,
                                    burst=int(BENCH_KEY_RATE))
        keys_file = keys.save(workdir / "keys.json")
        db.primary.sql("CREATE TABLE IF NOT EXISTS sqlgate_test.bench (id BIGINT "
                       "AUTO_INCREMENT PRIMARY KEY, k BIGINT, v VARCHAR(32))")
        db.wait_for_replicas()
        for workers in args.workers:
            proxy = proxy_service(db, workdir / f"proxy-{workers}.log",
                                  PROXY_WORKERS=str(workers))
            gatekeeper = gatekeeper_service(db, proxy.url, keys_file,
                                            workdir / f"gatekeeper-{workers}.log",
                                            GATEKEEPER_WORKERS=str(workers),
                                            GATEKEEPER_LOG_REQUESTS="false")
            with proxy.running(), gatekeeper.running():
                target = HttpTarget(f"gatekeeper x{workers}", gatekeeper.url,
                                    (("X-API-Key", secret),))
                check_answers(target, gatekeeper, tuple(args.operations))
                for operation in args.operations:
                    for clients in args.clients:
                        measurements.append(measure_http(target, operation, clients,
                                                         args.seconds, workdir))
                        print(render(measurements[-1:]).splitlines()[-1], flush=True)
    print()
    print(render(measurements))
    if any(m.errors for m in measurements):
        raise SystemExit("some requests failed: see the errors column")


if __name__ == "__main__":
    main()
