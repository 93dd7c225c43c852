"""Passwords and the API key: generated once per cluster, kept out of git, reused by `up`."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from cluster.state import write_private


@dataclass(frozen=True)
class ClusterSecrets:
    api_key: str
    repl_password: str
    app_password: str
    sb_password: str

    @classmethod
    def generate(cls) -> ClusterSecrets:
        return cls(**{name: secrets.token_urlsafe(24) for name in cls.__dataclass_fields__})


def load_or_create(path: Path) -> ClusterSecrets:
    """Read the secrets at ``path``, or generate and store them there (mode 0600)."""
    if path.exists():
        stored = json.loads(path.read_text())
        # Keys no longer used (an older version's root_password) are ignored.
        return ClusterSecrets(**{f.name: stored[f.name] for f in fields(ClusterSecrets)})
    created = ClusterSecrets.generate()
    write_private(path, json.dumps(asdict(created), indent=2))
    return created
