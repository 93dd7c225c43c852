"""What a second Gatekeeper+Proxy pair buys behind the balancer, each service process held to
the same CPU quota as if it were a host of its own: 1 pair against 2 pairs, in one run.

    python -m loadtest.bench_scaleout [--quota 25] [--seconds 10] [--clients 64] \\
        [--rounds 2] [--min-ratio 1.8]

On a 2-core machine every process shares the same cores, so more processes buy nothing once
the cores are full (``loadtest.bench_workers`` shows it). Here each Gatekeeper and each Proxy
runs in a cgroup of its own with ``--quota`` percent of one core (``cpu.cfs_quota_us``, as
``cluster.loopback.faults.cpu_limited`` sets for the slow-replica test): a service host of a
fixed size. MariaDB (a primary and two replicas, ``bench_workers.bench_databases``), HAProxy
and the load generator (wrk, one thread, as ``bench_overhead`` uses) run unconstrained, as the
database hosts, the balancer host and the clients would, so that with both settings' quotas
well under the machine's two cores the services' quotas, not the machine, set the pace.

The settings mirror the cluster (``bootstrap.py up --gatekeepers N --proxies N``): HAProxy in
``mode tcp`` (TLS passes through to the Gatekeepers, ``leastconn``, ``/health`` checked over
TLS with a PROXY v2 header, ``send-proxy-v2``: ``cluster.loopback.balancer``), and every
Gatekeeper knows every Proxy of its setting (``GATEKEEPER_PROXIES``) and sends each request to
the one with the fewest outstanding. Each setting has its own processes, all started before
the first measurement, and its own frontend on the balancer; the idle setting only answers
health checks.

The settings take turns (1, 2, 2, 1 pairs with ``--rounds 2``; each further round adds one
turn, in the opposite order of the last), so a machine that gets busier during the run does not
favour one. Each cell is wrk with ``--clients`` keep-alive connections doing point selects
(``mode=random``, a replica) for ``--seconds``, after one unrecorded warm-up per setting. The
same clients for every setting: 64 by default, 32 per Gatekeeper with 2 pairs, since a
service process does less work per request the more requests each turn of its event loop
finds (with 16 per Gatekeeper, 2 pairs did 1.84x instead of 1.98x one pair, 1 pair the same).

Printed per cell: requests/s, p50/p99, wrk's errors and the Gatekeepers' non-200 answers
(from their request lines), the requests each Gatekeeper logged (how the balancer spread the
connections), each service process's CPU time over the cell's wall time (percent of one core)
with its group's throttled periods, the unconstrained processes' CPU (``db``, ``lb``, ``wrk``)
and the share of the whole machine left idle. Every host of the bottleneck's role (the
Gatekeepers, or the Proxies) at its quota and throttled is the proof that the quota, not the
machine, set the pace; on a machine busy with other work a cell says it was not bound, and
its ratio then shows the machine's limit. Exit status 1 when any request failed, when a
process used more than its quota (it was not enforced), or when the last setting's mean
requests/s is under ``--min-ratio`` times the first's, or when the quota did not bind every
cell (inconclusive: the machine, not the hosts, was measured).

Needs root (cgroups), haproxy and wrk. Every process, group and file it makes is removed at
the end, on an error or Ctrl-C (SIGTERM too) included.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cluster.loopback import gatekeeper_service, proxy_service
from cluster.loopback.balancer import BALANCER_SOURCE, Endpoint, Frontend, HAProxy
from cluster.loopback.faults import cpu_limited, cpu_stat
from cluster.loopback.mariadb import MariaDBCluster
from cluster.loopback.services import ServiceProcess
from loadtest.bench_overhead import (
    ONE_KEY_WHOLE_POOL,
    HttpTarget,
    Measurement,
    cells,
    check_answers,
    cpu_seconds,
    measure_http,
    render,
)
from loadtest.bench_workers import bench_databases

OPERATION = "point select"
OVER_QUOTA = 1.10  # a process using more than this times its quota was not held to it
BOUND = 0.85  # the busiest process of a cell at this share of its quota or more: it bound
GROUP_PREFIX = "sqlgate-scaleout"


@dataclass
class Host:
    """One service process standing for a host: its short name (``gk1``, ``px2``), the
    process, and the cgroup holding it to the quota."""

    name: str
    service: ServiceProcess
    group: Path | None = None

    @property
    def pid(self) -> int:
        assert self.service.process is not None
        return self.service.process.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def throttled(self) -> tuple[int, int]:
        """(quota periods it ran in, periods it was throttled in) so far."""
        if self.group is None:
            return 0, 0
        stat = cpu_stat(self.group)
        return stat.get("nr_periods", 0), stat.get("nr_throttled", 0)


@dataclass
class Setting:
    """``pairs`` Gatekeepers and as many Proxies, each Gatekeeper knowing every Proxy, behind
    their own frontend of the balancer."""

    pairs: int
    gatekeepers: list[Host]
    proxies: list[Host]
    frontend: Frontend | None = None
    log_offsets: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.pairs} pair{'s' if self.pairs > 1 else ''}"

    @property
    def hosts(self) -> list[Host]:
        return self.gatekeepers + self.proxies


@dataclass
class Cell:
    """One measurement of a setting: wrk's figures, and per host the CPU seconds, the wall
    time they were taken over, and the quota periods run and throttled."""

    setting: Setting
    measurement: Measurement
    wall: float
    cpu: dict[str, float]
    periods: dict[str, tuple[int, int]]
    answered: dict[str, int]  # per Gatekeeper: the requests it logged (health checks aside)
    refused: int  # the Gatekeepers' logged answers other than 200
    # The unconstrained processes' CPU seconds (MariaDB, HAProxy, wrk), and the share of the
    # whole machine left idle: whether the machine, rather than the quotas, was full.
    rest: dict[str, float] = field(default_factory=dict)
    idle: float = float("nan")

    def share(self, host: str) -> float:
        """The host's CPU over the cell, in percent of one core."""
        return 100.0 * self.cpu[host] / self.wall

    def busiest(self) -> str:
        return max(self.cpu, key=self.cpu.__getitem__)

    def bottleneck(self) -> list[str]:
        """The hosts of the busiest one's role (``gk``, ``px``): with the load spread evenly,
        each of them is held by the quota when the quota sets the pace."""
        role = self.busiest()[:2]
        return [name for name in self.cpu if name.startswith(role)]


def turns(pairs: list[int], rounds: int) -> list[int]:
    """The order the settings are measured in: each round one turn of every setting, every
    other one reversed (1, 2, 2, 1 for two rounds of 1 and 2 pairs)."""
    order: list[int] = []
    for number in range(rounds):
        order += pairs if number % 2 == 0 else pairs[::-1]
    return order


def at_once(calls: list) -> None:
    """Run ``calls`` side by side, and raise the first error once all have ended."""
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        for done in [pool.submit(call) for call in calls]:
            done.result()


def start_all(stages: list[list[ServiceProcess]], running: contextlib.ExitStack) -> None:
    """Start each stage's services at once (each waits for its own health), stage after
    stage, and have ``running`` stop every one of them at once (a Gatekeeper drains for 3 s):
    seconds in all instead of seconds each."""
    running.callback(at_once, [service.stop for stage in stages for service in stage])
    for stage in stages:
        at_once([service.start for service in stage])


def make_setting(db: MariaDBCluster, keys_file: Path, pairs: int, workdir: Path) -> Setting:
    """A setting's Proxies (instance names of their own, for their heartbeat rows and
    transaction ids) and its Gatekeepers, each with all of them in ``GATEKEEPER_PROXIES``
    and taking PROXY headers from the balancer; not started yet (their ports are chosen)."""
    proxies = [Host(f"px{i}", proxy_service(db, workdir / f"s{pairs}-proxy{i}.log",
                                             PROXY_INSTANCE_NAME=f"s{pairs}-proxy{i}",
                                             **ONE_KEY_WHOLE_POOL))
               for i in range(1, pairs + 1)]
    listed = ",".join(f"s{pairs}-proxy{i}={host.service.url}"
                      for i, host in enumerate(proxies, 1))
    gatekeepers = [Host(f"gk{i}", gatekeeper_service(
        db, "", keys_file, workdir / f"s{pairs}-gatekeeper{i}.log", GATEKEEPER_PROXIES=listed,
        GATEKEEPER_PROXY_PROTOCOL_FROM=BALANCER_SOURCE)) for i in range(1, pairs + 1)]
    return Setting(pairs, gatekeepers, proxies)


def limit(settings: list[Setting], quota: float, running: contextlib.ExitStack) -> None:
    """Every service process into a cgroup of its own with ``quota`` percent of one core,
    removed (the process moved back first) when ``running`` closes."""
    run = f"{GROUP_PREFIX}-{secrets.token_hex(3)}"
    for setting in settings:
        for host in setting.hosts:
            host.group = running.enter_context(
                cpu_limited(host.pid, quota, f"{run}-s{setting.pairs}-{host.name}"))


def logged(setting: Setting) -> tuple[dict[str, int], int]:
    """The requests each Gatekeeper of ``setting`` logged since the last call (its health
    checks aside), and how many of them were not answered 200: the server's count of what
    wrk sent, checked against wrk's."""
    answered, refused = {}, 0
    for host in setting.gatekeepers:
        path = host.service.log_path
        assert path is not None
        with path.open("rb") as log:
            log.seek(setting.log_offsets.get(host.name, 0))
            data = log.read()
        complete = data[:data.rfind(b"\n") + 1]
        setting.log_offsets[host.name] = setting.log_offsets.get(host.name, 0) + len(complete)
        count = 0
        for line in complete.decode(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if entry.get("endpoint") == "health":
                continue
            count += 1
            refused += entry.get("status") != 200
        answered[host.name] = count
    return answered, refused


FLUSHED = 0.5  # request lines are written in batches, every 0.2 s at most


def machine_times() -> tuple[int, int]:
    """(idle, total) clock ticks of all the machine's cores so far (/proc/stat)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])  # idle + iowait; user..steal


def rest_cpu(others: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of the unconstrained processes by kind, and of this process's
    reaped children (wrk, once each run ends) as ``wrk``."""
    times = os.times()
    return {**{kind: sum(cpu_seconds(pid) for pid in pids) for kind, pids in others.items()},
            "wrk": times.children_user + times.children_system}


def measure(setting: Setting, target: HttpTarget, clients: int, seconds: float,
            workdir: Path, others: dict[str, list[int]] | None = None) -> Cell:
    others = others or {}
    logged(setting)  # what came before this cell (the warm-up, the checks) is not its own
    before = {host.name: host.cpu() for host in setting.hosts}
    periods = {host.name: host.throttled() for host in setting.hosts}
    rest, machine = rest_cpu(others), machine_times()
    began = time.monotonic()
    measurement = measure_http(target, OPERATION, clients, seconds, workdir)
    wall = time.monotonic() - began
    cpu = {host.name: host.cpu() - before[host.name] for host in setting.hosts}
    after = {host.name: host.throttled() for host in setting.hosts}
    rest = {kind: used - rest[kind] for kind, used in rest_cpu(others).items()}
    idle, total = (now - then for now, then in zip(machine_times(), machine, strict=True))
    time.sleep(FLUSHED)
    answered, refused = logged(setting)
    return Cell(setting, measurement, wall, cpu,
                {name: (after[name][0] - periods[name][0], after[name][1] - periods[name][1])
                 for name in cpu}, answered, refused, rest, idle / total if total else math.nan)


def cell_table(cells_run: list[Cell], quota: float) -> str:
    """Every cell, in the order measured, with each host's share of one core."""
    header = (f"{'setting':<8} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>8} {'errors':>6} "
              f"{'non-200':>7}  CPU per service process, % of one core (quota {quota:g}%), "
              f"throttled/periods | requests per Gatekeeper | unconstrained, % of one core | "
              f"machine idle")
    lines = [header, "-" * len(header)]
    for cell in cells_run:
        m = cell.measurement
        hosts = "  ".join(f"{name} {cell.share(name):4.1f} {cell.periods[name][1]}/"
                          f"{cell.periods[name][0]}" for name in cell.cpu)
        spread = " ".join(f"{name} {count}" for name, count in cell.answered.items())
        rest = " ".join(f"{kind} {100.0 * used / cell.wall:.0f}"
                        for kind, used in cell.rest.items())
        lines.append(f"{cell.setting.name:<8} {m.requests_per_second:>7.0f} {m.p50_ms:>7.2f} "
                     f"{m.p99_ms:>8.2f} {m.errors:>6} {cell.refused:>7}  {hosts} | {spread} | "
                     f"{rest} | {cell.idle:.0%}")
    return "\n".join(lines)


def quota_verdict(cells_run: list[Cell], quota: float) -> tuple[list[str], bool]:
    """Whether the quota held each process (none over ``OVER_QUOTA`` times it: else it was not
    enforced, a failure) and bound each cell's bottleneck (every host of the busiest one's
    role at ``BOUND`` of it or more, and throttled: else the machine, not the quota, set the
    pace, which the lines say; the ratio then shows the machine's limit)."""
    lines, enforced = [], True
    for number, cell in enumerate(cells_run, 1):
        bottleneck = cell.bottleneck()
        over = [name for name in cell.cpu if cell.share(name) > quota * OVER_QUOTA]
        enforced &= not over
        bound = all(cell.share(name) >= quota * BOUND and cell.periods[name][1] > 0
                    for name in bottleneck)
        each = ", ".join(f"{name} {cell.share(name):.1f}% of one core "
                         f"({cell.share(name) / quota:.0%} of its quota, throttled in "
                         f"{cell.periods[name][1]} of {cell.periods[name][0]} periods)"
                         for name in bottleneck)
        lines.append(f"  cell {number} ({cell.setting.name}): {each}: "
                     + ("the quota bound" if bound else "NOT bound (the machine set the pace)")
                     + (f"; OVER the quota: {', '.join(over)}" if over else ""))
    return lines, enforced


def ratios(cells_run: list[Cell], pairs: list[int]) -> tuple[float, list[str]]:
    """The last setting's mean requests/s against the first's, and each turn's ratio (a
    turn: the settings measured one after the other)."""
    def rate(count: int, chosen: list[Cell]) -> float:
        return statistics.fmean(c.measurement.requests_per_second for c in chosen
                                if c.setting.pairs == count)

    first, last = pairs[0], pairs[-1]
    each = []
    for start in range(0, len(cells_run), len(pairs)):
        turn = cells_run[start:start + len(pairs)]
        if {first, last} <= {cell.setting.pairs for cell in turn}:  # not a run cut short
            each.append(f"{rate(last, turn) / rate(first, turn):.2f}")
    return rate(last, cells_run) / rate(first, cells_run), each


def run(db: MariaDBCluster, keys_file: Path, secret: str, workdir: Path, *,
        pairs: list[int], quota: float, seconds: float, clients: int, rounds: int,
        warmup: float) -> list[Cell]:
    """Bring up every setting and the balancer on ``db``, limit the services, and measure the
    settings in turns; everything started here is stopped before it returns or raises."""
    with contextlib.ExitStack() as running:
        settings = [make_setting(db, keys_file, count, workdir) for count in pairs]
        # Every Proxy, then every Gatekeeper (each checks its Proxies from the start).
        start_all([[host.service for s in settings for host in s.proxies],
                   [host.service for s in settings for host in s.gatekeepers]], running)
        for setting in settings:
            setting.frontend = Frontend(f"pairs{setting.pairs}", tuple(
                host.service.port for host in setting.gatekeepers))
        balancer = HAProxy(workdir, db.ca_file, [s.frontend for s in settings])
        running.callback(balancer.stop)
        balancer.start()
        limit(settings, quota, running)
        targets = {}
        for setting in settings:
            assert setting.frontend is not None
            target = HttpTarget(setting.name, setting.frontend.url, (("X-API-Key", secret),),
                                services=tuple(host.service for host in setting.hosts))
            # Through the balancer, verifying the Gatekeeper's certificate: TLS passes through.
            check_answers(target, Endpoint(setting.frontend.url, db.pki.server_tls()),
                          (OPERATION,))
            if warmup > 0:
                measure_http(target, OPERATION, clients, warmup, workdir)
            targets[setting.pairs] = target
        by_pairs = {setting.pairs: setting for setting in settings}
        assert balancer.process is not None
        others = {"db": [node.process.pid for node in db.nodes if node.process is not None],
                  "lb": [balancer.process.pid]}
        measured = []
        for count in turns(pairs, rounds):
            cell = measure(by_pairs[count], targets[count], clients, seconds, workdir, others)
            measured.append(cell)
            print(cell_table([cell], quota).splitlines()[-1], flush=True)
        down = [row for row in balancer.servers() if row["status"] != "UP"
                or row["chkdown"] != "0"]
        if down:
            print(f"the balancer marked Gatekeepers down during the run: {down}")
        return measured


def report(measured: list[Cell], pairs: list[int], quota: float, min_ratio: float) -> int:
    """Print the tables and the verdicts; the exit status."""
    print()
    print(cell_table(measured, quota))
    print()
    print(render(cells([cell.measurement for cell in measured])))
    print()
    lines, enforced = quota_verdict(measured, quota)
    print(f"The quota ({quota:g}% of one core per service process):")
    print("\n".join(lines))
    loose = sum(line.endswith("(the machine set the pace)") for line in lines)
    ratio, each = ratios(measured, pairs)
    first, last = (f"{count} pair{'s' if count > 1 else ''}" for count in (pairs[0], pairs[-1]))
    # Unbound cells measured the machine: on a full one each group gets a weight's share of
    # what is left, so more groups get more of it, and the ratio says nothing of equal hosts.
    met = ratio >= min_ratio and not loose
    outcome = ("met" if met else "MISSED" if not loose else
               f"INCONCLUSIVE: {loose} of {len(lines)} cells were not bound by the quota (the "
               f"machine was busy: see its idle share); run it on a quiet machine")
    print(f"{last} / {first}: {ratio:.2f}x the requests/s (mean of the rounds; each turn: "
          f"{', '.join(each)}); required >= {min_ratio:g}: {outcome}")
    failed = sum(c.measurement.errors + c.refused for c in measured)
    status = 0
    if failed:
        print(f"{failed} requests failed (errors and non-200 columns)")
        status = 1
    if not enforced:
        print("a service process used more CPU than its quota: the quota was not enforced")
        status = 1
    return status if met else 1


def terminated(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every process, group and file is removed."""
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[1, 2],
                        help="the settings: Gatekeeper+Proxy pairs behind the balancer")
    parser.add_argument("--quota", type=float, default=25.0,
                        help="each service process's CPU quota, percent of one core")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each cell")
    parser.add_argument("--clients", type=int, default=64,
                        help="wrk's connections (32 per Gatekeeper with 2 pairs)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="turns of every setting, every other one reversed")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of unrecorded load per setting before the first cell")
    parser.add_argument("--min-ratio", type=float, default=1.8,
                        help="the least requests/s of the last setting against the first's")
    args = parser.parse_args()
    for tool in ("wrk", "haproxy"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"bench_scaleout: {tool} is missing (make system-packages)")
    signal.signal(signal.SIGTERM, terminated)
    print(f"bench_scaleout: {args.pairs} pairs, {args.quota:g}% of one core per service "
          f"process, {args.clients} clients, {args.rounds} rounds of {args.seconds:g} s",
          flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp, \
                contextlib.ExitStack() as running:
            workdir = Path(tmp)
            db, keys_file, secret = bench_databases(running, workdir)
            measured = run(db, keys_file, secret, workdir, pairs=args.pairs, quota=args.quota,
                           seconds=args.seconds, clients=args.clients, rounds=args.rounds,
                           warmup=args.warmup)
    except KeyboardInterrupt:
        sys.exit("bench_scaleout: interrupted; its processes, cgroups and files are removed")
    sys.exit(report(measured, args.pairs, args.quota, args.min_ratio))


if __name__ == "__main__":
    main()
