#!/usr/bin/env python3
"""Launch the cluster's hosts and let Salt configure them.

    python bootstrap.py up     [--provider aws|local] [--replicas N] [--gatekeepers N]
                               [--proxies M] [--tls-cert F --tls-key F] [--no-monitor]
    python bootstrap.py status [--provider aws|local]
    python bootstrap.py down   [--provider aws|local]
    python bootstrap.py keys   list|add NAME|revoke NAME [--scope S] [--rate R] [--burst B]
                               [--apply] [--provider aws|local]
    python bootstrap.py failover   [--force] [--provider aws|local]
    python bootstrap.py switchover [--to HOST] [--provider aws|local]
    python bootstrap.py rebuild HOST [--provider aws|local]
    python bootstrap.py restart --rolling [--provider aws|local]
    python bootstrap.py scale  [--gatekeepers N] [--proxies M] [--replicas R]
                               [--provider aws|local]
    python bootstrap.py salt [--provider aws|local] TARGET FUNCTION [ARGS...]

Each provider is a subpackage of ``cluster.providers`` offering ``up``, ``status``, ``down``,
``keys``, ``failover``, ``switchover``, ``rebuild`` (these three run the failover runner on the
Salt master: docs/failover.md), ``restart`` (the rolling restart, a Salt orchestration) and
``scale`` (hosts added and removed under load, a Salt orchestration) and ``salt`` (any Salt
command on the master); their errors reach
the user as one line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from cluster.errors import run_command
from cluster.keys import DEFAULT_BURST, DEFAULT_RATE, DEFAULT_SCOPE
from cluster.providers import Provider, providers
from services.contract import SCOPES

DEFAULT_PROVIDER = "aws"
COMMANDS = {
    "up": "launch (or complete) the cluster and configure it through Salt",
    "status": "the hosts, their services and replication",
    "down": "remove everything up made",
    "keys": "list, add or revoke the cluster's API keys",
    "failover": "fail over from a failed primary now (the operator's run of what the reactor "
                "does; no anti-flap wait)",
    "switchover": "make a replica the primary, planned: no acknowledged write is lost",
    "rebuild": "make a quarantined database node a fresh replica of the current primary",
    "restart": "restart the Proxy and Gatekeeper hosts one at a time (--rolling), through Salt, "
               "with no request failing",
    "scale": "add or remove Gatekeepers, Proxies and replicas on the running cluster, under "
             "load, through Salt (a role not named keeps its number)",
    "salt": "run a Salt command on the cluster's master, e.g. salt '*' state.highstate",
}


def _common(parser: argparse.ArgumentParser, known: dict[str, type[Provider]]) -> None:
    parser.add_argument("--provider", choices=sorted(known), default=DEFAULT_PROVIDER,
                        help=f"where the hosts run (default: {DEFAULT_PROVIDER})")
    parser.add_argument("--cluster-name", default="sqlgate",
                        help="name used for tags, namespaces and the cluster file")
    parser.add_argument("--replicas", type=int, default=None, metavar="R",
                        help="number of database replicas (default: 2, or as many as the "
                             "cluster has)")
    parser.add_argument("--gatekeepers", type=int, default=None, metavar="N",
                        help="number of Gatekeeper hosts, behind the balancer (default: 1 "
                             "locally; on AWS 2, or as many as the cluster has)")
    parser.add_argument("--proxies", type=int, default=None, metavar="M",
                        help="number of Proxy hosts, each Gatekeeper using all (default: 1 "
                             "locally; on AWS 2, or as many as the cluster has)")
    for name, provider in known.items():
        provider.add_arguments(parser.add_argument_group(f"{name} provider",
                                                         provider.description))


def _up_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "public certificate", "the Gatekeeper's HTTPS certificate; by default one signed by "
        "the cluster's own CA (see the record's ca_file)")
    group.add_argument("--tls-cert", metavar="FILE",
                       help="your certificate for the public endpoint (full chain, PEM), e.g. "
                            "Let's Encrypt's fullchain.pem; kept for the next ups")
    group.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    parser.add_argument("--no-monitor", action="store_true",
                        help="no monitor host: no Prometheus, no exporters, no metrics ports "
                             "and no firewall rule for them")


def _keys_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "add", "revoke"))
    parser.add_argument("name", nargs="?", help="the key's name (add, revoke)")
    parser.add_argument("--scope", choices=SCOPES, default=DEFAULT_SCOPE,
                        help=f"what the key may do (add; default: {DEFAULT_SCOPE})")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE,
                        help=f"requests per second, 0 = unlimited (add; default: "
                             f"{DEFAULT_RATE:g})")
    parser.add_argument("--burst", type=int, default=DEFAULT_BURST,
                        help=f"the most requests at once: the bucket's size (add; default: "
                             f"{DEFAULT_BURST})")
    parser.add_argument("--apply", action="store_true",
                        help="apply the key set to the running Gatekeeper now (through Salt), "
                             "instead of at the next up")


def build_parser(known: dict[str, type[Provider]] | None = None) -> argparse.ArgumentParser:
    known = known or providers()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     title="commands")
    for command, summary in COMMANDS.items():
        sub = commands.add_parser(command, help=summary, description=summary)
        if command == "keys":
            _keys_options(sub)
        _common(sub, known)
        if command == "up":
            _up_options(sub)
        elif command == "failover":
            sub.add_argument("--force", action="store_true",
                             help="promote even while a replica cannot be asked (it may hold "
                                  "the only copy of an acknowledged write)")
        elif command == "switchover":
            sub.add_argument("--to", metavar="HOST",
                             help="the replica to promote (default: the most advanced)")
        elif command == "restart":
            sub.add_argument("--rolling", action="store_true", required=True,
                             help="one host at a time, each drained first (the only way)")
        elif command == "rebuild":
            sub.add_argument("host", help="the quarantined database host")
        elif command == "salt":
            sub.add_argument("target", help="the minions, as salt takes them ('*', a host)")
            sub.add_argument("function", help="the execution function, e.g. state.highstate")
            sub.add_argument("arguments", nargs=argparse.REMAINDER,
                             help="its arguments and salt's own options, as salt takes them "
                                  "(bootstrap.py's options go before TARGET)")
    return parser


def main(argv: list[str] | None = None) -> int:
    known = providers()
    args = build_parser(known).parse_args(argv)
    provider = known[args.provider]()
    return run_command(getattr(provider, args.command), args)


if __name__ == "__main__":
    sys.exit(main())
