"""The local provider: the cluster on this machine, one network-namespace host per VM.

``up`` bakes the "image" (the Debian packages come from ``packages.apt``; the hosts cannot reach
PyPI, so the services' dependencies are served by the Salt master as a wheelhouse), builds a
bridge (the VPC) and one namespace host per machine of the plan plus the Salt master, loads each
host's nftables rules (its security group, from ``INGRESS_RULES``), starts a real salt-master
and one salt-minion per host with pre-seeded keys, and runs the orchestration. ``status`` asks
Salt; ``down`` removes every process, namespace, mount, interface and file ``up`` made.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import yaml

from cluster import local_firewall
from cluster.access import (
    PROXY_HEALTH_COMMAND,
    curl_line,
    proxy_view,
    replica_fields,
    replication_running,
    wait_for_health,
)
from cluster.local_hosts import (
    PRIVATE_DIRS,
    RUNTIME_ROOT,
    HostError,
    NamespaceHost,
    make_private_mount,
    mount_points_under,
    release_private_mount,
    run,
    short_name,
    stop_processes,
)
from cluster.pillar import build_pillar, write_pillar_tree
from cluster.salt_keys import salt_key_pair
from cluster.secrets import ClusterSecrets, load_or_create
from cluster.state import (
    CLUSTER_DIR_ENV,
    PROJECT_PATHS,
    PROJECT_ROOT,
    SKIP_NAMES,
    default_cluster_dir,
    read_cluster_file,
    remove_cluster_file,
    write_cluster_file,
    write_private,
)
from cluster.topology import GATEKEEPER_PORT, SALT_MASTER, Host, plan_hosts

PROVIDER = "local"
VENV_BIN = Path(sys.executable).parent
# Resolved: the hosts must see the files where the path points, even through a symlink.
SAKILA_DIR = (PROJECT_ROOT.parent / "shared" / "datasets" / "sakila").resolve()
NEEDED_COMMANDS = ("ip", "nft", "nsenter", "unshare", "mount", "mariadbd", "supervisord", "curl")
MINION_DEADLINE_S = 120
ORCHESTRATION_TIMEOUT_S = 1200
MASTER_CONFIG = "/etc/salt/master.d/sqlgate.conf"
MINION_CONFIG = "/etc/salt/minion.d/sqlgate.conf"
MASTER_PKI = "/etc/salt/pki/master"
MINION_PKI = "/etc/salt/pki/minion"
DB_SOCKET = "/run/mysqld/mysqld.sock"
SUPERVISOR_CONFIG = "/etc/supervisor/supervisord.conf"


class LocalError(Exception):
    """A problem the user can fix; printed as one line."""


@dataclass(frozen=True)
class LocalCluster:
    """Names, addresses and paths of one local cluster, all derived from the arguments."""

    name: str
    subnet: ipaddress.IPv4Network
    hosts: list[NamespaceHost]  # the Salt master first, then the plan's hosts
    state_dir: Path

    @classmethod
    def plan(cls, args: argparse.Namespace) -> LocalCluster:
        try:
            subnet = ipaddress.IPv4Network(args.subnet)
        except ValueError as error:
            raise LocalError(f"--subnet {args.subnet}: {error}") from None
        try:
            planned = [SALT_MASTER, *plan_hosts(args.replicas)]
        except ValueError as error:
            raise LocalError(f"--replicas {args.replicas}: {error}") from None
        if subnet.num_addresses < len(planned) + 3:
            raise LocalError(f"--subnet {subnet} is too small for {len(planned)} hosts")
        state_dir = (default_cluster_dir() / PROVIDER / args.cluster_name).resolve()
        # /tmp is fine (the hosts keep seeing it there); the other private mounts hide it.
        hidden = [m for m in (*PRIVATE_DIRS, "/run")
                  if m != "/tmp" and state_dir.is_relative_to(m)]
        if hidden:
            raise LocalError(f"the cluster directory {state_dir} is under {hidden[0]}, which "
                             f"each host replaces with its own: choose another {CLUSTER_DIR_ENV}")
        hosts = [
            NamespaceHost(cluster=args.cluster_name, name=host.name, role=host.role,
                          address=str(subnet[index + 2]), prefix_len=subnet.prefixlen,
                          index=index, state_dir=state_dir)
            for index, host in enumerate(planned)
        ]
        return cls(args.cluster_name, subnet, hosts, state_dir)

    @property
    def bridge(self) -> str:
        return short_name("sg", self.name, "br")

    @property
    def machine_address(self) -> str:
        """The bridge's address: the machine, which plays the Internet and the admin."""
        return str(self.subnet[1])

    @property
    def master(self) -> NamespaceHost:
        return self.hosts[0]

    @property
    def minions(self) -> list[NamespaceHost]:
        return self.hosts[1:]

    def host(self, name: str) -> NamespaceHost:
        return next(host for host in self.hosts if host.name == name)

    @property
    def gatekeeper_url(self) -> str:
        return f"http://{self.host('gatekeeper').address}:{GATEKEEPER_PORT}"

    @property
    def runtime_dir(self) -> Path:
        return RUNTIME_ROOT / self.name

    @property
    def secrets_file(self) -> Path:
        return self.state_dir / "secrets.json"

    @property
    def api_key_file(self) -> Path:
        return self.state_dir / "api_key"


# --- checks ------------------------------------------------------------------------------

def _require_root(command: str) -> None:
    if os.geteuid() != 0:
        raise LocalError(f"'{command} --provider local' needs root (namespaces, bridge, "
                         "mounts): run it with sudo")


def _require_commands() -> None:
    missing = [name for name in NEEDED_COMMANDS if shutil.which(name, path=os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])) is None]
    if missing:
        raise LocalError(f"missing {', '.join(missing)}: run 'make system-packages' as root")


def _require_free_subnet(cluster: LocalCluster) -> None:
    """The subnet must not overlap a route of the machine, except our own bridge's."""
    routes = json.loads(run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]")
    for route in routes:
        destination, device = route.get("dst", ""), route.get("dev", "")
        if destination in ("default", "") or device == cluster.bridge:
            continue
        try:
            network = ipaddress.IPv4Network(destination, strict=False)
        except ValueError:
            continue
        if network.overlaps(cluster.subnet) and network.prefixlen > 0:
            raise LocalError(f"--subnet {cluster.subnet} overlaps the route {destination} "
                             f"via {device}: pick another --subnet")


# --- baking: what the master serves -----------------------------------------------------

def _runtime_requirements() -> list[str]:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    build = project["build-system"]["requires"]
    return [*build, *project["project"]["dependencies"]]


def bake_fileserver(cluster: LocalCluster) -> Path:
    """The project's code and a wheelhouse of its dependencies, for the master to serve."""
    root = cluster.state_dir / "fileserver"
    source = root / "sqlgate-src"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    for rel in PROJECT_PATHS:
        path = PROJECT_ROOT / rel
        if path.is_dir():
            shutil.copytree(path, source / rel, ignore=shutil.ignore_patterns(*SKIP_NAMES))
        elif path.exists():
            shutil.copy2(path, source / rel)
    wheelhouse = root / "sqlgate-wheelhouse"
    requirements = _runtime_requirements()
    stamp = wheelhouse / "requirements.txt"
    wanted = "\n".join(requirements) + "\n"
    if not stamp.exists() or stamp.read_text() != wanted:
        shutil.rmtree(wheelhouse, ignore_errors=True)
        wheelhouse.mkdir(parents=True)
        print(f"building the wheelhouse ({len(requirements)} requirements) ...", flush=True)
        run([str(VENV_BIN / "python"), "-m", "pip", "wheel", "--quiet",
             "--disable-pip-version-check", "--wheel-dir", str(wheelhouse), *requirements],
            timeout=900)
        stamp.write_text(wanted)
    return root


# --- network -----------------------------------------------------------------------------

def _bridge_exists(name: str) -> bool:
    return run(["ip", "link", "show", name], check=False).returncode == 0


def create_network(cluster: LocalCluster) -> None:
    if not _bridge_exists(cluster.bridge):
        run(["ip", "link", "add", cluster.bridge, "type", "bridge"])
        run(["ip", "addr", "add", f"{cluster.machine_address}/{cluster.subnet.prefixlen}",
             "dev", cluster.bridge])
        run(["ip", "link", "set", cluster.bridge, "up"])
    for host in cluster.hosts:
        if not host.network_exists():
            host.create_network(cluster.bridge)


def apply_firewall(cluster: LocalCluster) -> None:
    """Each host's security group, as an nftables table inside its namespace."""
    addresses: dict[str, list[str]] = {}
    for host in cluster.hosts:
        addresses.setdefault(Host(host.name, host.role).group, []).append(host.address)
    for host in cluster.hosts:
        group = Host(host.name, host.role).group
        script = local_firewall.ruleset(group, addresses, cluster.machine_address)
        run(["ip", "netns", "exec", host.namespace, "nft", "-f", "-"],
            input_data=script.encode())


# --- salt --------------------------------------------------------------------------------

def _hosts_file(cluster: LocalCluster) -> str:
    lines = ["127.0.0.1 localhost", *(f"{h.address} {h.name}" for h in cluster.hosts)]
    return "\n".join(lines) + "\n"


def configure_salt(cluster: LocalCluster, fileserver: Path, pillar_dir: Path) -> None:
    """Configs and pre-seeded keys: the master accepts exactly our minions, they trust it."""
    pki = cluster.state_dir / "salt-pki"
    master_keys = salt_key_pair(pki, "master")
    master = cluster.master
    master.write_file(MASTER_CONFIG, yaml.safe_dump({
        "interface": master.address,
        "auto_accept": False,
        "open_mode": False,
        "file_roots": {"base": [str(PROJECT_ROOT / "salt"), str(fileserver)]},
        "pillar_roots": {"base": [str(pillar_dir)]},
        "worker_threads": 4,
        "log_level_logfile": "info",
    }))
    master.write_file(f"{MASTER_PKI}/master.pem", master_keys.private, 0o400)
    master.write_file(f"{MASTER_PKI}/master.pub", master_keys.public, 0o644)
    hosts_file = _hosts_file(cluster)
    for host in cluster.hosts:
        host.write_file("/etc/hosts", hosts_file)
    for minion in cluster.minions:
        keys = salt_key_pair(pki / "minions", minion.name)
        master.write_file(f"{MASTER_PKI}/minions/{minion.name}", keys.public, 0o644)
        minion.write_file(MINION_CONFIG, yaml.safe_dump({
            "id": minion.name,
            "master": master.address,
            "enable_fqdns_grains": False,
            "acceptance_wait_time": 1,
            "random_reauth_delay": 0,
            "log_level_logfile": "info",
        }))
        minion.write_file(f"{MINION_PKI}/minion.pem", keys.private, 0o400)
        minion.write_file(f"{MINION_PKI}/minion.pub", keys.public, 0o644)
        minion.write_file(f"{MINION_PKI}/minion_master.pub", master_keys.public, 0o644)


def _runs(host: NamespaceHost, program: str) -> bool:
    return any(program in line for line in host.command_lines())


def start_salt(cluster: LocalCluster) -> None:
    if not _runs(cluster.master, "salt-master"):
        cluster.master.start_daemon([str(VENV_BIN / "salt-master"), "-d"])
    for minion in cluster.minions:
        if not _runs(minion, "salt-minion"):
            minion.start_daemon([str(VENV_BIN / "salt-minion"), "-d"])


def salt(cluster: LocalCluster, *args: str, timeout: float = 120) -> object:
    """Run a ``salt`` command on the master; its JSON output."""
    result = cluster.master.run([str(VENV_BIN / "salt"), "--out=json", "--static", *args],
                                check=False, timeout=timeout)
    try:
        return json.loads(result.stdout or "{}")
    except json.JSONDecodeError:
        raise LocalError(f"salt {' '.join(args)}: {result.stderr.strip()[-300:]}") from None


def wait_for_minions(cluster: LocalCluster) -> None:
    names = ",".join(m.name for m in cluster.minions)
    deadline = time.monotonic() + MINION_DEADLINE_S
    answered: dict = {}
    while time.monotonic() < deadline:
        try:
            reply = salt(cluster, "-L", names, "test.ping", "-t", "5")
        except LocalError:  # the master is not answering yet
            reply = {}
        answered = reply if isinstance(reply, dict) else {}
        if all(answered.get(m.name) is True for m in cluster.minions):
            return
        time.sleep(1)
    missing = [m.name for m in cluster.minions if answered.get(m.name) is not True]
    raise LocalError(f"minions not answering after {MINION_DEADLINE_S}s: {', '.join(missing)}")


@dataclass(frozen=True)
class OrchestrationResult:
    ok: bool
    changed: dict[str, list[str]]  # minion -> ids of states that changed something
    failed: list[str]


def summarize_orchestration(output: dict) -> OrchestrationResult:
    """Changed and failed states per minion, from ``state.orchestrate --out=json``."""
    data = output.get("data", output)
    steps = next(iter(data.values()), {}) if isinstance(data, dict) else {}
    changed: dict[str, list[str]] = {}
    failed: list[str] = []
    if not isinstance(steps, dict):
        return OrchestrationResult(False, changed, [str(steps)])
    for step_key, step in steps.items():
        step_id = step_key.split("_|-")[1] if "_|-" in step_key else step_key
        if not step.get("result"):
            failed.append(f"{step_id}: {str(step.get('comment', ''))[:400]}")
        for minion, states in (step.get("changes", {}).get("ret") or {}).items():
            if not isinstance(states, dict) or step_key.startswith("salt_|-every minion"):
                continue
            for state_key, state in states.items():
                if not isinstance(state, dict):
                    continue
                state_id = state_key.split("_|-")[1] if "_|-" in state_key else state_key
                if state.get("changes"):
                    changed.setdefault(minion, []).append(state_id)
                if state.get("result") is False:
                    stderr = str((state.get("changes") or {}).get("stderr", ""))[-400:]
                    failed.append(f"{minion}: {state_id}: {str(state.get('comment'))[:300]}"
                                  + (f" stderr: {stderr}" if stderr else ""))
    return OrchestrationResult(not failed, changed, failed)


def orchestrate(cluster: LocalCluster) -> OrchestrationResult:
    cluster.master.run([str(VENV_BIN / "salt-run"), "fileserver.update"], check=False)
    result = cluster.master.run([str(VENV_BIN / "salt-run"), "state.orchestrate", "orch",
                                 "--out=json"], check=False, timeout=ORCHESTRATION_TIMEOUT_S)
    write_private(cluster.state_dir / "orchestrate.json", result.stdout)
    try:
        output = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise LocalError("the orchestration printed no result: "
                         f"{(result.stderr or result.stdout).strip()[-500:]}") from None
    return summarize_orchestration(output)


# --- the cluster file and the greeting -----------------------------------------------------

def paths_hosts_read(cluster: LocalCluster) -> list[Path]:
    """The machine's directories the hosts use in place: the checkout (Salt tree, code), the
    virtualenv running Salt, the cluster's state and the Sakila files."""
    return [PROJECT_ROOT, Path(sys.prefix), cluster.state_dir, SAKILA_DIR]


def cluster_record(cluster: LocalCluster, secrets: ClusterSecrets) -> dict:
    """What the load tests need: the endpoint and key, the hosts, and for the sysbench baseline
    the ``sb`` password and a ``salt`` command line that runs on the master."""
    return {
        "provider": PROVIDER,
        "cluster_name": cluster.name,
        "subnet": str(cluster.subnet),
        "bridge": cluster.bridge,
        "gatekeeper_url": cluster.gatekeeper_url,
        "api_key": secrets.api_key,
        "api_key_file": str(cluster.api_key_file),
        "sb_password": secrets.sb_password,
        "salt_command": cluster.master.enter([str(VENV_BIN / "salt")]),
        "state_dir": str(cluster.state_dir),
        "hosts": [{"name": h.name, "role": h.role, "address": h.address,
                   "namespace": h.namespace} for h in cluster.hosts],
    }


def _write_api_key(cluster: LocalCluster, api_key: str) -> None:
    write_private(cluster.api_key_file, api_key + "\n")


def _print_summary(cluster: LocalCluster, result: OrchestrationResult, path: Path) -> None:
    if result.changed:
        for minion, states in sorted(result.changed.items()):
            print(f"  {minion}: {len(states)} state(s) changed")
    else:
        print("  no changes: every host was already in its configured state")
    print(f"\nGatekeeper: {cluster.gatekeeper_url}")
    print(f"API key:    in {cluster.api_key_file} (and in {path}, mode 0600)")
    print(f"Try:\n  {curl_line(cluster.gatekeeper_url, f'$(cat {cluster.api_key_file})')}")


# --- commands ------------------------------------------------------------------------------

def _up(args: argparse.Namespace) -> int:
    _require_root("up")
    _require_commands()
    cluster = LocalCluster.plan(args)
    if not SAKILA_DIR.is_dir():
        raise LocalError(f"the Sakila files are not at {SAKILA_DIR}")
    _require_free_subnet(cluster)
    started = time.monotonic()
    cluster.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(cluster.state_dir.parent, 0o700)
    secrets = load_or_create(cluster.secrets_file)
    _write_api_key(cluster, secrets.api_key)

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
            host.create_system(keep_visible=paths_hosts_read(cluster))
    configure_salt(cluster, fileserver, pillar_dir)
    start_salt(cluster)
    wait_for_minions(cluster)
    print("salt master and minions are up; orchestrating ...", flush=True)
    result = orchestrate(cluster)
    if not result.ok:
        for line in result.failed[:20]:
            print(f"  FAILED {line}", file=sys.stderr)
        raise LocalError(f"the orchestration failed (full output: "
                         f"{cluster.state_dir / 'orchestrate.json'})")
    if not wait_for_health(cluster.gatekeeper_url, deadline_s=60):
        raise LocalError(f"the Gatekeeper at {cluster.gatekeeper_url} is not healthy after 60s")
    path = write_cluster_file(PROVIDER, cluster_record(cluster, secrets))
    print(f"cluster {cluster.name} is up in {time.monotonic() - started:.0f}s")
    _print_summary(cluster, result, path)
    return 0


def _status(args: argparse.Namespace) -> int:
    _require_root("status")
    cluster = LocalCluster.plan(args)
    if not cluster.master.network_exists():
        print(f"cluster {cluster.name} is not running")
        return 1
    names = ",".join(m.name for m in cluster.minions)
    services = salt(cluster, "-L", names, "supervisord.status",
                    f"conf_file={SUPERVISOR_CONFIG}", "-t", "15")
    workers = ",".join(m.name for m in cluster.minions if m.role == "worker")
    replication = salt(cluster, "-L", workers, "mysql.get_slave_status",
                       f"connection_unix_socket={DB_SOCKET}", "-t", "15")
    proxies = ",".join(m.name for m in cluster.minions if m.role == "proxy")
    proxy_health = salt(cluster, "-L", proxies, "cmd.run", PROXY_HEALTH_COMMAND, "-t", "15")
    rotation: dict[str, str] = {}
    for answer in (proxy_health.values() if isinstance(proxy_health, dict) else ()):
        rotation.update(proxy_view(answer))
    print(f"cluster {cluster.name}: Gatekeeper {cluster.gatekeeper_url}")
    healthy = True
    for host in cluster.hosts:
        line = f"  {host.name:<11} {host.role:<10} {host.address:<15} {host.namespace:<24}"
        running = services.get(host.name) if isinstance(services, dict) else None
        if host is cluster.master:
            line += "  salt-master" if _runs(host, "salt-master") else "  salt-master DOWN"
        elif isinstance(running, dict):
            line += "  " + ", ".join(f"{name} {info.get('state', '?')}"
                                     for name, info in sorted(running.items()))
            healthy &= all(info.get("state") == "RUNNING" for info in running.values())
        else:
            line += "  (no answer)"
            healthy = False
        print(line)
        if host.role == "worker":
            status = replication.get(host.name) if isinstance(replication, dict) else None
            fields = replica_fields(status if isinstance(status, dict) else {})
            print("              " + "  ".join(f"{k}: {v}" for k, v in fields.items()))
            print(f"              {rotation.get(host.name, 'Proxy: no answer')}")
            healthy &= replication_running(fields)
    return 0 if healthy else 1


def _down(args: argparse.Namespace) -> int:
    _require_root("down")
    cluster = LocalCluster.plan(args)
    record = read_cluster_file(PROVIDER)
    if record and record.get("cluster_name") == cluster.name:
        # Hosts of the cluster as it was made (--replicas may differ now).
        known = {h.name for h in cluster.hosts}
        extra = [h for h in record.get("hosts", []) if h["name"] not in known]
        for entry in extra:
            cluster.hosts.append(NamespaceHost(
                cluster=cluster.name, name=entry["name"], role=entry["role"],
                address=entry["address"], prefix_len=cluster.subnet.prefixlen,
                index=len(cluster.hosts), state_dir=cluster.state_dir))
    stop_processes(cluster.hosts)
    for host in cluster.hosts:
        host.remove()
    if _bridge_exists(cluster.bridge):
        run(["ip", "link", "delete", cluster.bridge])
    for point in sorted(mount_points_under(cluster.runtime_dir), reverse=True):
        if point != str(cluster.runtime_dir):
            run(["umount", point])
    release_private_mount(cluster.runtime_dir)
    if RUNTIME_ROOT.exists() and not any(RUNTIME_ROOT.iterdir()):
        RUNTIME_ROOT.rmdir()
    _release_netns_dir()
    shutil.rmtree(cluster.state_dir, ignore_errors=True)
    provider_dir = cluster.state_dir.parent
    if provider_dir.exists() and not any(provider_dir.iterdir()):
        provider_dir.rmdir()
    if record and record.get("cluster_name") == cluster.name:
        remove_cluster_file(PROVIDER)
    print(f"cluster {cluster.name} is down: no process, namespace, mount or file left")
    return 0


def _release_netns_dir() -> None:
    """iproute2 bind-mounts /run/netns on first use; undo it when no namespace is left."""
    netns = Path("/run/netns")
    if netns.is_dir() and not any(netns.iterdir()) and mount_points_under(netns):
        run(["umount", str(netns)], check=False)


def _one_line_errors(command, args: argparse.Namespace) -> int:
    """The user's mistakes and the machine's refusals as one line and exit code 2."""
    try:
        return command(args)
    except (LocalError, HostError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def up(args: argparse.Namespace) -> int:
    return _one_line_errors(_up, args)


def status(args: argparse.Namespace) -> int:
    return _one_line_errors(_status, args)


def down(args: argparse.Namespace) -> int:
    return _one_line_errors(_down, args)
