"""The cluster's hosts, roles, ports and firewall rules: one definition for every provider.

The AWS security groups and the local nftables rules are both generated from ``INGRESS_RULES``,
so the two deployments cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GATEKEEPER_PORT = 80
PROXY_PORT = 5000
MYSQL_PORT = 3306
SALT_PORTS = (4505, 4506)
SSH_PORT = 22

Role = Literal["saltmaster", "gatekeeper", "proxy", "manager", "worker"]

# Each role sits in one firewall group; the two database roles share one.
GROUP_OF_ROLE: dict[str, str] = {
    "saltmaster": "saltmaster",
    "gatekeeper": "gatekeeper",
    "proxy": "proxy",
    "manager": "database",
    "worker": "database",
}
GROUPS = ("saltmaster", "gatekeeper", "proxy", "database")

# Special sources of traffic besides the groups themselves.
INTERNET = "internet"  # anywhere: on AWS 0.0.0.0/0, locally the machine itself
ADMIN = "admin"  # the operator's address: SSH on AWS, the machine itself locally
CLUSTER = "cluster"  # every group of the cluster (the whole VPC subnet locally)


@dataclass(frozen=True)
class Host:
    """One machine of the cluster: a minion, or the Salt master."""

    name: str
    role: Role

    @property
    def group(self) -> str:
        return GROUP_OF_ROLE[self.role]


@dataclass(frozen=True)
class IngressRule:
    """Traffic that ``group`` accepts: ``protocol`` on ports ``ports`` from ``source``.

    ``source`` is another group's name, or INTERNET, ADMIN or CLUSTER. ICMP rules have no ports.
    """

    group: str
    protocol: Literal["tcp", "icmp"]
    source: str
    ports: tuple[int, int] | None = None
    why: str = ""


INGRESS_RULES: tuple[IngressRule, ...] = (
    IngressRule("gatekeeper", "tcp", INTERNET, (GATEKEEPER_PORT, GATEKEEPER_PORT),
                "the only public entry point"),
    IngressRule("proxy", "tcp", "gatekeeper", (PROXY_PORT, PROXY_PORT),
                "the Proxy takes queries from the Gatekeeper only"),
    IngressRule("database", "tcp", "proxy", (MYSQL_PORT, MYSQL_PORT),
                "the Proxy runs SQL on every node"),
    IngressRule("database", "tcp", "database", (MYSQL_PORT, MYSQL_PORT),
                "replicas pull the binlog from the primary"),
    IngressRule("database", "icmp", "proxy", None,
                "the Proxy's ping mode measures each replica's round trip"),
    IngressRule("saltmaster", "tcp", CLUSTER, SALT_PORTS,
                "minions reach the Salt master's publisher and request server"),
    *(
        IngressRule(group, "tcp", ADMIN, (SSH_PORT, SSH_PORT), "administration")
        for group in GROUPS
    ),
)


def rules_for(group: str) -> list[IngressRule]:
    """The ingress rules of one group, in a stable order."""
    return [rule for rule in INGRESS_RULES if rule.group == group]


def plan_hosts(replicas: int = 2) -> list[Host]:
    """The five hosts (more workers with ``replicas``), without the Salt master."""
    if replicas < 1:
        raise ValueError("a cluster needs at least one replica")
    return [
        Host("gatekeeper", "gatekeeper"),
        Host("proxy", "proxy"),
        Host("manager", "manager"),
        *(Host(f"worker{i}", "worker") for i in range(1, replicas + 1)),
    ]


SALT_MASTER = Host("saltmaster", "saltmaster")
