"""Which cluster to load: the cluster record (``cluster.record``) of a provider.

``bootstrap.py up`` (and ``python -m cluster.loopback``) write ``.cluster/<provider>.json``; the
load tests read it, so they need no flags. The local cluster wins over AWS over loopback, unless
``--provider`` or ``$SQLGATE_PROVIDER`` chooses.
"""

from __future__ import annotations

import os

from cluster.record import ClusterRecord, read_record, record_path
from services.client import TlsFiles

PROVIDER_ENV = "SQLGATE_PROVIDER"
PREFERRED_PROVIDERS = ("local", "aws", "loopback")

# What the load tests aim at: a cluster record with a Gatekeeper.
Target = ClusterRecord


def gatekeeper_tls(target: Target) -> TlsFiles | None:
    """How to verify the target's Gatekeeper: with the cluster's CA (the record's ``ca_file``),
    else the system's trust store (a public certificate); None for a plain ``http://`` one."""
    if not (target.gatekeeper_url or "").startswith("https://"):
        return None
    return TlsFiles(target.ca_file or "")


def find_target(provider: str | None = None) -> Target:
    """The named provider's cluster, else the first of local, aws, loopback that has a record."""
    provider = provider or os.environ.get(PROVIDER_ENV) or None
    names = (provider,) if provider else PREFERRED_PROVIDERS
    for name in names:
        record = read_record(name)
        if record is not None and record.gatekeeper_url:
            return record
    tried = ", ".join(str(record_path(name)) for name in names)
    raise LookupError(f"no cluster file ({tried}): run `python bootstrap.py up --provider local`"
                      " or `python -m cluster.loopback`")
