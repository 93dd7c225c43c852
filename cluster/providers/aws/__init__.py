"""The AWS provider: EC2 hosts in the default VPC, configured by the same Salt tree (see
``provider``; boto3 is imported only when a command runs)."""

from __future__ import annotations

import argparse

from cluster.providers import Provider


class AwsProvider(Provider):
    name = "aws"
    commands = "cluster.providers.aws.commands"
    description = "EC2 instances in the default VPC of an AWS account"

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--region",
                           help="AWS region (default: the profile's or AWS_DEFAULT_REGION)")
        group.add_argument("--profile", help="AWS credentials profile")
        group.add_argument("--instance-type", default="t3.micro")
        group.add_argument("--key-name", help="EC2 key pair for SSH (optional)")
        group.add_argument("--admin-cidr",
                           help="address allowed to SSH (default: detected public IP)")
        group.add_argument("--dry-run", action="store_true", help="print what would be created")
        group.add_argument("--wait-minutes", type=int, default=40,
                           help="how long up waits for the Gatekeeper's /health (default: 40)")


PROVIDER = AwsProvider
