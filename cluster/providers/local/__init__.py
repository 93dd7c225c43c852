"""The local provider: the cluster on this machine, one network-namespace host per VM, with a
real Salt master and minions (see ``commands``)."""

from __future__ import annotations

import argparse

from cluster.providers import Provider


class LocalProvider(Provider):
    name = "local"
    commands = "cluster.providers.local.commands"
    description = "network-namespace hosts on this machine (needs root)"

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--subnet", default="10.213.0.0/24",
                           help="private subnet of the local 'VPC' bridge")


PROVIDER = LocalProvider
