"""The AWS resources of one cluster, found by tags/names or created: each function is idempotent.

Everything the cluster owns carries the tag ``sqlgate:cluster=<name>``, which is how a second
``up`` finds it and ``down`` removes it even when ``up`` stopped half-way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.exceptions import ClientError

from cluster.errors import ClusterError
from cluster.topology import ADMIN, CLUSTER, GROUPS, INTERNET, Host, IngressRule, rules_for
from cluster.waiting import wait_until

CLUSTER_TAG = "sqlgate:cluster"
ROLE_TAG = "sqlgate:role"
HOST_TAG = "sqlgate:host"
MINIONS_TAG = "sqlgate:minions"  # on the master: the minion ids whose keys it was given
CANONICAL_OWNER = "099720109477"
UBUNTU_AMI_PARAMETER = (
    "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id"
)
UBUNTU_AMI_NAME = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*"
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
BUNDLE_KEY = "bundle.tar.gz"


@dataclass(frozen=True)
class Aws:
    """Clients for one region, plus who we are there."""

    session: boto3.Session
    region: str
    account: str
    cluster_name: str
    # One client per service for the life of a command (making one costs tens of ms).
    _clients: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self.session.client(service, region_name=self.region)
        return self._clients[service]

    @property
    def ec2(self) -> Any:
        return self.client("ec2")

    @property
    def endpoint(self) -> str:
        return self.ec2.meta.endpoint_url

    @property
    def simulated(self) -> bool:
        """True when EC2 is not AWS itself (AWS_ENDPOINT_URL pointing at moto, say)."""
        host = re.sub(r"^\w+://", "", self.endpoint).split("/")[0].split(":")[0]
        return not (host.endswith(".amazonaws.com") or host.endswith(".amazonaws.com.cn"))

    def tags(self, name: str, **extra: str) -> list[dict[str, str]]:
        pairs = {"Name": f"{self.cluster_name}-{name}", CLUSTER_TAG: self.cluster_name, **extra}
        return [{"Key": k, "Value": v} for k, v in pairs.items()]

    def tag_spec(self, resource: str, name: str, **extra: str) -> list[dict]:
        return [{"ResourceType": resource, "Tags": self.tags(name, **extra)}]

    @property
    def cluster_filter(self) -> dict:
        return {"Name": f"tag:{CLUSTER_TAG}", "Values": [self.cluster_name]}


def poll(check: Callable[[], Any], deadline_s: float, interval_s: float, what: str) -> Any:
    """Call ``check`` until it returns something truthy; ClusterError after ``deadline_s``."""
    return wait_until(check, deadline_s, what, interval_s, tolerate=(), error=ClusterError)


# --- image and network -------------------------------------------------------------------

@dataclass(frozen=True)
class Image:
    image_id: str
    source: str


def find_ubuntu_ami(aws: Aws) -> Image:
    """Canonical's current Ubuntu 22.04 image: the SSM public parameter, else the newest by date."""
    try:
        value = aws.client("ssm").get_parameter(Name=UBUNTU_AMI_PARAMETER)["Parameter"]["Value"]
        return Image(value, "SSM public parameter")
    except ClientError:
        pass  # no parameter (or no ssm:GetParameter permission): ask EC2 directly
    images = aws.ec2.describe_images(
        Owners=[CANONICAL_OWNER],
        Filters=[{"Name": "name", "Values": [UBUNTU_AMI_NAME]},
                 {"Name": "state", "Values": ["available"]},
                 {"Name": "architecture", "Values": ["x86_64"]}],
    )["Images"]
    if not images:
        raise ClusterError(f"no Ubuntu 22.04 image from Canonical found in {aws.region}")
    newest = max(images, key=lambda image: image.get("CreationDate", ""))
    return Image(newest["ImageId"], f"newest {newest.get('Name', '')}")


@dataclass(frozen=True)
class Network:
    vpc_id: str
    vpc_cidr: str
    subnet_id: str
    zone: str


def default_network(aws: Aws, instance_type: str) -> Network:
    """The default VPC and one of its default subnets in a zone that offers ``instance_type``."""
    vpcs = aws.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise ClusterError(f"no default VPC in {aws.region}: create one with "
                       f"'aws ec2 create-default-vpc --region {aws.region}' or use another region")
    vpc = vpcs[0]
    subnets = aws.ec2.describe_subnets(Filters=[
        {"Name": "vpc-id", "Values": [vpc["VpcId"]]},
        {"Name": "default-for-az", "Values": ["true"]},
    ])["Subnets"]
    offered = {o["Location"] for o in aws.ec2.describe_instance_type_offerings(
        LocationType="availability-zone",
        Filters=[{"Name": "instance-type", "Values": [instance_type]}])["InstanceTypeOfferings"]}
    usable = sorted((s for s in subnets if s["AvailabilityZone"] in offered),
                    key=lambda s: s["AvailabilityZone"])
    if not usable:
        raise ClusterError(f"the default VPC in {aws.region} has no default subnet in a zone "
                       f"offering {instance_type}")
    subnet = usable[0]
    return Network(vpc["VpcId"], vpc["CidrBlock"], subnet["SubnetId"], subnet["AvailabilityZone"])


# --- security groups ---------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Permission:
    """One ingress permission in EC2's terms; ``source`` is a CIDR or a security group id."""

    protocol: str
    from_port: int
    to_port: int
    source: str


ICMP_ECHO_REQUEST = (8, -1)  # type 8, any code: ping, and nothing else


def group_name(aws: Aws, group: str) -> str:
    return f"{aws.cluster_name}-{group}"


def permissions_of(rule: IngressRule, group_ids: dict[str, str], admin_cidr: str,
                   hostless: Iterable[str] = ()) -> list[Permission]:
    """The EC2 permissions for one topology rule; CLUSTER is every group that holds hosts
    (not ``hostless`` ones: the balancer group only the load balancer wears)."""
    if rule.source == INTERNET:
        sources = ["0.0.0.0/0"]
    elif rule.source == ADMIN:
        sources = [admin_cidr]
    elif rule.source == CLUSTER:
        sources = [group_ids[group] for group in GROUPS
                   if group in group_ids and group not in hostless]
    else:
        sources = [group_ids[rule.source]]
    from_port, to_port = rule.ports if rule.ports else ICMP_ECHO_REQUEST
    return [Permission(rule.protocol, from_port, to_port, source) for source in sources]


def wanted_permissions(group: str, group_ids: dict[str, str], admin_cidr: str,
                       hostless: Iterable[str] = ()) -> dict[Permission, str]:
    """``permission -> description`` for ``group``, from ``INGRESS_RULES`` among the groups of
    ``group_ids`` (no rule from a group the cluster does not have, the monitor's say; no
    host's own rule in a ``hostless`` group)."""
    return {perm: rule.why for rule in rules_for(group, group_ids, hostless)
            for perm in permissions_of(rule, group_ids, admin_cidr, hostless)}


def _ip_permission(perm: Permission, why: str) -> dict:
    spec: dict[str, Any] = {"IpProtocol": perm.protocol, "FromPort": perm.from_port,
                            "ToPort": perm.to_port}
    if perm.source.startswith("sg-"):
        spec["UserIdGroupPairs"] = [{"GroupId": perm.source, "Description": why}]
    else:
        spec["IpRanges"] = [{"CidrIp": perm.source, "Description": why}]
    return spec


def current_permissions(group: dict) -> set[Permission]:
    """The ingress permissions a described security group has now."""
    found: set[Permission] = set()
    for spec in group.get("IpPermissions", []):
        proto = spec["IpProtocol"]
        ports = (spec.get("FromPort", -1), spec.get("ToPort", -1))
        sources = [r["CidrIp"] for r in spec.get("IpRanges", [])]
        sources += [r["CidrIpv6"] for r in spec.get("Ipv6Ranges", [])]
        sources += [p["GroupId"] for p in spec.get("UserIdGroupPairs", [])]
        found.update(Permission(proto, *ports, source) for source in sources)
    return found


def find_security_groups(aws: Aws) -> dict[str, dict]:
    """The cluster's groups, by topology group name (from their tags, in any VPC)."""
    groups = aws.ec2.describe_security_groups(Filters=[aws.cluster_filter])["SecurityGroups"]
    prefix = f"{aws.cluster_name}-"
    return {g["GroupName"].removeprefix(prefix): g for g in groups}


def ensure_security_groups(aws: Aws, network: Network, admin_cidr: str,
                           say: Callable[[str], None], groups: Iterable[str] = GROUPS,
                           hostless: Iterable[str] = ()) -> dict[str, str]:
    """Create the missing groups of ``groups`` (the plan's: no monitor group without a
    monitor host; the balancer group, which the load balancer wears and no host), then make
    each group's rules exactly the wanted ones."""
    existing = find_security_groups(aws)
    group_ids = {}
    for group in groups:
        if group in existing:
            group_ids[group] = existing[group]["GroupId"]
            continue
        created = aws.ec2.create_security_group(
            GroupName=group_name(aws, group), VpcId=network.vpc_id,
            Description=f"sqlgate {aws.cluster_name}: {group}",
            TagSpecifications=aws.tag_spec("security-group", group))
        group_ids[group] = created["GroupId"]
        say(f"created security group {group_name(aws, group)} ({created['GroupId']})")
    described = {g["GroupId"]: g for g in aws.ec2.describe_security_groups(
        GroupIds=list(group_ids.values()))["SecurityGroups"]}
    for group, group_id in group_ids.items():
        _sync_rules(aws, group_id, wanted_permissions(group, group_ids, admin_cidr, hostless),
                    current_permissions(described[group_id]), say)
    return group_ids


def _sync_rules(aws: Aws, group_id: str, wanted: dict[Permission, str],
                current: set[Permission], say: Callable[[str], None]) -> None:
    """Add what is missing first (no gap), then revoke what the topology no longer has."""
    missing = [perm for perm in sorted(wanted) if perm not in current]
    extra = sorted(current - wanted.keys())
    if missing:
        aws.ec2.authorize_security_group_ingress(
            GroupId=group_id, IpPermissions=[_ip_permission(p, wanted[p]) for p in missing])
        say(f"  {group_id}: added {len(missing)} rule(s)")
    if extra:
        aws.ec2.revoke_security_group_ingress(
            GroupId=group_id, IpPermissions=[_ip_permission(p, "") for p in extra])
        say(f"  {group_id}: revoked {len(extra)} stale rule(s)")


def delete_security_groups(aws: Aws, deadline_s: float, say: Callable[[str], None]) -> None:
    """Drop the groups' rules (they reference each other), then the groups themselves."""
    groups = find_security_groups(aws)
    for group in groups.values():
        if group.get("IpPermissions"):
            aws.ec2.revoke_security_group_ingress(GroupId=group["GroupId"],
                                                  IpPermissions=group["IpPermissions"])
    for group in groups.values():
        # Network interfaces of just-terminated instances can hold a group for a little while.
        poll(lambda g=group: _try_delete_group(aws, g["GroupId"]), deadline_s, 5,
             f"security group {group['GroupName']} to be free")
        say(f"deleted security group {group['GroupName']} ({group['GroupId']})")


def _try_delete_group(aws: Aws, group_id: str) -> bool:
    try:
        aws.ec2.delete_security_group(GroupId=group_id)
    except ClientError as error:
        code = error.response["Error"]["Code"]
        if code == "InvalidGroup.NotFound":
            return True
        if code == "DependencyViolation":
            return False
        raise
    return True


# --- instances ---------------------------------------------------------------------------

def tag_value(resource: dict, key: str, default: str = "") -> str:
    return next((t["Value"] for t in resource.get("Tags", []) if t["Key"] == key), default)


def host_of(instance: dict) -> str:
    """The host name an instance plays (its ``sqlgate:host`` tag)."""
    return tag_value(instance, HOST_TAG, instance["InstanceId"])


def find_instances(aws: Aws) -> dict[str, dict]:
    """The cluster's instances that are not terminated, by host name."""
    pages = aws.ec2.get_paginator("describe_instances").paginate(Filters=[
        aws.cluster_filter, {"Name": "instance-state-name", "Values": LIVE_STATES}])
    return {host_of(instance): instance
            for page in pages for reservation in page["Reservations"]
            for instance in reservation["Instances"]}


@dataclass(frozen=True)
class Launch:
    host: Host
    image_id: str
    instance_type: str
    subnet_id: str
    group_id: str
    user_data: str
    key_name: str | None
    extra_tags: tuple[tuple[str, str], ...] = ()


def launch_instance(aws: Aws, launch: Launch) -> dict:
    """One instance with a public address (for apt; the groups keep it closed), IMDSv2 only."""
    host = launch.host
    tags = {ROLE_TAG: host.role, HOST_TAG: host.name, **dict(launch.extra_tags)}
    params: dict[str, Any] = {
        "ImageId": launch.image_id,
        "InstanceType": launch.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "UserData": launch.user_data,
        "NetworkInterfaces": [{"DeviceIndex": 0, "SubnetId": launch.subnet_id,
                               "Groups": [launch.group_id], "AssociatePublicIpAddress": True}],
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled",
                            "HttpPutResponseHopLimit": 1},
        "TagSpecifications": [
            *aws.tag_spec("instance", host.name, **tags),
            *aws.tag_spec("volume", host.name, **tags),
        ],
    }
    if launch.key_name:
        params["KeyName"] = launch.key_name
    return aws.ec2.run_instances(**params)["Instances"][0]


def set_minions_tag(aws: Aws, master: dict, minion_ids: str) -> None:
    """The master's record of the minions whose keys it has (``bootstrap.py scale``)."""
    aws.ec2.create_tags(Resources=[master["InstanceId"]],
                        Tags=[{"Key": MINIONS_TAG, "Value": minion_ids}])


def terminate_instances(aws: Aws, instances: Iterable[dict], deadline_s: float) -> list[str]:
    """Terminate and wait until they are gone (security groups can only go after that)."""
    ids = [i["InstanceId"] for i in instances]
    if not ids:
        return []
    aws.ec2.terminate_instances(InstanceIds=ids)

    def all_gone() -> bool:
        reservations = aws.ec2.describe_instances(InstanceIds=ids)["Reservations"]
        states = [i["State"]["Name"] for r in reservations for i in r["Instances"]]
        return all(state == "terminated" for state in states)

    poll(all_gone, deadline_s, 5, "the instances to terminate")
    return ids


DEAD_STATES = ("shutting-down", "terminated", "stopping", "stopped")


def wait_running(aws: Aws, ids: list[str], deadline_s: float) -> dict[str, dict]:
    """Wait for ``running`` (public addresses are known then); instances by id. An instance
    that dies instead ends the wait at once, with AWS's reason."""
    def described() -> dict[str, dict] | None:
        try:
            reservations = aws.ec2.describe_instances(InstanceIds=ids)["Reservations"]
        except ClientError as error:
            if error.response["Error"]["Code"] == "InvalidInstanceID.NotFound":
                return None  # just launched: EC2's reads are eventually consistent
            raise
        instances = {i["InstanceId"]: i for r in reservations for i in r["Instances"]}
        for instance in instances.values():
            if instance["State"]["Name"] in DEAD_STATES:
                reason = instance.get("StateReason", {}).get("Message", "no reason given")
                raise ClusterError(f"instance {instance['InstanceId']} is "
                               f"{instance['State']['Name']} instead of running: {reason}")
        if len(instances) == len(ids) and all(
                i["State"]["Name"] == "running" for i in instances.values()):
            return instances
        return None

    return poll(described, deadline_s, 5, "the instances to run")


def disable_metadata(aws: Aws, instances: Iterable[dict]) -> list[str]:
    """Turn each instance's metadata endpoint off (IMDSv2 stays required should it come back):
    once the cluster is configured nothing on it needs the endpoint, and the user data it
    serves holds private keys. The ids whose endpoint was still on."""
    changed = []
    for instance in instances:
        if metadata_enabled(instance):
            aws.ec2.modify_instance_metadata_options(
                InstanceId=instance["InstanceId"], HttpEndpoint="disabled", HttpTokens="required")
            changed.append(instance["InstanceId"])
    return changed


def metadata_enabled(instance: dict) -> bool:
    return instance.get("MetadataOptions", {}).get("HttpEndpoint", "enabled") != "disabled"


# --- an older version's Elastic IP ---------------------------------------------------------

def find_address(aws: Aws) -> dict | None:
    """The Elastic IP an older version gave the one Gatekeeper (tagged with the cluster and the
    Gatekeeper's role); the Network Load Balancer's name is the public address now."""
    found = aws.ec2.describe_addresses(Filters=[
        aws.cluster_filter, {"Name": f"tag:{ROLE_TAG}", "Values": ["gatekeeper"]}])["Addresses"]
    return found[0] if found else None


def release_address(aws: Aws) -> str | None:
    """Release that Elastic IP (disassociated first), if there is one; the address it was."""
    found = find_address(aws)
    if not found:
        return None
    if found.get("AssociationId"):
        aws.ec2.disassociate_address(AssociationId=found["AssociationId"])
    aws.ec2.release_address(AllocationId=found["AllocationId"])
    return found["PublicIp"]


# --- key pair ----------------------------------------------------------------------------

def admin_key_name(aws: Aws) -> str:
    return f"{aws.cluster_name}-admin"


def ensure_key_pair(aws: Aws, public_key: str) -> tuple[str, bool]:
    """Import the locally made admin key once; ``(name, created)``."""
    name = admin_key_name(aws)
    found = aws.ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [name]}])
    if found["KeyPairs"]:
        return name, False
    aws.ec2.import_key_pair(KeyName=name, PublicKeyMaterial=public_key.encode(),
                            TagSpecifications=aws.tag_spec("key-pair", "admin"))
    return name, True


def delete_key_pair(aws: Aws) -> bool:
    """Delete the admin key pair we imported (never one the user passed with --key-name)."""
    found = aws.ec2.describe_key_pairs(
        Filters=[{"Name": "key-name", "Values": [admin_key_name(aws)]}])["KeyPairs"]
    ours = [pair for pair in found if tag_value(pair, CLUSTER_TAG) == aws.cluster_name]
    for pair in ours:
        aws.ec2.delete_key_pair(KeyName=pair["KeyName"])
    return bool(ours)


# --- bundle bucket -----------------------------------------------------------------------

def bucket_name(aws: Aws) -> str:
    """Deterministic (found again without a lookup), unique per account and region."""
    cleaned = re.sub(r"[^a-z0-9-]", "-", aws.cluster_name.lower()).strip("-")[:20] or "sqlgate"
    return f"{cleaned}-bundle-{aws.account}-{aws.region}"[:63].rstrip("-")


def bucket_exists(aws: Aws) -> bool:
    try:
        aws.client("s3").head_bucket(Bucket=bucket_name(aws), ExpectedBucketOwner=aws.account)
    except ClientError as error:
        if error.response["Error"]["Code"] in ("404", "NoSuchBucket", "NotFound"):
            return False
        raise
    return True


def ensure_bucket(aws: Aws) -> tuple[str, bool]:
    """A private bucket for the bundle; ``(name, created)``."""
    name = bucket_name(aws)
    if bucket_exists(aws):
        return name, False
    s3 = aws.client("s3")
    params: dict[str, Any] = {"Bucket": name}
    if aws.region != "us-east-1":
        params["CreateBucketConfiguration"] = {"LocationConstraint": aws.region}
    s3.create_bucket(**params)
    s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True,
        "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": aws.tags("bundle")})
    return name, True


@dataclass(frozen=True)
class BundleUrls:
    """Presigned: the master fetches the bundle, then deletes it (the secrets inside need not
    outlive the boot; ``down`` deletes the bucket anyway)."""

    fetch: str
    delete: str


def upload_bundle(aws: Aws, data: bytes, expires_s: int) -> BundleUrls:
    """Store the bundle; the presigned URLs the master fetches and deletes it with."""
    s3 = aws.client("s3")
    s3.put_object(Bucket=bucket_name(aws), Key=BUNDLE_KEY, Body=data,
                  ServerSideEncryption="AES256")
    where = {"Bucket": bucket_name(aws), "Key": BUNDLE_KEY}
    return BundleUrls(
        fetch=s3.generate_presigned_url("get_object", ExpiresIn=expires_s, Params=where),
        delete=s3.generate_presigned_url("delete_object", ExpiresIn=expires_s, Params=where))


def delete_bucket(aws: Aws) -> bool:
    """Empty and delete the bundle bucket if it is there."""
    if not bucket_exists(aws):
        return False
    s3 = aws.client("s3")
    name = bucket_name(aws)
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
        objects = [{"Key": o["Key"], "VersionId": o["VersionId"]}
                   for o in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        if objects:
            s3.delete_objects(Bucket=name, Delete={"Objects": objects})
    s3.delete_bucket(Bucket=name)
    return True
