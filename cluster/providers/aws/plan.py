"""What ``up`` will make on AWS: the plan, and its description for ``--dry-run``."""

from __future__ import annotations

import argparse
import ipaddress
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from cluster.errors import ClusterError
from cluster.providers.aws import nlb
from cluster.providers.aws import resources as res
from cluster.record import ClusterRecord
from cluster.topology import (
    BALANCER,
    DEFAULT_REPLICAS,
    GROUPS,
    SALT_MASTER,
    Host,
    groups_of,
    ingress_rules,
    plan_hosts,
)

CHECKIP_URL = "https://checkip.amazonaws.com"
# Two of each behind the Network Load Balancer: no single Gatekeeper or Proxy whose loss stops
# the service.
DEFAULT_GATEKEEPERS = 2
DEFAULT_PROXIES = 2
# The balancer group holds no host on AWS: the Network Load Balancer wears it.
HOSTLESS = (BALANCER,)


def detect_admin_cidr(url: str = CHECKIP_URL, timeout_s: float = 5) -> str:
    """This machine's public address as a /32: SSH is opened to it and nothing else."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode().strip()
        return f"{ipaddress.IPv4Address(text)}/32"
    except (OSError, ValueError) as error:
        raise ClusterError(f"could not detect your public IP ({error}): "
                           "pass --admin-cidr") from None


def normalise_cidr(value: str) -> str:
    """``203.0.113.7`` -> ``203.0.113.7/32``; rejects what EC2 would reject."""
    try:
        return str(ipaddress.IPv4Network(value if "/" in value else f"{value}/32", strict=False))
    except ValueError:
        raise ClusterError(f"--admin-cidr {value!r} is not an IPv4 address or CIDR") from None


@dataclass(frozen=True)
class AwsPlan:
    cluster_name: str
    instance_type: str
    image: res.Image
    network: res.Network
    admin_cidr: str
    minions: list[Host]

    @property
    def all_hosts(self) -> list[Host]:
        return [SALT_MASTER, *self.minions]

    @property
    def groups(self) -> tuple[str, ...]:
        """The security groups this plan needs (no monitor group with --no-monitor), the
        load balancer's among them."""
        present = {*groups_of(self.minions), *HOSTLESS}
        return tuple(group for group in GROUPS if group in present)

    @property
    def hostless(self) -> tuple[str, ...]:
        return HOSTLESS

    @property
    def gatekeepers(self) -> list[Host]:
        return [host for host in self.minions if host.role == "gatekeeper"]

    @classmethod
    def make(cls, aws: res.Aws, args: argparse.Namespace, admin_cidr: str,
             recorded: ClusterRecord | None = None) -> AwsPlan:
        """``--gatekeepers``, ``--proxies`` and ``--replicas`` when given, else as many as the
        cluster's record has (a second ``up`` keeps them, after a ``scale`` too), else
        ``DEFAULT_GATEKEEPERS``, ``DEFAULT_PROXIES`` and ``DEFAULT_REPLICAS``."""
        mine = recorded if recorded and recorded.cluster_name == aws.cluster_name else None

        def count(given: int | None, role: str, default: int) -> int:
            if given is not None:
                return given
            made = sum(1 for host in mine.hosts if host.role == role) if mine else 0
            return made or default

        try:
            minions = plan_hosts(
                count(getattr(args, "replicas", None), "replica", DEFAULT_REPLICAS),
                monitor=not getattr(args, "no_monitor", False),
                gatekeepers=count(getattr(args, "gatekeepers", None), "gatekeeper",
                                  DEFAULT_GATEKEEPERS),
                proxies=count(getattr(args, "proxies", None), "proxy", DEFAULT_PROXIES))
        except ValueError as error:
            raise ClusterError(str(error)) from None
        return cls(aws.cluster_name, args.instance_type, res.find_ubuntu_ami(aws),
                   res.default_network(aws, args.instance_type), normalise_cidr(admin_cidr),
                   minions)

    @property
    def minion_ids(self) -> str:
        return ",".join(host.name for host in self.minions)

    def launch(self, host: Host, user_data: str, group_ids: dict[str, str],
               key_name: str | None) -> res.Launch:
        extra = ((res.MINIONS_TAG, self.minion_ids),) if host == SALT_MASTER else ()
        return res.Launch(host, self.image.image_id, self.instance_type, self.network.subnet_id,
                          group_ids[host.group], user_data, key_name, extra)


def rule_lines(aws: res.Aws, admin_cidr: str, groups: tuple[str, ...],
               hostless: tuple[str, ...] = HOSTLESS) -> dict[str, list[str]]:
    """Each group's rules in words, sources named as the groups will be."""
    names = {group: res.group_name(aws, group) for group in groups}
    lines: dict[str, list[str]] = {group: [] for group in groups}
    for rule in ingress_rules(groups, hostless):
        for perm in res.permissions_of(rule, names, admin_cidr, hostless):
            ports = (f"{perm.from_port}" if perm.from_port == perm.to_port
                     else f"{perm.from_port}-{perm.to_port}")
            what = "echo-request" if perm.protocol == "icmp" else ports
            lines[rule.group].append(f"{perm.protocol} {what} from {perm.source}  ({rule.why})")
    return lines


def describe_plan(aws: res.Aws, plan: AwsPlan, existing: dict[str, dict],
                  key_name: str | None) -> list[str]:
    """The dry-run report: what exists already, what ``up`` would create."""
    groups = res.find_security_groups(aws)

    def mark(found: bool) -> str:
        return "exists" if found else "create"

    lines = [
        f"dry run: nothing is created. Region {aws.region}, account {aws.account}",
        f"image {plan.image.image_id} ({plan.image.source}); default VPC {plan.network.vpc_id}, "
        f"subnet {plan.network.subnet_id} ({plan.network.zone})",
        "security groups (ingress; egress open):",
    ]
    for group, rules in rule_lines(aws, plan.admin_cidr, plan.groups, plan.hostless).items():
        worn = " (worn by the network load balancer)" if group in plan.hostless else ""
        lines.append(f"  [{mark(group in groups)}] {res.group_name(aws, group)}{worn}")
        lines.extend(f"      {rule}" for rule in rules)
    lines.append(f"instances ({plan.instance_type}, IMDSv2 required and turned off once "
                 f"configured, tags "
                 f"{res.CLUSTER_TAG}={aws.cluster_name}, {res.ROLE_TAG}=<role>):")
    for host in plan.all_hosts:
        found = existing.get(host.name)
        note = f" {found['InstanceId']}" if found else ""
        lines.append(f"  [{mark(bool(found))}] {host.name:<11} role {host.role:<10} "
                     f"group {res.group_name(aws, host.group)}{note}")
    lines.append("network load balancer (its DNS name is the public address; removed by "
                 "down):")
    balancer = nlb.find_load_balancer(aws)
    lines.append(f"  [{mark(bool(balancer))}] {nlb.load_balancer_name(aws)}, internet-facing, "
                 f"subnet {plan.network.subnet_id}, group {res.group_name(aws, BALANCER)}"
                 + (f": {balancer['DNSName']}" if balancer else ""))
    target_groups = nlb.find_target_groups(aws)
    for spec in nlb.PUBLIC_PORTS:
        check = spec.health_check
        lines.append(
            f"  [{mark(spec.port in target_groups)}] listener TCP {spec.port} -> target group "
            f"{nlb.target_group_name(aws, spec.port)}: every Gatekeeper "
            f"({', '.join(h.name for h in plan.gatekeepers)}), health check "
            f"{check['HealthCheckProtocol']} {check['HealthCheckPort']}"
            f"{check['HealthCheckPath']} every {nlb.INTERVAL_S} s, out after "
            f"{nlb.UNHEALTHY_THRESHOLD} failures"
            + (", PROXY protocol v2" if spec.proxy_protocol else ", client address kept"))
    lines.append("other resources:")
    address = res.find_address(aws)
    if address:
        lines.append(f"  [release] Elastic IP {address['PublicIp']} of an older version (the "
                     "load balancer's name is the public address now)")
    lines.append(f"  [{mark(res.bucket_exists(aws))}] bucket {res.bucket_name(aws)} "
                 "(Salt tree, pillar and code for the master; removed by down)")
    if key_name:
        lines.append(f"  [exists] key pair {key_name} (given with --key-name)")
    else:
        found = aws.ec2.describe_key_pairs(
            Filters=[{"Name": "key-name", "Values": [res.admin_key_name(aws)]}])["KeyPairs"]
        lines.append(f"  [{mark(bool(found))}] key pair {res.admin_key_name(aws)} "
                     "(admin SSH key made locally, for status)")
    return lines


def print_plan(lines: list[str], say: Callable[[str], None]) -> None:
    for line in lines:
        say(line)
