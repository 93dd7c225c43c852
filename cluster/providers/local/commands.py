"""``up``, ``status``, ``down`` and ``keys`` of the local provider.

``up`` bakes the "image" (the Debian packages come from ``packages.apt``; the hosts cannot reach
PyPI, so the services' dependencies are served by the Salt master as a wheelhouse), makes the
cluster's certificates and key set, builds a bridge (the VPC) and one namespace host per
machine of the plan plus the Salt master, loads each host's nftables rules (its security group,
from ``INGRESS_RULES``), starts a real salt-master (as its host's ``salt`` user) and one
salt-minion per host with pre-seeded keys, and runs the orchestration. ``status`` asks Salt;
``down`` removes every process, namespace, mount, interface and file ``up`` made, and checks
that none is left. ``keys`` changes the key set, which the next ``up`` applies (or
``--apply``, at once).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cluster import access, rolling, salt_setup, scaling
from cluster import failover as shape
from cluster import keys as api_keys
from cluster.errors import ClusterError
from cluster.pillar import build_pillar, write_pillar_tree
from cluster.pki import ClusterTls
from cluster.providers.deploy import cluster_tls, https_url, public_host, public_trust, publish_ca
from cluster.providers.local.cluster import (
    LOCAL_MONITOR,
    PROVIDER,
    SAKILA_DIR,
    VENV_BIN,
    LocalCluster,
    require_commands,
    require_free_subnet,
    require_root,
)
from cluster.providers.local.fileserver import bake_fileserver, fileserver_dir
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
    network_leftovers,
    release_netns_dir,
    remove_bridge,
)
from cluster.providers.local.salt import (
    apply_states,
    configure_salt,
    failover_runner,
    forget_minion,
    orchestrate,
    orchestration_output,
    own_master_files,
    prepare_master,
    runs,
    salt,
    salt_command,
    start_salt,
    wait_for_minions,
)
from cluster.record import ClusterRecord, HostRecord, read_record, remove_record, write_record
from cluster.salt_setup import (
    OPERATOR_SALT_OPTIONS,
    OrchestrationResult,
    summarize_orchestration,
    summarize_states,
)
from cluster.secrets import ClusterSecrets, load_or_create
from cluster.state import write_private
from cluster.topology import DB_ROLES, ROLES, Host

SUPERVISOR_CONFIG = "/etc/supervisor/supervisord.conf"
HEALTH_DEADLINE_S = 60
SALT_COMMAND_TIMEOUT_S = 1800  # an operator's salt command: a highstate of every host included
SHOWN_STATES = 6  # a host with this many changed states or fewer has them named


def cluster_record(cluster: LocalCluster, secrets: ClusterSecrets, url: str,
                   ca_file: str | None) -> ClusterRecord:
    """What the demo and the load tests need: the endpoint, its CA and the key, the hosts, and
    for the sysbench baseline the ``sb`` password and a ``salt`` command line that runs on the
    master."""
    return ClusterRecord(
        provider=PROVIDER, cluster_name=cluster.name, gatekeeper_url=url,
        api_key=secrets.api_key, ca_file=ca_file,
        hosts=tuple(HostRecord(h.name, h.role, h.address, namespace=h.namespace)
                    for h in cluster.hosts),
        salt_command=tuple(salt_command(cluster)), sb_password=secrets.sb_password,
        monitor_url=cluster.monitor_url,
        provider_data={"subnet": str(cluster.subnet), "bridge": cluster.bridge,
                       "api_key_file": str(cluster.api_key_file),
                       "keys_file": str(cluster.keys_file),
                       "state_dir": str(cluster.state_dir)})


def _print_summary(cluster: LocalCluster, result: OrchestrationResult, record: ClusterRecord,
                   path: Path) -> None:
    if result.changed:
        for minion, states in sorted(result.changed.items()):
            which = f" ({', '.join(states)})" if len(states) <= SHOWN_STATES else ""
            print(f"  {minion}: {len(states)} state(s) changed{which}")
    else:
        print("  no changes: every host was already in its configured state")
    print()
    for line in access.access_lines(record.gatekeeper_url or cluster.gatekeeper_url,
                                    f"in {cluster.api_key_file} (and in {path}, mode 0600)",
                                    f"$(cat {cluster.api_key_file})", record.ca_file):
        print(line)
    for line in access.monitor_lines(record.monitor_url, record.ca_file):
        print(line)


def write_pillar(cluster: LocalCluster, secrets: ClusterSecrets, tls: ClusterTls,
                 keyset: api_keys.KeySet) -> Path:
    """The pillar tree the master serves, in the cluster's state directory."""
    plan = [Host(h.name, h.role) for h in cluster.minions]
    pillar = build_pillar(cluster.name, plan, secrets, provider=PROVIDER,
                          sakila_source=str(SAKILA_DIR), tls=tls, api_keys=keyset.pillar(),
                          monitor=LOCAL_MONITOR if cluster.monitor else None)
    pillar_dir = cluster.state_dir / "pillar"
    write_pillar_tree(pillar, plan, pillar_dir)
    return pillar_dir


@dataclass(frozen=True)
class Prepared:
    """What ``up`` and ``scale`` make before the orchestration: the secrets, the key set, the
    certificates, and the endpoint clients use."""

    secrets: ClusterSecrets
    keyset: api_keys.KeySet
    tls: ClusterTls
    url: str
    ca_file: str | None


def prepare(cluster: LocalCluster, args: argparse.Namespace) -> Prepared:
    """The cluster's state directory, secrets, key set and certificates (every host of
    ``cluster``'s)."""
    cluster.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(cluster.state_dir.parent, 0o700)
    secrets = load_or_create(cluster.secrets_file)
    write_private(cluster.api_key_file, secrets.api_key + "\n")
    keyset = api_keys.prepare(cluster.keys_file, secrets.api_key)
    tls = cluster_tls(cluster.state_dir, cluster.name, cluster.tls_names(),
                      getattr(args, "tls_cert", None), getattr(args, "tls_key", None))
    url = https_url(public_host(tls, cluster.gatekeeper_address))
    return Prepared(secrets, keyset, tls, url, publish_ca(PROVIDER, tls))


def start_hosts(hosts: LocalCluster, pillar_dir: Path, bake: bool = True) -> None:
    """Every host of ``hosts`` made (those that exist are kept) with its firewall, the master
    serving the code and ``pillar_dir``, and a minion on each, answering. ``bake``: the code
    served is the checkout's now; without, the code the cluster was made with (``scale``: a
    new host runs what the others run, and no other restarts for a new version)."""
    fileserver = bake_fileserver(hosts) if bake or not fileserver_dir(hosts).is_dir() \
        else fileserver_dir(hosts)
    print(f"hosts on bridge {hosts.bridge} ({hosts.subnet}) ...", flush=True)
    make_private_mount(hosts.runtime_dir)
    create_network(hosts)
    apply_firewall(hosts)
    for host in hosts.hosts:
        if not host.system_exists():
            host.create_system(keep_visible=hosts.paths_hosts_read())
    prepare_master(hosts, fileserver, pillar_dir)
    configure_salt(hosts)
    own_master_files(hosts, pillar_dir)
    start_salt(hosts)
    wait_for_minions(hosts)


def up(args: argparse.Namespace) -> int:
    require_root("up")
    cluster, _ = recorded_plan(args, for_up=True)
    require_commands(monitor=cluster.monitor is not None)
    if not SAKILA_DIR.is_dir():
        raise ClusterError(f"the Sakila files are not at {SAKILA_DIR}")
    require_free_subnet(cluster)
    started = time.monotonic()
    prepared = prepare(cluster, args)
    pillar_dir = write_pillar(cluster, prepared.secrets, prepared.tls, prepared.keyset)
    start_hosts(cluster, pillar_dir)
    print("salt master and minions are up; orchestrating ...", flush=True)
    result = orchestrate(cluster)
    if not result.ok:
        for line in result.failed[:20]:
            print(f"  FAILED {line}", file=sys.stderr)
        raise ClusterError(f"the orchestration failed (full output: "
                           f"{cluster.state_dir / 'orchestrate.json'})")
    record, path = _healthy_record(cluster, prepared)
    print(f"cluster {cluster.name} is up in {time.monotonic() - started:.0f}s")
    _print_summary(cluster, result, record, path)
    return 0


def _healthy_record(cluster: LocalCluster, prepared: Prepared) -> tuple[ClusterRecord, Path]:
    """The record of ``cluster``, written once its public endpoint answers."""
    if not access.wait_for_health(prepared.url, deadline_s=HEALTH_DEADLINE_S,
                                  ca_file=prepared.ca_file,
                                  also_trust=public_trust(cluster.state_dir),
                                  address=cluster.gatekeeper_address):
        raise ClusterError(f"the Gatekeeper at {prepared.url} is not healthy after "
                           f"{HEALTH_DEADLINE_S}s")
    record = cluster_record(cluster, prepared.secrets, prepared.url, prepared.ca_file)
    return record, write_record(record)


def scale(args: argparse.Namespace) -> int:
    """``scale``: the running cluster made as many Gatekeepers, Proxies and replicas as
    ``args`` say (those they do not name stay as they are), under load (cluster.scaling)."""
    require_root("scale")
    record = read_record(PROVIDER)
    if record is None or record.cluster_name != args.cluster_name:
        raise ClusterError(f"cluster {args.cluster_name} has no record here: "
                           "'bootstrap.py up' makes it")
    now = LocalCluster.of_record(record)
    if not now.master.network_exists():
        raise ClusterError(f"cluster {now.name} is not running: 'bootstrap.py up' starts it")
    target = LocalCluster.plan(scaling.wanted(args, record), monitor=now.monitor is not None,
                               addresses={h.name: h.address for h in record.hosts})
    change = scaling.Change.between([(h.name, h.role) for h in record.hosts],
                                    [(h.name, h.role) for h in target.hosts])
    primary = failover_runner(target, "status", timeout=60).get("primary")
    scaling.refuse_removing_the_primary(change, primary)
    print(scaling.describe(change), flush=True)
    started = time.monotonic()
    both = LocalCluster(target.name, target.subnet,
                        [*target.hosts, *(now.host(name) for name in change.removed)],
                        target.state_dir)
    prepared = prepare(both, args)
    if change.added:
        # Written first: a run that stops half-way leaves a record that names every host.
        write_record(cluster_record(both, prepared.secrets, prepared.url, prepared.ca_file))
    pillar_dir = write_pillar(target, prepared.secrets, prepared.tls, prepared.keyset)
    start_hosts(both, pillar_dir, bake=False)
    print("orchestrating the change ...", flush=True)
    output = orchestration_output(target, scaling.ORCHESTRATION, pillar=change.pillar())
    steps, result = salt_setup.orchestration_steps(output), summarize_orchestration(output)
    if not all(step.ok for step in steps) or not steps:
        return scaling.report(steps, result)
    for name in change.removed:
        host = now.host(name)
        host.remove()
        forget_minion(target, name)
    apply_firewall(target)
    configure_salt(target)
    _healthy_record(target, prepared)
    print(f"cluster {target.name} scaled in {time.monotonic() - started:.0f}s")
    return scaling.report(steps, result)


def recorded_plan(args: argparse.Namespace, for_up: bool = False
                  ) -> tuple[LocalCluster, ClusterRecord | None]:
    """The cluster of ``args`` as its record says it was made, and that record when it is
    this cluster's: its hosts at their addresses, as many Gatekeepers and Proxies as it has
    unless ``args`` say otherwise, and a monitor host if it has one (``for_up``: if ``args``
    want one, --no-monitor or not)."""
    record = read_record(PROVIDER)
    cluster = LocalCluster.plan(args)
    if record is None or record.cluster_name != cluster.name:
        if for_up:
            return cluster, None
        # No record (an up that failed before writing it): as many hosts of each kind as
        # have a namespace, so that down finds them all.
        return LocalCluster.plan(with_counts(args, hosts_present(cluster))), None
    monitored = None if for_up else any(h.role == "monitor" for h in record.hosts)
    return LocalCluster.plan(with_recorded_counts(args, record), monitor=monitored,
                             addresses={h.name: h.address for h in record.hosts}), record


def with_recorded_counts(args: argparse.Namespace, record: ClusterRecord) -> argparse.Namespace:
    """``args`` with the record's number of Gatekeepers, Proxies and replicas where they say
    none."""
    return with_counts(args, [h.name for h in record.hosts])


def with_counts(args: argparse.Namespace, names: list[str]) -> argparse.Namespace:
    """``args`` with as many Gatekeepers, Proxies and replicas as ``names`` has hosts of,
    where they say none (``gatekeeper``, ``gatekeeper2``..., ``replica1``...)."""
    def count(role: str) -> int:
        return sum(1 for name in names if re.fullmatch(rf"{role}\d*", name)) or 1

    replicas = sum(1 for name in names if re.fullmatch(r"replica\d+", name))
    return argparse.Namespace(**{**vars(args),
                                 "gatekeepers": getattr(args, "gatekeepers", None)
                                 or count("gatekeeper"),
                                 "proxies": getattr(args, "proxies", None) or count("proxy"),
                                 "replicas": getattr(args, "replicas", None) or replicas
                                 or None})


def hosts_present(cluster: LocalCluster) -> list[str]:
    """The names of the hosts of ``cluster`` that have a network namespace on this machine."""
    listed = run(["ip", "netns", "list"], check=False).stdout.split()
    prefix = f"{cluster.name}-"
    return [name[len(prefix):] for name in listed if name.startswith(prefix)]


def status(args: argparse.Namespace) -> int:
    require_root("status")
    cluster, ours = recorded_plan(args)
    if not cluster.master.network_exists():
        print(f"cluster {cluster.name} is not running")
        return 1

    def ask(targets: list[str], call: tuple[str, ...]) -> dict:
        answer = salt(cluster, "-L", ",".join(targets), *call, "-t", "15")
        return answer if isinstance(answer, dict) else {}

    services = ask([m.name for m in cluster.minions],
                   ("supervisord.status", f"conf_file={SUPERVISOR_CONFIG}"))
    # The replicas are the database hosts other than the current primary (a failover may have
    # promoted a host of role replica).
    try:
        current = failover_runner(cluster, "status", timeout=60)
    except ClusterError as error:
        current = {"error": str(error)}
    primary = current.get("primary")
    replication = access.replication_report(
        ask, [m.name for m in cluster.minions if m.role in DB_ROLES and m.name != primary],
        [m.name for m in cluster.minions if m.role == "proxy"])
    url = ours.gatekeeper_url if ours and ours.gatekeeper_url else cluster.gatekeeper_url
    healthy = access.health_ok(url, ca_file=ours.ca_file if ours else None,
                               also_trust=public_trust(cluster.state_dir),
                               address=cluster.gatekeeper_address)
    print(f"cluster {cluster.name}: Gatekeeper {url}/health: "
          f"{'ok' if healthy else 'NOT answering'}")
    if cluster.monitor_url:
        ready = access.prometheus_ready(cluster.monitor_url,
                                        ca_file=ours.ca_file if ours else None)
        healthy &= ready
        print(f"  Prometheus {cluster.monitor_url} ({cluster.monitor_url}consoles/sqlgate.html): "
              f"{'ready' if ready else 'NOT answering'}")
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
    if "error" in current:
        print(f"  failover: cannot ask the runner ({current['error']})")
        return 1
    for line in shape.status_lines(current):
        print(line)
    if ours:
        shape.remember(ours, current)
    return 0 if healthy and not current.get("quarantined") else 1


def _running(args: argparse.Namespace, command: str) -> tuple[LocalCluster, ClusterRecord | None]:
    require_root(command)
    cluster, ours = recorded_plan(args)
    if not cluster.master.network_exists():
        raise ClusterError(f"cluster {cluster.name} is not running")
    return cluster, ours


def _run_failover(args: argparse.Namespace, command: str) -> int:
    cluster, ours = _running(args, command)
    answer = failover_runner(cluster, command, *shape.runner_arguments(command, args))
    current = failover_runner(cluster, "status", timeout=60)
    if ours:
        shape.remember(ours, current)
    return shape.report(command, answer, current)


def failover(args: argparse.Namespace) -> int:
    return _run_failover(args, "failover")


def switchover(args: argparse.Namespace) -> int:
    return _run_failover(args, "switchover")


def rebuild(args: argparse.Namespace) -> int:
    return _run_failover(args, "rebuild")


def restart(args: argparse.Namespace) -> int:
    """``restart --rolling``: salt/orch/rolling.sls on the master (cluster.rolling)."""
    cluster, _ = _running(args, "restart")
    output = orchestration_output(cluster, rolling.ORCHESTRATION)
    return rolling.report(salt_setup.orchestration_steps(output))


def run_salt(args: argparse.Namespace) -> int:
    """``salt TARGET FUNCTION ARGS...`` inside the master's host, printed as Salt prints it;
    Salt's exit code."""
    cluster, _ = _running(args, "salt")
    done = cluster.master.run([str(VENV_BIN / "salt"), *OPERATOR_SALT_OPTIONS, args.target,
                               args.function, *args.arguments],
                              check=False, timeout=SALT_COMMAND_TIMEOUT_S)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode


def down(args: argparse.Namespace) -> int:
    """Remove the cluster, then look: only what is found gone is said to be gone. Anything
    left is named, and the record stays so that the next ``down`` knows every host."""
    require_root("down")
    cluster, record = recorded_plan(args)
    ours = record is not None
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
    left = leftovers(cluster)
    if left:
        raise ClusterError(f"cluster {cluster.name} is not fully down; left: {', '.join(left)}")
    if ours:
        remove_record(PROVIDER)
    print(f"cluster {cluster.name} is down: no process, namespace, interface, mount or file "
          "left")
    return 0


def leftovers(cluster: LocalCluster) -> list[str]:
    """What of the cluster exists on the machine: processes of its hosts, namespaces,
    interfaces, mounts, runtime and state directories."""
    left = [f"process {pid}" for host in cluster.hosts for pid in host.pids()]
    left += network_leftovers(cluster)
    left += [f"mount {point}" for point in mount_points_under(cluster.runtime_dir)]
    left += [f"directory {path}" for path in (cluster.runtime_dir, cluster.state_dir)
             if path.exists()]
    return left


def keys(args: argparse.Namespace) -> int:
    """The key set in the cluster's state directory; ``--apply`` writes the pillar again and
    runs the Gatekeeper's states through the master (the services keep running)."""
    cluster = LocalCluster.plan(args)
    secrets_file = cluster.secrets_file
    try:
        admin = load_or_create(secrets_file).api_key if secrets_file.exists() else None
        return api_keys.run(args, cluster.keys_file, admin,
                            _applier(cluster) if admin is not None else None)
    except PermissionError as error:
        raise ClusterError(f"{error.filename}: permission denied (the local cluster's files "
                           "belong to root: run it with sudo)") from None


def _applier(cluster: LocalCluster):
    def apply(keyset: api_keys.KeySet) -> int:
        require_root("keys --apply")
        record = read_record(PROVIDER)
        if record is None or record.cluster_name != cluster.name or \
                not cluster.master.network_exists():
            raise ClusterError(f"--apply: cluster {cluster.name} is not running; the next "
                               "'bootstrap.py up' applies the key set")
        recorded = LocalCluster.of_record(record)
        secrets = load_or_create(recorded.secrets_file)
        tls = cluster_tls(recorded.state_dir, recorded.name, recorded.tls_names())
        pillar_dir = write_pillar(recorded, secrets, tls, keyset)
        own_master_files(recorded, pillar_dir)
        gatekeepers = [h.name for h in recorded.minions if h.role == "gatekeeper"]
        answers = apply_states(recorded, gatekeepers, ROLES["gatekeeper"].states or "")
        return api_keys.report_applied(summarize_states(answers, gatekeepers))

    return apply
