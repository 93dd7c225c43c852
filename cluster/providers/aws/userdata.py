"""Cloud-init user data for the Salt master and the minions.

The user data is a ``#cloud-config`` document built as a dict and dumped with PyYAML, so it is
valid YAML by construction; the shell it runs lives in ``cluster/templates/aws-*.sh`` (checked
with ``bash -n`` by the tests) and reads its settings from ``/etc/sqlgate/bootstrap.env``.

The master's user data holds no secret besides short-lived presigned URLs to fetch the bundle
and then delete it from S3; a minion's holds its own Salt private key. User data is readable
through the instance metadata service, so ``bootcmd`` blocks the metadata service for every user
but root on each boot.
"""

from __future__ import annotations

import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import yaml

from cluster import salt_setup
from cluster.providers.aws.keys import ClusterKeys
from cluster.state import PROJECT_ROOT
from cluster.topology import SALT_PORTS

TEMPLATES = Path(__file__).resolve().parent / "templates"
USER_DATA_LIMIT = 16 * 1024  # EC2 refuses larger user data (before base64)

SALT_REPO_URL = "https://packages.broadcom.com/artifactory/saltproject-deb"
SALT_REPO_KEY_URL = (
    "https://packages.broadcom.com/artifactory/api/security/keypair/SaltProjectKey/public"
)
SALT_EXTENSIONS = ("saltext.mysql", "PyMySQL")  # what the mysql_* states need on a minion
MINION_WAIT_SECONDS = 30 * 60  # the master waits this long for every minion to answer
MASTER_WAIT_SECONDS = 30 * 60  # a minion waits this long for the master to listen
# If the minion process gives up on an unreachable master, systemd starts it again.
MINION_RESTART_DROPIN = "[Service]\nRestart=always\nRestartSec=10\n"

BLOCK_METADATA_FOR_USERS = [
    "iptables", "-I", "OUTPUT", "-d", "169.254.169.254", "-m", "owner", "!", "--uid-owner", "0",
    "-j", "REJECT",
]


def deploy_pins(pyproject: Path = PROJECT_ROOT / "pyproject.toml") -> dict[str, str]:
    """``name -> version`` of the ``deploy`` extra: the one place Salt's version is pinned."""
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    return dict(req.split("==", 1) for req in extras["deploy"])


def salt_version() -> str:
    return deploy_pins()["salt"]


def _env_file(settings: dict[str, str]) -> str:
    """A shell-sourceable file: every value quoted."""
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in sorted(settings.items()))


def _common_settings() -> dict[str, str]:
    pins = deploy_pins()
    return {
        "SALT_VERSION": pins["salt"],
        "SALT_REPO_URL": SALT_REPO_URL,
        "SALT_REPO_KEY_URL": SALT_REPO_KEY_URL,
        "SALT_PIP_REQUIREMENTS": " ".join(f"{name}=={pins[name]}" for name in SALT_EXTENSIONS),
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (scripts, keys) as ``|`` blocks: user data a person can read."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _file(path: str, content: str, permissions: str = "0644") -> dict:
    return {"path": path, "content": content, "permissions": permissions, "owner": "root:root"}


def _cloud_config(hostname: str, files: list[dict], script: str, extra: dict | None = None) -> str:
    """The document both kinds of host share: hostname, swap, IMDS lockdown, files, the script."""
    config = {
        "hostname": hostname,
        "preserve_hostname": False,
        # 1 GiB of swap: MySQL and the Salt daemons on a 1 GiB t3.micro.
        "swap": {"filename": "/swap.img", "size": 1024**3, "maxsize": 1024**3},
        "bootcmd": [BLOCK_METADATA_FOR_USERS],
        "write_files": [
            _file("/usr/local/lib/sqlgate/common.sh", (TEMPLATES / "aws-common.sh").read_text()),
            _file("/usr/local/sbin/sqlgate-bootstrap", (TEMPLATES / script).read_text(), "0755"),
            *files,
        ],
        "runcmd": [["/usr/local/sbin/sqlgate-bootstrap"]],
        **(extra or {}),
    }
    text = "#cloud-config\n" + yaml.dump(config, Dumper=_Dumper, sort_keys=False, width=1000)
    if len(text.encode()) > USER_DATA_LIMIT:
        raise ValueError(f"user data for {hostname} is {len(text)} bytes, over EC2's 16 KB")
    return text


@dataclass(frozen=True)
class MasterBoot:
    bundle_url: str
    bundle_delete_url: str
    bundle_sha256: str
    minion_ids: list[str]


def master_user_data(boot: MasterBoot, keys: ClusterKeys) -> str:
    """The Salt master: fetch the bundle, wait for the minions, run the orchestration."""
    settings = {
        **_common_settings(),
        "BUNDLE_URL": boot.bundle_url,
        "BUNDLE_DELETE_URL": boot.bundle_delete_url,
        "BUNDLE_SHA256": boot.bundle_sha256,
        "MINION_IDS": ",".join(boot.minion_ids),
        "MINION_WAIT_SECONDS": str(MINION_WAIT_SECONDS),
    }
    host_key = keys.ssh_host
    return _cloud_config(
        "saltmaster",
        [_file("/etc/sqlgate/bootstrap.env", _env_file(settings), "0600")],
        "aws-master.sh",
        # The pre-generated host key: bootstrap.py pins it in its known_hosts for ``status``.
        {"ssh_keys": {"ed25519_private": host_key.private, "ed25519_public": host_key.public},
         "ssh_deletekeys": True},
    )


def minion_user_data(minion_id: str, master_address: str, keys: ClusterKeys) -> str:
    """A minion: its own key pair and the master's public key, then install Salt."""
    settings = {**_common_settings(), "MINION_ID": minion_id, "MASTER_ADDRESS": master_address,
                "MASTER_PORT": str(SALT_PORTS[1]), "MASTER_WAIT_SECONDS": str(MASTER_WAIT_SECONDS)}
    salt_files = salt_setup.minion_files(keys.salt, minion_id,
                                         salt_setup.minion_config(minion_id, master_address))
    return _cloud_config(
        minion_id,
        [
            _file("/etc/sqlgate/bootstrap.env", _env_file(settings), "0600"),
            *(_file(item.path, item.content, f"{item.mode:04o}") for item in salt_files),
            _file("/etc/systemd/system/salt-minion.service.d/restart.conf",
                  MINION_RESTART_DROPIN),
        ],
        "aws-minion.sh",
    )
