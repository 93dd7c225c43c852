"""Passwords and the admin API key: generated once per cluster, kept out of git, reused by `up`."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from cluster.state import write_private


@dataclass(frozen=True)
class ClusterSecrets:
    """``api_key`` is the secret of the cluster's ``admin`` API key (the Gatekeeper only ever
    gets its hash); the passwords are the database users': one per Proxy scope, the Proxy's
    health monitor, replication, sysbench and the database hosts' mysqld_exporter, and the
    Gatekeepers' password of the rate store (Redis on the monitor host). A file
    written before a secret existed gets it generated on the next load."""

    api_key: str
    repl_password: str
    app_read_password: str
    app_write_password: str
    app_admin_password: str
    monitor_password: str
    sb_password: str
    exporter_password: str
    ratestore_password: str

    @classmethod
    def generate(cls) -> ClusterSecrets:
        return cls(**{f.name: _new_secret() for f in fields(cls)})


def _new_secret() -> str:
    return secrets.token_urlsafe(24)


def load_or_create(path: Path) -> ClusterSecrets:
    """Read the secrets at ``path``, or generate and store them there (mode 0600).

    Any file of this shape loads: fields that are not secrets of ``ClusterSecrets`` are
    ignored, and missing ones are generated and written back, so that the passwords and the
    API key it has stay what they are.
    """
    stored = json.loads(path.read_text()) if path.exists() else {}
    values = {f.name: stored.get(f.name) or _new_secret() for f in fields(ClusterSecrets)}
    loaded = ClusterSecrets(**values)
    if any(not stored.get(f.name) for f in fields(ClusterSecrets)):
        write_private(path, json.dumps(asdict(loaded), indent=2))
    return loaded
