"""The local "VPC": a bridge with one veth per namespace host, and each host's security group
as an nftables table inside its namespace."""

from __future__ import annotations

from pathlib import Path

from cluster.providers.local import firewall
from cluster.providers.local.cluster import LocalCluster
from cluster.providers.local.hosts import mount_points_under, run
from cluster.topology import GROUP_OF_ROLE


def bridge_exists(name: str) -> bool:
    return run(["ip", "link", "show", name], check=False).returncode == 0


def create_network(cluster: LocalCluster) -> None:
    if not bridge_exists(cluster.bridge):
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
        addresses.setdefault(GROUP_OF_ROLE[host.role], []).append(host.address)
    for host in cluster.hosts:
        script = firewall.ruleset(GROUP_OF_ROLE[host.role], addresses, cluster.machine_address)
        run(["ip", "netns", "exec", host.namespace, "nft", "-f", "-"],
            input_data=script.encode())


def remove_bridge(cluster: LocalCluster) -> None:
    if bridge_exists(cluster.bridge):
        run(["ip", "link", "delete", cluster.bridge])


def release_netns_dir() -> None:
    """iproute2 bind-mounts /run/netns on first use; undo it when no namespace is left."""
    netns = Path("/run/netns")
    if netns.is_dir() and not any(netns.iterdir()) and mount_points_under(netns):
        run(["umount", str(netns)], check=False)
