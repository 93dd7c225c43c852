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

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

SALT_KEY_BITS = 2048  # Salt's own default ``keysize``


@dataclass(frozen=True)
class KeyPair:
    private: str
    public: str


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _load_or_make(directory: Path, name: str, make) -> KeyPair:
    """Read ``name.pem``/``name.pub`` under ``directory`` or create them with ``make()``."""
    private, public = directory / f"{name}.pem", directory / f"{name}.pub"
    if private.exists() and public.exists():
        return KeyPair(private.read_text(), public.read_text())
    pair = make()
    _write_private(private, pair.private)
    _write_private(public, pair.public)
    return pair


def _salt_pair() -> KeyPair:
    """An RSA pair in the formats Salt itself writes (salt.crypt.gen_keys)."""
    import salt.crypt  # heavy: imported only when keys are made

    private, public = salt.crypt.gen_keys(SALT_KEY_BITS)
    return KeyPair(private, public)


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
    master: KeyPair
    minions: dict[str, KeyPair]
    ssh_host: KeyPair
    admin: KeyPair
    admin_key_file: Path

    @classmethod
    def load_or_create(cls, directory: Path, minion_ids: list[str],
                       cluster_name: str) -> ClusterKeys:
        salt_dir, ssh_dir = directory / "salt-pki", directory / "ssh"
        return cls(
            master=_load_or_make(salt_dir, "master", _salt_pair),
            minions={mid: _load_or_make(salt_dir / "minions", mid, _salt_pair)
                     for mid in minion_ids},
            ssh_host=_load_or_make(ssh_dir, "master_host_ed25519",
                                   lambda: _ssh_pair(f"{cluster_name}-saltmaster")),
            admin=_load_or_make(ssh_dir, "admin_ed25519",
                                lambda: _ssh_pair(f"{cluster_name}-admin")),
            admin_key_file=ssh_dir / "admin_ed25519.pem",
        )


def known_hosts_line(address: str, host_key: KeyPair) -> str:
    """The known_hosts entry that pins the master's pre-generated host key."""
    key_type, key_body = host_key.public.split()[:2]
    return f"{address} {key_type} {key_body}\n"
