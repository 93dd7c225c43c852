"""The cluster's hosts, roles, ports and firewall rules: one definition for every provider.

The AWS security groups and the local nftables rules are both generated from ``INGRESS_RULES``,
so the two deployments cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GATEKEEPER_PORT = 443
# Plain HTTP on the Gatekeeper only answers with a redirect to HTTPS; it never reaches the API.
REDIRECT_PORT = 80
PROXY_PORT = 5000
MYSQL_PORT = 3306
SALT_PORTS = (4505, 4506)
SSH_PORT = 22

Role = Literal["saltmaster", "gatekeeper", "proxy", "primary", "replica"]
# The database roles' service name depends on the flavour (salt/sqlgate/flavours.yaml).
DATABASE_SERVICE = "database"


@dataclass(frozen=True)
class RoleSpec:
    """What a role is, once for every part that needs it: the firewall group it sits in, the
    SLS its minions get (top.sls; the orchestration runs the roles in this table's order, one
    step ``sqlgate-orch-<role>`` each), the secrets its pillar holds, the service it runs
    (status)."""

    group: str
    states: str | None = None  # None: not a minion (the Salt master)
    secrets: tuple[str, ...] = ()
    service: str | None = None


# The Proxy's database passwords: one user per scope, and its health monitor's.
PROXY_DB_SECRETS = ("app_read_password", "app_write_password", "app_admin_password",
                    "monitor_password")

# The roles in orchestration order: the primary, then the replicas (which read the primary's
# address from the mine), then the Proxy, then the Gatekeeper. Users live on the primary and
# replicate to the replicas, so only the primary needs the users' passwords. The Gatekeeper
# holds no secret of the cluster: its pillar carries the API keys' hashes, never the keys.
ROLES: dict[str, RoleSpec] = {
    "saltmaster": RoleSpec("saltmaster"),
    "primary": RoleSpec("database", "sqlgate.db.primary",
                        ("repl_password", *PROXY_DB_SECRETS, "sb_password"), DATABASE_SERVICE),
    "replica": RoleSpec("database", "sqlgate.db.replica", ("repl_password",), DATABASE_SERVICE),
    "proxy": RoleSpec("proxy", "sqlgate.proxy", PROXY_DB_SECRETS, "sqlgate-proxy"),
    "gatekeeper": RoleSpec("gatekeeper", "sqlgate.gatekeeper", (), "sqlgate-gatekeeper"),
}
MINION_ROLES = tuple(role for role, spec in ROLES.items() if spec.states)
DB_ROLES = tuple(role for role, spec in ROLES.items() if spec.group == "database")
GROUP_OF_ROLE: dict[str, str] = {role: spec.group for role, spec in ROLES.items()}
GROUPS = tuple(dict.fromkeys(GROUP_OF_ROLE.values()))
PORTS = {"gatekeeper": GATEKEEPER_PORT, "redirect": REDIRECT_PORT, "proxy": PROXY_PORT,
         "mysql": MYSQL_PORT}

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
                "the only public entry point (HTTPS)"),
    IngressRule("gatekeeper", "tcp", INTERNET, (REDIRECT_PORT, REDIRECT_PORT),
                "plain HTTP, answered only with a redirect to HTTPS"),
    IngressRule("proxy", "tcp", "gatekeeper", (PROXY_PORT, PROXY_PORT),
                "the Proxy takes queries from the Gatekeeper only (mutual TLS)"),
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
    """The five hosts (more replicas with ``replicas``), without the Salt master."""
    if replicas < 1:
        raise ValueError("a cluster needs at least one replica")
    return [
        Host("gatekeeper", "gatekeeper"),
        Host("proxy", "proxy"),
        Host("primary", "primary"),
        *(Host(f"replica{i}", "replica") for i in range(1, replicas + 1)),
    ]


SALT_MASTER = Host("saltmaster", "saltmaster")
