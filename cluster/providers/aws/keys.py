"""Key material made on the operator's machine before anything is launched.

Generating the keys here is what lets the cluster come up with no manual step and no
trust-on-first-use:

* each minion's Salt key pair: the master is pre-seeded with exactly these public keys
  (``auto_accept`` stays off, so an unknown minion is never accepted), and each minion gets its
  private key in its own user data;
* the Salt master's key pair: every minion is pre-seeded with the master's public key, so a
  minion never trusts another master;
* the master's SSH host key and the admin SSH key: ``status`` reaches the master over SSH with a
  known_hosts line written here, not learnt on first connection.

Everything is kept (mode 0600) under ``.cluster/aws/`` and reused by a second ``up``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cluster.salt_setup import KeyPair, SaltKeys, load_or_make


def _ssh_pair(comment: str) -> KeyPair:
    """An ed25519 pair in OpenSSH formats (private key file, ``ssh-ed25519 AAAA... comment``)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return KeyPair(private, f"{public} {comment}\n")


@dataclass(frozen=True)
class ClusterKeys:
    salt: SaltKeys
    ssh_host: KeyPair
    admin: KeyPair
    admin_key_file: Path

    @property
    def master(self) -> KeyPair:
        return self.salt.master

    @property
    def minions(self) -> dict[str, KeyPair]:
        return self.salt.minions

    @classmethod
    def load_or_create(cls, directory: Path, minion_ids: list[str],
                       cluster_name: str) -> ClusterKeys:
        salt_dir, ssh_dir = directory / "salt-pki", directory / "ssh"
        return cls(
            salt=SaltKeys.load_or_create(salt_dir, minion_ids),
            ssh_host=load_or_make(ssh_dir, "master_host_ed25519",
                                  lambda: _ssh_pair(f"{cluster_name}-saltmaster")),
            admin=load_or_make(ssh_dir, "admin_ed25519",
                               lambda: _ssh_pair(f"{cluster_name}-admin")),
            admin_key_file=ssh_dir / "admin_ed25519.pem",
        )


def known_hosts_line(address: str, host_key: KeyPair) -> str:
    """The known_hosts entry that pins the master's pre-generated host key."""
    key_type, key_body = host_key.public.split()[:2]
    return f"{address} {key_type} {key_body}\n"
