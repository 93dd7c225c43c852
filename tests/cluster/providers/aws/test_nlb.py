"""The Network Load Balancer in front of the Gatekeepers, against a moto server: what ``up`` makes
(the NLB, a target group per public port with its health check and attributes, the listeners,
every Gatekeeper registered), what a second ``up`` keeps or realigns, the Gatekeepers' trust of
the PROXY header, ``--gatekeepers``/``--proxies``, ``status`` and ``down``.

moto checks little of what AWS would refuse (health check ranges, attribute names, an NLB's
subnets): the values AWS accepts are asserted here from its documentation instead."""

from __future__ import annotations

import io
import re
import tarfile

import pytest
import yaml

from cluster.providers.aws import commands as aws_provider
from cluster.providers.aws import nlb
from cluster.providers.aws import resources as res
from cluster.record import read_record
from tests.aws_moto import ADMIN_CIDR, NEWEST_JAMMY, REGION, load_balancing
from tests.aws_moto import bootstrap_up as up
from tests.aws_moto import run_bootstrap as run

CLUSTER_NAME = "sqlgate"


@pytest.fixture
def cluster_up(aws_env, capsys):
    code, out, err = up(capsys)
    assert code == 0, err
    return out


def live_instances(ec2) -> dict[str, dict]:
    pages = ec2.describe_instances(Filters=[
        {"Name": f"tag:{res.CLUSTER_TAG}", "Values": [CLUSTER_NAME]},
        {"Name": "instance-state-name", "Values": res.LIVE_STATES}])
    return {res.host_of(i): i for r in pages["Reservations"] for i in r["Instances"]}


def gatekeeper_ids(ec2) -> list[str]:
    return sorted(i["InstanceId"] for name, i in live_instances(ec2).items()
                  if name.startswith("gatekeeper"))


def group_id(ec2, group: str) -> str:
    (found,) = ec2.describe_security_groups(Filters=[
        {"Name": "group-name", "Values": [f"{CLUSTER_NAME}-{group}"]}])["SecurityGroups"]
    return found["GroupId"]


def targets(state: dict, port: int) -> list[str]:
    return [i for i, _ in state["target_groups"][f"{CLUSTER_NAME}-tcp{port}"]["targets"]]


# --- what up makes -----------------------------------------------------------------------

def test_up_makes_an_internet_facing_nlb_in_the_instances_subnet(aws_env, cluster_up):
    ec2 = aws_env.client("ec2")
    state = load_balancing(aws_env.client("elbv2"))
    assert list(state["load_balancers"]) == ["sqlgate-nlb"]
    balancer = state["load_balancers"]["sqlgate-nlb"]
    assert (balancer["Type"], balancer["Scheme"], balancer["IpAddressType"]) == \
        ("network", "internet-facing", "ipv4")
    default_vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])
    assert balancer["VpcId"] == default_vpc["Vpcs"][0]["VpcId"]
    subnets = {i["SubnetId"] for i in live_instances(ec2).values()}
    assert balancer["subnets"] == sorted(subnets) and len(subnets) == 1
    # It wears the balancer group: 443 and 80 from anywhere; the Gatekeepers take those ports
    # from that group only.
    assert balancer["SecurityGroups"] == [group_id(ec2, "balancer")]
    assert balancer["tags"] == {"Name": "sqlgate-balancer", res.CLUSTER_TAG: CLUSTER_NAME,
                                res.ROLE_TAG: "balancer"}
    assert f"created network load balancer sqlgate-nlb ({balancer['DNSName']}" in cluster_up


def test_a_target_group_per_public_port_with_its_health_check_and_attributes(aws_env,
                                                                             cluster_up):
    state = load_balancing(aws_env.client("elbv2"))
    vpc = state["load_balancers"]["sqlgate-nlb"]["VpcId"]
    assert sorted(state["target_groups"]) == ["sqlgate-tcp443", "sqlgate-tcp80"]
    for port, protocol, matcher in ((443, "HTTPS", "200"), (80, "HTTP", "308")):
        group = state["target_groups"][f"sqlgate-tcp{port}"]
        assert (group["Protocol"], group["Port"], group["TargetType"], group["VpcId"]) == \
            ("TCP", port, "instance", vpc)
        assert (group["HealthCheckProtocol"], group["HealthCheckPort"],
                group["HealthCheckPath"], group["Matcher"]) == \
            (protocol, str(port), "/health", {"HttpCode": matcher})
        assert (group["HealthCheckIntervalSeconds"], group["HealthCheckTimeoutSeconds"],
                group["HealthyThresholdCount"], group["UnhealthyThresholdCount"]) == (5, 4, 2, 2)
        assert group["tags"][nlb.PORT_TAG] == str(port)
        assert group["tags"][res.CLUSTER_TAG] == CLUSTER_NAME
    # 443: the client in a PROXY v2 header, the connection from the NLB's own address; 80 (the
    # redirect reads no header): the client's address kept, no header.
    attributes = {port: state["target_groups"][f"sqlgate-tcp{port}"]["attributes"]
                  for port in (443, 80)}
    assert {k: attributes[443][k] for k in nlb.PUBLIC_PORTS[0].attributes} == {
        "proxy_protocol_v2.enabled": "true", "preserve_client_ip.enabled": "false",
        "deregistration_delay.timeout_seconds": "15"}
    assert {k: attributes[80][k] for k in nlb.PUBLIC_PORTS[1].attributes} == {
        "proxy_protocol_v2.enabled": "false", "preserve_client_ip.enabled": "true",
        "deregistration_delay.timeout_seconds": "15"}


def test_the_health_check_is_one_aws_accepts_and_drops_a_dead_gatekeeper_fast():
    """moto takes any value; AWS's ranges for a Network Load Balancer's target group: interval
    5-300 s, timeout 2-120 s (and below the interval), healthy/unhealthy thresholds 2-10;
    deregistration delay 0-3600 s."""
    for spec in nlb.PUBLIC_PORTS:
        check = spec.health_check
        assert 5 <= check["HealthCheckIntervalSeconds"] <= 300
        assert 2 <= check["HealthCheckTimeoutSeconds"] < check["HealthCheckIntervalSeconds"]
        assert 2 <= check["HealthyThresholdCount"] <= 10
        assert 2 <= check["UnhealthyThresholdCount"] <= 10
        assert check["HealthCheckProtocol"] in ("HTTP", "HTTPS")
        assert re.fullmatch(r"[2-5][0-9][0-9]", check["Matcher"]["HttpCode"])
    assert 0 <= nlb.DEREGISTRATION_DELAY_S <= 3600
    # A Gatekeeper that stops answering gets no new connection within about 10 s.
    assert nlb.INTERVAL_S * nlb.UNHEALTHY_THRESHOLD <= 10


def test_listeners_forward_each_public_port_to_its_group(aws_env, cluster_up):
    state = load_balancing(aws_env.client("elbv2"))
    listeners = state["load_balancers"]["sqlgate-nlb"]["listeners"]
    assert sorted(listeners) == [80, 443]
    for port, (_, protocol, actions) in listeners.items():
        group = state["target_groups"][f"sqlgate-tcp{port}"]["TargetGroupArn"]
        assert protocol == "TCP"
        assert [(a["Type"], a["TargetGroupArn"]) for a in actions] == [("forward", group)]


def test_every_gatekeeper_is_a_target_of_both_groups(aws_env, cluster_up):
    ec2 = aws_env.client("ec2")
    gatekeepers = gatekeeper_ids(ec2)
    assert len(gatekeepers) == 2  # AWS's default: two Gatekeepers (and two Proxies)
    assert {name for name in live_instances(ec2) if name.startswith("proxy")} == \
        {"proxy", "proxy2"}
    state = load_balancing(aws_env.client("elbv2"))
    for port in (443, 80):
        group = state["target_groups"][f"sqlgate-tcp{port}"]
        assert group["targets"] == [(i, port) for i in gatekeepers]
    assert f"target group 443: registered {', '.join(gatekeepers)}" in cluster_up


def test_the_gatekeepers_trust_the_proxy_header_from_the_vpcs_network_only(aws_env,
                                                                           cluster_up):
    aws = aws_provider.connect(CLUSTER_NAME, REGION, None)
    bundle = aws_env.client("s3").get_object(Bucket=res.bucket_name(aws),
                                             Key=res.BUNDLE_KEY)["Body"].read()
    prefix = "srv/sqlgate/pillar/sqlgate/"
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        pillar = {m.name.removeprefix(prefix): yaml.safe_load(tar.extractfile(m).read())
                  for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()}
    vpc_cidr = read_record("aws").provider_data["vpc_cidr"]
    default_vpc = aws_env.client("ec2").describe_vpcs(
        Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]
    assert vpc_cidr == default_vpc["CidrBlock"]
    assert pillar["gatekeeper.sls"]["sqlgate"]["gatekeeper"] == {
        "proxy_protocol_from": vpc_cidr, "drain_seconds": nlb.GATEKEEPER_DRAIN_S,
        "stop_seconds": nlb.GATEKEEPER_STOP_S}
    # The drain outlasts the NLB's checks; the service manager waits for the drain and more.
    assert nlb.GATEKEEPER_DRAIN_S >= nlb.INTERVAL_S * nlb.UNHEALTHY_THRESHOLD
    assert nlb.GATEKEEPER_STOP_S > nlb.GATEKEEPER_DRAIN_S + 30
    for other in ("common.sls", "proxy.sls", "primary.sls", "monitor.sls"):
        assert "gatekeeper" not in (pillar[other] or {}).get("sqlgate", {}), other


# --- a second up ---------------------------------------------------------------------------

def test_a_second_up_realigns_what_drifted_then_keeps_it(aws_env, cluster_up, capsys):
    """Someone changed the health check and an attribute, deleted a listener and deregistered a
    Gatekeeper (and registered a stranger): up puts each back, says so, and changes nothing the
    next time."""
    elbv2, ec2 = aws_env.client("elbv2"), aws_env.client("ec2")
    first = load_balancing(elbv2)
    groups = {port: first["target_groups"][f"sqlgate-tcp{port}"]["TargetGroupArn"]
              for port in (443, 80)}
    elbv2.modify_target_group(TargetGroupArn=groups[443], HealthCheckIntervalSeconds=30)
    elbv2.modify_target_group_attributes(TargetGroupArn=groups[443], Attributes=[
        {"Key": "proxy_protocol_v2.enabled", "Value": "false"}])
    listener_80 = first["load_balancers"]["sqlgate-nlb"]["listeners"][80][0]
    elbv2.delete_listener(ListenerArn=listener_80)
    gatekeepers = gatekeeper_ids(ec2)
    elbv2.deregister_targets(TargetGroupArn=groups[443], Targets=[{"Id": gatekeepers[1]}])
    stranger = ec2.run_instances(ImageId=NEWEST_JAMMY, MinCount=1, MaxCount=1,
                                 InstanceType="t3.micro")["Instances"][0]["InstanceId"]
    elbv2.register_targets(TargetGroupArn=groups[80], Targets=[{"Id": stranger}])

    code, out, err = up(capsys)
    assert code == 0, err
    assert "target group sqlgate-tcp443: realigned health check; attributes " \
           "proxy_protocol_v2.enabled" in out
    assert "created listener TCP 80" in out
    assert f"target group 443: registered {gatekeepers[1]}" in out
    assert f"target group 80: deregistered {stranger} (no longer a Gatekeeper)" in out
    again = load_balancing(elbv2)
    assert again["target_groups"]["sqlgate-tcp443"]["HealthCheckIntervalSeconds"] == 5
    assert again["target_groups"]["sqlgate-tcp443"]["attributes"][
        "proxy_protocol_v2.enabled"] == "true"
    assert targets(again, 443) == targets(again, 80) == gatekeepers
    assert again["load_balancers"]["sqlgate-nlb"]["listeners"][80][2][0]["TargetGroupArn"] == \
        groups[80]

    code, out, err = up(capsys)
    assert code == 0, err
    assert load_balancing(elbv2) == again
    assert "realigned" not in out and "created" not in out and "registered" not in out
    assert out.count("kept target group") == 2 and out.count("kept listener") == 2


def test_a_replaced_gatekeeper_takes_its_predecessors_place(aws_env, cluster_up, capsys):
    ec2 = aws_env.client("ec2")
    old = live_instances(ec2)["gatekeeper2"]["InstanceId"]
    ec2.terminate_instances(InstanceIds=[old])
    code, out, err = up(capsys)
    assert code == 0, err
    assert "launched gatekeeper2" in out
    new = live_instances(ec2)["gatekeeper2"]["InstanceId"]
    state = load_balancing(aws_env.client("elbv2"))
    assert targets(state, 443) == targets(state, 80) == gatekeeper_ids(ec2)
    assert new in targets(state, 443) and old not in targets(state, 443)


# --- how many Gatekeepers and Proxies --------------------------------------------------------

def test_gatekeepers_and_proxies_are_counted_and_kept_by_the_next_up(aws_env, capsys):
    code, out, err = up(capsys, "--gatekeepers", "3", "--proxies", "1", "--no-monitor")
    assert code == 0, err
    ec2 = aws_env.client("ec2")
    assert sorted(live_instances(ec2)) == ["gatekeeper", "gatekeeper2", "gatekeeper3",
                                           "primary", "proxy", "replica1", "replica2",
                                           "saltmaster"]
    state = load_balancing(aws_env.client("elbv2"))
    assert targets(state, 443) == targets(state, 80) == gatekeeper_ids(ec2)
    assert len(gatekeeper_ids(ec2)) == 3
    recorded = read_record("aws")
    assert [h.name for h in recorded.hosts if h.role == "gatekeeper"] == \
        ["gatekeeper", "gatekeeper2", "gatekeeper3"]
    # Without the flags, the next up keeps what the cluster was made with.
    code, out, err = up(capsys, "--no-monitor")
    assert code == 0, err
    assert "nothing launched" in out and "3 Gatekeeper(s)" in out


def test_scale_launches_and_terminates_hosts_and_keeps_the_targets_the_gatekeepers(aws_env,
                                                                                  cluster_up,
                                                                                  capsys):
    """``scale`` to three of each and back: the instances of the third ones launched, then
    terminated; the NLB's targets are the Gatekeepers each time; the master's tag names its
    minions, so the next ``up`` takes the cluster as it is (moto runs no Salt: the
    orchestration is skipped, with a line that says so)."""
    ec2 = aws_env.client("ec2")
    scale = ("scale", "--admin-cidr", ADMIN_CIDR)
    code, out, err = run(capsys, *scale, "--gatekeepers", "3", "--proxies", "3",
                         "--replicas", "3")
    assert code == 0, err
    assert "scale: adding gatekeeper3, proxy3, replica3" in out
    assert "skipping the wait for running instances and the orchestration" in out
    hosts = live_instances(ec2)
    assert {"gatekeeper3", "proxy3", "replica3"} <= set(hosts)
    state = load_balancing(aws_env.client("elbv2"))
    assert targets(state, 443) == targets(state, 80) == gatekeeper_ids(ec2)
    assert len(gatekeeper_ids(ec2)) == 3
    assert res.tag_value(hosts["saltmaster"], res.MINIONS_TAG).split(",") == [
        "gatekeeper", "gatekeeper2", "gatekeeper3", "proxy", "proxy2", "proxy3", "primary",
        "replica1", "replica2", "replica3", "monitor"]
    assert {h.name for h in read_record("aws").hosts} >= {"gatekeeper3", "proxy3", "replica3"}
    code, out, err = up(capsys)  # the master's minions match: nothing to refuse or launch
    assert code == 0, err
    assert "nothing launched" in out

    code, out, err = run(capsys, *scale, "--gatekeepers", "2", "--proxies", "2",
                         "--replicas", "2")
    assert code == 0, err
    assert "scale: removing gatekeeper3, proxy3, replica3" in out
    assert "terminated gatekeeper3, proxy3, replica3" in out
    hosts = live_instances(ec2)
    assert not {"gatekeeper3", "proxy3", "replica3"} & set(hosts)
    state = load_balancing(aws_env.client("elbv2"))
    assert targets(state, 443) == targets(state, 80) == gatekeeper_ids(ec2)
    assert len(gatekeeper_ids(ec2)) == 2
    assert not {"gatekeeper3", "proxy3", "replica3"} & {h.name for h in read_record("aws").hosts}
    code, out, err = run(capsys, *scale)  # the same numbers again: nothing to do
    assert code == 0, err
    assert "every role already has that many hosts" in out
    assert live_instances(ec2).keys() == hosts.keys()


def test_at_least_one_gatekeeper(aws_env, capsys):
    code, _, err = up(capsys, "--gatekeepers", "0")
    assert code == 2 and "--gatekeepers 0: a cluster needs at least one Gatekeeper" in err
    assert load_balancing(aws_env.client("elbv2"))["load_balancers"] == {}


# --- status and down -----------------------------------------------------------------------

def test_status_shows_the_nlb_and_each_gatekeepers_health(aws_env, cluster_up, capsys):
    code, out, err = run(capsys, "status")
    assert code == 0, err
    dns = read_record("aws").provider_data["load_balancer_dns"]
    assert f"network load balancer sqlgate-nlb (active): {dns}" in out
    for port in (443, 80):
        assert f"  port {port}: gatekeeper healthy, gatekeeper2 healthy" in out


def test_down_removes_the_nlb_its_listeners_and_target_groups(aws_env, cluster_up, capsys):
    code, out, err = run(capsys, "down")
    assert code == 0, err
    assert load_balancing(aws_env.client("elbv2")) == {"load_balancers": {}, "target_groups": {}}
    assert "deleted network load balancer sqlgate-nlb" in out
    assert "deleted target group sqlgate-tcp443" in out and \
        "deleted target group sqlgate-tcp80" in out
    assert aws_env.client("ec2").describe_security_groups(Filters=[
        {"Name": f"tag:{res.CLUSTER_TAG}", "Values": [CLUSTER_NAME]}])["SecurityGroups"] == []


def test_another_clusters_load_balancer_is_left_alone(aws_env, cluster_up, capsys):
    ec2, elbv2 = aws_env.client("ec2"), aws_env.client("elbv2")
    subnet = next(iter(live_instances(ec2).values()))["SubnetId"]
    theirs = [{"Key": res.CLUSTER_TAG, "Value": "other"}]
    elbv2.create_load_balancer(Name="other-nlb", Type="network", Subnets=[subnet], Tags=theirs)
    vpc = ec2.describe_subnets(SubnetIds=[subnet])["Subnets"][0]["VpcId"]
    elbv2.create_target_group(Name="other-tcp443", Protocol="TCP", Port=443, VpcId=vpc,
                              TargetType="instance", Tags=theirs)
    code, _, err = run(capsys, "down")
    assert code == 0, err
    state = load_balancing(elbv2)
    assert list(state["load_balancers"]) == ["other-nlb"]
    assert list(state["target_groups"]) == ["other-tcp443"]


@pytest.mark.parametrize("cluster_name", ["sqlgate", "My_Cluster.prod--eu", "x" * 60, "--"])
def test_names_are_ones_elb_accepts(cluster_name):
    """At most 32 letters, digits and single hyphens, no hyphen at either end."""
    aws = res.Aws(None, REGION, "123456789012", cluster_name)
    for name in (nlb.load_balancer_name(aws), *(nlb.target_group_name(aws, p.port)
                                               for p in nlb.PUBLIC_PORTS)):
        assert len(name) <= 32 and re.fullmatch(r"[A-Za-z0-9]+(-[A-Za-z0-9]+)*", name), name
