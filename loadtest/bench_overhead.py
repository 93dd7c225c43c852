"""What the HTTP layers cost: the same statements straight to MariaDB, through the Proxy, and
through the Gatekeeper, side by side in one run.

    python -m loadtest.bench_overhead [--seconds 5] [--clients 1 16]

It starts its own loopback stack (a MariaDB primary with two replicas, the Proxy, the
Gatekeeper), so the numbers compare like with like on this machine. The HTTP load comes from
wrk (C, one thread) so the load generator takes as little CPU from the services as possible;
the driver floor is asyncmy itself. Reads use ``mode=random`` (a replica); inserts go to the
primary whatever the mode. A batch is one ``POST /batch`` of 50 point selects run
independently (``transaction: false``), against the driver running the same 50 in a row on
one connection; its ``stmts/s`` column counts statements.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncmy
import numpy as np

from cluster.loopback import LoopbackStack
from cluster.loopback.services import PROJECT_ROOT, ServiceProcess
from services.client import Client

POINT_SELECT = "SELECT actor_id, first_name, last_name FROM sakila.actor WHERE actor_id = 17"
INSERT_PREFIX = "INSERT INTO sqlgate_test.bench (k, v) VALUES ("
BATCH_SIZE = 50
OPERATIONS = ("point select", "insert", "batch")
TARGETS = {"gatekeeper_rps_16": 2000.0, "gatekeeper_p50_1_ms": 1.0}

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "%(key)s"
local body = '%(body)s'
local counter = 0
request = function()
  counter = counter + 1
  if body == "insert" then
    local sql = "%(insert_prefix)s" .. counter .. ", 'wrk')"
    return wrk.format(nil, "/query", nil, '{"sql": "' .. sql .. '", "mode": "random"}')
  end
  return wrk.format(nil, "%(path)s", nil, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%f %%f %%d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.status + e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass
class Measurement:
    target: str
    operation: str
    clients: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    statements_per_request: int = 1

    @property
    def statements_per_second(self) -> float:
        return self.requests_per_second * self.statements_per_request


def percentile(values: list[float], fraction: float) -> float:
    """Interpolated, as numpy and the load report compute it; NaN when nothing succeeded."""
    return float(np.percentile(values, fraction * 100)) if values else float("nan")


async def measure_driver(stack: LoopbackStack, operation: str, clients: int,
                         seconds: float) -> Measurement:
    """The floor: asyncmy straight to the server, with a pool as the Proxy has."""
    db = stack.db
    server = db.primary if operation == "insert" else db.replicas[0]
    pool = await asyncmy.create_pool(minsize=clients, maxsize=clients, host="127.0.0.1",
                                     port=server.port, user=db.app_user,
                                     password=db.app_password, autocommit=True)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    repeat = BATCH_SIZE if operation == "batch" else 1

    async def client(number: int) -> None:
        nonlocal errors
        counter = 0
        while time.perf_counter() < deadline:
            counter += 1
            sql = (f"{INSERT_PREFIX}{number * 10_000_000 + counter}, 'driver')"
                   if operation == "insert" else POINT_SELECT)
            began = time.perf_counter()
            try:
                async with pool.acquire() as conn, conn.cursor() as cursor:
                    for _ in range(repeat):
                        await cursor.execute(sql)
                        await cursor.fetchall()
            except Exception:
                errors += 1
                continue
            latencies.append((time.perf_counter() - began) * 1000.0)

    began = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.perf_counter() - began
    pool.close()
    await pool.wait_closed()
    return Measurement("driver (asyncmy)", operation, clients, len(latencies) / elapsed,
                       percentile(latencies, 0.50), percentile(latencies, 0.99), errors, repeat)


def request_body(operation: str) -> tuple[str, str]:
    """The path and the JSON body wrk sends ("insert": made per request by the script)."""
    if operation == "insert":
        return "/query", "insert"
    if operation == "batch":
        return "/batch", json.dumps({"statements": [{"sql": POINT_SELECT}] * BATCH_SIZE,
                                     "transaction": False, "mode": "random"})
    return "/query", json.dumps({"sql": POINT_SELECT, "mode": "random"})


def measure_http(target: str, url: str, key: str, operation: str, clients: int,
                 seconds: float, workdir: Path) -> Measurement:
    path, body = request_body(operation)
    script = workdir / "bench.lua"
    script.write_text(WRK_SCRIPT % {"key": key, "body": body, "path": path,
                                    "insert_prefix": INSERT_PREFIX})
    result = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script),
         url], capture_output=True, text=True, check=True)
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    requests, duration_us, p50_us, p99_us, errors = line.split()[1:]
    return Measurement(target, operation, clients, int(requests) / (int(duration_us) / 1e6),
                       float(p50_us) / 1000.0, float(p99_us) / 1000.0, int(errors),
                       BATCH_SIZE if operation == "batch" else 1)


def check_answers(stack: LoopbackStack) -> None:
    """Before timing anything, make sure every request really works end to end."""
    insert = json.dumps({"sql": f"{INSERT_PREFIX}0, 'check')", "mode": "random"})
    with Client(stack.gatekeeper.url, stack.api_key, timeout=10) as client:
        for path, body in (request_body("point select"), ("/query", insert),
                           request_body("batch")):
            answer = client.post(path, body.encode())
            results = answer.json.get("results", [answer.json])
            assert answer.ok, answer.json
            assert all(result.get("rowcount") == 1 for result in results), answer.json


def render(measurements: list[Measurement]) -> str:
    header = (f"{'target':<22} {'operation':<13} {'clients':>7} {'req/s':>9} {'stmts/s':>9} "
              f"{'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    lines = [header, "-" * len(header)]
    for m in measurements:
        lines.append(f"{m.target:<22} {m.operation:<13} {m.clients:>7} "
                     f"{m.requests_per_second:>9.0f} {m.statements_per_second:>9.0f} "
                     f"{m.p50_ms:>8.3f} {m.p99_ms:>8.3f} {m.errors:>7}")
    return "\n".join(lines)


def verdict(measurements: list[Measurement], most_clients: int) -> str:
    def find(target: str, clients: int) -> Measurement | None:
        return next((m for m in measurements if m.target == target and
                     m.operation == "point select" and m.clients == clients), None)

    lines = []
    busy, single = find("gatekeeper", most_clients), find("gatekeeper", 1)
    if busy and most_clients == 16:
        goal = TARGETS["gatekeeper_rps_16"]
        met = "met" if busy.requests_per_second >= goal else "MISSED"
        lines.append(f"Gatekeeper point select, 16 clients: {busy.requests_per_second:.0f} req/s "
                     f"(target >= {goal:.0f}: {met})")
    if single:
        goal = TARGETS["gatekeeper_p50_1_ms"]
        met = "met" if single.p50_ms <= goal else "MISSED"
        lines.append(f"Gatekeeper point select, 1 client: p50 {single.p50_ms:.3f} ms "
                     f"(target <= {goal:.1f} ms: {met})")
    for m in measurements:
        base = next((b for b in measurements if b.target.startswith(m.target + " @") and
                     (b.operation, b.clients) == (m.operation, m.clients)), None)
        if base is not None:
            lines.append(f"{m.target} {m.operation}, {m.clients} client(s): "
                         f"{m.requests_per_second / base.requests_per_second:.1%} of "
                         f"{base.target.split(' ', 1)[1]}'s req/s")
    return "\n".join(lines)


@contextlib.contextmanager
def baseline_services(stack: LoopbackStack, ref: str, workdir: Path) -> Iterator[list]:
    """A Proxy and a Gatekeeper from git ``ref``, beside the current ones on the same
    databases: the same run measures both, so the comparison survives a busy machine."""
    tree = workdir / "baseline"
    subprocess.run(["git", "-C", str(PROJECT_ROOT), "worktree", "add", "--quiet", "--detach",
                    str(tree), ref], check=True)
    proxy = ServiceProcess("services.proxy", dict(stack.proxy.env), root=tree,
                           log_path=workdir / "baseline-proxy.log")
    gatekeeper = ServiceProcess("services.gatekeeper", dict(stack.gatekeeper.env), root=tree,
                                log_path=workdir / "baseline-gatekeeper.log")
    try:
        proxy.start()
        gatekeeper.env["GATEKEEPER_PROXY_URL"] = proxy.url
        gatekeeper.start()
        yield [(f"proxy @{ref}", proxy.url, ""),
               (f"gatekeeper @{ref}", gatekeeper.url, stack.api_key)]
    finally:
        gatekeeper.stop()
        proxy.stop()
        subprocess.run(["git", "-C", str(PROJECT_ROOT), "worktree", "remove", "--force",
                        str(tree)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each cell")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--operations", nargs="+", default=list(OPERATIONS),
                        choices=OPERATIONS)
    parser.add_argument("--baseline", metavar="GIT_REF",
                        help="also measure the services of this commit, in the same run "
                             "(point selects and inserts: what every version answers)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench_overhead: wrk is missing (make system-packages installs it)")
    measurements: list[Measurement] = []
    with LoopbackStack() as stack, tempfile.TemporaryDirectory() as tmp, \
            contextlib.ExitStack() as extra:
        targets = [("proxy", stack.proxy.url, ""),
                   ("gatekeeper", stack.gatekeeper.url, stack.api_key)]
        baseline = (extra.enter_context(baseline_services(stack, args.baseline, Path(tmp)))
                    if args.baseline else [])
        stack.db.primary.sql("CREATE TABLE IF NOT EXISTS sqlgate_test.bench (id BIGINT "
                             "AUTO_INCREMENT PRIMARY KEY, k BIGINT, v VARCHAR(32))")
        stack.db.wait_for_replicas()
        check_answers(stack)
        for operation in args.operations:
            for clients in args.clients:
                measurements.append(asyncio.run(
                    measure_driver(stack, operation, clients, args.seconds)))
                for target, url, key in targets + (baseline if operation != "batch" else []):
                    measurements.append(measure_http(target, url, key, operation, clients,
                                                     args.seconds, Path(tmp)))
        rows = stack.db.primary.sql("SELECT COUNT(*) AS n FROM sqlgate_test.bench")[0]["n"]
    print(render(measurements))
    print()
    print(verdict(measurements, max(args.clients)))
    inserted = sum(round(m.requests_per_second * args.seconds) for m in measurements
                   if m.operation == "insert")
    print(f"Rows in the bench table: {rows} (about {inserted} expected from the insert cells)")
    if any(m.errors for m in measurements):
        raise SystemExit("some requests failed: see the errors column")


if __name__ == "__main__":
    main()
