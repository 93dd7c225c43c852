"""One local cluster: names, addresses and paths derived from the arguments, and the checks
that the machine can hold it."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from cluster.errors import ClusterError
from cluster.keys import KEYS_FILE
from cluster.providers.deploy import https_url
from cluster.providers.local.hosts import PRIVATE_DIRS, RUNTIME_ROOT, NamespaceHost, run, short_name
from cluster.record import ClusterRecord
from cluster.state import CLUSTER_DIR_ENV, PROJECT_ROOT, default_cluster_dir
from cluster.topology import (
    BALANCER,
    MONITOR,
    PROMETHEUS_PORT,
    SALT_MASTER,
    plan_hosts,
    service_names,
)

PROVIDER = "local"
VENV_BIN = Path(sys.executable).parent
# Resolved: the hosts must see the files where the path points, even through a symlink.
SAKILA_DIR = (PROJECT_ROOT.parent / "shared" / "datasets" / "sakila").resolve()
NEEDED_COMMANDS = ("ip", "nft", "nsenter", "unshare", "mount", "mariadbd", "supervisord", "curl",
                   "useradd")
MONITOR_COMMANDS = ("prometheus", "promtool", "prometheus-node-exporter",
                    "prometheus-mysqld-exporter")
# The local cluster's monitor settings (the formula's `monitor`): scrapes and rule evaluations
# every second, alerts after a few seconds, so that a change shows at once (the tests wait for
# it); AWS keeps the formula's defaults.
LOCAL_MONITOR = {"scrape_interval": "1s", "evaluation_interval": "1s",
                 "alerts": {"for": "3s", "quarantine_for": "30s"}}


@dataclass(frozen=True)
class LocalCluster:
    """Names, addresses and paths of one local cluster, all derived from the arguments."""

    name: str
    subnet: ipaddress.IPv4Network
    hosts: list[NamespaceHost]  # the Salt master first, then the plan's hosts
    state_dir: Path

    @classmethod
    def plan(cls, args: argparse.Namespace, monitor: bool | None = None,
             addresses: dict[str, str] | None = None) -> LocalCluster:
        """The cluster of ``args``; with a monitor host unless ``--no-monitor`` (or
        ``monitor`` says otherwise: what a record shows was made). ``addresses``: the hosts
        that exist already keep theirs (a record's), the others get the lowest free ones, so
        that adding a host never moves another."""
        if monitor is None:
            monitor = not getattr(args, "no_monitor", False)
        try:
            subnet = ipaddress.IPv4Network(args.subnet)
        except ValueError as error:
            raise ClusterError(f"--subnet {args.subnet}: {error}") from None
        try:
            planned = [SALT_MASTER, *plan_hosts(
                args.replicas, monitor=monitor, balancer=True,
                gatekeepers=getattr(args, "gatekeepers", None) or 1,
                proxies=getattr(args, "proxies", None) or 1)]
        except ValueError as error:
            raise ClusterError(str(error)) from None
        if subnet.num_addresses < len(planned) + 3:
            raise ClusterError(f"--subnet {subnet} is too small for {len(planned)} hosts")
        state_dir = (default_cluster_dir() / PROVIDER / args.cluster_name).resolve()
        # /tmp is fine (the hosts keep seeing it there); the other private mounts hide it.
        hidden = [m for m in (*PRIVATE_DIRS, "/run")
                  if m != "/tmp" and state_dir.is_relative_to(m)]
        if hidden:
            raise ClusterError(f"the cluster directory {state_dir} is under {hidden[0]}, which "
                               f"each host replaces with its own: choose another "
                               f"{CLUSTER_DIR_ENV}")
        kept = {name: address for name, address in (addresses or {}).items()
                if ipaddress.IPv4Address(address) in subnet}
        free = (str(address) for address in list(subnet.hosts())[1:]
                if str(address) not in kept.values())
        hosts = [
            NamespaceHost(cluster=args.cluster_name, name=host.name, role=host.role,
                          address=kept.get(host.name) or next(free),
                          prefix_len=subnet.prefixlen, state_dir=state_dir)
            for host in planned
        ]
        return cls(args.cluster_name, subnet, hosts, state_dir)

    @classmethod
    def of_record(cls, record: ClusterRecord) -> LocalCluster:
        """The cluster a record describes, every host at its recorded address."""
        count = {role: sum(1 for host in record.hosts if host.role == role)
                 for role in ("replica", "gatekeeper", "proxy", MONITOR)}
        return cls.plan(argparse.Namespace(
            cluster_name=record.cluster_name, subnet=record.provider_data["subnet"],
            replicas=count["replica"], gatekeepers=count["gatekeeper"],
            proxies=count["proxy"]), monitor=bool(count[MONITOR]),
            addresses={host.name: host.address for host in record.hosts})

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

    def with_recorded_hosts(self, recorded: list[dict]) -> None:
        """Add the hosts a record names that this plan lacks (``--replicas`` may have changed
        since ``up``), so that ``down`` removes the cluster as it was made."""
        known = {host.name for host in self.hosts}
        for entry in recorded:
            if entry["name"] not in known:
                self.hosts.append(NamespaceHost(
                    cluster=self.name, name=entry["name"], role=entry["role"],
                    address=entry["address"], prefix_len=self.subnet.prefixlen,
                    state_dir=self.state_dir))

    @property
    def gatekeeper_address(self) -> str:
        """The public address: the balancer's namespace address, which the machine (the
        "Internet") reaches over the bridge; the Gatekeepers behind it take nothing else."""
        return self.host(BALANCER).address

    @property
    def gatekeeper_url(self) -> str:
        """The endpoint with the cluster CA's certificate (one the user brings may name
        another host: the record then says so)."""
        return https_url(self.gatekeeper_address)

    @property
    def monitor(self) -> NamespaceHost | None:
        return next((host for host in self.hosts if host.role == MONITOR), None)

    @property
    def monitor_url(self) -> str | None:
        """Prometheus on the monitor host, over HTTPS with the cluster CA's certificate (which
        names the monitor's address); the machine is the operator its firewall lets in."""
        monitor = self.monitor
        return https_url(monitor.address, PROMETHEUS_PORT) + "/" if monitor else None

    @property
    def runtime_dir(self) -> Path:
        return RUNTIME_ROOT / self.name

    @property
    def secrets_file(self) -> Path:
        return self.state_dir / "secrets.json"

    @property
    def api_key_file(self) -> Path:
        return self.state_dir / "api_key"

    @property
    def keys_file(self) -> Path:
        return self.state_dir / KEYS_FILE

    def tls_names(self) -> dict[str, list[str]]:
        """Each minion's certificate names its host and private address (``service_names``:
        a Gatekeeper's also the public address, since TLS passes through the balancer)."""
        return {host.name: [host.address, *service_names(host.role, self.gatekeeper_address)]
                for host in self.minions}

    def paths_hosts_read(self) -> list[Path]:
        """The machine's directories the hosts use in place: the checkout (Salt tree, code),
        the virtualenv running Salt, the cluster's state and the Sakila files."""
        return [PROJECT_ROOT, Path(sys.prefix), self.state_dir, SAKILA_DIR]


# --- checks ------------------------------------------------------------------------------

def require_root(command: str) -> None:
    if os.geteuid() != 0:
        raise ClusterError(f"'{command} --provider local' needs root (namespaces, bridge, "
                           "mounts): run it with sudo")


def require_commands(monitor: bool = True) -> None:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    needed = NEEDED_COMMANDS + (MONITOR_COMMANDS if monitor else ())
    missing = [name for name in needed if shutil.which(name, path=search) is None]
    if missing:
        raise ClusterError(f"missing {', '.join(missing)}: run 'make system-packages' as root")


def require_free_subnet(cluster: LocalCluster) -> None:
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
            raise ClusterError(f"--subnet {cluster.subnet} overlaps the route {destination} "
                               f"via {device}: pick another --subnet")
