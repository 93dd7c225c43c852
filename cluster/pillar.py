"""Pillar data for the Salt master, built from the host plan and the cluster's secrets.

Shared by every provider. Addresses are not part of the pillar: the states read the peers'
private addresses from the Salt mine, so the pillar can be written before any host exists
(on AWS the addresses are only known after launch).

OWNER: the Salt tree work (issue 3). The signature below is the contract the AWS provider uses.
"""

from __future__ import annotations

from pathlib import Path

from cluster.secrets import ClusterSecrets
from cluster.topology import Host


def build_pillar(cluster_name: str, hosts: list[Host], secrets: ClusterSecrets, *,
                 provider: str, sakila_source: str) -> dict:
    """The pillar for this cluster (``sqlgate:`` tree, see ``pillar/pillar.example``)."""
    raise NotImplementedError


def write_pillar_tree(pillar: dict, hosts: list[Host], directory: Path) -> None:
    """Write ``top.sls`` and the pillar files under ``directory`` (mode 0600, secrets inside)."""
    raise NotImplementedError
