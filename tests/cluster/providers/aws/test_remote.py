"""What ``status`` on AWS relies on locally: the SSH key files are usable by OpenSSH, the master's
host key is pinned, and the replica status is read under both MySQL's and MariaDB's names."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from cluster.providers.aws.keys import ClusterKeys
from cluster.providers.aws.remote import (
    MASTER_ALIAS,
    role_services,
    ssh_command,
    write_known_hosts,
)
from cluster.record import ClusterRecord
from cluster.topology import GROUP_OF_ROLE

needs_ssh_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None,
                                      reason="ssh-keygen is not installed")


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> ClusterKeys:
    return ClusterKeys.load_or_create(tmp_path_factory.mktemp("aws"), ["replica1"], "sqlgate")


@needs_ssh_keygen
def test_admin_key_is_an_openssh_key_matching_its_public_half(keys):
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(keys.admin_key_file)],
                             capture_output=True, text=True, check=True).stdout
    assert derived.split()[:2] == keys.admin.public.split()[:2]


@needs_ssh_keygen
def test_known_hosts_pins_the_masters_host_key(keys, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    write_known_hosts(known_hosts, keys)
    found = subprocess.run(["ssh-keygen", "-F", MASTER_ALIAS, "-f", str(known_hosts)],
                           capture_output=True, text=True)
    assert found.returncode == 0
    assert keys.ssh_host.public.split()[1] in found.stdout


def test_keys_are_reused(keys, tmp_path_factory):
    again = ClusterKeys.load_or_create(keys.admin_key_file.parent.parent, ["replica1"], "sqlgate")
    assert again == keys


def test_ssh_refuses_unknown_host_keys():
    recorded = ClusterRecord(
        provider="aws", cluster_name="sqlgate", gatekeeper_url=None, api_key="k",
        provider_data={"known_hosts_file": "/x/known_hosts", "ssh_key_file": "/x/admin.pem",
                       "ssh_user": "ubuntu"})
    command = ssh_command(recorded, "198.51.100.1", ["sudo", "salt", "-L", "a,b", "test.ping"])
    assert command[0] == "ssh"
    assert "StrictHostKeyChecking=yes" in command and f"HostKeyAlias={MASTER_ALIAS}" in command
    assert command[command.index("-i") + 1] == "/x/admin.pem"
    assert command[-2:] == ["ubuntu@198.51.100.1", "sudo salt -L a,b test.ping"]


def test_every_minion_role_has_a_service():
    services = role_services()
    assert set(services) == set(GROUP_OF_ROLE) - {"saltmaster"}
    assert services["primary"] == services["replica"] == "mysql"
