"""``up``, ``status``, ``down`` and ``keys`` of the AWS provider: EC2 hosts in the default VPC,
configured by the same Salt tree.

``up`` makes the Network Load Balancer first (``nlb``: the Gatekeepers' certificates name its DNS
name, the cluster's public address), launches a Salt master and one instance per host of
``plan_hosts`` (two Gatekeepers and two Proxies by default), registers every Gatekeeper with the
NLB; the master's cloud-init runs the orchestration once every minion answers, and ``up`` waits
for ``/health`` over HTTPS through the NLB, then turns every instance's metadata endpoint off
(the user data it serves holds private keys). A second ``up`` sends the running master a new
bundle over SSH and runs the orchestration again. ``status`` reads the instances and the NLB's
view of each Gatekeeper, and asks Salt on the master (over SSH with the admin key made by
``up``). ``down`` removes everything tagged with the cluster's name. ``keys`` changes
the key set in ``.cluster/aws/``; ``--apply`` sends it to the master at once.

When boto3 talks to something that is not AWS (``AWS_ENDPOINT_URL`` pointing at a moto server),
the steps that need real machines are skipped with a line that says so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
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

from cluster import access, rolling, salt_setup, scaling
from cluster import failover as shape
from cluster import keys as api_keys
from cluster.errors import ClusterError
from cluster.pillar import build_pillar, write_pillar_tree
from cluster.pki import ClusterTls
from cluster.providers.aws import fencing, nlb
from cluster.providers.aws import resources as res
from cluster.providers.aws.bundle import Bundle, build_bundle
from cluster.providers.aws.keys import ClusterKeys
from cluster.providers.aws.plan import (
    AwsPlan,
    describe_plan,
    detect_admin_cidr,
    print_plan,
)
from cluster.providers.aws.remote import (
    apply_states,
    failover_runner,
    forget_minions,
    orchestration_output,
    print_access,
    print_remote_status,
    push_bundle,
    push_scaled_bundle,
    run_orchestration,
    ssh_command,
    wait_for_health,
    wait_for_minion,
    write_known_hosts,
)
from cluster.providers.aws.userdata import MasterBoot, master_user_data, minion_user_data
from cluster.providers.deploy import cluster_tls, https_url, public_host, public_trust, publish_ca
from cluster.record import (
    ClusterRecord,
    HostRecord,
    read_record,
    record_path,
    remove_record,
    write_record,
)
from cluster.salt_setup import OPERATOR_SALT_OPTIONS, OrchestrationResult
from cluster.secrets import ClusterSecrets, load_or_create
from cluster.state import default_cluster_dir
from cluster.topology import (
    BALANCER,
    MONITOR,
    PROMETHEUS_PORT,
    ROLES,
    SALT_MASTER,
    Host,
    plan_hosts,
    service_names,
)

PROVIDER = "aws"
SAKILA_URL = "https://downloads.mysql.com/docs/sakila-db.tar.gz"
BUNDLE_URL_TTL_S = 6 * 3600
TERMINATE_DEADLINE_S = 15 * 60
RUNNING_DEADLINE_S = 10 * 60
MINION_WAIT_S = 5 * 60
SALT_COMMAND_TIMEOUT_S = 30 * 60  # an operator's salt command: a highstate of every host

QUOTA_CODES = {
    "InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded",
    "SecurityGroupLimitExceeded", "RulesPerSecurityGroupLimitExceeded", "TooManyBuckets",
    "KeyPairLimitExceeded", "VolumeLimitExceeded", "AddressLimitExceeded",
    "TooManyLoadBalancers", "TooManyTargetGroups", "TooManyListeners", "TooManyTargets",
    "TooManyRegistrationsForTargetId", "TooManyTags",
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

def secrets_file() -> Path:
    return provider_dir() / "secrets.json"


def keys_file() -> Path:
    return provider_dir() / api_keys.KEYS_FILE


@dataclass(frozen=True)
class Deployment:
    """What the pillar is made of: the secrets, the certificates and the key set."""

    secrets: ClusterSecrets
    tls: ClusterTls
    keyset: api_keys.KeySet


def tls_names(minions: list[Host], public_name: str) -> dict[str, list[str]]:
    """A minion's certificate names its host (its private address is only known after
    launch) and, for the Gatekeepers and Proxies, ``service_names``: a Gatekeeper's the public
    address too (the Network Load Balancer's DNS name: TLS passes through it)."""
    return {host.name: service_names(host.role, public_name) for host in minions}


def deployment(cluster_name: str, minions: list[Host], public_name: str,
               cert_file: str | None = None, key_file: str | None = None,
               keyset: api_keys.KeySet | None = None) -> Deployment:
    secrets = load_or_create(secrets_file())
    keyset = (keyset or api_keys.KeySet.load(keys_file())).with_admin(secrets.api_key)
    keyset.save(keys_file())
    tls = cluster_tls(provider_dir(), cluster_name, tls_names(minions, public_name),
                      cert_file, key_file)
    return Deployment(secrets, tls, keyset)


def make_bundle(cluster_name: str, minions: list[Host], keys: ClusterKeys,
                deployed: Deployment, gatekeeper: dict) -> Bundle:
    """The bundle for the master: Salt tree, pillar (with this cluster's secrets; the
    Gatekeepers' settings behind the NLB, ``gatekeeper``), keys."""
    pillar = build_pillar(cluster_name, minions, deployed.secrets, provider=PROVIDER,
                          sakila_source=SAKILA_URL, tls=deployed.tls,
                          api_keys=deployed.keyset.pillar(),
                          gatekeeper=gatekeeper)
    with tempfile.TemporaryDirectory() as tmp:
        write_pillar_tree(pillar, minions, Path(tmp))
        return build_bundle(Path(tmp), keys)


def _launch_master(aws: res.Aws, plan: AwsPlan, keys: ClusterKeys, bundle: Bundle,
                   context: dict) -> dict:
    res.ensure_bucket(aws)
    urls = res.upload_bundle(aws, bundle.data, BUNDLE_URL_TTL_S)
    say(f"uploaded the Salt tree, pillar and code to s3://{res.bucket_name(aws)} "
        f"({len(bundle.data) // 1024} KiB)")
    boot = MasterBoot(urls.fetch, urls.delete, bundle.sha256, [h.name for h in plan.minions])
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
                           "(--replicas, --gatekeepers, --proxies or --no-monitor changed?): "
                           "run 'bootstrap.py down' first to change it")


def _launch_all(aws: res.Aws, plan: AwsPlan, keys: ClusterKeys, bundle: Bundle,
                context: dict) -> dict[str, dict]:
    """The master first (the minions need its private address), then the missing minions."""
    instances = res.find_instances(aws)
    if SALT_MASTER.name not in instances:
        instances[SALT_MASTER.name] = _launch_master(aws, plan, keys, bundle, context)
        say(f"launched saltmaster ({instances[SALT_MASTER.name]['InstanceId']})")
    master_address = instances[SALT_MASTER.name]["PrivateIpAddress"]
    for host in plan.minions:
        if host.name in instances:
            continue
        user_data = minion_user_data(host.name, master_address, keys)
        instances[host.name] = res.launch_instance(aws, plan.launch(host, user_data, **context))
        say(f"launched {host.name} ({instances[host.name]['InstanceId']})")
    return instances


def record(aws: res.Aws, plan: AwsPlan, instances: dict[str, dict], key_file: Path | None,
           balancer: dict, url: str, ca_file: str | None) -> Path:
    """Write ``.cluster/aws.json`` (mode 0600): what status, down and the load tests read."""
    secrets = load_or_create(secrets_file())
    hosts = tuple(
        HostRecord(host.name, host.role, inst.get("PrivateIpAddress"),
                   public_address=inst.get("PublicIpAddress"), instance_id=inst["InstanceId"])
        for host in plan.all_hosts if (inst := instances.get(host.name))
    )
    monitor = next((h for h in hosts if h.role == MONITOR), None)
    monitor_url = (https_url(monitor.public_address, PROMETHEUS_PORT) + "/"
                   if monitor and monitor.public_address else None)
    return write_record(ClusterRecord(
        provider=PROVIDER, cluster_name=aws.cluster_name, gatekeeper_url=url,
        api_key=secrets.api_key, ca_file=ca_file, hosts=hosts, sb_password=secrets.sb_password,
        monitor_url=monitor_url,
        provider_data={
            "region": aws.region,
            "account": aws.account,
            "bucket": res.bucket_name(aws),
            "load_balancer_dns": balancer["DNSName"],
            "load_balancer_arn": balancer["LoadBalancerArn"],
            "vpc_cidr": plan.network.vpc_cidr,
            "ssh_user": "ubuntu",
            "ssh_key_file": str(key_file) if key_file else None,
            "known_hosts_file": str(provider_dir() / "ssh" / "known_hosts"),
        }))


def print_result(result: OrchestrationResult) -> None:
    if result.changed:
        for minion, states in sorted(result.changed.items()):
            say(f"  {minion}: {len(states)} state(s) changed")
    else:
        say("  no changes: every host was already in its configured state")


def update_running(recorded: ClusterRecord, master: str, bundle: Bundle) -> None:
    """A second ``up``: the running master takes the new bundle (code, pillar: certificates,
    key set) over SSH and runs the orchestration again."""
    say("the master was running already: sending it the new bundle over SSH, then running "
        "the orchestration")
    try:
        push_bundle(recorded, master, bundle.data)
        result = run_orchestration(recorded, master)
    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as error:
        raise ClusterError(f"could not update the cluster through the master: {error}") from None
    if not result.ok:
        for line in result.failed[:20]:
            say(f"  FAILED {line}")
        raise ClusterError("the orchestration failed on the master (see above)")
    print_result(result)


def _up(args: argparse.Namespace) -> int:
    aws = connect(args.cluster_name, args.region, args.profile)
    plan = AwsPlan.make(aws, args, args.admin_cidr or detect_admin_cidr(), read_record(PROVIDER))
    existing = res.find_instances(aws)
    if args.dry_run:
        print_plan(describe_plan(aws, plan, existing, args.key_name), say)
        return 0
    say(f"cluster {aws.cluster_name} in {aws.region} (account {aws.account}), "
        f"{plan.instance_type}, image {plan.image.image_id} ({plan.image.source}), "
        f"{len(plan.gatekeepers)} Gatekeeper(s) behind a network load balancer")
    check_existing(plan, existing, secrets_file().exists())
    keys = ClusterKeys.load_or_create(provider_dir(), [h.name for h in plan.minions],
                                      aws.cluster_name)
    write_known_hosts(provider_dir() / "ssh" / "known_hosts", keys)
    group_ids = res.ensure_security_groups(aws, plan.network, plan.admin_cidr, say, plan.groups,
                                           plan.hostless)
    # The load balancer before the certificates: the Gatekeepers' name its DNS name.
    balancer = nlb.ensure_load_balancer(aws, plan.network, group_ids[BALANCER], say)
    public_name = balancer["DNSName"]
    released = res.release_address(aws)
    if released:
        say(f"released Elastic IP {released} of an older version: the load balancer's name is "
            "the public address now")
    deployed = deployment(aws.cluster_name, plan.minions, public_name, args.tls_cert,
                          args.tls_key)
    bundle = make_bundle(aws.cluster_name, plan.minions, keys, deployed,
                         nlb.gatekeeper_settings(plan.network.vpc_cidr))
    key_name, key_file = args.key_name, None
    if not key_name:
        key_name, created = res.ensure_key_pair(aws, keys.admin.public)
        key_file = keys.admin_key_file
        if created:
            say(f"imported key pair {key_name} (private key: {key_file})")
    target_groups = nlb.ensure_target_groups(aws, plan.network.vpc_id, say)
    nlb.ensure_listeners(aws, balancer["LoadBalancerArn"], target_groups, say)
    context = {"group_ids": group_ids, "key_name": key_name}
    instances = _launch_all(aws, plan, keys, bundle, context)
    if all(h.name in existing for h in plan.all_hosts):
        say("all instances already exist: nothing launched")
    nlb.sync_targets(aws, target_groups,
                     [instances[h.name]["InstanceId"] for h in plan.gatekeepers],
                     RUNNING_DEADLINE_S, say)
    url = https_url(public_host(deployed.tls, public_name))
    ca_file = publish_ca(PROVIDER, deployed.tls)
    path = record(aws, plan, instances, key_file, balancer, url, ca_file)
    if aws.simulated:
        say(f"{aws.endpoint} is not AWS: skipping the wait for running instances, Salt, "
            "the orchestration, /health and turning the metadata endpoints off")
        say(f"wrote {path}")
        return 0
    ids = [i["InstanceId"] for i in instances.values()]
    instances = {res.host_of(i): i for i in res.wait_running(aws, ids, RUNNING_DEADLINE_S).values()}
    path = record(aws, plan, instances, key_file, balancer, url, ca_file)
    if SALT_MASTER.name in existing:
        update_running(read_record(PROVIDER), instances[SALT_MASTER.name]["PublicIpAddress"],
                       bundle)
    else:
        say("instances running; Salt installs itself, then the master runs the orchestration")
    trust = {"ca_file": ca_file, "also_trust": public_trust(provider_dir()),
             "address": public_name}
    if not wait_for_health(url, args.wait_minutes * 60, say, **trust):
        say("the Gatekeepers did not answer in time through the load balancer: 'python "
            "bootstrap.py status' shows where they stand (the master logs to "
            "/var/log/sqlgate-orchestrate.log)")
        return 1
    disabled = res.disable_metadata(aws, instances.values())
    if disabled:
        say(f"turned the metadata endpoint off on {len(disabled)} instance(s): their user data "
            "(which holds Salt and SSH private keys) is no longer served to them")
    print_access(url, path, ca_file, say)
    for line in access.monitor_lines(read_record(PROVIDER).monitor_url, ca_file,
                                     server_name=MONITOR):
        say(line)
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
    hosts_by_instance = {inst["InstanceId"]: name for name, inst in instances.items()}
    for line in nlb.status_lines(aws, hosts_by_instance):
        say(line)
    if aws.simulated:
        say(f"{aws.endpoint} is not AWS: skipping /health and the Salt checks "
            "(services, replication)")
        return 0
    if recorded is None:
        say(f"no cluster record ({record_path(PROVIDER)}): cannot reach Salt on the master")
        return 1
    code = print_remote_status(recorded, instances, say, ca_file=recorded.ca_file,
                               also_trust=public_trust(provider_dir()),
                               address=recorded.provider_data.get("load_balancer_dns"))
    master = instances.get(SALT_MASTER.name, {}).get("PublicIpAddress")
    return failover_status(aws, recorded, master) or code if master else code


def failover_status(aws: res.Aws, recorded: ClusterRecord, master: str) -> int:
    """The runner's shape (primary, epoch, last failover, alerts); and the EC2 fence an
    automatic failover (the reactor's, on the master, which has no AWS credentials) could
    not apply: its old primary's instance quarantined and stopped when Salt could not fence
    it (``fencing.fence_after``)."""
    try:
        current = failover_runner(recorded, master, "status")
    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as error:
        say(f"  failover runner: no answer ({error})")
        return 1
    say("failover:")
    for line in shape.status_lines(current):
        say(line)
    fencing.fence_after(aws, current, say)
    shape.remember(recorded, current)
    return 0


status = guarded(_status)


# --- failover, switchover, rebuild ---------------------------------------------------------

def _master_address(command: str) -> tuple[ClusterRecord, str]:
    recorded = read_record(PROVIDER)
    master = next((h.public_address for h in recorded.hosts if h.role == "saltmaster"),
                  None) if recorded else None
    if not master:
        raise ClusterError(f"{command}: no running cluster in {record_path(PROVIDER)}")
    return recorded, master


def _on_master(args: argparse.Namespace, command: str, function: str, *arguments: str) -> int:
    """The failover runner on the master over SSH, then its status; an old primary the
    runner could not fence (its server did not answer) is fenced through EC2 here
    (``fencing.fence_after``: quarantine security group, instance stopped)."""
    recorded, master = _master_address(command)
    try:
        answer = failover_runner(recorded, master, function, *arguments)
        current = failover_runner(recorded, master, "status")
    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as error:
        raise ClusterError(f"{command}: could not reach Salt on the master: {error}") from None
    if answer.get("result") == "promoted":
        fencing.fence_after(connect_for(args), current, say)
    shape.remember(recorded, current)
    return shape.report(command, answer, current)


def _failover(args: argparse.Namespace) -> int:
    return _on_master(args, "failover", "failover", *shape.runner_arguments("failover", args))


def _switchover(args: argparse.Namespace) -> int:
    return _on_master(args, "switchover", "switchover",
                      *shape.runner_arguments("switchover", args))


failover = guarded(_failover)
switchover = guarded(_switchover)


def _rebuild(args: argparse.Namespace) -> int:
    """A host fenced through EC2 gets its security groups back and is started first; its
    minion then needs a moment to answer the master (a ``rebuild`` refused with "does not
    answer" can simply be run again)."""
    _master_address("rebuild")
    if fencing.release(connect_for(args), args.host, say):
        say(f"waiting up to {MINION_WAIT_S // 60} min for {args.host}'s minion")
        recorded, master = _master_address("rebuild")
        wait_for_minion(recorded, master, args.host, MINION_WAIT_S)
    return _on_master(args, "rebuild", "rebuild", *shape.runner_arguments("rebuild", args))


rebuild = guarded(_rebuild)


def _run_salt(args: argparse.Namespace) -> int:
    """``sudo salt TARGET FUNCTION ARGS...`` on the master over SSH, printed as Salt prints
    it; Salt's exit code."""
    recorded, master = _master_address("salt")
    remote = ["sudo", "salt", *OPERATOR_SALT_OPTIONS, args.target, args.function,
              *args.arguments]
    try:
        done = subprocess.run(ssh_command(recorded, master, remote), capture_output=True,
                              text=True, timeout=SALT_COMMAND_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"salt: no answer from the master within "
                           f"{SALT_COMMAND_TIMEOUT_S}s") from None
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode


run_salt = guarded(_run_salt)


def _restart(args: argparse.Namespace) -> int:
    """``restart --rolling``: salt/orch/rolling.sls on the master over SSH (cluster.rolling);
    without a balancer host, each Gatekeeper's own drain keeps the NLB's clients whole."""
    recorded, master = _master_address("restart")
    try:
        output = orchestration_output(recorded, master, rolling.ORCHESTRATION)
    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as error:
        raise ClusterError(f"restart: could not reach Salt on the master: {error}") from None
    return rolling.report(salt_setup.orchestration_steps(output), say)


restart = guarded(_restart)


# --- scale -------------------------------------------------------------------------------

def _scale(args: argparse.Namespace) -> int:
    """``scale``: instances launched for the hosts added, the master given their keys and the
    new bundle, the NLB's targets made the Gatekeepers that stay or come (one that goes is
    deregistered first: the NLB sends it nothing new and lets its connections finish), then
    salt/orch/scale.sls on the master (cluster.scaling), then the removed instances
    terminated and their keys deleted."""
    recorded = read_record(PROVIDER)
    if recorded is None:
        raise ClusterError(f"no cluster in {record_path(PROVIDER)}: 'bootstrap.py up' makes it")
    aws = connect_for(args)
    wanted = scaling.wanted(args, recorded)
    wanted.no_monitor = not any(h.role == MONITOR for h in recorded.hosts)
    plan = AwsPlan.make(aws, wanted, args.admin_cidr or detect_admin_cidr(), recorded)
    change = scaling.Change.between(
        [(h.name, h.role) for h in recorded.hosts if h.role != SALT_MASTER.role],
        [(h.name, h.role) for h in plan.minions])
    master = next((h.public_address for h in recorded.hosts if h.role == SALT_MASTER.role), None)
    if not aws.simulated:
        if not master:
            raise ClusterError("scale: the record has no address of the Salt master")
        try:
            primary = failover_runner(recorded, master, "status").get("primary")
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as error:
            raise ClusterError(f"scale: could not ask the master which host is the primary: "
                               f"{error}") from None
        scaling.refuse_removing_the_primary(change, primary)
    say(scaling.describe(change))
    existing = res.find_instances(aws)
    keys = ClusterKeys.load_or_create(provider_dir(),
                                      [h.name for h in plan.minions] + list(change.removed),
                                      aws.cluster_name)
    group_ids = res.ensure_security_groups(aws, plan.network, plan.admin_cidr, say, plan.groups,
                                           plan.hostless)
    balancer = nlb.find_load_balancer(aws)
    if balancer is None:
        raise ClusterError("scale: the cluster has no load balancer: 'bootstrap.py up' first")
    deployed = deployment(aws.cluster_name, plan.minions, balancer["DNSName"])
    bundle = make_bundle(aws.cluster_name, plan.minions, keys, deployed,
                         nlb.gatekeeper_settings(plan.network.vpc_cidr))
    key_name = args.key_name or res.ensure_key_pair(aws, keys.admin.public)[0]
    instances = _launch_all(aws, plan, keys, bundle, {"group_ids": group_ids,
                                                      "key_name": key_name})
    res.set_minions_tag(aws, instances[SALT_MASTER.name], plan.minion_ids)
    target_groups = nlb.ensure_target_groups(aws, plan.network.vpc_id, say)
    nlb.sync_targets(aws, target_groups,
                     [instances[h.name]["InstanceId"] for h in plan.gatekeepers],
                     RUNNING_DEADLINE_S, say)
    key_file = None if args.key_name else keys.admin_key_file
    url, ca_file = recorded.gatekeeper_url, recorded.ca_file
    if aws.simulated:
        say(f"{aws.endpoint} is not AWS: skipping the wait for running instances and the "
            "orchestration")
    else:
        ids = [instances[name]["InstanceId"] for name in change.added]
        instances.update({res.host_of(i): i for i in
                          res.wait_running(aws, ids, RUNNING_DEADLINE_S).values()})
        try:
            push_scaled_bundle(recorded, master, bundle.data, [h.name for h in plan.minions]
                               + list(change.removed))
            output = orchestration_output(recorded, master, scaling.ORCHESTRATION,
                                          pillar=change.pillar())
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as error:
            raise ClusterError(f"scale: could not run the orchestration on the master: "
                               f"{error}") from None
        code = scaling.report(salt_setup.orchestration_steps(output),
                              salt_setup.summarize_orchestration(output), say)
        if code != 0:
            return code
    gone = [existing[name] for name in change.removed if name in existing]
    if gone:
        res.terminate_instances(aws, gone, TERMINATE_DEADLINE_S)
        say(f"terminated {', '.join(change.removed)}")
        if not aws.simulated:
            forget_minions(recorded, master, list(change.removed))
    path = record(aws, plan, instances, key_file, balancer, url, ca_file)
    say(f"wrote {path}")
    return 0


scale = guarded(_scale)


# --- down --------------------------------------------------------------------------------

def _down(args: argparse.Namespace) -> int:
    aws = connect_for(args)
    say(f"removing cluster {aws.cluster_name} from {aws.region}")
    nlb.delete_all(aws, TERMINATE_DEADLINE_S, say)
    instances = res.find_instances(aws)
    terminated = res.terminate_instances(aws, instances.values(), TERMINATE_DEADLINE_S)
    say(f"terminated {len(terminated)} instance(s)" if terminated else "no instances")
    released = res.release_address(aws)
    if released:
        say(f"released Elastic IP {released} (an older version's)")
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


# --- keys --------------------------------------------------------------------------------

def keys(args: argparse.Namespace) -> int:
    """The key set in ``.cluster/aws/``; ``--apply`` sends the master a bundle with it and
    runs the Gatekeeper's states there (the services keep running)."""
    admin = load_or_create(secrets_file()).api_key if secrets_file().exists() else None
    return api_keys.run(args, keys_file(), admin, apply_keys if admin is not None else None)


def recorded_minions(recorded: ClusterRecord) -> list[Host]:
    """The minions a record shows were made: as many replicas, Gatekeepers and Proxies, a
    monitor or not."""
    def count(role: str) -> int:
        return sum(1 for h in recorded.hosts if h.role == role)

    return plan_hosts(count("replica"), monitor=count(MONITOR) > 0,
                      gatekeepers=count("gatekeeper"), proxies=count("proxy"))


def apply_keys(keyset: api_keys.KeySet) -> int:
    recorded = read_record(PROVIDER)
    master = next((h.public_address for h in recorded.hosts if h.role == "saltmaster"),
                  None) if recorded else None
    public_name = recorded.provider_data.get("load_balancer_dns") if recorded else None
    if not (master and public_name):
        raise ClusterError(f"--apply: no running cluster in {record_path(PROVIDER)} (or one made "
                           "by an older version, without a load balancer); the next "
                           "'bootstrap.py up' applies the key set")
    minions = recorded_minions(recorded)
    cluster_keys = ClusterKeys.load_or_create(provider_dir(), [h.name for h in minions],
                                              recorded.cluster_name)
    deployed = deployment(recorded.cluster_name, minions, public_name, keyset=keyset)
    bundle = make_bundle(recorded.cluster_name, minions, cluster_keys, deployed,
                         nlb.gatekeeper_settings(recorded.provider_data.get("vpc_cidr") or ""))
    gatekeepers = [h.name for h in minions if h.role == "gatekeeper"]
    try:
        push_bundle(recorded, master, bundle.data)
        result = apply_states(recorded, master, gatekeepers, ROLES["gatekeeper"].states or "")
    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as error:
        raise ClusterError(f"--apply: could not reach Salt on the master: {error}") from None
    return api_keys.report_applied(result)
