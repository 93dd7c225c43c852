"""The AWS provider against a real moto server over HTTP: what ``up`` creates, a second ``up``,
``status``, ``down`` (also after a partial ``up``), ``--dry-run`` and the error messages."""

from __future__ import annotations

import base64
import io
import json
import shutil
import stat
import subprocess
import sys
import tarfile
import urllib.request

import pytest
import yaml
from botocore.exceptions import ClientError

import bootstrap
from cluster.errors import ClusterError
from cluster.providers.aws import commands as aws_provider
from cluster.providers.aws import nlb
from cluster.providers.aws import resources as res
from cluster.providers.aws.bundle import MASTER_CONF, MASTER_PKI
from cluster.providers.aws.plan import AwsPlan
from cluster.record import read_record
from cluster.topology import (
    ADMIN,
    BALANCER,
    CLUSTER,
    GROUP_OF_ROLE,
    INGRESS_RULES,
    INTERNET,
    SALT_MASTER,
    groups_of,
    plan_hosts,
)
from cluster.topology import GROUPS as ALL_GROUPS
from tests.aws_moto import ADMIN_CIDR, NEWEST_JAMMY, REGION, REPO, load_balancing
from tests.aws_moto import bootstrap_up as up
from tests.aws_moto import run_bootstrap as run

CLUSTER_NAME = "sqlgate"
MINIONS = plan_hosts(2, gatekeepers=2, proxies=2)  # AWS's default: two of each in front
HOSTS = [SALT_MASTER, *MINIONS]
# AWS has no balancer host: its balancer is a Network Load Balancer, which wears the balancer
# group (and no host's own rule: SSH, node_exporter).
HOSTLESS = (BALANCER,)
GROUPS = tuple(g for g in ALL_GROUPS if g in {*groups_of(HOSTS), *HOSTLESS})


def cluster_filter() -> list[dict]:
    return [{"Name": f"tag:{res.CLUSTER_TAG}", "Values": [CLUSTER_NAME]}]


def live_instances(ec2) -> list[dict]:
    pages = ec2.describe_instances(Filters=[
        *cluster_filter(), {"Name": "instance-state-name", "Values": res.LIVE_STATES}])
    return [i for r in pages["Reservations"] for i in r["Instances"]]


def tags_of(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def groups_by_name(ec2) -> dict[str, dict]:
    groups = ec2.describe_security_groups(Filters=cluster_filter())["SecurityGroups"]
    return {g["GroupName"]: g for g in groups}


def user_data_of(ec2, instance_id: str) -> str:
    attribute = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    return base64.b64decode(attribute["UserData"]["Value"]).decode()


def bucket_names(s3) -> list[str]:
    return [b["Name"] for b in s3.list_buckets()["Buckets"]]


@pytest.fixture
def cluster_up(aws_env, capsys):
    code, out, err = up(capsys)
    assert code == 0, err
    return out


# --- what up creates ---------------------------------------------------------------------

def expected_rules(group: str, ids: dict[str, str]) -> set[tuple]:
    """Written from INGRESS_RULES independently of the provider's own translation."""
    wanted = set()
    for rule in INGRESS_RULES:
        if rule.group != group or rule.unless in GROUPS or \
                rule.source not in (*GROUPS, INTERNET, ADMIN, CLUSTER) or \
                (rule.host and group in HOSTLESS):
            continue
        sources = {INTERNET: ["0.0.0.0/0"], ADMIN: [ADMIN_CIDR],
                   CLUSTER: [ids[g] for g in GROUPS if g not in HOSTLESS]
                   }.get(rule.source) or [ids[rule.source]]
        ports = rule.ports or (8, -1)
        wanted.update((rule.protocol, *ports, source) for source in sources)
    return wanted


def actual_rules(group: dict) -> set[tuple]:
    found = set()
    for perm in group["IpPermissions"]:
        for source in [r["CidrIp"] for r in perm.get("IpRanges", [])] + \
                [p["GroupId"] for p in perm.get("UserIdGroupPairs", [])]:
            found.add((perm["IpProtocol"], perm["FromPort"], perm["ToPort"], source))
    return found


def test_security_groups_have_exactly_the_topology_rules(aws_env, cluster_up):
    ec2 = aws_env.client("ec2")
    groups = groups_by_name(ec2)
    assert sorted(groups) == sorted(f"{CLUSTER_NAME}-{g}" for g in GROUPS)
    ids = {g: groups[f"{CLUSTER_NAME}-{g}"]["GroupId"] for g in GROUPS}
    default_vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])
    for group in GROUPS:
        described = groups[f"{CLUSTER_NAME}-{group}"]
        assert described["VpcId"] == default_vpc["Vpcs"][0]["VpcId"]
        assert actual_rules(described) == expected_rules(group, ids), group
    # The seed's points, spelt out: only the load balancer is open to the Internet, and only on
    # the public ports; the Gatekeepers take them from it alone (its health checks too), the
    # Proxy only the Gatekeeper, the databases only the Proxy and each other.
    open_to_world = [g for g in GROUPS
                     if any(r[3] == "0.0.0.0/0" for r in actual_rules(groups[f"sqlgate-{g}"]))]
    assert open_to_world == ["balancer"]
    assert actual_rules(groups["sqlgate-balancer"]) == {
        ("tcp", 443, 443, "0.0.0.0/0"), ("tcp", 80, 80, "0.0.0.0/0")}
    assert {r for r in actual_rules(groups["sqlgate-gatekeeper"]) if r[1] in (80, 443)} == {
        ("tcp", 443, 443, ids["balancer"]), ("tcp", 80, 80, ids["balancer"])}
    salt_sources = {r[3] for r in actual_rules(groups["sqlgate-saltmaster"]) if r[1] == 4505}
    assert ids["balancer"] not in salt_sources
    assert actual_rules(groups["sqlgate-proxy"]) == {
        ("tcp", 5000, 5000, ids["gatekeeper"]), ("tcp", 22, 22, ADMIN_CIDR),
        ("tcp", 9181, 9181, ids["monitor"]), ("tcp", 9100, 9100, ids["monitor"])}
    # Prometheus: the operator only; the exporters and metrics: the monitor only; the rate
    # store: the Gatekeepers only.
    assert actual_rules(groups["sqlgate-monitor"]) == {
        ("tcp", 9090, 9090, ADMIN_CIDR), ("tcp", 22, 22, ADMIN_CIDR),
        ("tcp", 9100, 9100, ids["monitor"]), ("tcp", 6379, 6379, ids["gatekeeper"])}
    monitored = {(r[1], r[3]) for g in GROUPS for r in actual_rules(groups[f"sqlgate-{g}"])
                 if r[1] in (9100, 9104, 9180, 9181)}
    assert {source for _, source in monitored} == {ids["monitor"]}
    mysql_sources = {r[3] for r in actual_rules(groups["sqlgate-database"]) if r[1] == 3306}
    assert mysql_sources == {ids["proxy"], ids["database"]}


def test_instances_per_role_with_tags_and_imdsv2(aws_env, cluster_up):
    ec2 = aws_env.client("ec2")
    instances = live_instances(ec2)
    by_host = {tags_of(i)[res.HOST_TAG]: i for i in instances}
    assert sorted(by_host) == sorted(h.name for h in HOSTS)
    groups = groups_by_name(ec2)
    for host in HOSTS:
        instance, tags = by_host[host.name], tags_of(by_host[host.name])
        assert tags["Name"] == f"{CLUSTER_NAME}-{host.name}"
        assert tags[res.CLUSTER_TAG] == CLUSTER_NAME
        assert tags[res.ROLE_TAG] == host.role
        assert instance["InstanceType"] == "t3.micro"
        assert instance["ImageId"] == NEWEST_JAMMY
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
        assert instance["KeyName"] == f"{CLUSTER_NAME}-admin"
        interface = instance["NetworkInterfaces"][0]
        assert [g["GroupName"] for g in interface["Groups"]] == \
            [f"{CLUSTER_NAME}-{GROUP_OF_ROLE[host.role]}"]
        assert interface["Groups"][0]["GroupId"] == \
            groups[f"{CLUSTER_NAME}-{GROUP_OF_ROLE[host.role]}"]["GroupId"]
        assert instance["PublicIpAddress"]


def test_cluster_file_is_private_and_complete(aws_env, cluster_up):
    path = aws_env.cluster_dir / "aws.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["provider_data"]["region"] == REGION and data["api_key"]
    balancer = aws_env.client("elbv2").describe_load_balancers()["LoadBalancers"][0]
    assert data["provider_data"]["load_balancer_dns"] == balancer["DNSName"]
    assert data["gatekeeper_url"] == f"https://{balancer['DNSName']}"
    assert "elastic_ip" not in data["provider_data"]
    assert data["ca_file"] == str(aws_env.cluster_dir / "aws-ca.crt")
    assert (aws_env.cluster_dir / "aws-ca.crt").read_text() == \
        (aws_env.cluster_dir / "aws" / "tls" / "ca.crt").read_text()
    ec2 = aws_env.client("ec2")
    real = {tags_of(i)[res.HOST_TAG]: i for i in live_instances(ec2)}
    for host in data["hosts"]:
        instance = real[host["name"]]
        assert host["instance_id"] == instance["InstanceId"]
        assert host["address"] == instance["PrivateIpAddress"]
        assert host["role"] == tags_of(instance)[res.ROLE_TAG]
    assert "skipping the wait" in cluster_up and "is not AWS" in cluster_up
    for key in [*(aws_env.cluster_dir / "aws").rglob("*.pem"),
                *(aws_env.cluster_dir / "aws").rglob("*.key")]:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def cloud_config(text: str) -> dict:
    assert text.startswith("#cloud-config\n")
    assert len(text.encode()) < 16 * 1024
    return yaml.safe_load(text)


def files_of(config: dict) -> dict[str, dict]:
    return {f["path"]: f for f in config["write_files"]}


def test_minion_user_data_points_at_the_master_with_preseeded_keys(aws_env, cluster_up, tmp_path):
    ec2 = aws_env.client("ec2")
    by_host = {tags_of(i)[res.HOST_TAG]: i for i in live_instances(ec2)}
    master_ip = by_host["saltmaster"]["PrivateIpAddress"]
    keys = aws_env.cluster_dir / "aws" / "salt-pki"
    for host in MINIONS:
        config = cloud_config(user_data_of(ec2, by_host[host.name]["InstanceId"]))
        files = files_of(config)
        assert config["hostname"] == host.name
        minion = yaml.safe_load(files["/etc/salt/minion.d/sqlgate.conf"]["content"])
        assert minion == {"id": host.name, "master": master_ip}
        assert files["/etc/salt/pki/minion/minion.pem"]["content"] == \
            (keys / "minions" / f"{host.name}.pem").read_text()
        assert files["/etc/salt/pki/minion/minion.pem"]["permissions"] == "0400"
        assert files["/etc/salt/pki/minion/minion_master.pub"]["content"] == \
            (keys / "master.pub").read_text()
        assert_valid_scripts(files, tmp_path)
        env = source_env(files["/etc/sqlgate/bootstrap.env"]["content"], tmp_path)
        assert env["MASTER_ADDRESS"] == master_ip and env["SALT_VERSION"] == "3008.3"


def assert_valid_scripts(files: dict[str, dict], tmp_path) -> None:
    for path in ("/usr/local/sbin/sqlgate-bootstrap", "/usr/local/lib/sqlgate/common.sh"):
        script = tmp_path / "script.sh"
        script.write_text(files[path]["content"])
        checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert checked.returncode == 0, (path, checked.stderr)


def source_env(content: str, tmp_path) -> dict[str, str]:
    """What the scripts see after ``. /etc/sqlgate/bootstrap.env``."""
    env_file = tmp_path / "bootstrap.env"
    env_file.write_text(content)
    dumped = subprocess.run(["bash", "-c", f"set -a; . {env_file}; env -0"], env={},
                            capture_output=True, check=True).stdout.decode()
    return dict(item.split("=", 1) for item in dumped.split("\0") if "=" in item)


def test_master_user_data_fetches_a_bundle_with_tree_pillar_and_keys(aws_env, cluster_up,
                                                                     tmp_path):
    ec2 = aws_env.client("ec2")
    by_host = {tags_of(i)[res.HOST_TAG]: i for i in live_instances(ec2)}
    config = cloud_config(user_data_of(ec2, by_host["saltmaster"]["InstanceId"]))
    files = files_of(config)
    assert_valid_scripts(files, tmp_path)
    assert config["ssh_keys"]["ed25519_public"].split()[:2] == \
        (aws_env.cluster_dir / "aws/ssh/master_host_ed25519.pub").read_text().split()[:2]
    env = source_env(files["/etc/sqlgate/bootstrap.env"]["content"], tmp_path)
    assert env["MINION_IDS"] == ",".join(h.name for h in MINIONS)
    # The presigned URL works (against moto) and the checksum matches what the master checks.
    with urllib.request.urlopen(env["BUNDLE_URL"], timeout=10) as answer:
        data = answer.read()
    import hashlib
    assert hashlib.sha256(data).hexdigest() == env["BUNDLE_SHA256"]
    # Then the master deletes it with the second presigned URL: the secrets leave S3.
    s3 = aws_env.client("s3")
    bucket = res.bucket_name(aws_provider.connect(CLUSTER_NAME, REGION, None))
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 1
    delete = urllib.request.Request(env["BUNDLE_DELETE_URL"], method="DELETE")
    with urllib.request.urlopen(delete, timeout=10) as answer:
        assert answer.status == 204
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        master_conf = yaml.safe_load(tar.extractfile(MASTER_CONF).read())
        minion_pubs = {name.rsplit("/", 1)[1]: tar.extractfile(name).read().decode()
                       for name in members if name.startswith(f"{MASTER_PKI}/minions/")}
    assert master_conf["auto_accept"] is False and master_conf["open_mode"] is False
    keys = aws_env.cluster_dir / "aws" / "salt-pki" / "minions"
    assert minion_pubs == {h.name: (keys / f"{h.name}.pub").read_text() for h in MINIONS}
    assert members[f"{MASTER_PKI}/master.pem"].mode == 0o400
    assert any(name.startswith("srv/sqlgate/pillar/") for name in members)
    assert "srv/sqlgate/source/sqlgate-src/pyproject.toml" in members  # salt://sqlgate-src
    assert master_conf["file_roots"]["base"] == ["/srv/sqlgate/salt", "/srv/sqlgate/source"]
    assert "srv/sqlgate/salt/orch" in members
    assert not any("__pycache__" in name for name in members)


# --- idempotence, status, down -----------------------------------------------------------

def snapshot(aws_env) -> dict:
    ec2, s3 = aws_env.client("ec2"), aws_env.client("s3")
    return {
        "instances": sorted(i["InstanceId"] for i in live_instances(ec2)),
        "groups": {n: (g["GroupId"], sorted(actual_rules(g)))
                   for n, g in groups_by_name(ec2).items()},
        "buckets": bucket_names(s3),
        "key_pairs": [k["KeyPairId"] for k in ec2.describe_key_pairs()["KeyPairs"]],
        "addresses": sorted((a["AllocationId"], a.get("InstanceId"))
                            for a in ec2.describe_addresses()["Addresses"]),
        "load_balancing": load_balancing(aws_env.client("elbv2")),
        "cluster_file": json.loads((aws_env.cluster_dir / "aws.json").read_text()),
    }


def test_second_up_creates_nothing(aws_env, cluster_up, capsys):
    before = snapshot(aws_env)
    code, out, err = up(capsys)
    assert code == 0, err
    assert snapshot(aws_env) == before
    assert "nothing launched" in out
    assert "created" not in out and "launched " not in out
    assert "realigned" not in out and "registered" not in out
    assert "kept network load balancer sqlgate-nlb" in out
    assert "kept listener TCP 443" in out and "kept listener TCP 80" in out
    assert "target group 443: kept its 2 target(s)" in out


def test_up_realigns_a_changed_rule(aws_env, cluster_up, capsys):
    """The admin's address changed: SSH follows it, the old address loses access."""
    code, out, err = run(capsys, "up", "--admin-cidr", "198.51.100.9")
    assert code == 0, err
    assert "nothing launched" in out
    groups = groups_by_name(aws_env.client("ec2"))
    ssh_sources = {r[3] for g in groups.values() for r in actual_rules(g) if r[1] == 22}
    assert ssh_sources == {"198.51.100.9/32"}


def test_status_lists_every_host(aws_env, cluster_up, capsys):
    code, out, err = run(capsys, "status")
    assert code == 0, err
    for host in HOSTS:
        line = next(line for line in out.splitlines() if line.strip().startswith(host.name))
        assert host.role in line and "running" in line
    assert "skipping /health and the Salt checks" in out


def assert_nothing_left(aws_env) -> None:
    ec2, s3 = aws_env.client("ec2"), aws_env.client("s3")
    assert live_instances(ec2) == []
    assert groups_by_name(ec2) == {}
    assert [b for b in bucket_names(s3) if "bundle" in b] == []
    assert ec2.describe_key_pairs()["KeyPairs"] == []
    assert ec2.describe_addresses()["Addresses"] == []
    assert load_balancing(aws_env.client("elbv2")) == {"load_balancers": {},
                                                       "target_groups": {}}
    assert not (aws_env.cluster_dir / "aws.json").exists()
    assert not (aws_env.cluster_dir / "aws-ca.crt").exists()
    assert not (aws_env.cluster_dir / "aws").exists()


def test_down_removes_everything(aws_env, cluster_up, capsys):
    code, out, err = run(capsys, "down")
    assert code == 0, err
    assert_nothing_left(aws_env)
    code, out, err = run(capsys, "down")  # and again, with nothing there
    assert code == 0, err
    assert "no instances" in out


def older_elastic_ip(ec2) -> dict:
    """The Elastic IP an older version gave its one Gatekeeper."""
    return ec2.allocate_address(Domain="vpc", TagSpecifications=[{
        "ResourceType": "elastic-ip", "Tags": [{"Key": res.CLUSTER_TAG, "Value": CLUSTER_NAME},
                                               {"Key": res.ROLE_TAG, "Value": "gatekeeper"}]}])


def test_down_after_a_partial_up(aws_env, capsys):
    """Groups, the load balancer and a target group, the bucket and the master exist, no minions
    and no cluster file (and an older version's Elastic IP): up died half-way."""
    aws = aws_provider.connect(CLUSTER_NAME, REGION, None)
    args = bootstrap.build_parser().parse_args(["up", "--admin-cidr", ADMIN_CIDR])
    plan = AwsPlan.make(aws, args, ADMIN_CIDR)
    group_ids = res.ensure_security_groups(aws, plan.network, ADMIN_CIDR, print, plan.groups,
                                           plan.hostless)
    nlb.ensure_load_balancer(aws, plan.network, group_ids[BALANCER], print)
    aws_env.client("elbv2").create_target_group(
        Name=nlb.target_group_name(aws, 443), Protocol="TCP", Port=443, VpcId=plan.network.vpc_id,
        TargetType="instance", Tags=aws.tags("tcp443", **{nlb.PORT_TAG: "443"}))
    res.ensure_bucket(aws)
    older_elastic_ip(aws_env.client("ec2"))
    res.upload_bundle(aws, b"partial", 60)
    res.launch_instance(aws, plan.launch(SALT_MASTER, "#cloud-config\n{}\n", group_ids, None))
    ec2 = aws_env.client("ec2")
    assert len(live_instances(ec2)) == 1 and read_record("aws") is None
    code, out, err = run(capsys, "down", "--region", REGION)
    assert code == 0, err
    assert "terminated 1 instance(s)" in out and "deleted bucket" in out
    assert "released Elastic IP" in out and "(an older version's)" in out
    assert "deleted network load balancer sqlgate-nlb" in out
    assert "deleted target group sqlgate-tcp443" in out
    assert_nothing_left(aws_env)


def test_up_completes_a_partial_cluster(aws_env, cluster_up, capsys):
    ec2 = aws_env.client("ec2")
    replica = next(i for i in live_instances(ec2) if tags_of(i)[res.HOST_TAG] == "replica2")
    ec2.terminate_instances(InstanceIds=[replica["InstanceId"]])
    code, out, err = up(capsys)
    assert code == 0, err
    assert "launched replica2" in out and "launched saltmaster" not in out
    assert len(live_instances(ec2)) == len(HOSTS)


def test_up_refuses_to_change_the_minions_of_a_running_master(aws_env, cluster_up, capsys):
    """The master only accepts the keys it was given at launch: no silent half-cluster."""
    before = snapshot(aws_env)
    code, _, err = up(capsys, "--replicas", "3")
    assert_one_line_error(code, err, "the cluster was made for minions gatekeeper,gatekeeper2,"
                                     "proxy,proxy2,primary,replica1,replica2,monitor, not ")
    assert snapshot(aws_env) == before
    code, _, err = up(capsys, "--gatekeepers", "3")
    assert_one_line_error(code, err, "--gatekeepers")
    assert snapshot(aws_env) == before


def test_no_monitor_makes_no_monitor_host_group_or_rule(aws_env, capsys):
    code, out, err = up(capsys, "--no-monitor")
    assert code == 0, err
    ec2 = aws_env.client("ec2")
    hosts = {tags_of(i)[res.HOST_TAG] for i in live_instances(ec2)}
    assert hosts == {h.name for h in HOSTS} - {"monitor"}
    groups = groups_by_name(ec2)
    assert sorted(groups) == sorted(f"{CLUSTER_NAME}-{g}" for g in GROUPS if g != "monitor")
    ports = {r[1] for g in groups.values() for r in actual_rules(g)}
    assert not ports & {9090, 9100, 9104, 9180, 9181}
    recorded = read_record("aws")
    assert recorded.monitor_url is None
    assert "monitor" not in {h.name for h in recorded.hosts}
    assert "Prometheus" not in out


def test_up_refuses_when_the_local_keys_are_lost(aws_env, cluster_up, capsys):
    shutil.rmtree(aws_env.cluster_dir / "aws")
    code, _, err = up(capsys)
    assert_one_line_error(code, err, "the cluster exists but its keys and secrets")


def test_dry_run_creates_nothing(aws_env, capsys):
    code, out, err = up(capsys, "--dry-run", "--replicas", "3")
    assert code == 0, err
    ec2, s3 = aws_env.client("ec2"), aws_env.client("s3")
    assert live_instances(ec2) == [] and groups_by_name(ec2) == {}
    assert bucket_names(s3) == [] and ec2.describe_key_pairs()["KeyPairs"] == []
    assert not (aws_env.cluster_dir / "aws.json").exists()
    assert "[create] sqlgate-gatekeeper" in out
    assert "tcp 443 from 0.0.0.0/0" in out and "tcp 80 from 0.0.0.0/0" in out
    assert "tcp 443 from sqlgate-balancer" in out
    assert "[create] sqlgate-nlb, internet-facing" in out
    assert "[create] listener TCP 443 -> target group sqlgate-tcp443" in out
    assert "[create] sqlgate-balancer (worn by the network load balancer)" in out
    assert "Elastic IP" not in out
    assert "[create] sqlgate-monitor" in out and "tcp 9090 from " in out
    assert ec2.describe_addresses()["Addresses"] == []
    assert "tcp 5000 from sqlgate-gatekeeper" in out
    assert f"tcp 22 from {ADMIN_CIDR}" in out
    assert "replica3" in out and "t3.micro" in out and "bucket sqlgate-bundle-" in out


def test_bootstrap_as_a_subprocess(aws_env):
    """The README's command, as a user runs it (the environment points at moto)."""
    env = aws_env.subprocess_env()
    command = [sys.executable, str(REPO / "bootstrap.py")]
    first = subprocess.run([*command, "up", "--admin-cidr", ADMIN_CIDR], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "is not AWS: skipping" in first.stdout
    second = subprocess.run([*command, "up", "--admin-cidr", ADMIN_CIDR], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "nothing launched" in second.stdout, second.stderr
    status = subprocess.run([*command, "status"], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert status.returncode == 0 and "replica2" in status.stdout, status.stderr
    down = subprocess.run([*command, "down"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert down.returncode == 0, down.stderr
    assert_nothing_left(aws_env)


# --- errors ------------------------------------------------------------------------------

def assert_one_line_error(code: int, err: str, expected: str) -> None:
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert expected in err and "Traceback" not in err


def test_no_credentials(aws_env, capsys, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    code, _, err = up(capsys)
    assert_one_line_error(code, err, "no AWS credentials found")


def test_no_credentials_in_a_subprocess(aws_env):
    env = {k: v for k, v in aws_env.subprocess_env().items()
           if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
    done = subprocess.run([sys.executable, str(REPO / "bootstrap.py"), "up", "--admin-cidr",
                           ADMIN_CIDR], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert_one_line_error(done.returncode, done.stderr, "no AWS credentials found")


def test_unknown_region(aws_env, capsys):
    code, _, err = up(capsys, "--region", "mars-north-1")
    assert_one_line_error(code, err, "unknown AWS region 'mars-north-1'")


def test_no_region(aws_env, capsys, monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    code, _, err = up(capsys)
    assert_one_line_error(code, err, "no AWS region")


def test_no_default_vpc(aws_env, capsys):
    region = "eu-west-3"
    ec2 = aws_env.client("ec2", region)
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]
    for subnet in ec2.describe_subnets(
            Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])["Subnets"]:
        ec2.delete_subnet(SubnetId=subnet["SubnetId"])
    for gateway in ec2.describe_internet_gateways(
            Filters=[{"Name": "attachment.vpc-id", "Values": [vpc["VpcId"]]}])["InternetGateways"]:
        ec2.detach_internet_gateway(InternetGatewayId=gateway["InternetGatewayId"],
                                    VpcId=vpc["VpcId"])
        ec2.delete_internet_gateway(InternetGatewayId=gateway["InternetGatewayId"])
    ec2.delete_vpc(VpcId=vpc["VpcId"])
    code, _, err = up(capsys, "--region", region)
    assert_one_line_error(code, err, f"no default VPC in {region}")
    assert live_instances(ec2) == []


def test_quota_exceeded(aws_env, capsys):
    """The Gatekeeper's group already holds EC2's maximum of rules: AWS refuses one more."""
    ec2 = aws_env.client("ec2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]
    group = ec2.create_security_group(
        GroupName=f"{CLUSTER_NAME}-gatekeeper", Description="full", VpcId=vpc["VpcId"],
        TagSpecifications=[{"ResourceType": "security-group",
                            "Tags": [{"Key": res.CLUSTER_TAG, "Value": CLUSTER_NAME}]}])
    ec2.authorize_security_group_ingress(GroupId=group["GroupId"], IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80,
         "IpRanges": [{"CidrIp": f"10.9.{i}.0/24"} for i in range(60)]}])
    code, _, err = up(capsys)
    assert_one_line_error(code, err, "AWS quota exceeded")
    assert "RulesPerSecurityGroupLimitExceeded" in err
    assert live_instances(ec2) == []


@pytest.mark.parametrize("code", ["InstanceLimitExceeded", "VcpuLimitExceeded"])
def test_instance_quota_errors_are_explained(code):
    """moto enforces no instance quota; these are the errors EC2 sends for it."""
    error = ClientError({"Error": {"Code": code, "Message": "You have requested more vCPU"}},
                        "RunInstances")
    line = aws_provider.explain(error, "us-east-1")
    assert line.startswith("AWS quota exceeded in us-east-1") and code in line


def test_waiting_for_instances_stops_when_one_dies(aws_env):
    """A launched instance that terminates (e.g. a bad image) is an error now, not a timeout."""
    aws = aws_provider.connect(CLUSTER_NAME, REGION, None)
    ec2 = aws_env.client("ec2")
    launched = ec2.run_instances(ImageId=NEWEST_JAMMY, MinCount=1, MaxCount=1,
                                 InstanceType="t3.micro")["Instances"][0]["InstanceId"]
    assert res.wait_running(aws, [launched], deadline_s=30)[launched]["State"]["Name"] == \
        "running"
    ec2.terminate_instances(InstanceIds=[launched])
    with pytest.raises(ClusterError, match="terminated instead of running"):
        res.wait_running(aws, [launched], deadline_s=600)
