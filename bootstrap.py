#!/usr/bin/env python3
"""Launch the cluster's hosts and let Salt configure them.

    python bootstrap.py up     [--provider aws|local] [--replicas N] ...
    python bootstrap.py status [--provider aws|local]
    python bootstrap.py down   [--provider aws|local]

Each provider lives in its own module of the ``cluster`` package and offers ``up``, ``status``
and ``down`` taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

PROVIDERS = {"aws": "cluster.aws", "local": "cluster.local"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "status", "down"))
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="aws",
                        help="where the hosts run (default: aws)")
    parser.add_argument("--cluster-name", default="sqlgate",
                        help="name used for tags, namespaces and the cluster file")
    parser.add_argument("--replicas", type=int, default=2, help="number of DB replicas")

    local = parser.add_argument_group("local provider")
    local.add_argument("--subnet", default="10.213.0.0/24",
                       help="private subnet of the local 'VPC' bridge")

    aws = parser.add_argument_group("aws provider")
    aws.add_argument("--region", help="AWS region (default: the profile's or AWS_DEFAULT_REGION)")
    aws.add_argument("--profile", help="AWS credentials profile")
    aws.add_argument("--instance-type", default="t3.micro")
    aws.add_argument("--key-name", help="EC2 key pair for SSH (optional)")
    aws.add_argument("--admin-cidr", help="address allowed to SSH (default: detected public IP)")
    aws.add_argument("--dry-run", action="store_true", help="print what would be created")
    aws.add_argument("--wait-minutes", type=int, default=40,
                     help="how long up waits for the Gatekeeper's /health (default: 40)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    provider = importlib.import_module(PROVIDERS[args.provider])
    return getattr(provider, args.command)(args)


if __name__ == "__main__":
    sys.exit(main())
