"""A moto server in a subprocess on a free 127.0.0.1 port, and an environment that can only reach
it: fake credentials, no profile files, no instance metadata, ``AWS_ENDPOINT_URL`` set.

A pytest plugin (``tests/conftest.py`` registers it): any test may ask for ``aws_env`` or
``moto_server``; the server starts once, the first time one does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

REPO = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
ADMIN_CIDR = "203.0.113.7/32"

# Canonical's images as moto will list them (moto ships no 22.04 image, and has no SSM public
# parameter for it, so ``up`` takes the describe_images fallback and must pick the newest).
UBUNTU_IMAGES = [
    ("ami-0a0a0a0a0a0a0a0a1", "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20240101",
     "2024-01-01T00:00:00.000Z"),
    ("ami-0b0b0b0b0b0b0b0b2", "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20250301",
     "2025-03-01T00:00:00.000Z"),
    ("ami-0c0c0c0c0c0c0c0c3", "ubuntu/images/hvm-ssd/ubuntu-focal-20.04-amd64-server-20260101",
     "2026-01-01T00:00:00.000Z"),
]
NEWEST_JAMMY = "ami-0b0b0b0b0b0b0b0b2"


def _amis_file(path: Path) -> Path:
    path.write_text(json.dumps([
        {"ami_id": ami, "name": name, "creation_date": created, "state": "available",
         "public": True, "owner_id": "099720109477", "image_location": f"099720109477/{name}",
         "root_device_type": "ebs", "root_device_name": "/dev/sda1", "image_type": "machine",
         "architecture": "x86_64", "virtualization_type": "hvm", "hypervisor": "xen",
         "description": "Canonical, Ubuntu", "sriov": "simple"}
        for ami, name, created in UBUNTU_IMAGES
    ]))
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class MotoServer:
    url: str
    process: subprocess.Popen

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass


def _wait_ready(url: str, process: subprocess.Popen, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"moto_server did not answer on {url} within {deadline_s}s")


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory) -> Iterator[MotoServer]:
    """``moto_server -H 127.0.0.1 -p PORT``, stopped (by its pid) at the end of the session."""
    amis = _amis_file(tmp_path_factory.mktemp("moto") / "amis.json")
    port = _free_port()
    env = {**os.environ, "MOTO_AMIS_PATH": str(amis)}
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    moto = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    server = MotoServer(f"http://127.0.0.1:{port}", process)
    try:
        _wait_ready(server.url, process, 30)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def fake_aws_environment(endpoint: str, cluster_dir: Path) -> dict[str, str]:
    """Variables that point boto3 (in this process or a child) at moto and nowhere else."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(cluster_dir / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(cluster_dir / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "SQLGATE_CLUSTER_DIR": str(cluster_dir),
    }


AWS_VARIABLES_TO_DROP = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION",
                         "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                         "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE",
                         "AWS_ROLE_ARN")


@dataclass
class AwsEnv:
    endpoint: str
    cluster_dir: Path
    variables: dict[str, str]

    def client(self, service: str, region: str = REGION):
        return boto3.client(service, region_name=region, endpoint_url=self.endpoint)

    def subprocess_env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items()
                if k not in AWS_VARIABLES_TO_DROP and not k.startswith("AWS_ENDPOINT_URL_")}
        return {**base, **self.variables}


@pytest.fixture
def aws_env(moto_server, tmp_path, monkeypatch) -> AwsEnv:
    """A fresh moto state and a private ``.cluster`` directory for one test."""
    moto_server.reset()
    cluster_dir = tmp_path / "cluster"
    variables = fake_aws_environment(moto_server.url, cluster_dir)
    for name in AWS_VARIABLES_TO_DROP:
        monkeypatch.delenv(name, raising=False)
    for name in [k for k in os.environ if k.startswith("AWS_ENDPOINT_URL_")]:
        monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return AwsEnv(moto_server.url, cluster_dir, variables)


def run_bootstrap(capsys, *argv: str) -> tuple[int, str, str]:
    """``bootstrap.py ... --provider aws`` in this process (the environment points at moto):
    its exit code, standard output and standard error."""
    import bootstrap

    code = bootstrap.main([*argv, "--provider", "aws"])
    out, err = capsys.readouterr()
    return code, out, err


def bootstrap_up(capsys, *extra: str) -> tuple[int, str, str]:
    return run_bootstrap(capsys, "up", "--admin-cidr", ADMIN_CIDR, *extra)


def load_balancing(elbv2) -> dict:
    """Everything Elastic Load Balancing holds in the region, comparable between two calls:
    each load balancer with its tags and listeners, each target group with its tags,
    attributes and targets."""
    def tags(arn: str) -> dict[str, str]:
        described = elbv2.describe_tags(ResourceArns=[arn])["TagDescriptions"][0]
        return {t["Key"]: t["Value"] for t in described.get("Tags", [])}

    balancers = {}
    for lb in elbv2.describe_load_balancers()["LoadBalancers"]:
        arn = lb["LoadBalancerArn"]
        listeners = elbv2.describe_listeners(LoadBalancerArn=arn)["Listeners"]
        balancers[lb["LoadBalancerName"]] = {
            **{k: lb.get(k) for k in ("LoadBalancerArn", "DNSName", "Type", "Scheme", "VpcId",
                                      "SecurityGroups", "IpAddressType")},
            "subnets": sorted(z["SubnetId"] for z in lb.get("AvailabilityZones", [])),
            "tags": tags(arn),
            "listeners": {ls["Port"]: (ls["ListenerArn"], ls["Protocol"], ls["DefaultActions"])
                          for ls in listeners},
        }
    groups = {}
    for group in elbv2.describe_target_groups()["TargetGroups"]:
        arn = group["TargetGroupArn"]
        health = elbv2.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
        groups[group["TargetGroupName"]] = {
            **group,
            "tags": tags(arn),
            "attributes": {a["Key"]: a["Value"] for a in elbv2.describe_target_group_attributes(
                TargetGroupArn=arn)["Attributes"]},
            "targets": sorted((d["Target"]["Id"], d["Target"].get("Port")) for d in health),
        }
    return {"load_balancers": balancers, "target_groups": groups}
