"""The Network Load Balancer in front of the Gatekeepers: AWS's balancer (the local cluster's is
an HAProxy host). Each function is idempotent: it lists what exists, compares it with what is
wanted, and creates or changes only the difference, saying which.

- One internet-facing NLB (``<cluster>-nlb``) in the subnet the instances use, wearing the
  cluster's ``balancer`` security group (the topology's: 443 and 80 from the Internet; the
  Gatekeepers' group admits those ports from it only). Its DNS name is the cluster's public
  address: the Gatekeepers' certificates name it, so ``up`` makes it before issuing them.
- One TCP target group per public port (``PUBLIC_PORTS``), instance targets: every Gatekeeper.
  443 passes TLS through with a PROXY protocol v2 header naming the client, and the client's
  address is not preserved: the Gatekeepers see the NLB's private address, inside the VPC's
  network, which they trust with the header (``proxy_protocol_from``). 80 (the redirect, which
  reads no header) keeps the client's address and gets no header.
- A TCP listener per port forwarding to its group.

Everything is tagged like the cluster's other resources (``sqlgate:cluster``), which is how a
second ``up`` finds it and ``down`` removes it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from cluster.errors import ClusterError
from cluster.providers.aws.resources import CLUSTER_TAG, ROLE_TAG, Aws, Network, poll
from cluster.topology import BALANCER, GATEKEEPER_PORT, REDIRECT_PORT

PORT_TAG = "sqlgate:port"  # on a target group: the public port it serves

# How fast a dead Gatekeeper stops getting new connections: checked every INTERVAL_S, out after
# UNHEALTHY_THRESHOLD failures in a row (a check fails after TIMEOUT_S), back after
# HEALTHY_THRESHOLD successes. AWS's ranges for a Network Load Balancer's target group:
# interval 5-300 s, timeout 2-120 s (below the interval here), thresholds 2-10.
INTERVAL_S = 5
TIMEOUT_S = 4
HEALTHY_THRESHOLD = 2
UNHEALTHY_THRESHOLD = 2
# A Gatekeeper deregistered (down, or an instance replaced) gets no new connection at once; its
# open ones have this long to finish (AWS's default is 300 s).
DEREGISTRATION_DELAY_S = 15


@dataclass(frozen=True)
class PublicPort:
    """A listener of the NLB and its target group: ``port`` on the NLB to ``port`` on every
    Gatekeeper."""

    port: int
    proxy_protocol: bool  # a PROXY protocol v2 header ahead of each connection
    health_check: dict[str, Any]  # CreateTargetGroup's HealthCheck* and Matcher parameters

    @property
    def attributes(self) -> dict[str, str]:
        """The target group's attributes: with the PROXY header, the client's address travels
        in it, and the connection comes from the NLB's own (which the Gatekeepers trust with
        the header); without, the connection keeps the client's address."""
        return {
            "proxy_protocol_v2.enabled": str(self.proxy_protocol).lower(),
            "preserve_client_ip.enabled": str(not self.proxy_protocol).lower(),
            "deregistration_delay.timeout_seconds": str(DEREGISTRATION_DELAY_S),
        }


TIMING = {"HealthCheckIntervalSeconds": INTERVAL_S, "HealthCheckTimeoutSeconds": TIMEOUT_S,
          "HealthyThresholdCount": HEALTHY_THRESHOLD,
          "UnhealthyThresholdCount": UNHEALTHY_THRESHOLD}
PUBLIC_PORTS = (
    # The Gatekeeper's /health over HTTPS (not verified by the NLB), with the PROXY header the
    # group sends on every connection, health checks too (a LOCAL one, naming no client).
    PublicPort(GATEKEEPER_PORT, True, {
        "HealthCheckProtocol": "HTTPS", "HealthCheckPort": str(GATEKEEPER_PORT),
        "HealthCheckPath": "/health", "Matcher": {"HttpCode": "200"}, **TIMING}),
    # The redirect port answers every request with a 308 to HTTPS: that answer is its health.
    # (Checked on 443 instead, the check would come without the PROXY header, which the
    # Gatekeeper requires from the NLB's addresses, and fail.)
    PublicPort(REDIRECT_PORT, False, {
        "HealthCheckProtocol": "HTTP", "HealthCheckPort": str(REDIRECT_PORT),
        "HealthCheckPath": "/health", "Matcher": {"HttpCode": "308"}, **TIMING}),
)
HEALTH_CHECK_FIELDS = ("HealthCheckProtocol", "HealthCheckPort", "HealthCheckPath",
                       "HealthCheckIntervalSeconds", "HealthCheckTimeoutSeconds",
                       "HealthyThresholdCount", "UnhealthyThresholdCount", "Matcher")
DESCRIBE_TAGS_BATCH = 20  # DescribeTags takes at most 20 resources at a time


# How long a stopping Gatekeeper serves on with its health check failing: the NLB's checks
# see it after UNHEALTHY_THRESHOLD of them, INTERVAL_S apart, and it takes a while more to stop
# sending new connections (20-40 s are seen in the wild). Its service manager waits for the
# drain, then for what is in flight (GATEKEEPER_PROXY_TIMEOUT, 30 s, +1), and 5 s more.
GATEKEEPER_DRAIN_S = INTERVAL_S * UNHEALTHY_THRESHOLD + 30
GATEKEEPER_STOP_S = GATEKEEPER_DRAIN_S + 31 + 5


def gatekeeper_settings(vpc_cidr: str) -> dict:
    """The Gatekeepers' pillar behind the NLB (``sqlgate:gatekeeper``): whom they trust with
    a PROXY header (the VPC's network, which the NLB's private addresses are in, when a port
    sends one), and a drain long enough for the NLB's checks."""
    settings: dict = {"drain_seconds": GATEKEEPER_DRAIN_S, "stop_seconds": GATEKEEPER_STOP_S}
    if any(p.proxy_protocol for p in PUBLIC_PORTS):
        settings["proxy_protocol_from"] = vpc_cidr
    return settings


def _short(aws: Aws, keep: int) -> str:
    """The cluster's name as ELB names take it (letters, digits, single hyphens)."""
    cleaned = re.sub(r"-+", "-", re.sub(r"[^A-Za-z0-9-]", "-", aws.cluster_name)).strip("-")
    return (cleaned[:keep].rstrip("-") or "sqlgate")


def load_balancer_name(aws: Aws) -> str:
    return f"{_short(aws, 28)}-nlb"  # at most 32 characters


def target_group_name(aws: Aws, port: int) -> str:
    return f"{_short(aws, 24)}-tcp{port}"  # at most 32 characters


def _ours(aws: Aws, arns: list[str]) -> dict[str, dict[str, str]]:
    """The tags of those of ``arns`` that are this cluster's, by ARN."""
    elb = aws.client("elbv2")
    found: dict[str, dict[str, str]] = {}
    for start in range(0, len(arns), DESCRIBE_TAGS_BATCH):
        batch = arns[start:start + DESCRIBE_TAGS_BATCH]
        for description in elb.describe_tags(ResourceArns=batch)["TagDescriptions"]:
            tags = {t["Key"]: t["Value"] for t in description.get("Tags", [])}
            if tags.get(CLUSTER_TAG) == aws.cluster_name:
                found[description["ResourceArn"]] = tags
    return found


def find_load_balancers(aws: Aws) -> list[dict]:
    """The cluster's load balancers (one, unless something went wrong), by their tags."""
    pages = aws.client("elbv2").get_paginator("describe_load_balancers").paginate()
    balancers = [lb for page in pages for lb in page["LoadBalancers"]]
    ours = _ours(aws, [lb["LoadBalancerArn"] for lb in balancers])
    return [lb for lb in balancers if lb["LoadBalancerArn"] in ours]


def find_load_balancer(aws: Aws) -> dict | None:
    found = find_load_balancers(aws)
    return found[0] if found else None


def find_target_groups(aws: Aws) -> dict[int, dict]:
    """The cluster's target groups, by the public port they serve (their tag)."""
    pages = aws.client("elbv2").get_paginator("describe_target_groups").paginate()
    groups = [group for page in pages for group in page["TargetGroups"]]
    ours = _ours(aws, [group["TargetGroupArn"] for group in groups])
    return {int(ours[g["TargetGroupArn"]].get(PORT_TAG, g["Port"])): g
            for g in groups if g["TargetGroupArn"] in ours}


# --- up ----------------------------------------------------------------------------------

def ensure_load_balancer(aws: Aws, network: Network, group_id: str,
                         say: Callable[[str], None]) -> dict:
    """The NLB, created if missing (in the instances' subnet, with the balancer group), else
    kept, its security groups realigned; its description."""
    elb = aws.client("elbv2")
    found = find_load_balancer(aws)
    if found is None:
        created = elb.create_load_balancer(
            Name=load_balancer_name(aws), Type="network", Scheme="internet-facing",
            IpAddressType="ipv4", Subnets=[network.subnet_id], SecurityGroups=[group_id],
            Tags=aws.tags(BALANCER, **{ROLE_TAG: BALANCER}))["LoadBalancers"][0]
        say(f"created network load balancer {created['LoadBalancerName']} "
            f"({created['DNSName']}, subnet {network.subnet_id})")
        return created
    name = found["LoadBalancerName"]
    if found.get("VpcId") and found["VpcId"] != network.vpc_id:
        raise ClusterError(f"load balancer {name} is in {found['VpcId']}, not in the cluster's "
                           f"VPC {network.vpc_id}: run 'bootstrap.py down' first")
    groups = found.get("SecurityGroups") or []
    if groups != [group_id]:
        if not groups:  # an NLB made without a group can never have one
            raise ClusterError(f"load balancer {name} has no security group: run "
                               "'bootstrap.py down', then 'up' again")
        elb.set_security_groups(LoadBalancerArn=found["LoadBalancerArn"],
                                SecurityGroups=[group_id])
        say(f"load balancer {name}: security groups set to {group_id} (were {groups})")
    subnets = {zone.get("SubnetId") for zone in found.get("AvailabilityZones", [])}
    if network.subnet_id not in subnets:
        say(f"load balancer {name} is not in the instances' subnet {network.subnet_id} "
            f"({', '.join(sorted(s for s in subnets if s))}): 'bootstrap.py down' and 'up' "
            "place it again")
    say(f"kept network load balancer {name} ({found['DNSName']})")
    return found


def _health_check_now(group: dict) -> dict[str, Any]:
    return {key: group.get(key) for key in HEALTH_CHECK_FIELDS}


def ensure_target_groups(aws: Aws, vpc_id: str, say: Callable[[str], None]) -> dict[int, str]:
    """A target group per public port, created or realigned (health check, attributes);
    their ARNs by port."""
    elb = aws.client("elbv2")
    existing = find_target_groups(aws)
    arns: dict[int, str] = {}
    for spec in PUBLIC_PORTS:
        group = existing.get(spec.port)
        created, realigned = group is None, []
        if group is None:
            group = elb.create_target_group(
                Name=target_group_name(aws, spec.port), Protocol="TCP", Port=spec.port,
                VpcId=vpc_id, TargetType="instance", **spec.health_check,
                Tags=aws.tags(f"tcp{spec.port}", **{ROLE_TAG: BALANCER,
                                                    PORT_TAG: str(spec.port)}))["TargetGroups"][0]
            check = spec.health_check
            say(f"created target group {group['TargetGroupName']} (TCP {spec.port}, health "
                f"check {check['HealthCheckProtocol']} {check['HealthCheckPort']}"
                f"{check['HealthCheckPath']} every {INTERVAL_S} s)")
        else:
            if group["VpcId"] != vpc_id or group["Protocol"] != "TCP" or \
                    group.get("TargetType") != "instance":
                raise ClusterError(f"target group {group['TargetGroupName']} is not a TCP group "
                                   f"of instances in {vpc_id}: run 'bootstrap.py down' first")
            if _health_check_now(group) != {k: spec.health_check[k] for k in HEALTH_CHECK_FIELDS}:
                elb.modify_target_group(TargetGroupArn=group["TargetGroupArn"],
                                        **spec.health_check)
                realigned.append("health check")
        arn = group["TargetGroupArn"]
        current = {a["Key"]: a["Value"] for a in elb.describe_target_group_attributes(
            TargetGroupArn=arn)["Attributes"]}
        different = {k: v for k, v in spec.attributes.items() if current.get(k) != v}
        if different:
            elb.modify_target_group_attributes(
                TargetGroupArn=arn, Attributes=[{"Key": k, "Value": v}
                                                for k, v in sorted(different.items())])
            realigned.append("attributes " + ", ".join(sorted(different)))
        if not created:
            say(f"target group {group['TargetGroupName']}: realigned {'; '.join(realigned)}"
                if realigned else f"kept target group {group['TargetGroupName']}")
        arns[spec.port] = arn
    return arns


def _forwards_to(listener: dict) -> str | None:
    actions = listener.get("DefaultActions", [])
    if len(actions) == 1 and actions[0].get("Type") == "forward":
        return actions[0].get("TargetGroupArn")
    return None


def ensure_listeners(aws: Aws, balancer_arn: str, target_groups: dict[int, str],
                     say: Callable[[str], None]) -> None:
    """A TCP listener per public port forwarding to its target group; any other goes."""
    elb = aws.client("elbv2")
    listeners = {listener["Port"]: listener for listener in elb.describe_listeners(
        LoadBalancerArn=balancer_arn)["Listeners"]}
    for port, group_arn in target_groups.items():
        action = [{"Type": "forward", "TargetGroupArn": group_arn}]
        listener = listeners.pop(port, None)
        if listener is None:
            elb.create_listener(LoadBalancerArn=balancer_arn, Protocol="TCP", Port=port,
                                DefaultActions=action)
            say(f"created listener TCP {port}")
        elif listener["Protocol"] != "TCP" or _forwards_to(listener) != group_arn:
            elb.modify_listener(ListenerArn=listener["ListenerArn"], Protocol="TCP", Port=port,
                                DefaultActions=action)
            say(f"listener {port}: realigned (TCP, forward to its target group)")
        else:
            say(f"kept listener TCP {port}")
    for port, listener in sorted(listeners.items()):
        elb.delete_listener(ListenerArn=listener["ListenerArn"])
        say(f"deleted listener {port}, which the cluster has no use for")


def registered(aws: Aws, group_arn: str) -> dict[str, str]:
    """The targets of a group that are not on their way out: instance id -> health state."""
    descriptions = aws.client("elbv2").describe_target_health(
        TargetGroupArn=group_arn)["TargetHealthDescriptions"]
    return {d["Target"]["Id"]: d["TargetHealth"]["State"] for d in descriptions
            if d["TargetHealth"]["State"] != "draining"}


# ELB refuses a target that is not running yet.
NOT_RUNNING_CODES = ("InvalidTarget",)


def _register(elb: Any, group_arn: str, targets: list[dict]) -> bool:
    """Register ``targets``; False while one of them is not running yet."""
    try:
        elb.register_targets(TargetGroupArn=group_arn, Targets=targets)
    except ClientError as error:
        if error.response["Error"]["Code"] in NOT_RUNNING_CODES:
            return False
        raise
    return True


def sync_targets(aws: Aws, target_groups: dict[int, str], instance_ids: Iterable[str],
                 deadline_s: float, say: Callable[[str], None]) -> None:
    """Every group's targets become exactly ``instance_ids`` (the Gatekeepers): the missing
    ones registered (once EC2 lets them: a pending instance cannot be), the others
    deregistered (their connections have ``DEREGISTRATION_DELAY_S`` to finish)."""
    elb = aws.client("elbv2")
    wanted = sorted(set(instance_ids))
    for port, arn in target_groups.items():
        current = registered(aws, arn)
        missing = [i for i in wanted if i not in current]
        gone = sorted(set(current) - set(wanted))
        if missing:
            targets = [{"Id": i, "Port": port} for i in missing]
            poll(partial(_register, elb, arn, targets), deadline_s, 5,
                 f"the Gatekeepers' instances to run (port {port})")
            say(f"target group {port}: registered {', '.join(missing)}")
        if gone:
            elb.deregister_targets(TargetGroupArn=arn, Targets=[{"Id": i} for i in gone])
            say(f"target group {port}: deregistered {', '.join(gone)} (no longer a Gatekeeper)")
        if not missing and not gone:
            say(f"target group {port}: kept its {len(current)} target(s)")


# --- status ------------------------------------------------------------------------------

def status_lines(aws: Aws, hosts_by_instance: dict[str, str]) -> list[str]:
    """The NLB and what it thinks of each Gatekeeper, port by port."""
    balancer = find_load_balancer(aws)
    if balancer is None:
        return ["network load balancer: none"]
    state = balancer.get("State", {}).get("Code", "?")
    lines = [f"network load balancer {balancer['LoadBalancerName']} ({state}): "
             f"{balancer['DNSName']}"]
    for port, group in sorted(find_target_groups(aws).items()):
        targets = registered(aws, group["TargetGroupArn"])
        named = sorted((hosts_by_instance.get(i, i), health) for i, health in targets.items())
        shown = ", ".join(f"{name} {health}" for name, health in named)
        lines.append(f"  port {port}: {shown or 'no target'}")
    return lines


# --- down --------------------------------------------------------------------------------

def delete_all(aws: Aws, deadline_s: float, say: Callable[[str], None]) -> None:
    """The cluster's load balancers (their listeners go with them), waited for, then its
    target groups (which a listener being deleted may hold for a moment)."""
    elb = aws.client("elbv2")
    for balancer in find_load_balancers(aws):
        arn = balancer["LoadBalancerArn"]
        elb.delete_load_balancer(LoadBalancerArn=arn)

        def gone(arn: str = arn) -> bool:
            try:
                elb.describe_load_balancers(LoadBalancerArns=[arn])
            except ClientError as error:
                if error.response["Error"]["Code"] == "LoadBalancerNotFound":
                    return True
                raise
            return False

        poll(gone, deadline_s, 5, f"load balancer {balancer['LoadBalancerName']} to go")
        say(f"deleted network load balancer {balancer['LoadBalancerName']}")
    for group in find_target_groups(aws).values():
        def delete(arn: str = group["TargetGroupArn"]) -> bool:
            try:
                elb.delete_target_group(TargetGroupArn=arn)
            except ClientError as error:
                if error.response["Error"]["Code"] == "ResourceInUse":
                    return False
                if error.response["Error"]["Code"] == "TargetGroupNotFound":
                    return True
                raise
            return True

        poll(delete, deadline_s, 5, f"target group {group['TargetGroupName']} to be free")
        say(f"deleted target group {group['TargetGroupName']}")
