"""What the HTTP layers cost, and what security costs: the same statements straight to MariaDB,
through the Proxy, and through the Gatekeeper, each in the secure and the plain configuration
of the same code, side by side in one run.

    python -m loadtest.bench_overhead [--seconds 3] [--rounds 3] [--clients 1 16] [--baseline REF]

It starts its own loopback stack (a MariaDB primary with two replicas, the Proxy, the
Gatekeeper), so the numbers compare like with like on this machine. The HTTP load comes from
wrk (C, one thread) so the load generator takes as little CPU from the services as possible;
the driver floor is asyncmy itself. Reads use ``mode=random`` (a replica); inserts go to the
primary whatever the mode. A batch is one ``POST /batch`` of 50 point selects run
independently (``transaction: false``), against the driver running the same 50 in a row on
one connection; its ``stmts/s`` column counts statements.

The configurations, on the same servers:

- ``(TLS)``, as deployed: HTTPS to the Gatekeeper, whose key is checked against the keys file
  (a hash, in constant time, and a token bucket set never to run dry); mutual TLS from the
  Gatekeeper to the Proxy; TLS from the Proxy to every server, as the scope's own user (a pool
  per scope). The driver row connects over TLS as the scope's user too.
- ``(plain)``, the development set-up: plain HTTP everywhere, an inline key, one database user
  without TLS (so the bench lets its servers take plain connections, and makes that user).
- ``(plain, quiet)``: the same, with no metrics port (so nothing is recorded) and no request
  log lines. Every other row records its metrics and writes its JSON line per request, as a
  deployed service with a monitoring host does, so ``(plain)`` against ``(plain, quiet)`` is
  what metrics and request logs cost.

Every cell (a row's operation at a number of clients) is measured in ``--rounds`` rounds of
``--seconds``, the rows taking turns and in the opposite order every other round, so a machine
that gets busier during the run does not favour one row; the table shows each row's rounds
together, and the metrics lines each round's ratio too.

wrk does not verify certificates and cannot show a client certificate; the client check is
part of the TLS handshake, once per keep-alive connection, so it costs nothing per request. The
``proxy (TLS)`` row is measured on a Proxy like the deployed one without the client check; the
``gatekeeper (TLS)`` row goes through the deployed Proxy, client check included.

``--baseline REF`` runs the Proxy and Gatekeeper of another commit beside these, in the plain
configuration (older commits know no TLS option), compared with the ``(plain)`` rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import shutil
import ssl
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import asyncmy
import numpy as np

from cluster.keys import KeySet
from cluster.loopback import LoopbackStack, proxy_settings_for
from cluster.loopback.mariadb import DbUser, MariaDBCluster, quoted
from cluster.loopback.processes import free_port
from cluster.loopback.services import PROJECT_ROOT, ServiceProcess
from cluster.waiting import wait_until
from loadtest import accounting_cost
from services.contract import SCOPE_HEADER

POINT_SELECT = "SELECT actor_id, first_name, last_name FROM sakila.actor WHERE actor_id = 17"
INSERT_PREFIX = "INSERT INTO sqlgate_test.bench (k, v) VALUES ("
BATCH_SIZE = 50
OPERATIONS = ("point select", "insert", "batch")
TARGETS = {"gatekeeper_rps_16": 2000.0, "gatekeeper_p50_1_ms": 1.0}
SECURE, PLAIN, QUIET = "TLS", "plain", "plain, quiet"
METRICS_GOAL = 0.05  # the most of a single request's CPU time its metrics and line may take
# make bench's baseline is the last commit before the services had metrics and request logs.
BASELINE_NOTE = "with make bench's baseline, what metrics and request logs cost"
# What each operation needs of the database, as the Gatekeeper would tell the Proxy for a key.
SCOPE_OF = {"point select": "read", "insert": "write", "batch": "read"}
# The bench's key: write scope, with a bucket that never runs dry (it is still checked).
BENCH_KEY_NAME, BENCH_KEY_SCOPE, BENCH_KEY_RATE = "bench", "write", 1_000_000.0
# The plain rows' one database user: the old single-user shape (no TLS, every right the
# scopes have together, and the health monitor's).
PLAIN_USER = DbUser("bench_plain", "bench-plain-password")

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
%(headers)s
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
    cpu_ms_per_request: float = float("nan")  # the services' CPU time (all their processes)

    @property
    def statements_per_second(self) -> float:
        return self.requests_per_second * self.statements_per_request


def percentile(values: list[float], fraction: float) -> float:
    """Interpolated, as numpy and the load report compute it; NaN when nothing succeeded."""
    return float(np.percentile(values, fraction * 100)) if values else float("nan")


def combined(rounds: list[Measurement]) -> Measurement:
    """One row from its rounds (each as long as the others): the mean rate, the CPU time per
    request over all of them, the median of their percentiles, every error."""
    rates = [m.requests_per_second for m in rounds]
    cpu = [m.cpu_ms_per_request * m.requests_per_second for m in rounds]
    return replace(rounds[0], requests_per_second=statistics.fmean(rates),
                   p50_ms=statistics.median(m.p50_ms for m in rounds),
                   p99_ms=statistics.median(m.p99_ms for m in rounds),
                   errors=sum(m.errors for m in rounds),
                   cpu_ms_per_request=sum(cpu) / sum(rates) if sum(rates) else float("nan"))


def cells(rounds: list[Measurement]) -> list[Measurement]:
    """The rows of the table: each (row, operation, clients) with its rounds combined, in the
    order they were first measured."""
    groups: dict[tuple[str, str, int], list[Measurement]] = {}
    for m in rounds:
        groups.setdefault((m.target, m.operation, m.clients), []).append(m)
    return [combined(group) for group in groups.values()]


@dataclass(frozen=True)
class HttpTarget:
    """One service to load with wrk: its row's name, URL, and the headers every request
    carries (the key for a Gatekeeper; the scope, as a Gatekeeper states it, for a Proxy)."""

    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    proxy: bool = False  # gets the scope of each operation
    # The services a request goes through, whose CPU time per request the row shows.
    services: tuple[ServiceProcess, ...] = field(default=(), compare=False)
    # Or, for services this bench did not start, their CPU time so far.
    cpu: Callable[[], float] | None = field(default=None, compare=False)


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User and system CPU time of a process and (``children``) of its live children, a
    service's worker processes, from /proc; 0 for a process that is gone."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        if not children:
            return total
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (OSError, IndexError, ValueError):
        return total
    return total + sum(cpu_seconds(int(child)) for child in listed)


def services_cpu(target: HttpTarget) -> float:
    if target.cpu is not None:
        return target.cpu()
    return sum(cpu_seconds(service.process.pid) for service in target.services
               if service.process is not None)


async def measure_driver(stack: LoopbackStack, operation: str, clients: int,
                         seconds: float, secure: bool) -> Measurement:
    """The floor: asyncmy straight to the server, with a pool as the Proxy has: over TLS as the
    operation's scope's user, or plain as the plain rows' user."""
    db = stack.db
    server = db.primary if operation == "insert" else db.replicas[0]
    if secure:
        user = db.app_users[SCOPE_OF[operation]]
        tls: dict = {"ssl": ssl.create_default_context(cafile=str(db.ca_file))}
    else:
        user, tls = PLAIN_USER, {}
    pool = await asyncmy.create_pool(minsize=clients, maxsize=clients, host="127.0.0.1",
                                     port=server.port, user=user.name, password=user.password,
                                     autocommit=True, **tls)
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
    return Measurement(f"driver ({SECURE if secure else PLAIN})", operation, clients,
                       len(latencies) / elapsed, percentile(latencies, 0.50),
                       percentile(latencies, 0.99), errors, repeat)


def request_body(operation: str) -> tuple[str, str]:
    """The path and the JSON body wrk sends ("insert": made per request by the script)."""
    if operation == "insert":
        return "/query", "insert"
    if operation == "batch":
        return "/batch", json.dumps({"statements": [{"sql": POINT_SELECT}] * BATCH_SIZE,
                                     "transaction": False, "mode": "random"})
    return "/query", json.dumps({"sql": POINT_SELECT, "mode": "random"})


def target_headers(target: HttpTarget, operation: str) -> dict[str, str]:
    headers = dict(target.headers)
    if target.proxy:
        headers[SCOPE_HEADER] = SCOPE_OF[operation]
    return headers


def measure_http(target: HttpTarget, operation: str, clients: int, seconds: float,
                 workdir: Path) -> Measurement:
    path, body = request_body(operation)
    script = workdir / "bench.lua"
    headers = "\n".join(f'wrk.headers["{name}"] = "{value}"'
                        for name, value in target_headers(target, operation).items())
    script.write_text(WRK_SCRIPT % {"headers": headers, "body": body, "path": path,
                                    "insert_prefix": INSERT_PREFIX})
    cpu_before = services_cpu(target)
    result = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script),
         target.url], capture_output=True, text=True, check=True)
    cpu = services_cpu(target) - cpu_before
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    requests, duration_us, p50_us, p99_us, errors = line.split()[1:]
    return Measurement(target.name, operation, clients,
                       int(requests) / (int(duration_us) / 1e6), float(p50_us) / 1000.0,
                       float(p99_us) / 1000.0, int(errors),
                       BATCH_SIZE if operation == "batch" else 1,
                       1000.0 * cpu / int(requests)
                       if (target.services or target.cpu) and int(requests) else float("nan"))


def check_answers(target: HttpTarget, service: ServiceProcess,
                  operations: tuple[str, ...] = OPERATIONS) -> None:
    """Before timing anything, make sure every request really works end to end, through the
    client that verifies the service's certificate."""
    insert = json.dumps({"sql": f"{INSERT_PREFIX}0, 'check')", "mode": "random"})
    bodies = {"point select": request_body("point select"), "insert": ("/query", insert),
              "batch": request_body("batch")}
    with service.client(timeout=10) as client:
        for operation in operations:
            path, body = bodies[operation]
            answer = client.post(path, body.encode(), target_headers(target, operation))
            results = answer.json.get("results", [answer.json])
            assert answer.ok, (target.name, operation, answer.json)
            assert all(result.get("rowcount") == 1 for result in results), answer.json


def render(measurements: list[Measurement]) -> str:
    header = (f"{'target':<22} {'operation':<13} {'clients':>7} {'req/s':>9} {'stmts/s':>9} "
              f"{'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'cpu ms/req':>10}")
    lines = [header, "-" * len(header)]
    for m in measurements:
        cpu = "" if math.isnan(m.cpu_ms_per_request) else f"{m.cpu_ms_per_request:.3f}"
        lines.append(f"{m.target:<22} {m.operation:<13} {m.clients:>7} "
                     f"{m.requests_per_second:>9.0f} {m.statements_per_second:>9.0f} "
                     f"{m.p50_ms:>8.3f} {m.p99_ms:>8.3f} {m.errors:>7} {cpu:>10}")
    return "\n".join(lines)


def find_in(measurements: list[Measurement], target: str, clients: int,
            operation: str = "point select") -> Measurement | None:
    return next((m for m in measurements if m.target == target and
                 m.operation == operation and m.clients == clients), None)


def rounds_of(rounds: list[Measurement], cell: Measurement) -> list[Measurement]:
    return [m for m in rounds
            if (m.target, m.operation, m.clients) == (cell.target, cell.operation, cell.clients)]


def metrics_cost(rounds: list[Measurement]) -> list[str]:
    """Each ``(plain)`` row against its ``(plain, quiet)`` twin: the same code, with and
    without metrics and request lines. Both rows' rounds ran side by side, so each round's
    ratio is shown too: their spread is how far this machine lets one run be trusted."""
    table = cells(rounds)
    lines = [f"What metrics and request logs cost end to end ({PLAIN} against {QUIET}, same "
             "code, same run; each round's ratio shows how far one run can be trusted):"]
    for cell in table:
        quiet = find_in(table, cell.target.replace(f"({PLAIN})", f"({QUIET})"), cell.clients,
                        cell.operation)
        if not cell.target.endswith(f"({PLAIN})") or quiet is None:
            continue
        ratio = cell.requests_per_second / quiet.requests_per_second
        each = ", ".join(f"{mine.requests_per_second / theirs.requests_per_second:.0%}"
                         for mine, theirs in zip(rounds_of(rounds, cell),
                                                 rounds_of(rounds, quiet), strict=True))
        lines.append(f"  {cell.target.split(' ')[0]} {cell.operation}, {cell.clients} "
                     f"client(s): {ratio:.1%} of {QUIET}'s req/s, rounds {each}; CPU per "
                     f"request {cell.cpu_ms_per_request - quiet.cpu_ms_per_request:+.3f} ms "
                     f"({cell.cpu_ms_per_request / quiet.cpu_ms_per_request - 1:+.1%})")
    return lines if len(lines) > 1 else []


def accounting_share(measurements: list[Measurement],
                     costs: dict[str, dict[tuple[str, str], float]]) -> list[str]:
    """The in-process cost of a request's metrics and line (``loadtest.accounting_cost``,
    ``cold`` and ``hot``) against the CPU time the quiet rows' requests took: the share of
    the services' work they add, which the end-to-end rows show only within their rounds'
    spread."""
    if not costs:
        return []
    lines = ["The same, in-process (loadtest.accounting_cost: a request's metrics and JSON line "
             "with the caches flushed before it, and in a hot loop), against the quiet rows' "
             f"CPU per request; goal: {METRICS_GOAL:.0%} or less at 1 client:"]
    for operation in ("point select", "insert"):
        for service, chain in (("proxy", ("proxy",)), ("gatekeeper", ("gatekeeper", "proxy"))):
            quiet_row = find_in(measurements, f"{service} ({QUIET})", 1, operation)
            if quiet_row is None or math.isnan(quiet_row.cpu_ms_per_request):
                continue
            cold, hot = ([kind[(name, "metrics and line")] for name in chain]
                         for kind in (costs["cold"], costs["hot"]))
            cpu_us = 1000.0 * quiet_row.cpu_ms_per_request
            share = sum(cold) / cpu_us
            met = "met" if share <= METRICS_GOAL else "MISSED"
            lines.append(f"  {service} {operation}, 1 client: "
                         f"{' + '.join(f'{cost:.1f}' for cost in cold)} µs of {cpu_us:.0f} µs: "
                         f"{share:.1%} ({met}; hot: {sum(hot) / cpu_us:.1%})")
    return lines if len(lines) > 1 else []


def verdict(measurements: list[Measurement], most_clients: int,
            rounds: list[Measurement] | None = None,
            costs: dict[str, dict[tuple[str, str], float]] | None = None) -> str:
    def find(target: str, clients: int, operation: str = "point select") -> Measurement | None:
        return find_in(measurements, target, clients, operation)

    lines = []
    gatekeeper = f"gatekeeper ({SECURE})"
    busy, single = find(gatekeeper, most_clients), find(gatekeeper, 1)
    if busy and most_clients == 16:
        goal = TARGETS["gatekeeper_rps_16"]
        met = "met" if busy.requests_per_second >= goal else "MISSED"
        lines.append(f"Gatekeeper (TLS) point select, 16 clients: "
                     f"{busy.requests_per_second:.0f} req/s (target >= {goal:.0f}: {met})")
    if single:
        goal = TARGETS["gatekeeper_p50_1_ms"]
        met = "met" if single.p50_ms <= goal else "MISSED"
        lines.append(f"Gatekeeper (TLS) point select, 1 client: p50 {single.p50_ms:.3f} ms "
                     f"(target <= {goal:.1f} ms: {met})")
    lines.extend(metrics_cost(rounds or measurements))
    lines.extend(accounting_share(measurements, costs or {}))
    lines.append("What security costs (TLS against plain, same code, same run):")
    for m in measurements:
        if not m.target.endswith(f"({SECURE})"):
            continue
        plain = find(m.target.replace(f"({SECURE})", f"({PLAIN})"), m.clients, m.operation)
        if plain is not None:
            lines.append(f"  {m.target.split(' ')[0]} {m.operation}, {m.clients} client(s): "
                         f"{m.requests_per_second / plain.requests_per_second:.1%} of plain's "
                         f"req/s, p50 {m.p50_ms - plain.p50_ms:+.3f} ms")
    refs = sorted({m.target.partition(" @")[2] for m in measurements} - {""})
    if refs:
        lines.append(f"Against {', '.join(refs)} (plain rows, same run; {BASELINE_NOTE}):")
    for m in measurements:
        service, _, ref = m.target.partition(" @")
        plain = find(f"{service} ({PLAIN})", m.clients, m.operation) if ref else None
        if plain is not None:
            lines.append(f"{plain.target} {m.operation}, {m.clients} client(s): "
                         f"{plain.requests_per_second / m.requests_per_second:.1%} of "
                         f"{ref}'s req/s; CPU per request "
                         f"{plain.cpu_ms_per_request - m.cpu_ms_per_request:+.3f} ms "
                         f"({plain.cpu_ms_per_request / m.cpu_ms_per_request - 1:+.1%})")
    return "\n".join(lines)


def allow_plain(db: MariaDBCluster) -> None:
    """Let the servers take the plain rows' connections: TLS no longer required of the
    transport (the scopes' users still REQUIRE SSL), and the plain rows' user."""
    for node in db.nodes:
        node.sql("SET GLOBAL require_secure_transport = OFF")
    settings, user = db.settings, PLAIN_USER
    db.primary.sql(f"CREATE USER '{user.name}'@'%' IDENTIFIED BY '{quoted(user.password)}'")
    for schema in db.app_schemas:
        db.primary.sql(f"GRANT {settings['app_users']['admin']['privileges']} ON {schema}.* "
                       f"TO '{user.name}'@'%'")
    db.primary.sql(f"GRANT {settings['monitor_privilege']} ON *.* TO '{user.name}'@'%'")
    db.primary.sql(f"GRANT {settings['monitor']['privileges']} ON "
                   f"{settings['monitor']['schema']}.* TO '{user.name}'@'%'")
    db.wait_for_replicas()


# The bench is one key with up to --clients requests at once, measuring what the layers cost:
# its share of statements in flight (PROXY_MAX_STATEMENTS_PER_KEY, 429 past it) would refuse
# some of them instead, so its Proxies give one key the whole pool (they still wait for it).
ONE_KEY_WHOLE_POOL = {"PROXY_MAX_STATEMENTS_PER_KEY": "4096"}


def plain_proxy_env(db: MariaDBCluster) -> dict[str, str]:
    """The plain configuration of the Proxy: no TLS anywhere, one user for every scope."""
    return {**ONE_KEY_WHOLE_POOL, "PROXY_LISTEN_ADDRESS": "127.0.0.1",
            "PROXY_PRIMARY": f"{db.primary.name}=127.0.0.1:{db.primary.port}",
            "PROXY_REPLICAS": ",".join(f"{n.name}=127.0.0.1:{n.port}" for n in db.replicas),
            "PROXY_DB_USER": PLAIN_USER.name, "PROXY_DB_PASSWORD": PLAIN_USER.password}


def plain_gatekeeper_env(proxy_url: str, api_key: str) -> dict[str, str]:
    """The plain configuration of the Gatekeeper: plain HTTP, the inline development key."""
    return {"GATEKEEPER_LISTEN_ADDRESS": "127.0.0.1", "GATEKEEPER_INSECURE_HTTP": "true",
            "GATEKEEPER_PROXY_URL": proxy_url, "GATEKEEPER_API_KEY": api_key}


def observed(service: str) -> dict[str, str]:
    """A service as deployed with a monitoring host: a metrics port, so every request records
    its metrics (besides its JSON line, on by default)."""
    return {f"{service.upper()}_METRICS_PORT": str(free_port())}


def quiet(service: str) -> dict[str, str]:
    """No metrics port (nothing recorded) and no request lines."""
    return {f"{service.upper()}_METRICS_PORT": "0", f"{service.upper()}_LOG_REQUESTS": "false"}


@contextlib.contextmanager
def plain_services(db: MariaDBCluster, api_key: str, workdir: Path, root: Path = PROJECT_ROOT,
                   label: str = f"({PLAIN})",
                   settings: Callable[[str], dict[str, str]] | None = observed
                   ) -> Iterator[list[tuple[HttpTarget, ServiceProcess]]]:
    """A plain Proxy and Gatekeeper of the checkout at ``root``, on ``db``, with
    ``settings(service)`` added to each one's environment (None: nothing, for a commit that
    may not know them)."""
    tag = label.strip("()@ ").replace(" ", "-").replace(",", "")
    more = settings or (lambda service: {})
    proxy = ServiceProcess("services.proxy", {**plain_proxy_env(db), **more("proxy")}, root=root,
                           log_path=workdir / f"proxy-{tag}.log")
    gatekeeper = ServiceProcess("services.gatekeeper",
                                {**plain_gatekeeper_env(proxy.url, api_key),
                                 **more("gatekeeper")},
                                root=root, log_path=workdir / f"gatekeeper-{tag}.log")
    try:
        proxy.start()
        gatekeeper.start()
        yield [(HttpTarget(f"proxy {label}", proxy.url, proxy=True, services=(proxy,)), proxy),
               (HttpTarget(f"gatekeeper {label}", gatekeeper.url, (("X-API-Key", api_key),),
                           services=(gatekeeper, proxy)), gatekeeper)]
    finally:
        gatekeeper.stop()
        proxy.stop()


@contextlib.contextmanager
def baseline_services(db: MariaDBCluster, api_key: str, ref: str,
                      workdir: Path) -> Iterator[list[tuple[HttpTarget, ServiceProcess]]]:
    """A plain Proxy and Gatekeeper from git ``ref``, beside the current ones on the same
    databases: the same run measures both, so the comparison survives a busy machine."""
    tree = workdir / "baseline"
    subprocess.run(["git", "-C", str(PROJECT_ROOT), "worktree", "add", "--quiet", "--detach",
                    str(tree), ref], check=True)
    try:
        with plain_services(db, api_key, workdir, root=tree, label=f"@{ref}",
                            settings=None) as services:
            yield services
    finally:
        subprocess.run(["git", "-C", str(PROJECT_ROOT), "worktree", "remove", "--force",
                        str(tree)], check=False)


def secure_services(stack: LoopbackStack, workdir: Path
                    ) -> tuple[list[tuple[HttpTarget, ServiceProcess]], ServiceProcess, str]:
    """The deployed configuration: the stack's Gatekeeper (through its mutual-TLS Proxy) with
    the bench's key, and for wrk a Proxy like the stack's without the client check."""
    keys, secret = KeySet().with_admin(stack.api_key).add(
        BENCH_KEY_NAME, BENCH_KEY_SCOPE, rate=BENCH_KEY_RATE, burst=int(BENCH_KEY_RATE))
    keys.save(stack.keys_file)
    proxy = ServiceProcess("services.proxy",
                           proxy_settings_for(stack.db, PROXY_TLS_CLIENT_CA="",
                                              **observed("proxy"), **ONE_KEY_WHOLE_POOL),
                           log_path=workdir / "proxy-tls-direct.log",
                           tls=stack.db.pki.server_tls())
    return ([(HttpTarget(f"proxy ({SECURE})", proxy.url, proxy=True, services=(proxy,)),
              proxy),
             (HttpTarget(f"gatekeeper ({SECURE})", stack.gatekeeper.url,
                         (("X-API-Key", secret),), services=(stack.gatekeeper, stack.proxy)),
              stack.gatekeeper)],
            proxy, secret)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="duration of each cell's round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of every cell, the rows taking turns")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--operations", nargs="+", default=list(OPERATIONS),
                        choices=OPERATIONS)
    parser.add_argument("--baseline", metavar="GIT_REF",
                        help="also measure the services of this commit, in the same run, plain "
                             "(point selects and inserts: what every version answers)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench_overhead: wrk is missing (make system-packages installs it)")
    rounds: list[Measurement] = []
    with tempfile.TemporaryDirectory() as tmp, \
            LoopbackStack(log_dir=Path(tmp),
                          proxy_settings={**observed("proxy"), **ONE_KEY_WHOLE_POOL},
                          gatekeeper_settings=observed("gatekeeper")) as stack, \
            contextlib.ExitStack() as running:
        workdir = Path(tmp)
        secure, direct_proxy, _ = secure_services(stack, workdir)
        running.enter_context(direct_proxy.running())
        allow_plain(stack.db)
        plain = running.enter_context(plain_services(stack.db, stack.api_key, workdir))
        plain += running.enter_context(plain_services(stack.db, stack.api_key, workdir,
                                                      label=f"({QUIET})", settings=quiet))
        baseline = (running.enter_context(baseline_services(stack.db, stack.api_key,
                                                            args.baseline, workdir))
                    if args.baseline else [])
        stack.db.primary.sql("CREATE TABLE IF NOT EXISTS sqlgate_test.bench (id BIGINT "
                             "AUTO_INCREMENT PRIMARY KEY, k BIGINT, v VARCHAR(32))")
        stack.db.wait_for_replicas()
        # The keys file was rewritten: the Gatekeeper takes it up within its reload interval.
        wait_until(lambda: check_answers(*secure[1], ("point select",)) is None, 10,
                   "the Gatekeeper to load the bench's key", tolerate=(AssertionError,))
        for target, service in secure + plain:
            check_answers(target, service, tuple(args.operations))
        for target, service in baseline:
            check_answers(target, service, tuple(op for op in args.operations if op != "batch"))
        for operation in args.operations:
            for clients in args.clients:
                row_cells: list[Callable[[], Measurement]] = [
                    functools.partial(lambda *cell: asyncio.run(measure_driver(*cell)),
                                      stack, operation, clients, args.seconds, secure_driver)
                    for secure_driver in (True, False)]
                row_cells += [functools.partial(measure_http, target, operation, clients,
                                                args.seconds, workdir)
                              for target, _ in secure + plain
                              + (baseline if operation != "batch" else [])]
                for number in range(args.rounds):
                    for measure in row_cells if number % 2 == 0 else row_cells[::-1]:
                        rounds.append(measure())
        rows = stack.db.primary.sql("SELECT COUNT(*) AS n FROM sqlgate_test.bench")[0]["n"]
    measurements = cells(rounds)
    print(render(measurements))
    print()
    costs = {"cold": accounting_cost.costs(requests=1000, cold=True),
             "hot": accounting_cost.costs()}
    print(verdict(measurements, max(args.clients), rounds, costs))
    inserted = sum(round(m.requests_per_second * args.seconds) for m in rounds
                   if m.operation == "insert")
    print(f"Rows in the bench table: {rows} (about {inserted} expected from the insert cells)")
    if any(m.errors for m in measurements):
        raise SystemExit("some requests failed: see the errors column")


if __name__ == "__main__":
    main()
