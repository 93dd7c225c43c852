"""Which cluster to load: the Gatekeeper URL, the API key and the hosts from the cluster file.

``bootstrap.py up`` (and ``python -m cluster.loopback``) write ``.cluster/<provider>.json``; the
load tests read it, so they need no flags. The local cluster wins over AWS over loopback, unless
``--provider`` or ``$SQLGATE_PROVIDER`` chooses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cluster.state import cluster_file, read_cluster_file
from cluster.topology import DB_ROLES

PROVIDER_ENV = "SQLGATE_PROVIDER"
PREFERRED_PROVIDERS = ("local", "aws", "loopback")


@dataclass(frozen=True)
class Target:
    provider: str
    gatekeeper_url: str
    api_key: str
    hosts: list[dict] = field(default_factory=list)
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def db_hosts(self) -> list[dict]:
        """The database nodes, primary first."""
        return sorted((h for h in self.hosts if h.get("role") in DB_ROLES),
                      key=lambda h: (h["role"] != "manager", h["name"]))

    @classmethod
    def from_cluster_file(cls, provider: str, data: dict) -> Target:
        return cls(provider=provider, gatekeeper_url=data["gatekeeper_url"].rstrip("/"),
                   api_key=data["api_key"], hosts=list(data.get("hosts", [])), raw=data)


def find_target(provider: str | None = None) -> Target:
    """The named provider's cluster, else the first of local, aws, loopback that has a file."""
    provider = provider or os.environ.get(PROVIDER_ENV) or None
    for name in (provider,) if provider else PREFERRED_PROVIDERS:
        data = read_cluster_file(name)
        if data is not None:
            return Target.from_cluster_file(name, data)
    tried = ", ".join(str(cluster_file(name)) for name in ((provider,) if provider
                                                              else PREFERRED_PROVIDERS))
    raise LookupError(f"no cluster file ({tried}): run `python bootstrap.py up --provider local`"
                      " or `python -m cluster.loopback`")
