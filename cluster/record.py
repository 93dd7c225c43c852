"""The cluster record ``.cluster/<provider>.json``: what ``up`` made, for ``status``, ``down``,
the demo and the load tests, the same shape for every provider.

The common fields are typed here; what only one provider needs (the AWS region and SSH files,
the local bridge) stays in ``provider_data``, read by that provider alone. The record holds the
API key, so it is written with mode 0600. Next to it, ``<provider>-ca.crt`` is the certificate
that clients check the Gatekeeper's HTTPS against (``ca_file``; a certificate is no secret).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from cluster.state import default_cluster_dir, write_private
from cluster.topology import DB_ROLES


@dataclass(frozen=True)
class HostRecord:
    name: str
    role: str
    address: str | None
    port: int | None = None  # only where each host has a port of its own (the loopback stack)
    namespace: str | None = None  # local provider: the host's network namespace
    public_address: str | None = None  # AWS: the instance's public address, if any
    instance_id: str | None = None  # AWS


@dataclass(frozen=True)
class ClusterRecord:
    provider: str
    cluster_name: str
    gatekeeper_url: str | None
    api_key: str
    hosts: tuple[HostRecord, ...] = ()
    # The ``salt`` command line that reaches every minion from this machine (empty: none), and
    # the sysbench user's password: what the load report's per-node baseline needs.
    salt_command: tuple[str, ...] = ()
    sb_password: str | None = None
    provider_data: dict = field(default_factory=dict)
    # The CA that signed the Gatekeeper's public certificate, for clients to verify it with
    # (curl --cacert); None when the certificate is the user's own, publicly trusted one.
    ca_file: str | None = None
    # Prometheus on the monitor host (HTTPS, the cluster CA's certificate), for the operator
    # only; None without a monitor (--no-monitor).
    monitor_url: str | None = None

    def host(self, name: str) -> HostRecord:
        return next(host for host in self.hosts if host.name == name)

    @property
    def db_hosts(self) -> list[HostRecord]:
        """The database nodes, primary first."""
        return sorted((h for h in self.hosts if h.role in DB_ROLES),
                      key=lambda h: (h.role != "primary", h.name))

    def to_json(self) -> dict:
        data = asdict(self)
        data["hosts"] = [{k: v for k, v in host.items() if v is not None}
                         for host in data["hosts"]]
        data["salt_command"] = list(self.salt_command)
        return data

    @classmethod
    def from_json(cls, data: dict) -> ClusterRecord:
        known = {f.name for f in fields(HostRecord)}
        hosts = tuple(HostRecord(**{k: v for k, v in host.items() if k in known})
                      for host in data.get("hosts", []))
        return cls(provider=data["provider"], cluster_name=data.get("cluster_name", ""),
                   gatekeeper_url=data.get("gatekeeper_url"), api_key=data["api_key"],
                   hosts=hosts, salt_command=tuple(data.get("salt_command") or ()),
                   sb_password=data.get("sb_password"),
                   provider_data=dict(data.get("provider_data") or {}),
                   ca_file=data.get("ca_file"), monitor_url=data.get("monitor_url"))


def record_path(provider: str, directory: Path | None = None) -> Path:
    return (directory or default_cluster_dir()) / f"{provider}.json"


def ca_path(provider: str, directory: Path | None = None) -> Path:
    """Where ``up`` copies the cluster CA's certificate for clients: next to the record."""
    return (directory or default_cluster_dir()) / f"{provider}-ca.crt"


def write_ca(provider: str, cert_pem: str, directory: Path | None = None) -> Path:
    """Copy the CA certificate next to the record; readable by everyone (it is public, and the
    user who ran ``up`` with sudo needs it for curl)."""
    path = write_private(ca_path(provider, directory), cert_pem)
    path.chmod(0o644)
    return path


def write_record(record: ClusterRecord, directory: Path | None = None) -> Path:
    """Write atomically with mode 0600; the directory is private too."""
    return write_private(record_path(record.provider, directory),
                         json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n")


def read_record(provider: str, directory: Path | None = None) -> ClusterRecord | None:
    path = record_path(provider, directory)
    if not path.exists():
        return None
    return ClusterRecord.from_json(json.loads(path.read_text()))


def remove_record(provider: str, directory: Path | None = None) -> None:
    """The record and the CA copy next to it."""
    record_path(provider, directory).unlink(missing_ok=True)
    ca_path(provider, directory).unlink(missing_ok=True)
