"""The local "VPC": a bridge with one veth per namespace host, and each host's security group
as an nftables table inside its namespace."""

from __future__ import annotations

from pathlib import Path

from cluster.errors import ClusterError
from cluster.providers.local import firewall
from cluster.providers.local.cluster import LocalCluster
from cluster.providers.local.hosts import (
    NETNS_DIR,
    delete_link,
    link_exists,
    link_prefix,
    links_named,
    mount_points_under,
    run,
)
from cluster.topology import GROUP_OF_ROLE


def bridge_exists(name: str) -> bool:
    return link_exists(name)


def create_network(cluster: LocalCluster) -> None:
    """The bridge and each host's namespace and veth, those that do not exist yet.

    Interfaces an earlier run of the same cluster left go first (see ``clear_leftovers``), so
    that no ``ip link add`` meets a name that exists; a leftover that cannot be deleted stops
    ``up`` with the command that removes the cluster."""
    try:
        deleted = clear_leftovers(cluster)
        if not bridge_exists(cluster.bridge):
            run(["ip", "link", "add", cluster.bridge, "type", "bridge"])
            run(["ip", "addr", "add", f"{cluster.machine_address}/{cluster.subnet.prefixlen}",
                 "dev", cluster.bridge])
            run(["ip", "link", "set", cluster.bridge, "up"])
        for host in cluster.hosts:
            if not host.network_complete():
                deleted += host.create_network(cluster.bridge)
    except ClusterError as error:
        raise ClusterError(f"{error} (to remove what an earlier run of cluster {cluster.name} "
                           f"left: bootstrap.py down --provider local --cluster-name "
                           f"{cluster.name} --subnet {cluster.subnet})") from None
    if deleted:
        print(f"  deleted {', '.join(deleted)}, left by an earlier run", flush=True)


def clear_leftovers(cluster: LocalCluster) -> list[str]:
    """When none of the cluster's namespaces exists, every interface named like the cluster's
    (its bridge, veths of any earlier plan) is a leftover of an earlier run: delete them all;
    the names deleted. A cluster with namespaces is running or half made: its bridge stays,
    and each host's creation clears its own names."""
    if any(host.network_exists() for host in cluster.hosts):
        return []
    return [name for name in sorted(links_named(link_prefix(cluster.name)))
            if delete_link(name)]


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
    """The bridge, and any other interface named like the cluster's (veths of hosts that no
    plan or record names any more); run once the hosts are removed."""
    delete_link(cluster.bridge)
    for name in sorted(links_named(link_prefix(cluster.name))):
        delete_link(name)


def network_leftovers(cluster: LocalCluster) -> list[str]:
    """What of the cluster's network exists: its hosts' namespaces, and interfaces named like
    the cluster's (by kind and name)."""
    left = [f"namespace {host.namespace}" for host in cluster.hosts
            if (NETNS_DIR / host.namespace).exists()]
    left += [f"{kind} {name}"
             for name, kind in sorted(links_named(link_prefix(cluster.name)).items())]
    return left


def release_netns_dir() -> None:
    """iproute2 bind-mounts /run/netns on first use; undo it when no namespace is left."""
    netns = Path("/run/netns")
    if netns.is_dir() and not any(netns.iterdir()) and mount_points_under(netns):
        run(["umount", str(netns)], check=False)
