"""The AWS provider's secure defaults against a moto server: the public name (the Network Load
Balancer's, which the Gatekeepers' certificates name; an older version's Elastic IP released),
HTTPS in the record, the metadata endpoints turned off once the cluster is healthy, and key sets
carried to a running master (second ``up``, ``keys --apply``) with hashes only.

The steps that need real machines are skipped against moto; the tests that follow them make the
provider take moto for AWS and stand in for the Gatekeeper's /health and for SSH to the master.
"""

from __future__ import annotations

import io
import re
import tarfile

import pytest
import yaml
from cryptography import x509

from cluster.keys import hash_secret
from cluster.pki import CertificateAuthority, covers
from cluster.providers.aws import commands as aws_provider
from cluster.providers.aws import resources as res
from cluster.record import read_record
from cluster.salt_setup import OrchestrationResult
from tests.aws_moto import REGION
from tests.aws_moto import bootstrap_up as up
from tests.aws_moto import run_bootstrap as run

CLUSTER_NAME = "sqlgate"


def live_instances(ec2) -> dict[str, dict]:
    pages = ec2.describe_instances(Filters=[
        {"Name": f"tag:{res.CLUSTER_TAG}", "Values": [CLUSTER_NAME]},
        {"Name": "instance-state-name", "Values": res.LIVE_STATES}])
    return {res.host_of(i): i for r in pages["Reservations"] for i in r["Instances"]}


def cluster_addresses(ec2) -> list[dict]:
    return ec2.describe_addresses(Filters=[
        {"Name": f"tag:{res.CLUSTER_TAG}", "Values": [CLUSTER_NAME]}])["Addresses"]


def pillar_of(bundle: bytes) -> dict[str, str]:
    """The pillar files of a bundle, by path under the pillar root."""
    prefix = "srv/sqlgate/pillar/"
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        return {m.name.removeprefix(prefix): tar.extractfile(m).read().decode()
                for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()}


def uploaded_bundle(aws_env) -> bytes:
    aws = aws_provider.connect(CLUSTER_NAME, REGION, None)
    return aws_env.client("s3").get_object(Bucket=res.bucket_name(aws),
                                           Key=res.BUNDLE_KEY)["Body"].read()


def gatekeeper_keys(bundle: bytes) -> list[dict]:
    return yaml.safe_load(pillar_of(bundle)["sqlgate/gatekeeper.sls"])["sqlgate"]["api_keys"]


def added_secret(out: str) -> str:
    return re.search(r"secret \(shown this once, stored nowhere\): (\S+)", out).group(1)


@pytest.fixture
def cluster_up(aws_env, capsys):
    code, out, err = up(capsys)
    assert code == 0, err
    return out


@pytest.fixture
def on_aws(monkeypatch):
    """moto taken for AWS; the Gatekeeper answers /health (the arguments are kept) unless a
    test says otherwise; SSH to the master is recorded, not made."""
    calls: dict[str, list] = {"health": [], "push": [], "orchestrate": [], "apply": []}
    monkeypatch.setattr(res.Aws, "simulated", property(lambda self: False))
    healthy = {"answer": True}

    def health(url, deadline_s, say, **trust):
        calls["health"].append((url, trust))
        return healthy["answer"]

    monkeypatch.setattr(aws_provider, "wait_for_health", health)
    monkeypatch.setattr(aws_provider, "push_bundle",
                        lambda recorded, address, data: calls["push"].append((address, data)))
    monkeypatch.setattr(aws_provider, "run_orchestration", lambda recorded, address: (
        calls["orchestrate"].append(address) or OrchestrationResult(True, {}, [])))
    monkeypatch.setattr(aws_provider, "apply_states", lambda recorded, address, minions, states: (
        calls["apply"].append((address, minions, states))
        or OrchestrationResult(True, {"gatekeeper": ["sqlgate-gatekeeper-keys"]}, [])))
    calls["healthy"] = healthy  # type: ignore[assignment]
    return calls


# --- the public name and the certificates -------------------------------------------------

def load_balancer_dns(aws_env) -> str:
    (balancer,) = aws_env.client("elbv2").describe_load_balancers()["LoadBalancers"]
    return balancer["DNSName"]


def test_every_gatekeepers_certificate_names_the_load_balancer(aws_env, cluster_up):
    dns = load_balancer_dns(aws_env)
    recorded = read_record("aws")
    assert recorded.gatekeeper_url == f"https://{dns}"
    assert recorded.provider_data["load_balancer_dns"] == dns
    instances = live_instances(aws_env.client("ec2"))
    tls = aws_env.cluster_dir / "aws" / "tls"
    for name in ("gatekeeper", "gatekeeper2"):
        assert covers((tls / "hosts" / f"{name}.crt").read_text(), ["gatekeeper", dns])
        # Its own public address is the instance's (closed to the Internet on 443 and 80).
        assert recorded.host(name).public_address == instances[name]["PublicIpAddress"]
    # The other hosts' private addresses are unknown before launch: their names only.
    for name, role in (("proxy", "proxy"), ("proxy2", "proxy")):
        cert = x509.load_pem_x509_certificate((tls / "hosts" / f"{name}.crt").read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(n.value) for n in names] == list(dict.fromkeys([name, role]))
    assert cluster_addresses(aws_env.client("ec2")) == []  # no Elastic IP any more
    assert "Elastic IP" not in cluster_up


def test_the_bundle_carries_certificates_and_key_hashes_never_key_secrets(aws_env, cluster_up):
    bundle = uploaded_bundle(aws_env)
    pillar = pillar_of(bundle)
    api_key = read_record("aws").api_key
    assert gatekeeper_keys(bundle) == [{"name": "admin", "scope": "admin",
                                        "sha256": hash_secret(api_key), "rate": 0.0,
                                        "burst": 0}]
    assert api_key.encode() not in bundle
    own = yaml.safe_load(pillar["sqlgate/host-gatekeeper.sls"])["sqlgate"]["tls"]
    assert own["cert"] == (aws_env.cluster_dir / "aws/tls/hosts/gatekeeper.crt").read_text()


def test_a_second_up_keeps_the_name_and_the_certificates(aws_env, cluster_up, capsys):
    dns = load_balancer_dns(aws_env)
    certs = {name: (aws_env.cluster_dir / f"aws/tls/hosts/{name}.crt").read_text()
             for name in ("gatekeeper", "gatekeeper2")}
    code, out, err = up(capsys)
    assert code == 0, err
    assert "kept network load balancer" in out
    assert load_balancer_dns(aws_env) == dns
    for name, cert in certs.items():
        assert (aws_env.cluster_dir / f"aws/tls/hosts/{name}.crt").read_text() == cert


def older_elastic_ip(ec2, instance_id: str) -> dict:
    """What an older version made: the one Gatekeeper's Elastic IP, associated with it."""
    address = ec2.allocate_address(Domain="vpc", TagSpecifications=[{
        "ResourceType": "elastic-ip", "Tags": [{"Key": res.CLUSTER_TAG, "Value": CLUSTER_NAME},
                                               {"Key": res.ROLE_TAG, "Value": "gatekeeper"}]}])
    ec2.associate_address(AllocationId=address["AllocationId"], InstanceId=instance_id)
    return address


def test_up_releases_an_older_versions_elastic_ip(aws_env, cluster_up, capsys):
    ec2 = aws_env.client("ec2")
    address = older_elastic_ip(ec2, live_instances(ec2)["gatekeeper"]["InstanceId"])
    code, out, err = up(capsys)
    assert code == 0, err
    assert f"released Elastic IP {address['PublicIp']} of an older version" in out
    assert ec2.describe_addresses()["Addresses"] == []


def test_down_releases_an_older_versions_elastic_ip(aws_env, cluster_up, capsys):
    ec2 = aws_env.client("ec2")
    address = older_elastic_ip(ec2, live_instances(ec2)["gatekeeper"]["InstanceId"])
    code, out, err = run(capsys, "down")
    assert code == 0, err
    assert f"released Elastic IP {address['PublicIp']} (an older version's)" in out
    assert ec2.describe_addresses()["Addresses"] == []


# --- the metadata endpoints --------------------------------------------------------------

def test_metadata_endpoints_go_off_once_the_gatekeeper_is_healthy(aws_env, capsys, on_aws):
    code, out, err = up(capsys)
    assert code == 0, err
    instances = live_instances(aws_env.client("ec2"))
    # The Salt master, eight minions: two Gatekeepers, two Proxies, three databases, the monitor.
    assert len(instances) == 9
    for name, instance in instances.items():
        options = instance["MetadataOptions"]
        assert (options["HttpEndpoint"], options["HttpTokens"]) == ("disabled", "required"), name
    assert "turned the metadata endpoint off on 9 instance(s)" in out
    # /health was asked over HTTPS, checked against the cluster CA, through the load balancer.
    recorded = read_record("aws")
    url, trust = on_aws["health"][0]
    assert url == recorded.gatekeeper_url and url.startswith("https://")
    assert trust["ca_file"] == recorded.ca_file
    assert trust["address"] == recorded.provider_data["load_balancer_dns"]
    assert on_aws["push"] == [] and on_aws["orchestrate"] == []  # the master's boot does it
    assert f"--cacert {recorded.ca_file}" in out


def test_metadata_endpoints_stay_on_while_the_cluster_is_not_healthy(aws_env, capsys, on_aws):
    on_aws["healthy"]["answer"] = False
    code, out, err = up(capsys)
    assert code == 1, err
    for instance in live_instances(aws_env.client("ec2")).values():
        assert instance["MetadataOptions"]["HttpEndpoint"] == "enabled"
    assert "turned the metadata endpoint off" not in out


# --- key sets reaching a running cluster --------------------------------------------------

def test_a_second_up_sends_the_changed_key_set_to_the_running_master(aws_env, capsys,
                                                                     on_aws):
    assert up(capsys)[0] == 0
    code, out, _ = run(capsys, "keys", "add", "ci", "--scope", "write")
    assert code == 0
    secret = added_secret(out)
    assert "the next 'bootstrap.py up' applies" in out
    code, out, err = up(capsys)
    assert code == 0, err
    master = live_instances(aws_env.client("ec2"))["saltmaster"]["PublicIpAddress"]
    assert [address for address, _ in on_aws["push"]] == [master]
    assert on_aws["orchestrate"] == [master]
    bundle = on_aws["push"][0][1]
    keys = {key["name"]: key for key in gatekeeper_keys(bundle)}
    assert keys["ci"] == {"name": "ci", "scope": "write", "sha256": hash_secret(secret),
                          "rate": 50.0, "burst": 100}
    assert set(keys) == {"admin", "ci"}
    assert secret.encode() not in bundle
    assert "no changes" in out


def test_keys_apply_runs_the_gatekeeper_states_through_the_master(aws_env, cluster_up, capsys,
                                                                  on_aws):
    code, out, err = run(capsys, "keys", "add", "reader", "--apply")
    assert code == 0, err
    master = read_record("aws").host("saltmaster").public_address
    assert on_aws["apply"] == [(master, ["gatekeeper", "gatekeeper2"], "sqlgate.gatekeeper")]
    assert "reader" in {key["name"] for key in gatekeeper_keys(on_aws["push"][-1][1])}
    assert "applied" in out
    code, out, err = run(capsys, "keys", "revoke", "reader", "--apply")
    assert code == 0, err
    assert [key["name"] for key in gatekeeper_keys(on_aws["push"][-1][1])] == ["admin"]


def test_keys_apply_without_a_cluster_keeps_the_set_for_the_next_up(aws_env, capsys):
    code, _, err = run(capsys, "keys", "add", "early", "--apply")
    assert code == 2 and "no running cluster" in err
    code, out, _ = run(capsys, "keys", "list")
    assert "early" in out  # saved; the first up deploys it
    assert up(capsys)[0] == 0
    assert "early" in {key["name"] for key in gatekeeper_keys(uploaded_bundle(aws_env))}


# --- the user's own certificate -----------------------------------------------------------

@pytest.fixture
def own_certificate(tmp_path):
    issued = CertificateAuthority.create("someone's").issue("api.example.test")
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    cert.write_text(issued.cert + issued.ca)
    key.write_text(issued.key)
    return cert, key, issued


def test_up_with_the_users_certificate(aws_env, capsys, own_certificate):
    cert, key, issued = own_certificate
    code, _, err = up(capsys, "--tls-cert", str(cert), "--tls-key", str(key))
    assert code == 0, err
    recorded = read_record("aws")
    assert recorded.gatekeeper_url == "https://api.example.test"
    assert recorded.ca_file is None and not (aws_env.cluster_dir / "aws-ca.crt").exists()
    public = yaml.safe_load(pillar_of(uploaded_bundle(aws_env))["sqlgate/gatekeeper.sls"])
    assert public["sqlgate"]["tls"]["gatekeeper_public"]["cert"] == issued.cert + issued.ca
    assert public["sqlgate"]["tls"]["gatekeeper_public"]["key"] == issued.key
    # A later up without the flags keeps it.
    assert up(capsys)[0] == 0
    assert read_record("aws").gatekeeper_url == "https://api.example.test"


def test_a_key_that_is_not_the_certificates_is_refused(aws_env, capsys, own_certificate,
                                                       tmp_path):
    cert, _, _ = own_certificate
    other = tmp_path / "other.key"
    other.write_text(CertificateAuthority.create("x").issue("y").key)
    code, _, err = up(capsys, "--tls-cert", str(cert), "--tls-key", str(other))
    assert code == 2 and err.count("\n") == 1
    assert "is not the key of" in err
    assert live_instances(aws_env.client("ec2")) == {}
