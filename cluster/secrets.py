"""Passwords and the API key: generated once per cluster, kept out of git, reused by `up`."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ClusterSecrets:
    api_key: str
    repl_password: str
    app_password: str
    sb_password: str
    root_password: str

    @classmethod
    def generate(cls) -> ClusterSecrets:
        return cls(**{name: secrets.token_urlsafe(24) for name in cls.__dataclass_fields__})


def load_or_create(path: Path) -> ClusterSecrets:
    """Read the secrets at ``path``, or generate and store them there (mode 0600)."""
    if path.exists():
        return ClusterSecrets(**json.loads(path.read_text()))
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    created = ClusterSecrets.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(created), out, indent=2)
    return created
