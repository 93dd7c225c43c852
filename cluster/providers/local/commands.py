"""``up``, ``status`` and ``down`` of the local provider.

``up`` bakes the "image" (the Debian packages come from ``packages.apt``; the hosts cannot reach
PyPI, so the services' dependencies are served by the Salt master as a wheelhouse), builds a
bridge (the VPC) and one namespace host per machine of the plan plus the Salt master, loads each
host's nftables rules (its security group, from ``INGRESS_RULES``), starts a real salt-master
and one salt-minion per host with pre-seeded keys, and runs the orchestration. ``status`` asks
Salt; ``down`` removes every process, namespace, mount, interface and file ``up`` made.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from cluster import access
from cluster.errors import ClusterError
from cluster.pillar import build_pillar, write_pillar_tree
from cluster.providers.local.cluster import (
    PROVIDER,
    SAKILA_DIR,
    LocalCluster,
    require_commands,
    require_free_subnet,
    require_root,
)
from cluster.providers.local.fileserver import bake_fileserver
from cluster.providers.local.hosts import (
    RUNTIME_ROOT,
    make_private_mount,
    mount_points_under,
    release_private_mount,
    run,
    stop_processes,
)
from cluster.providers.local.network import (
    apply_firewall,
    create_network,
    release_netns_dir,
    remove_bridge,
)
from cluster.providers.local.salt import (
    configure_salt,
    orchestrate,
    runs,
    salt,
    salt_command,
    start_salt,
    wait_for_minions,
)
from cluster.record import ClusterRecord, HostRecord, read_record, remove_record, write_record
from cluster.salt_setup import OrchestrationResult
from cluster.secrets import ClusterSecrets, load_or_create
from cluster.state import write_private
from cluster.topology import Host

SUPERVISOR_CONFIG = "/etc/supervisor/supervisord.conf"
HEALTH_DEADLINE_S = 60


def cluster_record(cluster: LocalCluster, secrets: ClusterSecrets) -> ClusterRecord:
    """What the demo and the load tests need: the endpoint and key, the hosts, and for the
    sysbench baseline the ``sb`` password and a ``salt`` command line that runs on the master."""
    return ClusterRecord(
        provider=PROVIDER, cluster_name=cluster.name, gatekeeper_url=cluster.gatekeeper_url,
        api_key=secrets.api_key,
        hosts=tuple(HostRecord(h.name, h.role, h.address, namespace=h.namespace)
                    for h in cluster.hosts),
        salt_command=tuple(salt_command(cluster)), sb_password=secrets.sb_password,
        provider_data={"subnet": str(cluster.subnet), "bridge": cluster.bridge,
                       "api_key_file": str(cluster.api_key_file),
                       "state_dir": str(cluster.state_dir)})


def _print_summary(cluster: LocalCluster, result: OrchestrationResult, path: Path) -> None:
    if result.changed:
        for minion, states in sorted(result.changed.items()):
            print(f"  {minion}: {len(states)} state(s) changed")
    else:
        print("  no changes: every host was already in its configured state")
    print()
    for line in access.access_lines(cluster.gatekeeper_url,
                                    f"in {cluster.api_key_file} (and in {path}, mode 0600)",
                                    f"$(cat {cluster.api_key_file})"):
        print(line)


def up(args: argparse.Namespace) -> int:
    require_root("up")
    require_commands()
    cluster = LocalCluster.plan(args)
    if not SAKILA_DIR.is_dir():
        raise ClusterError(f"the Sakila files are not at {SAKILA_DIR}")
    require_free_subnet(cluster)
    started = time.monotonic()
    cluster.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(cluster.state_dir.parent, 0o700)
    secrets = load_or_create(cluster.secrets_file)
    write_private(cluster.api_key_file, secrets.api_key + "\n")

    fileserver = bake_fileserver(cluster)
    plan = [Host(h.name, h.role) for h in cluster.minions]
    pillar = build_pillar(cluster.name, plan, secrets, provider=PROVIDER,
                          sakila_source=str(SAKILA_DIR))
    pillar_dir = cluster.state_dir / "pillar"
    write_pillar_tree(pillar, plan, pillar_dir)

    print(f"hosts on bridge {cluster.bridge} ({cluster.subnet}) ...", flush=True)
    make_private_mount(cluster.runtime_dir)
    create_network(cluster)
    apply_firewall(cluster)
    for host in cluster.hosts:
        if not host.system_exists():
            host.create_system(keep_visible=cluster.paths_hosts_read())
    configure_salt(cluster, fileserver, pillar_dir)
    start_salt(cluster)
    wait_for_minions(cluster)
    print("salt master and minions are up; orchestrating ...", flush=True)
    result = orchestrate(cluster)
    if not result.ok:
        for line in result.failed[:20]:
            print(f"  FAILED {line}", file=sys.stderr)
        raise ClusterError(f"the orchestration failed (full output: "
                           f"{cluster.state_dir / 'orchestrate.json'})")
    if not access.wait_for_health(cluster.gatekeeper_url, deadline_s=HEALTH_DEADLINE_S):
        raise ClusterError(f"the Gatekeeper at {cluster.gatekeeper_url} is not healthy after "
                           f"{HEALTH_DEADLINE_S}s")
    path = write_record(cluster_record(cluster, secrets))
    print(f"cluster {cluster.name} is up in {time.monotonic() - started:.0f}s")
    _print_summary(cluster, result, path)
    return 0


def status(args: argparse.Namespace) -> int:
    require_root("status")
    cluster = LocalCluster.plan(args)
    if not cluster.master.network_exists():
        print(f"cluster {cluster.name} is not running")
        return 1

    def ask(targets: list[str], call: tuple[str, ...]) -> dict:
        answer = salt(cluster, "-L", ",".join(targets), *call, "-t", "15")
        return answer if isinstance(answer, dict) else {}

    services = ask([m.name for m in cluster.minions],
                   ("supervisord.status", f"conf_file={SUPERVISOR_CONFIG}"))
    replication = access.replication_report(
        ask, [m.name for m in cluster.minions if m.role == "replica"],
        [m.name for m in cluster.minions if m.role == "proxy"])
    print(f"cluster {cluster.name}: Gatekeeper {cluster.gatekeeper_url}")
    healthy = True
    for host in cluster.hosts:
        line = f"  {host.name:<11} {host.role:<10} {host.address:<15} {host.namespace:<24}"
        running = services.get(host.name)
        if host is cluster.master:
            line += "  salt-master" if runs(host, "salt-master") else "  salt-master DOWN"
        elif isinstance(running, dict):
            line += "  " + ", ".join(f"{name} {info.get('state', '?')}"
                                     for name, info in sorted(running.items()))
            healthy &= all(info.get("state") == "RUNNING" for info in running.values())
        else:
            line += "  (no answer)"
            healthy = False
        print(line)
        if host.name in replication:
            fields, rotation = replication[host.name]
            print("              " + "  ".join(f"{k}: {v}" for k, v in fields.items()))
            print(f"              {rotation}")
            healthy &= access.replication_running(fields)
    return 0 if healthy else 1


def down(args: argparse.Namespace) -> int:
    require_root("down")
    cluster = LocalCluster.plan(args)
    record = read_record(PROVIDER)
    ours = record is not None and record.cluster_name == cluster.name
    if ours:
        cluster.with_recorded_hosts([{"name": h.name, "role": h.role, "address": h.address}
                                     for h in record.hosts])
    stop_processes(cluster.hosts)
    for host in cluster.hosts:
        host.remove()
    remove_bridge(cluster)
    for point in sorted(mount_points_under(cluster.runtime_dir), reverse=True):
        if point != str(cluster.runtime_dir):
            run(["umount", point])
    release_private_mount(cluster.runtime_dir)
    if RUNTIME_ROOT.exists() and not any(RUNTIME_ROOT.iterdir()):
        RUNTIME_ROOT.rmdir()
    release_netns_dir()
    shutil.rmtree(cluster.state_dir, ignore_errors=True)
    provider_dir = cluster.state_dir.parent
    if provider_dir.exists() and not any(provider_dir.iterdir()):
        provider_dir.rmdir()
    if ours:
        remove_record(PROVIDER)
    print(f"cluster {cluster.name} is down: no process, namespace, mount or file left")
    return 0
