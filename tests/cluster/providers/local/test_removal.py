"""Removing namespace hosts after a network cut: the case where deleting a namespace's name
does not delete its veth.

Two real namespace hosts on a bridge, made with the provider's own functions, hold a TCP
connection; the link is cut and both ends close it with data unacknowledged, so the kernel
keeps both sockets retransmitting with no process left (orphaned, FIN-WAIT-1), and with them
their namespaces, for about 100 s. The provider's removal must still leave no veth, bridge or
namespace, and the same hosts must be made again at once. Needs root; a few seconds.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from cluster.errors import ClusterError
from cluster.providers.local.cluster import LocalCluster, require_free_subnet
from cluster.providers.local.hosts import NamespaceHost, run
from cluster.providers.local.network import (
    create_network,
    network_leftovers,
    release_netns_dir,
    remove_bridge,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, a bridge)")

SUBNET = ipaddress.IPv4Network("10.213.238.0/29")
PORT = 7000
# Both programs wait for a line on stdin before they send and close, so that the test cuts the
# link first.
SERVER = f"""
import socket, sys
listener = socket.create_server(("0.0.0.0", {PORT}))
print("listening", flush=True)
connection, _ = listener.accept()
print("accepted", flush=True)
sys.stdin.readline()
"""
CLIENT = f"""
import socket, sys
connection = socket.create_connection((sys.argv[1], {PORT}), timeout=5)
print("connected", flush=True)
sys.stdin.readline()
connection.sendall(b"x" * 8192)
"""


def pair_cluster(tmp_path) -> LocalCluster:
    """A cluster of two hosts of its own name (this process's id), on a subnet of its own."""
    name = f"sgrm{os.getpid()}"
    hosts = [NamespaceHost(cluster=name, name=host, role="test", address=str(SUBNET[index + 2]),
                           prefix_len=SUBNET.prefixlen, state_dir=tmp_path)
             for index, host in enumerate(("a", "b"))]
    return LocalCluster(name, SUBNET, hosts, tmp_path)


@pytest.fixture
def pair(tmp_path) -> Iterator[LocalCluster]:
    """Two hosts on their bridge; everything of theirs is removed afterwards, and checked."""
    cluster = pair_cluster(tmp_path)
    try:
        require_free_subnet(cluster)
    except ClusterError as error:
        pytest.skip(str(error))
    create_network(cluster)
    try:
        yield cluster
    finally:
        for host in cluster.hosts:
            host.remove()
        remove_bridge(cluster)
        release_netns_dir()
    assert network_leftovers(cluster) == []


def in_namespace(host: NamespaceHost, program: str, *args: str) -> subprocess.Popen[str]:
    """``program`` run by this Python in ``host``'s network namespace, talking on pipes."""
    return subprocess.Popen(["ip", "netns", "exec", host.namespace, sys.executable, "-c",
                             program, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def orphan_a_cut_connection(cluster: LocalCluster) -> None:
    """A connection from b to a whose link is cut (b's veth down on the machine) before both
    ends send and close: both sockets outlive their processes, retransmitting."""
    a, b = cluster.hosts
    server = in_namespace(a, SERVER)
    client = None
    try:
        assert server.stdout.readline().strip() == "listening"
        client = in_namespace(b, CLIENT, a.address)
        assert client.stdout.readline().strip() == "connected"
        assert server.stdout.readline().strip() == "accepted"
        run(["ip", "link", "set", b.veth, "down"])
        for program in (client, server):
            program.communicate("go\n", timeout=10)
            assert program.returncode == 0
    finally:
        for program in (server, client):
            if program is not None and program.poll() is None:
                program.kill()
                program.wait()
    for host in cluster.hosts:
        orphans = run(["ip", "netns", "exec", host.namespace, "ss", "-tnH", "state",
                       "fin-wait-1"]).stdout
        assert orphans.strip(), f"no orphaned socket in {host.namespace}"


def reachable(source: NamespaceHost, target: NamespaceHost) -> bool:
    return run(["ip", "netns", "exec", source.namespace, "ping", "-c", "1", "-W", "2",
                target.address], check=False).returncode == 0


def test_removal_deletes_the_veths_that_orphaned_sockets_keep(pair):
    a, b = pair.hosts
    assert network_leftovers(pair) == [
        f"namespace {a.namespace}", f"namespace {b.namespace}",
        f"bridge {pair.bridge}", f"veth {a.veth}", f"veth {b.veth}"]
    orphan_a_cut_connection(pair)

    for host in pair.hosts:
        host.remove()
    assert network_leftovers(pair) == [f"bridge {pair.bridge}"]  # at once: no veth lingers
    remove_bridge(pair)
    assert network_leftovers(pair) == []

    create_network(pair)  # the same names, at once
    assert all(host.network_complete() for host in pair.hosts)
    assert reachable(b, a)


def test_creation_deletes_veths_that_an_earlier_removal_left(pair, capsys):
    """What ``down`` did before: it deleted the namespaces' names only. Their veths stay while
    the orphaned sockets live; the next creation deletes them instead of failing with
    'RTNETLINK answers: File exists'."""
    a, b = pair.hosts
    orphan_a_cut_connection(pair)
    for host in pair.hosts:
        run(["ip", "netns", "delete", host.namespace])
    run(["ip", "link", "delete", pair.bridge])
    # They linger, and what `down` checks names them.
    assert network_leftovers(pair) == [f"veth {a.veth}", f"veth {b.veth}"]

    create_network(pair)
    assert f"deleted {a.veth}, {b.veth}, left by an earlier run" in capsys.readouterr().out
    assert all(host.network_complete() for host in pair.hosts)
    assert reachable(a, b)


def test_a_half_made_host_is_completed(pair):
    """A namespace whose veth is gone (a creation that failed half-way) is not taken for a
    made host: the next creation gives it its veth again."""
    a, b = pair.hosts
    run(["ip", "link", "delete", b.veth])
    assert b.network_exists() and not b.network_complete()
    create_network(pair)
    assert b.network_complete()
    assert reachable(a, b)
