"""Key pairs kept as ``name.pem``/``name.pub`` files (mode 0600), made once and reused; Salt's
own RSA pairs for the master and the minions. Shared by the AWS and local providers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cluster.state import write_private

SALT_KEY_BITS = 2048  # Salt's own default ``keysize``


@dataclass(frozen=True)
class KeyPair:
    private: str
    public: str


def load_or_make(directory: Path, name: str, make: Callable[[], KeyPair]) -> KeyPair:
    """Read ``name.pem``/``name.pub`` under ``directory`` or create them with ``make()``."""
    private, public = directory / f"{name}.pem", directory / f"{name}.pub"
    if private.exists() and public.exists():
        return KeyPair(private.read_text(), public.read_text())
    pair = make()
    write_private(private, pair.private)
    write_private(public, pair.public)
    return pair


def salt_pair() -> KeyPair:
    """An RSA pair in the formats Salt itself writes (salt.crypt.gen_keys)."""
    import salt.crypt  # heavy: imported only when keys are made

    private, public = salt.crypt.gen_keys(SALT_KEY_BITS)
    return KeyPair(private, public)


def salt_key_pair(directory: Path, name: str) -> KeyPair:
    """The Salt key pair ``name`` under ``directory``, made on first use."""
    return load_or_make(directory, name, salt_pair)
