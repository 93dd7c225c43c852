"""The sysbench OLTP baseline on each DB node, against the node's own server.

Replicas are read-only (and writing to one would break GTID replication), so the tables are
prepared once on the primary and reach the replicas by replication; the primary then runs
``oltp_read_write`` and each replica ``oltp_read_only`` on the same tables. The commands run
where the node is: directly (loopback), inside its network namespace, or through Salt. The
``sb`` password goes in the commands' environment (``MYSQL_PWD``, read by the client library when
no password is given), never on a command line or in Salt's logs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Options:
    tables: int = 2
    table_size: int = 100_000
    threads: int = 4
    time_s: int = 30
    schema: str = "sbtest"
    user: str = "sb"
    password: str = ""


@dataclass(frozen=True)
class Node:
    """Where a DB node's server is, seen from where its commands run."""

    name: str
    role: str  # "primary" (the primary) or "replica"
    socket: str | None = None  # preferred: sb@localhost, no network in the figure
    host: str = "127.0.0.1"
    port: int = 3306

    @property
    def is_primary(self) -> bool:
        return self.role == "primary"

    def connection_args(self) -> list[str]:
        if self.socket:
            return [f"--mysql-socket={self.socket}"]
        return [f"--mysql-host={self.host}", f"--mysql-port={self.port}"]


@dataclass(frozen=True)
class Result:
    node: str
    role: str
    test: str
    threads: int
    time_s: int
    tps: float
    qps: float
    latency_avg_ms: float
    latency_p95_ms: float
    errors: int


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str


# (node, argv, timeout, environment variables to add): how the command went.
Runner = Callable[[Node, list[str], float, dict[str, str]], Completed]


def run_here(node: Node, argv: list[str], timeout: float, env: dict[str, str] | None = None,
             stdin: str | None = None) -> Completed:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})}, input=stdin)
    return Completed(done.returncode, done.stdout, done.stderr)


@dataclass(frozen=True)
class InNamespace:
    """Run each node's commands inside its network namespace (``ip netns exec``)."""

    namespaces: dict[str, str]

    def __call__(self, node: Node, argv: list[str], timeout: float,
                 env: dict[str, str]) -> Completed:
        return run_here(node, ["ip", "netns", "exec", self.namespaces[node.name], *argv], timeout,
                        env)


@dataclass(frozen=True)
class ThroughSalt:
    """Run each node's commands on its minion with ``salt <node> cmd.run_all`` on the master.

    The environment is passed as ``env=`` on salt's stdin (``--args-stdin``), not its command
    line, and ``output_loglevel=quiet`` keeps the command and its output out of the minion's log.
    """

    salt: list[str] = field(default_factory=lambda: ["salt"])

    def __call__(self, node: Node, argv: list[str], timeout: float,
                 env: dict[str, str]) -> Completed:
        # Options read from stdin replace the command line's, so all of them go there.
        stdin = "\n".join(["--out=json", "--static", f"--timeout={int(timeout)}",
                           f"env={json.dumps(env)}", "output_loglevel=quiet"]) + "\n"
        done = run_here(node, [*self.salt, "--args-stdin", node.name, "cmd.run_all",
                               shlex.join(argv)], timeout + 30, stdin=stdin)
        if done.returncode != 0 and not done.stdout.strip():
            return done
        answer = json.loads(done.stdout).get(node.name)
        if not isinstance(answer, dict):
            return Completed(1, "", f"no answer from minion {node.name}: {answer!r}")
        return Completed(answer["retcode"], answer["stdout"], answer["stderr"])


def sysbench_argv(test: str, command: str, node: Node, options: Options) -> list[str]:
    return ["sysbench", test, "--db-driver=mysql", *node.connection_args(),
            f"--mysql-user={options.user}",
            f"--mysql-db={options.schema}", f"--tables={options.tables}",
            f"--table-size={options.table_size}", f"--threads={options.threads}",
            f"--time={options.time_s}", "--percentile=95", "--report-interval=0", command]


def client_argv(node: Node, options: Options, sql: str) -> list[str]:
    connection = ([f"--socket={node.socket}"] if node.socket
                  else [f"--host={node.host}", f"--port={node.port}"])
    return ["mariadb", *connection, f"--user={options.user}", "--batch", "--skip-column-names",
            "-e", sql]


def client_env(options: Options) -> dict[str, str]:
    """The password, for the client library (sysbench's too) to read when none is given."""
    return {"MYSQL_PWD": options.password}


_NUMBERS = {
    "tps": r"transactions:\s+\d+\s+\(([\d.]+) per sec",
    "qps": r"queries:\s+\d+\s+\(([\d.]+) per sec",
    "latency_avg_ms": r"avg:\s+([\d.]+)",
    "latency_p95_ms": r"95th percentile:\s+([\d.]+)",
    "errors": r"ignored errors:\s+(\d+)",
}


def parse_run_output(text: str) -> dict[str, float]:
    """The figures of ``sysbench ... run``'s report; a missing one is an error, not a zero."""
    figures = {}
    for name, pattern in _NUMBERS.items():
        match = re.search(pattern, text)
        if not match:
            raise ValueError(f"sysbench output has no {name}:\n{text[-2000:]}")
        figures[name] = float(match.group(1))
    return figures


class Baseline:
    """Prepare on the primary, wait for the replicas, run on every node, clean up."""

    def __init__(self, nodes: list[Node], options: Options, runner: Runner = run_here,
                 progress: Callable[[str], None] = print) -> None:
        primaries = [n for n in nodes if n.is_primary]
        if len(primaries) != 1:
            raise ValueError(f"expected one primary among {[n.name for n in nodes]}")
        self.primary, self.nodes = primaries[0], nodes
        self.options, self.runner, self.progress = options, runner, progress

    def _run(self, node: Node, argv: list[str], timeout: float) -> str:
        done = self.runner(node, argv, timeout, client_env(self.options))
        if done.returncode != 0:
            raise RuntimeError(f"{node.name}: `{shlex.join(argv)}` failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout)[-2000:]}")
        return done.stdout

    def run(self) -> list[Result]:
        o, primary = self.options, self.primary
        self._run(primary, client_argv(primary, o, f"CREATE DATABASE IF NOT EXISTS {o.schema}"),
                  60)
        self._run(primary, sysbench_argv("oltp_read_write", "cleanup", primary, o), 300)
        self.progress(f"sysbench: preparing {o.tables} x {o.table_size} rows on {primary.name}")
        self._run(primary, sysbench_argv("oltp_read_write", "prepare", primary, o), 1800)
        try:
            for node in self.nodes:
                if not node.is_primary:
                    self._wait_for_tables(node, deadline_s=600)
            return [self._bench(node) for node in self.nodes]
        finally:
            self._run(primary, sysbench_argv("oltp_read_write", "cleanup", primary, o), 300)

    def _wait_for_tables(self, node: Node, deadline_s: float) -> None:
        """Poll until every prepared table has all its rows on the replica."""
        o = self.options
        sql = " UNION ALL ".join(f"SELECT COUNT(*) FROM {o.schema}.sbtest{i}"
                                 for i in range(1, o.tables + 1))
        deadline = time.monotonic() + deadline_s
        last = ""
        while time.monotonic() < deadline:
            done = self.runner(node, client_argv(node, o, sql), 60, client_env(o))
            last = done.stdout.split() if done.returncode == 0 else done.stderr.strip()
            if done.returncode == 0 and last == [str(o.table_size)] * o.tables:
                return
            time.sleep(0.5)
        raise TimeoutError(f"{node.name}: the sysbench tables did not replicate in "
                           f"{deadline_s:g} s (last: {last})")

    def _bench(self, node: Node) -> Result:
        o = self.options
        test = "oltp_read_write" if node.is_primary else "oltp_read_only"
        self.progress(f"sysbench: {test} on {node.name}, {o.threads} threads, {o.time_s} s")
        output = self._run(node, sysbench_argv(test, "run", node, o), o.time_s + 300)
        figures = parse_run_output(output)
        return Result(node.name, node.role, test, o.threads, o.time_s, figures["tps"],
                      figures["qps"], figures["latency_avg_ms"], figures["latency_p95_ms"],
                      int(figures["errors"]))


def markdown_table(results: list[Result]) -> str:
    lines = ["| Node | Role | Test | Threads | Time (s) | TPS | QPS | Avg (ms) | P95 (ms) "
             "| Errors |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.node} | {r.role} | {r.test} | {r.threads} | {r.time_s} | {r.tps:.2f} | "
              f"{r.qps:.2f} | {r.latency_avg_ms:.2f} | {r.latency_p95_ms:.2f} | {r.errors} |"
              for r in results]
    return "\n".join(lines) + "\n"
