"""``python -m loadtest.report``: the latency benchmark per mode, written under ``results/``.

For each routing mode, exactly N writes then N reads through the Gatekeeper (default 1,000, one
sequential client); the table (avg, p50, p95, p99, max per mode and type) as
Markdown and CSV, every request as CSV, a PNG, and with ``--sysbench`` the OLTP baseline per DB
node. The exit code is 1 when any request failed, so a run with errors never passes quietly.
With a Prometheus (``--prometheus URL``, else the cluster record's ``monitor_url``) the
report adds the server side: the Proxy's own requests/s and p95 by mode over the run's time
window (``loadtest.prometheus``), as a table and a PNG next to the client-side ones.

    python -m loadtest.report                      # the cluster from `bootstrap.py up`
    python -m loadtest.report --sysbench           # ... plus the sysbench baseline
    python -m loadtest.report --loopback --sysbench  # a loopback stack of its own, then stopped
    python -m loadtest.report --prometheus http://10.213.0.9:9090  # ... plus the server side
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cluster.loopback import LoopbackStack
from cluster.state import PROJECT_ROOT
from loadtest import nodes as db_nodes
from loadtest import prometheus as server_side
from loadtest import sysbench
from loadtest.plot import plot
from loadtest.runner import Plan, RunResult, run
from loadtest.summary import Row, markdown_table, summarize, write_csv, write_samples_csv
from loadtest.target import PREFERRED_PROVIDERS, Target, find_target
from loadtest.workload import DEFAULT_TABLE, MODES
from services.client import TlsFiles

RESULTS_DIR = PROJECT_ROOT / "results"


@dataclass
class Report:
    """Everything one run wrote, and where."""

    directory: Path
    rows: list[Row]
    result: RunResult
    baseline: list[sysbench.Result] = field(default_factory=list)
    server: server_side.ServerView | None = None  # what Prometheus saw, when asked
    server_error: str = ""  # why it could not be asked

    @property
    def failed(self) -> int:
        return len(self.result.failures)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest.report",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_argument_group("target")
    where.add_argument("--provider", choices=PREFERRED_PROVIDERS,
                       help="cluster file to use (default: local, else aws, else loopback)")
    where.add_argument("--loopback", action="store_true",
                       help="start a loopback stack for this run and stop it afterwards")
    load = parser.add_argument_group("latency benchmark")
    load.add_argument("-n", "--requests", type=int, default=1000,
                      help="writes and reads each, per mode (default: 1000)")
    load.add_argument("--concurrency", type=int, default=1,
                      help="concurrent clients (default: 1, sequential)")
    load.add_argument("--modes", default=",".join(MODES), help="comma-separated routing modes")
    load.add_argument("--table", default=DEFAULT_TABLE, help="write table, created if missing")
    load.add_argument("--timeout", type=float, default=10.0, help="per-request timeout (s)")
    load.add_argument("--deadline", type=float, default=1800.0,
                      help="the run's time limit (s); requests not sent by then count as failed")
    load.add_argument("--no-tokens", dest="tokens", action="store_false",
                      help="reads do not send their write's token (see what it costs)")
    bench = parser.add_argument_group("sysbench baseline")
    bench.add_argument("--sysbench", action="store_true", help="also run the OLTP baseline")
    bench.add_argument("--sysbench-time", type=int, default=30)
    bench.add_argument("--sysbench-tables", type=int, default=2)
    bench.add_argument("--sysbench-table-size", type=int, default=100_000)
    bench.add_argument("--sysbench-threads", type=int, default=4)
    bench.add_argument("--sysbench-via", choices=("salt", "netns"), default="salt",
                       help="how to reach a cluster's DB nodes (default: salt)")
    bench.add_argument("--sb-password", help=f"sysbench user's password "
                                             f"(default: ${db_nodes.SB_PASSWORD_ENV} or the "
                                             "cluster file's sb_password)")
    parser.add_argument("--prometheus", metavar="URL",
                        help="Prometheus to read the Proxy's own figures of the run from "
                             "(default: the cluster file's monitor_url, if any)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR,
                        help="parent of the run's timestamped directory (default: results/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except (LookupError, RuntimeError) as error:  # no cluster, no key, setup refused: one line
        print(f"loadtest.report: {error}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if unknown := set(modes) - set(MODES):
        raise SystemExit(f"unknown mode(s): {sorted(unknown)}")
    plan = Plan(requests=args.requests, modes=modes, concurrency=args.concurrency,
                table=args.table, timeout_s=args.timeout, deadline_s=args.deadline,
                tokens=args.tokens)
    options = sysbench.Options(tables=args.sysbench_tables, table_size=args.sysbench_table_size,
                               threads=args.sysbench_threads, time_s=args.sysbench_time)
    with _target(args, options) as (target, baseline_nodes):
        print(f"Benchmarking {target.gatekeeper_url} ({target.provider}): {plan.requests} writes"
              f" + {plan.requests} reads per mode, concurrency {plan.concurrency}", flush=True)
        result = asyncio.run(run(target, plan, progress=lambda line: print(line, flush=True)))
        baseline = []
        if args.sysbench:
            nodes, runner, options = baseline_nodes()
            baseline = sysbench.Baseline(nodes, options, runner,
                                         progress=lambda line: print(line, flush=True)).run()
        server, server_error = _server_view(args.prometheus or _record_prometheus(target),
                                            target, result)
    report = write_report(args.out, target, result, baseline, server, server_error)
    print(f"\n{markdown_table(report.rows)}")
    if baseline:
        print(sysbench.markdown_table(baseline))
    if report.server_error:
        print(f"loadtest.report: no server side: {report.server_error}", file=sys.stderr)
    print(f"Report: {report.directory}/report.md")
    if report.failed:
        print(f"{report.failed} request(s) failed: see {report.directory}/requests.csv",
              file=sys.stderr)
        return 1
    return 0


@contextlib.contextmanager
def _target(args: argparse.Namespace, options: sysbench.Options) -> Iterator[tuple]:
    """The target, and a function giving the sysbench nodes, their runner and the options with
    the password (only called with --sysbench: the latency run needs no DB access)."""
    if not args.loopback:
        target = find_target(args.provider)

        def cluster() -> tuple:
            with_password = replace(options,
                                    password=db_nodes.sb_password(target, args.sb_password))
            return (*db_nodes.cluster_nodes(target, via=args.sysbench_via), with_password)
        yield target, cluster
        return
    with LoopbackStack() as stack:
        target = stack.describe()
        with_password = replace(options, password=args.sb_password or "sysbench-loopback")
        yield target, lambda: (*db_nodes.loopback_nodes(stack.db, with_password), with_password)


def _record_prometheus(target: Target) -> str | None:
    """The cluster record's Prometheus, for records that have one (the monitor role's)."""
    return target.monitor_url or None


def _server_view(url: str | None, target: Target, result: RunResult
                 ) -> tuple[server_side.ServerView | None, str]:
    """Ask Prometheus about the run's window; a Prometheus that cannot answer costs the
    report its server side only (said in it and on stderr), never the client-side figures."""
    if not url:
        return None, ""
    # The monitor's certificate is the cluster's: checked against the record's CA.
    tls = TlsFiles(target.ca_file or "") if url.startswith("https://") else None
    try:
        return server_side.collect(server_side.Prometheus(url, tls), result.started_at,
                                   result.finished_at), ""
    except server_side.PrometheusError as error:
        return None, str(error)


def write_report(parent: Path, target: Target, result: RunResult,
                 baseline: list[sysbench.Result], server: server_side.ServerView | None = None,
                 server_error: str = "") -> Report:
    directory = _new_directory(parent)
    rows = summarize(result)
    report = Report(directory, rows, result, baseline, server, server_error)
    write_csv(rows, directory / "latency.csv")
    write_samples_csv(result, directory / "requests.csv")
    plan = result.plan
    plot(rows, directory / "latency.png",
         f"End-to-end latency through the Gatekeeper ({target.provider}): {plan.requests} writes"
         f" + {plan.requests} reads per mode, "
         f"{plan.concurrency} client{'s' if plan.concurrency > 1 else ''}")
    if server is not None and server.has_data:
        server_side.plot(server, directory / "server.png",
                         f"The Proxy's own view ({target.provider}, from Prometheus): "
                         "requests/s and p95 by mode during the run")
    if baseline:
        with (directory / "sysbench.csv").open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(asdict(baseline[0])))
            writer.writeheader()
            writer.writerows(asdict(r) for r in baseline)
    (directory / "report.md").write_text(_markdown(report, target))
    (directory / "run.json").write_text(json.dumps({
        "run_id": result.run_id, "provider": target.provider, "gatekeeper_url":
        target.gatekeeper_url, "plan": asdict(plan), "commit": _commit(),
        "failed": report.failed, "rows": [asdict(r) for r in rows],
        "started_at": result.started_at, "finished_at": result.finished_at,
        "prometheus": server.summary() if server is not None else
        ({"error": server_error} if server_error else None),
        "sysbench": [asdict(r) for r in baseline]}, indent=2) + "\n")
    return report


def _markdown(report: Report, target: Target) -> str:
    plan, result = report.result.plan, report.result
    total = len(result.samples)
    parts = [
        f"# Benchmark {report.directory.name}\n",
        f"Target: `{target.gatekeeper_url}` (provider `{target.provider}`), commit "
        f"`{_commit()}`, run id `{result.run_id}`. For each mode, {plan.requests} writes "
        f"(`INSERT` into `{plan.table}`) then {plan.requests} reads (point `SELECT` of a row "
        f"just written), {plan.concurrency} client(s), latency measured at the client per "
        f"request (ms; failed requests excluded from the statistics and counted).\n",
        markdown_table(report.rows),
        f"{total} requests, {report.failed} failed.\n",
    ]
    if report.failed:
        reasons = Counter(s.error for s in result.failures).most_common(5)
        parts.append("Failures by reason:\n\n" + "".join(f"- {n} x {reason}\n"
                                                       for reason, n in reasons))
    parts.append("![latency](latency.png)\n")
    if report.server is not None:
        parts.append(server_side.markdown(report.server,
                                          "server.png" if report.server.has_data else None))
    elif report.server_error:
        parts.append(f"## Server side (Prometheus)\n\nNot available: {report.server_error}\n")
    if report.baseline:
        first = report.baseline[0]
        parts += [
            "## sysbench OLTP baseline per DB node\n",
            f"Each node's local server as `sb@localhost`, {first.threads} threads, "
            f"{first.time_s} s, tables prepared once on the primary and replicated. The primary "
            "runs `oltp_read_write`; the replicas are read-only (writing to one would break GTID "
            "replication), so they run `oltp_read_only` on the same tables.\n",
            sysbench.markdown_table(report.baseline),
        ]
    return "\n".join(parts)


def _new_directory(parent: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for suffix in ["", *(f"-{i}" for i in range(1, 100))]:
        directory = parent / f"{stamp}{suffix}"
        try:
            directory.mkdir(parents=True)
            return directory
        except FileExistsError:
            continue
    raise FileExistsError(f"no free directory for {stamp} under {parent}")


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
