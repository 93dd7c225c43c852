"""What more worker processes buy on the local cluster's own hosts: its Gatekeeper and Proxy
hosts with ``workers`` 1 and then N, set through Salt, loaded through the public endpoint.

    python -m loadtest.bench_cluster_workers [--workers 1 2] [--seconds 10] [--clients 16 64]

It needs the local cluster ``make up`` made (its record). Each setting is applied as a Salt
pillar override (``sqlgate:proxy:workers`` and ``sqlgate:gatekeeper:workers``) with
``state.apply`` on the two hosts, which restarts their services; the settings take turns
(1, N, N, 1 for two rounds), and at the end the pillar's own value is applied again. Before a
setting is measured, each host must run exactly the processes it asks for (one, or a parent
and N workers).

wrk (one thread, on this machine: the "Internet") sends point selects in ``mode=random`` to
the Gatekeeper over HTTPS with the record's admin key. Every host of the local cluster, wrk
and the monitor host's Prometheus share this machine's cores: a second worker finds a free
core only when the others leave one.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from cluster.providers.local.cluster import LocalCluster
from cluster.providers.local.hosts import NamespaceHost
from cluster.providers.local.salt import salt
from cluster.record import ClusterRecord, read_record
from cluster.salt_setup import summarize_states
from cluster.waiting import wait_until
from loadtest.bench_overhead import (
    POINT_SELECT,
    HttpTarget,
    Measurement,
    cpu_seconds,
    measure_http,
    render,
)
from loadtest.bench_workers import gain
from services.client import Client, TlsFiles

# The two hosts, their Salt state, and the module their service runs.
SERVICES = {"proxy": ("sqlgate.proxy", "services.proxy"),
            "gatekeeper": ("sqlgate.gatekeeper", "services.gatekeeper")}


def service_pids(host: NamespaceHost, module: str) -> list[int]:
    """The processes of ``python -m module`` on ``host``: the service, or its parent and its
    workers."""
    pids = []
    for pid in host.pids():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-m" in command and module.encode() in command:
            pids.append(pid)
    return pids


def expected_processes(workers: int) -> int:
    return 1 if workers == 1 else workers + 1


def override(role: str, workers: int) -> dict:
    """The pillar of one setting: ``workers``, and for the Proxy no per-key share of the
    statements in flight (the bench's clients all use one key, as one application would
    with its whole pool)."""
    settings = {"workers": workers}
    if role == "proxy":
        settings["settings"] = {"max_statements_per_key": 1024}
    return settings


class ClusterWorkers:
    """Sets the workers of the cluster's Gatekeeper and Proxy hosts through Salt."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.hosts = {role: next(h for h in cluster.minions if h.role == role)
                      for role in SERVICES}

    def apply(self, workers: int | None) -> None:
        """``workers`` on both hosts (None: the pillar's own value), then wait until each
        runs that many processes."""
        for role, (state, module) in SERVICES.items():
            host = self.hosts[role]
            extra = ([] if workers is None else
                     [f"pillar={json.dumps({'sqlgate': {role: override(role, workers)}})}"])
            answer = salt(self.cluster, host.name, "state.apply", state, *extra, "-t", "300",
                          timeout=400)
            result = summarize_states(answer if isinstance(answer, dict) else {}, [host.name])
            if not result.ok:
                raise SystemExit(f"bench_cluster_workers: {state} on {host.name} failed: "
                                 + "; ".join(result.failed))
            if workers is not None:
                wait_until(lambda h=host, m=module: len(service_pids(h, m))
                           == expected_processes(workers), 60,
                           f"{workers} worker(s) on {host.name}")

    def cpu(self) -> float:
        """CPU time of both services' processes (each counted once, workers included)."""
        return sum(cpu_seconds(pid, children=False) for role, (_, module) in SERVICES.items()
                   for pid in service_pids(self.hosts[role], module))


def check_answer(record: ClusterRecord) -> None:
    with Client(record.gatekeeper_url, record.api_key, timeout=10,
                tls=TlsFiles(ca_file=record.ca_file)) as client:
        answer = client.post("/query", {"sql": POINT_SELECT, "mode": "random"})
    assert answer.ok and answer.json.get("rowcount") == 1, answer.json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs=2, default=[1, 2])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--rounds", type=int, default=2,
                        help="measurements of each cell per setting, the settings in turn")
    args = parser.parse_args()
    record = read_record("local")
    if record is None:
        raise SystemExit("bench_cluster_workers: no local cluster is up (make up makes one)")
    workers = ClusterWorkers(LocalCluster.of_record(record))
    measurements: list[Measurement] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for number in range(args.rounds):
                for count in args.workers if number % 2 == 0 else args.workers[::-1]:
                    workers.apply(count)
                    wait_until(lambda: check_answer(record) is None, 60,
                               "the Gatekeeper to answer", tolerate=(AssertionError, OSError))
                    target = HttpTarget(f"cluster x{count}", record.gatekeeper_url,
                                        (("X-API-Key", record.api_key),), cpu=workers.cpu)
                    for clients in args.clients:
                        measurements.append(measure_http(target, "point select", clients,
                                                         args.seconds, Path(tmp)))
                        print(render(measurements[-1:]).splitlines()[-1], flush=True)
    finally:
        workers.apply(None)
    print()
    print(render(sorted(measurements, key=lambda m: (m.clients, m.target))))
    print()
    print(gain(measurements, args.workers, name="cluster"))
    if any(m.errors for m in measurements):
        raise SystemExit("some requests failed: see the errors column")


if __name__ == "__main__":
    main()
