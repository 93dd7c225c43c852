"""``up``, ``status`` and ``down`` of the AWS provider: EC2 hosts in the default VPC,
configured by the same Salt tree.

``up`` launches a Salt master and one instance per host of ``plan_hosts``; the master's
cloud-init runs the orchestration once every minion answers, and ``up`` waits for the
Gatekeeper's ``/health``. ``status`` reads the instances and asks Salt on the master (over SSH
with the admin key made by ``up``). ``down`` removes everything tagged with the cluster's name.

When boto3 talks to something that is not AWS (``AWS_ENDPOINT_URL`` pointing at a moto server),
the steps that need real machines are skipped with a line that says so.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import boto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)

from cluster.errors import ClusterError
from cluster.pillar import build_pillar, write_pillar_tree
from cluster.providers.aws import resources as res
from cluster.providers.aws.bundle import build_bundle
from cluster.providers.aws.keys import ClusterKeys
from cluster.providers.aws.plan import (
    AwsPlan,
    describe_plan,
    detect_admin_cidr,
    print_plan,
)
from cluster.providers.aws.remote import (
    print_access,
    print_remote_status,
    wait_for_health,
    write_known_hosts,
)
from cluster.providers.aws.userdata import MasterBoot, master_user_data, minion_user_data
from cluster.record import (
    ClusterRecord,
    HostRecord,
    read_record,
    record_path,
    remove_record,
    write_record,
)
from cluster.secrets import load_or_create
from cluster.state import default_cluster_dir
from cluster.topology import SALT_MASTER

PROVIDER = "aws"
SAKILA_URL = "https://downloads.mysql.com/docs/sakila-db.tar.gz"
BUNDLE_URL_TTL_S = 6 * 3600
TERMINATE_DEADLINE_S = 15 * 60
RUNNING_DEADLINE_S = 10 * 60

QUOTA_CODES = {
    "InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded",
    "SecurityGroupLimitExceeded", "RulesPerSecurityGroupLimitExceeded", "TooManyBuckets",
    "KeyPairLimitExceeded", "VolumeLimitExceeded", "AddressLimitExceeded",
}
CREDENTIAL_CODES = {
    "AuthFailure", "UnrecognizedClientException", "InvalidClientTokenId", "SignatureDoesNotMatch",
    "ExpiredToken", "ExpiredTokenException", "InvalidAccessKeyId",
}


def say(line: str) -> None:
    print(line, flush=True)


def provider_dir() -> Path:
    """Private files of the AWS cluster (secrets, keys): ``.cluster/aws/``."""
    return default_cluster_dir() / PROVIDER


# --- errors ------------------------------------------------------------------------------

def explain(error: Exception, region: str | None) -> str:
    """One line for an error of boto3 or AWS the user can act on."""
    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return ("no AWS credentials found: run 'aws configure' (or pass --profile), or set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if isinstance(error, ProfileNotFound):
        return f"AWS profile not found: {error.kwargs.get('profile')}"
    if isinstance(error, NoRegionError):
        return "no AWS region: pass --region or set AWS_DEFAULT_REGION"
    if isinstance(error, EndpointConnectionError):
        return f"cannot reach AWS in region {region}: {error}"
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        message = error.response.get("Error", {}).get("Message", "")
        if code in QUOTA_CODES:
            return (f"AWS quota exceeded in {region} ({code}: {message}); ask for an increase in "
                    "Service Quotas, or use fewer --replicas or a smaller --instance-type")
        if code in CREDENTIAL_CODES:
            return f"AWS rejected the credentials ({code}: {message})"
        if code == "OptInRequired":
            return f"region {region} is not enabled for this account ({message})"
        return f"AWS error {code} in {error.operation_name}: {message}"
    return f"{type(error).__name__}: {error}"


def guarded(command):
    """Run a command; boto3's and AWS's errors become a ClusterError of one line."""
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (BotoCoreError, ClientError) as error:
            raise ClusterError(explain(error, getattr(args, "region", None))) from None
    run.__doc__ = command.__doc__
    return run


# --- connecting --------------------------------------------------------------------------

def known_regions(session: boto3.Session) -> set[str]:
    return {region for partition in session.get_available_partitions()
            for region in session.get_available_regions("ec2", partition_name=partition)}


def connect(cluster_name: str, region: str | None, profile: str | None) -> res.Aws:
    """A session for ``region``; fails early on a bad region or missing credentials."""
    session = boto3.Session(profile_name=profile, region_name=region)
    region = session.region_name
    if not region:
        raise NoRegionError()
    if region not in known_regions(session):
        raise ClusterError(f"unknown AWS region {region!r}: see 'aws ec2 describe-regions' "
                           "for the valid names")
    account = session.client("sts", region_name=region).get_caller_identity()["Account"]
    return res.Aws(session, region, account, cluster_name)


def connect_for(args: argparse.Namespace) -> res.Aws:
    """Like ``connect``, defaulting to the region and name recorded by ``up``."""
    recorded = read_record(PROVIDER)
    args.region = args.region or (recorded.provider_data.get("region") if recorded else None)
    cluster_name = recorded.cluster_name if recorded else args.cluster_name
    return connect(cluster_name, args.region, args.profile)


# --- up ----------------------------------------------------------------------------------

def _pillar_bundle(plan: AwsPlan, keys: ClusterKeys) -> tuple[bytes, str]:
    """The bundle for the master: Salt tree, pillar (with this cluster's secrets), keys."""
    secrets = load_or_create(provider_dir() / "secrets.json")
    pillar = build_pillar(plan.cluster_name, plan.minions, secrets, provider=PROVIDER,
                          sakila_source=SAKILA_URL)
    with tempfile.TemporaryDirectory() as tmp:
        write_pillar_tree(pillar, plan.minions, Path(tmp))
        bundle = build_bundle(Path(tmp), keys)
    return bundle.data, bundle.sha256


def _launch_master(aws: res.Aws, plan: AwsPlan, keys: ClusterKeys, context: dict) -> dict:
    res.ensure_bucket(aws)
    data, sha256 = _pillar_bundle(plan, keys)
    urls = res.upload_bundle(aws, data, BUNDLE_URL_TTL_S)
    say(f"uploaded the Salt tree, pillar and code to s3://{res.bucket_name(aws)} "
        f"({len(data) // 1024} KiB)")
    boot = MasterBoot(urls.fetch, urls.delete, sha256, [h.name for h in plan.minions])
    return res.launch_instance(aws, plan.launch(SALT_MASTER, master_user_data(boot, keys),
                                                **context))


def check_existing(plan: AwsPlan, existing: dict[str, dict], had_keys: bool) -> None:
    """A running master only trusts the minion keys it was given at launch: refuse to mix."""
    master = existing.get(SALT_MASTER.name)
    if not master:
        return
    if not had_keys:
        raise ClusterError(f"the cluster exists but its keys and secrets ({provider_dir()}) are "
                           "gone: run 'bootstrap.py down', then 'up' again")
    made_for = res.tag_value(master, res.MINIONS_TAG)
    if made_for != plan.minion_ids:
        raise ClusterError(f"the cluster was made for minions {made_for}, not {plan.minion_ids} "
                           "(--replicas changed?): run 'bootstrap.py down' first to change it")


def _launch_all(aws: res.Aws, plan: AwsPlan, keys: ClusterKeys, context: dict) -> dict[str, dict]:
    """The master first (the minions need its private address), then the missing minions."""
    instances = res.find_instances(aws)
    if SALT_MASTER.name not in instances:
        instances[SALT_MASTER.name] = _launch_master(aws, plan, keys, context)
        say(f"launched saltmaster ({instances[SALT_MASTER.name]['InstanceId']})")
    master_address = instances[SALT_MASTER.name]["PrivateIpAddress"]
    for host in plan.minions:
        if host.name in instances:
            continue
        user_data = minion_user_data(host.name, master_address, keys)
        instances[host.name] = res.launch_instance(aws, plan.launch(host, user_data, **context))
        say(f"launched {host.name} ({instances[host.name]['InstanceId']})")
    return instances


def record(aws: res.Aws, plan: AwsPlan, instances: dict[str, dict], key_file: Path | None) -> Path:
    """Write ``.cluster/aws.json`` (mode 0600): what status, down and the load tests read."""
    secrets = load_or_create(provider_dir() / "secrets.json")
    public = instances.get("gatekeeper", {}).get("PublicIpAddress")
    hosts = tuple(
        HostRecord(host.name, host.role, inst.get("PrivateIpAddress"),
                   public_address=inst.get("PublicIpAddress"), instance_id=inst["InstanceId"])
        for host in plan.all_hosts if (inst := instances.get(host.name))
    )
    return write_record(ClusterRecord(
        provider=PROVIDER, cluster_name=aws.cluster_name,
        gatekeeper_url=f"http://{public}" if public else None, api_key=secrets.api_key,
        hosts=hosts, sb_password=secrets.sb_password,
        provider_data={
            "region": aws.region,
            "account": aws.account,
            "bucket": res.bucket_name(aws),
            "ssh_user": "ubuntu",
            "ssh_key_file": str(key_file) if key_file else None,
            "known_hosts_file": str(provider_dir() / "ssh" / "known_hosts"),
        }))


def _up(args: argparse.Namespace) -> int:
    aws = connect(args.cluster_name, args.region, args.profile)
    plan = AwsPlan.make(aws, args, args.admin_cidr or detect_admin_cidr())
    existing = res.find_instances(aws)
    if args.dry_run:
        print_plan(describe_plan(aws, plan, existing, args.key_name), say)
        return 0
    say(f"cluster {aws.cluster_name} in {aws.region} (account {aws.account}), "
        f"{plan.instance_type}, image {plan.image.image_id} ({plan.image.source})")
    check_existing(plan, existing, (provider_dir() / "secrets.json").exists())
    keys = ClusterKeys.load_or_create(provider_dir(), [h.name for h in plan.minions],
                                      aws.cluster_name)
    write_known_hosts(provider_dir() / "ssh" / "known_hosts", keys)
    group_ids = res.ensure_security_groups(aws, plan.network, plan.admin_cidr, say)
    key_name, key_file = args.key_name, None
    if not key_name:
        key_name, created = res.ensure_key_pair(aws, keys.admin.public)
        key_file = keys.admin_key_file
        if created:
            say(f"imported key pair {key_name} (private key: {key_file})")
    context = {"group_ids": group_ids, "key_name": key_name}
    instances = _launch_all(aws, plan, keys, context)
    if all(h.name in existing for h in plan.all_hosts):
        say("all instances already exist: nothing launched")
    path = record(aws, plan, instances, key_file)
    if aws.simulated:
        say(f"{aws.endpoint} is not AWS: skipping the wait for running instances, Salt, "
            "the orchestration and /health")
        say(f"wrote {path}")
        return 0
    ids = [i["InstanceId"] for i in instances.values()]
    instances = {res.host_of(i): i for i in res.wait_running(aws, ids, RUNNING_DEADLINE_S).values()}
    path = record(aws, plan, instances, key_file)
    say("instances running; Salt installs itself, then the master runs the orchestration")
    url = read_record(PROVIDER).gatekeeper_url
    if not wait_for_health(url, args.wait_minutes * 60, say):
        say("the Gatekeeper did not answer in time: 'python bootstrap.py status' shows where "
            "it stands (the master logs to /var/log/sqlgate-orchestrate.log)")
        return 1
    print_access(url, path, say)
    return 0


up = guarded(_up)


# --- status ------------------------------------------------------------------------------

def _status(args: argparse.Namespace) -> int:
    aws = connect_for(args)
    recorded = read_record(PROVIDER)
    instances = res.find_instances(aws)
    say(f"cluster {aws.cluster_name} in {aws.region}: {len(instances)} instance(s)")
    if not instances:
        return 1
    say(f"  {'HOST':<12}{'ROLE':<12}{'INSTANCE':<21}{'STATE':<10}{'PRIVATE':<16}PUBLIC")
    for name, inst in sorted(instances.items()):
        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
        say(f"  {name:<12}{tags.get(res.ROLE_TAG, '?'):<12}{inst['InstanceId']:<21}"
            f"{inst['State']['Name']:<10}{inst.get('PrivateIpAddress') or '-':<16}"
            f"{inst.get('PublicIpAddress') or '-'}")
    if aws.simulated:
        say(f"{aws.endpoint} is not AWS: skipping /health and the Salt checks "
            "(services, replication)")
        return 0
    if recorded is None:
        say(f"no cluster record ({record_path(PROVIDER)}): cannot reach Salt on the master")
        return 1
    return print_remote_status(recorded, instances, say)


status = guarded(_status)


# --- down --------------------------------------------------------------------------------

def _down(args: argparse.Namespace) -> int:
    aws = connect_for(args)
    say(f"removing cluster {aws.cluster_name} from {aws.region}")
    instances = res.find_instances(aws)
    terminated = res.terminate_instances(aws, instances.values(), TERMINATE_DEADLINE_S)
    say(f"terminated {len(terminated)} instance(s)" if terminated else "no instances")
    res.delete_security_groups(aws, TERMINATE_DEADLINE_S, say)
    if res.delete_bucket(aws):
        say(f"deleted bucket {res.bucket_name(aws)}")
    if res.delete_key_pair(aws):
        say(f"deleted key pair {res.admin_key_name(aws)}")
    shutil.rmtree(provider_dir(), ignore_errors=True)
    remove_record(PROVIDER)
    say("done: nothing of the cluster is left")
    return 0


down = guarded(_down)
