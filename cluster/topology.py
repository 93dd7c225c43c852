"""The cluster's hosts, roles, ports and firewall rules: one definition for every provider.

The AWS security groups and the local nftables rules are both generated from ``INGRESS_RULES``,
so the two deployments cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

GATEKEEPER_PORT = 443
# Plain HTTP on the Gatekeeper only answers with a redirect to HTTPS; it never reaches the API.
REDIRECT_PORT = 80
PROXY_PORT = 5000
MYSQL_PORT = 3306
SALT_PORTS = (4505, 4506)
SSH_PORT = 22
# Monitoring: the services' own metrics ports (HTTPS, client certificate of the cluster CA),
# the exporters (plain HTTP, open to the monitor host only) and Prometheus on the monitor host.
GATEKEEPER_METRICS_PORT = 9180
PROXY_METRICS_PORT = 9181
NODE_EXPORTER_PORT = 9100
MYSQLD_EXPORTER_PORT = 9104
PROMETHEUS_PORT = 9090
# The Gatekeepers' shared rate store: Redis on the monitor host, TLS only.
RATESTORE_PORT = 6379

Role = Literal["saltmaster", "balancer", "gatekeeper", "proxy", "primary", "replica", "monitor"]
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
# address from the mine), then the Proxy, then the Gatekeeper, then the monitor (which scrapes
# them all, so it comes once they listen). Users live on the primary and replicate to the
# replicas; every database host holds the same secrets (DB_SECRETS), since a failover may make
# any of them the primary whose states manage the users; each runs a mysqld_exporter, which
# reads its own user's password. The Gatekeeper holds no secret of the database: its pillar
# carries the API keys' hashes, never the keys, and the password of the rate store (Redis on
# the monitor host), which the monitor's configuration holds only as a SHA-256 hash.
RATESTORE_SECRETS = ("ratestore_password",)
DB_SECRETS = ("repl_password", *PROXY_DB_SECRETS, "sb_password", "exporter_password")
ROLES: dict[str, RoleSpec] = {
    "saltmaster": RoleSpec("saltmaster"),
    "primary": RoleSpec("database", "sqlgate.db.primary", DB_SECRETS, DATABASE_SERVICE),
    "replica": RoleSpec("database", "sqlgate.db.replica", DB_SECRETS, DATABASE_SERVICE),
    "proxy": RoleSpec("proxy", "sqlgate.proxy", PROXY_DB_SECRETS, "sqlgate-proxy"),
    "gatekeeper": RoleSpec("gatekeeper", "sqlgate.gatekeeper", RATESTORE_SECRETS,
                           "sqlgate-gatekeeper"),
    # HAProxy in front of the Gatekeepers (the local cluster's; on AWS a Network Load
    # Balancer plays it, not a host: the balancer group is then the NLB's security group).
    # It holds no secret: TLS passes through it.
    "balancer": RoleSpec("balancer", "sqlgate.balancer", (), "haproxy"),
    "monitor": RoleSpec("monitor", "sqlgate.monitor", RATESTORE_SECRETS, "prometheus"),
}
MINION_ROLES = tuple(role for role, spec in ROLES.items() if spec.states)
DB_ROLES = tuple(role for role, spec in ROLES.items() if spec.group == "database")
GROUP_OF_ROLE: dict[str, str] = {role: spec.group for role, spec in ROLES.items()}
GROUPS = tuple(dict.fromkeys(GROUP_OF_ROLE.values()))
PORTS = {"gatekeeper": GATEKEEPER_PORT, "redirect": REDIRECT_PORT, "proxy": PROXY_PORT,
         "mysql": MYSQL_PORT, "gatekeeper_metrics": GATEKEEPER_METRICS_PORT,
         "proxy_metrics": PROXY_METRICS_PORT, "node_exporter": NODE_EXPORTER_PORT,
         "mysqld_exporter": MYSQLD_EXPORTER_PORT, "prometheus": PROMETHEUS_PORT,
         "ratestore": RATESTORE_PORT}
MONITOR = "monitor"  # the monitor's role and group (absent with --no-monitor)
# The balancer's role and group: a host on the local cluster; on AWS a group without a host,
# the Network Load Balancer's security group.
BALANCER = "balancer"
# The groups whose hosts are Salt minions (each runs a node_exporter when monitored).
MINION_GROUPS = tuple(dict.fromkeys(spec.group for spec in ROLES.values() if spec.states))

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
    ``unless``: a group whose presence replaces this rule (the Gatekeepers take the Internet's
    traffic only where no balancer stands in front of them). ``host``: a rule for a machine of
    the group itself (SSH, its node_exporter), left out of a group that holds no host (AWS's
    balancer group, which only the Network Load Balancer wears).
    """

    group: str
    protocol: Literal["tcp", "icmp"]
    source: str
    ports: tuple[int, int] | None = None
    why: str = ""
    unless: str | None = None
    host: bool = False


INGRESS_RULES: tuple[IngressRule, ...] = (
    # The public ports: the balancer takes them from the Internet (locally the HAProxy host; on
    # AWS the Network Load Balancer, whose security group is the balancer group), the
    # Gatekeepers from the balancer only (on AWS its health checks too, and the clients' own
    # addresses where it preserves them: a rule naming the NLB's group admits both). Without
    # a balancer, the Gatekeepers take them from the Internet.
    *(
        rule
        for port, why in ((GATEKEEPER_PORT, "the only public entry point (HTTPS)"),
                          (REDIRECT_PORT, "plain HTTP, answered only with a redirect to HTTPS"))
        for rule in (
            IngressRule(BALANCER, "tcp", INTERNET, (port, port), why),
            IngressRule("gatekeeper", "tcp", BALANCER, (port, port),
                        f"through the balancer: {why}"),
            IngressRule("gatekeeper", "tcp", INTERNET, (port, port), why, unless=BALANCER),
        )
    ),
    IngressRule("proxy", "tcp", "gatekeeper", (PROXY_PORT, PROXY_PORT),
                "the Proxy takes queries from the Gatekeeper only (mutual TLS)"),
    IngressRule("database", "tcp", "proxy", (MYSQL_PORT, MYSQL_PORT),
                "the Proxy runs SQL on every node"),
    IngressRule("database", "tcp", "database", (MYSQL_PORT, MYSQL_PORT),
                "replicas pull the binlog from the primary"),
    IngressRule("database", "icmp", "proxy", None,
                "the Proxy's ping mode measures each replica's round trip"),
    IngressRule("saltmaster", "tcp", CLUSTER, SALT_PORTS,
                "minions reach the Salt master's publisher and request server (the monitor too)"),
    IngressRule("gatekeeper", "tcp", MONITOR, (GATEKEEPER_METRICS_PORT, GATEKEEPER_METRICS_PORT),
                "Prometheus scrapes the Gatekeeper's metrics (mutual TLS)"),
    IngressRule("proxy", "tcp", MONITOR, (PROXY_METRICS_PORT, PROXY_METRICS_PORT),
                "Prometheus scrapes the Proxy's metrics (mutual TLS)"),
    *(
        IngressRule(group, "tcp", MONITOR, (NODE_EXPORTER_PORT, NODE_EXPORTER_PORT),
                    "Prometheus scrapes the host's node_exporter", host=True)
        for group in MINION_GROUPS
    ),
    IngressRule("database", "tcp", MONITOR, (MYSQLD_EXPORTER_PORT, MYSQLD_EXPORTER_PORT),
                "Prometheus scrapes the database's mysqld_exporter"),
    IngressRule(MONITOR, "tcp", "gatekeeper", (RATESTORE_PORT, RATESTORE_PORT),
                "the Gatekeepers share their keys' rate limits in the monitor's Redis (TLS)"),
    IngressRule(MONITOR, "tcp", ADMIN, (PROMETHEUS_PORT, PROMETHEUS_PORT),
                "the operator reaches Prometheus's UI and API (HTTPS)"),
    *(
        IngressRule(group, "tcp", ADMIN, (SSH_PORT, SSH_PORT), "administration", host=True)
        for group in GROUPS
    ),
)


def groups_of(hosts: Iterable[Host]) -> tuple[str, ...]:
    """The groups that ``hosts`` (and the Salt master) occupy, in ``GROUPS`` order: without a
    monitor host there is no monitor group, and no rule from or to it."""
    present = {"saltmaster", *(host.group for host in hosts)}
    return tuple(group for group in GROUPS if group in present)


def ingress_rules(groups: Iterable[str] = GROUPS,
                  hostless: Iterable[str] = ()) -> list[IngressRule]:
    """The rules among ``groups``: a rule of another group, or from one, is left out; so is a
    host's own rule (``IngressRule.host``) in a group of ``hostless``, which holds no machine
    (AWS's balancer group: the Network Load Balancer's)."""
    wanted, without_hosts = set(groups), set(hostless)
    return [rule for rule in INGRESS_RULES if rule.group in wanted
            and (rule.source in wanted or rule.source in (INTERNET, ADMIN, CLUSTER))
            and rule.unless not in wanted
            and not (rule.host and rule.group in without_hosts)]


def rules_for(group: str, groups: Iterable[str] = GROUPS,
              hostless: Iterable[str] = ()) -> list[IngressRule]:
    """The ingress rules of one group among ``groups``, in a stable order."""
    return [rule for rule in ingress_rules(groups, hostless) if rule.group == group]


DEFAULT_REPLICAS = 2


def plan_hosts(replicas: int | None = DEFAULT_REPLICAS, monitor: bool = True, *,
               gatekeepers: int = 1, proxies: int = 1, balancer: bool = False) -> list[Host]:
    """The cluster's hosts without the Salt master: ``gatekeepers`` Gatekeepers and
    ``proxies`` Proxies (the first of each named after its role, the others numbered from 2:
    ``proxy``, ``proxy2``...), the primary, ``replicas`` replicas, the monitor unless
    ``monitor`` is False, and a balancer host in front of the Gatekeepers with ``balancer``."""
    replicas = DEFAULT_REPLICAS if replicas is None else replicas
    for count, what, option in ((replicas, "replica", "replicas"),
                                (gatekeepers, "Gatekeeper", "gatekeepers"),
                                (proxies, "Proxy", "proxies")):
        if count < 1:
            raise ValueError(f"--{option} {count}: a cluster needs at least one {what}")
    return [
        *([Host(BALANCER, "balancer")] if balancer else []),
        *numbered("gatekeeper", gatekeepers),
        *numbered("proxy", proxies),
        Host("primary", "primary"),
        *(Host(f"replica{i}", "replica") for i in range(1, replicas + 1)),
        *([Host("monitor", "monitor")] if monitor else []),
    ]


def service_names(role: str, public: str) -> list[str]:
    """The names a host's certificate carries besides its own name and address: a Gatekeeper's
    the public endpoint (TLS passes through the balancer to it) and every Gatekeeper's and
    Proxy's its role, the name its clients check whichever host of the role they reach
    (``GATEKEEPER_PROXY_TLS_NAME``, the monitor's ``server_name``)."""
    if role == "gatekeeper":
        return [role, public]
    return [role] if role == "proxy" else []


def numbered(role: Role, count: int) -> list[Host]:
    """``count`` hosts of ``role``: the first named after it, so that a one-of-each cluster
    keeps the names it always had, the others numbered from 2."""
    return [Host(role if i == 1 else f"{role}{i}", role) for i in range(1, count + 1)]


SALT_MASTER = Host("saltmaster", "saltmaster")
