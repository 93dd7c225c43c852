"""Providers are found as subpackages of ``cluster.providers`` and share one interface."""

from __future__ import annotations

import subprocess
import sys

import bootstrap
from cluster.providers import Provider, providers
from cluster.state import PROJECT_ROOT


def test_every_subpackage_is_a_provider_with_its_own_options():
    found = providers()
    assert set(found) == {"aws", "local"}
    for name, provider in found.items():
        assert issubclass(provider, Provider) and provider.name == name
    args = bootstrap.build_parser().parse_args(["up", "--provider", "local", "--subnet",
                                                "10.9.0.0/24", "--region", "eu-west-1"])
    # No --replicas: the cluster's number, or plan_hosts' default (2) for a new one.
    assert (args.subnet, args.region, args.replicas) == ("10.9.0.0/24", "eu-west-1", None)


def test_the_command_line_loads_no_cloud_or_salt_library():
    """``bootstrap.py --help`` and ``--provider local`` should not pay for boto3 or Salt."""
    probe = ("import sys, bootstrap; bootstrap.build_parser(); "
             "print(sorted(m for m in ('boto3', 'botocore', 'salt') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "[]"
