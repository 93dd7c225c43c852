#!/usr/bin/env python3
"""Launch the cluster's hosts and let Salt configure them.

    python bootstrap.py up     [--provider aws|local] [--replicas N] ...
    python bootstrap.py status [--provider aws|local]
    python bootstrap.py down   [--provider aws|local]

Each provider is a subpackage of ``cluster.providers`` offering ``up``, ``status`` and ``down``;
their errors reach the user as one line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from cluster.errors import run_command
from cluster.providers import Provider, providers

DEFAULT_PROVIDER = "aws"


def build_parser(known: dict[str, type[Provider]] | None = None) -> argparse.ArgumentParser:
    known = known or providers()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "status", "down"))
    parser.add_argument("--provider", choices=sorted(known), default=DEFAULT_PROVIDER,
                        help=f"where the hosts run (default: {DEFAULT_PROVIDER})")
    parser.add_argument("--cluster-name", default="sqlgate",
                        help="name used for tags, namespaces and the cluster file")
    parser.add_argument("--replicas", type=int, default=2, help="number of DB replicas")
    for name, provider in known.items():
        provider.add_arguments(parser.add_argument_group(f"{name} provider",
                                                         provider.description))
    return parser


def main(argv: list[str] | None = None) -> int:
    known = providers()
    args = build_parser(known).parse_args(argv)
    provider = known[args.provider]()
    return run_command(getattr(provider, args.command), args)


if __name__ == "__main__":
    sys.exit(main())
