"""Pillar data for the Salt master, built from the host plan, the cluster's secrets, its
certificates and its API keys.

Shared by every provider. Addresses are not part of the pillar: the states read the peers'
private addresses from the Salt mine, so the pillar can be written before any host exists
(on AWS the addresses are only known after launch).

The pillar tree gives each minion only what its role and itself need (``top.sls`` matches by
minion id; Salt merges the files of a minion key by key):

- ``sqlgate/common.sls``, for everyone: no secret (the cluster CA's certificate is public);
- ``sqlgate/<role>.sls``, for the minions of that role: the role's passwords; the Gatekeeper's
  also the API keys (hashes only: no key's secret is anywhere in the pillar) and the public
  certificate the user brought, if any;
- ``sqlgate/host-<name>.sls``, for that one minion: its own certificate and private key;
- ``sqlgate/failover.sls``, for everyone: the current primary, its epoch and the quarantined
  nodes, written by the failover runner on the master (``salt/_runners/sqlgate_failover.py``).
  ``write_pillar_tree`` makes it empty once and never overwrites it, so a second ``up`` keeps
  the shape a failover left.

See ``pillar/pillar.example`` for every key.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from cluster.pki import ClusterTls
from cluster.secrets import ClusterSecrets
from cluster.state import write_private
from cluster.topology import MINION_ROLES, PORTS, ROLES, Host
from services.contract import SCOPES

# Where the local provider's master serves the wheels the hosts install from (no PyPI there).
LOCAL_WHEELHOUSE = "salt://sqlgate-wheelhouse"
ADDRESS_MINE_FUNCTION = "sqlgate_address"
# The failover runner's pillar file (the current primary and epoch): written once empty, then
# only by the runner.
FAILOVER_PILLAR = Path("sqlgate") / "failover.sls"

# Which secrets each role gets (the role table in cluster/topology.py says).
SECRETS_OF_ROLE: dict[str, tuple[str, ...]] = {role: ROLES[role].secrets for role in MINION_ROLES}
# An API key as the Gatekeeper's keys file holds it: its secret's SHA-256, never the secret.
API_KEY_FIELDS = ("name", "scope", "sha256", "rate", "burst")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Pillar:
    """The pillar tree, file by file: ``common`` for every minion, ``roles`` (role -> data) for
    the minions of a role, ``hosts`` (minion id -> data) for one minion each."""

    common: dict
    roles: dict[str, dict]
    hosts: dict[str, dict]

    def of(self, minion: str) -> dict:
        """What ``minion`` sees: its files merged as Salt merges them (mappings key by key)."""
        role = self.common["sqlgate"]["hosts"][minion]["role"]
        merged = copy.deepcopy(self.common)
        for part in (self.roles.get(role, {}), self.hosts.get(minion, {})):
            _merge(merged, part)
        return merged


def _merge(dest: dict, upd: Mapping) -> None:
    for key, value in upd.items():
        if isinstance(dest.get(key), dict) and isinstance(value, Mapping):
            _merge(dest[key], value)
        else:
            dest[key] = copy.deepcopy(value)


def host_entries(hosts: list[Host]) -> dict[str, dict]:
    """``name -> {role, server_id}``; database servers are numbered from 1 in plan order."""
    entries: dict[str, dict] = {}
    server_id = 0
    for host in hosts:
        entry: dict = {"role": host.role}
        if host.group == "database":
            server_id += 1
            entry["server_id"] = server_id
        entries[host.name] = entry
    return entries


def checked_api_keys(api_keys: list[dict]) -> list[dict]:
    """The key set for the Gatekeeper's keys file, refused (ValueError) when an entry lacks a
    field, has another one (a secret, say), or has a bad scope, hash or limit."""
    checked, names = [], set()
    for entry in api_keys:
        if set(entry) != set(API_KEY_FIELDS):
            raise ValueError(f"API key entry {entry.get('name', '?')!r}: fields must be exactly "
                             f"{', '.join(API_KEY_FIELDS)}")
        name, scope, digest = entry["name"], entry["scope"], entry["sha256"]
        if not isinstance(name, str) or not name or name in names:
            raise ValueError(f"API key name {name!r}: empty or given twice")
        if scope not in SCOPES:
            raise ValueError(f"API key {name!r}: scope must be one of {', '.join(SCOPES)}")
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
            raise ValueError(f"API key {name!r}: sha256 must be 64 lower-case hex digits")
        rate, burst = float(entry["rate"]), int(entry["burst"])
        if rate < 0 or burst < 0:
            raise ValueError(f"API key {name!r}: rate and burst cannot be negative")
        names.add(name)
        checked.append({"name": name, "scope": scope, "sha256": digest, "rate": rate,
                        "burst": burst})
    return checked


def build_pillar(cluster_name: str, hosts: list[Host], secrets: ClusterSecrets, *,
                 provider: str, sakila_source: str, tls: ClusterTls,
                 api_keys: list[dict], monitor: dict | None = None,
                 gatekeeper: dict | None = None) -> Pillar:
    """The pillar tree of this cluster (``sqlgate:`` tree, see ``pillar/pillar.example``).

    ``tls`` must hold a certificate for every minion; ``api_keys`` are entries
    ``{name, scope, sha256, rate, burst}``; ``monitor`` overrides the formula's ``monitor``
    settings (the local cluster scrapes every second and alerts after seconds, to be seen at
    once); ``gatekeeper`` overrides the Gatekeepers' settings where the provider's balancer asks
    for it (AWS's Network Load Balancer: ``proxy_protocol_from``, its network, which its
    private addresses are in and which sends a PROXY protocol header; a drain as long as its
    health checks take).
    """
    minions = [host for host in hosts if host.role in SECRETS_OF_ROLE]
    missing = [host.name for host in minions if host.name not in tls.hosts]
    if missing:
        raise ValueError(f"no TLS certificate for {', '.join(missing)}")
    common = {
        "sqlgate": {
            "cluster_name": cluster_name,
            "provider": provider,
            "hosts": host_entries(minions),
            # The role table and the ports, so that top.sls, the orchestration and the services
            # follow cluster/topology.py, as the firewall does.
            "roles": {role: {"states": ROLES[role].states} for role in MINION_ROLES},
            "role_order": list(MINION_ROLES),
            "ports": dict(PORTS),
            "sakila": {"source": sakila_source},
            "app": {"wheelhouse": LOCAL_WHEELHOUSE if provider == "local" else ""},
            "tls": {"ca": tls.ca},
            **({"monitor": copy.deepcopy(monitor)} if monitor else {}),
        },
        "mine_functions": {ADDRESS_MINE_FUNCTION: {"mine_function": "network.ip_addrs"}},
    }
    every_secret = {name: getattr(secrets, name) for names in SECRETS_OF_ROLE.values()
                    for name in names}
    roles: dict[str, dict] = {}
    for role, names in SECRETS_OF_ROLE.items():
        own: dict = {}
        if names:
            own["secrets"] = {name: every_secret[name] for name in names}
        if role == "gatekeeper":
            own["api_keys"] = checked_api_keys(api_keys)
            if gatekeeper:
                own["gatekeeper"] = copy.deepcopy(gatekeeper)
            if tls.public is not None:
                own["tls"] = {"gatekeeper_public": {"cert": tls.public.cert,
                                                    "key": tls.public.key}}
        roles[role] = {"sqlgate": own}
    per_host = {host.name: {"sqlgate": {"tls": {"cert": tls.hosts[host.name].cert,
                                                "key": tls.hosts[host.name].key}}}
                for host in minions}
    return Pillar(common, roles, per_host)


def _write_private(path: Path, data: dict) -> None:
    write_private(path, "# Generated by bootstrap.py: do not edit, do not commit.\n"
                  + yaml.safe_dump(data, sort_keys=True, default_flow_style=False))


def write_pillar_tree(pillar: Pillar, hosts: list[Host], directory: Path) -> None:
    """Write ``top.sls`` and the pillar files under ``directory`` (mode 0600, secrets inside)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    _write_private(directory / "sqlgate" / "common.sls", pillar.common)
    for role, data in pillar.roles.items():
        _write_private(directory / "sqlgate" / f"{role}.sls", data)
    failover = directory / FAILOVER_PILLAR
    if not failover.exists():
        _write_private(failover, {})
    top: dict[str, list] = {"*": ["sqlgate.common", "sqlgate.failover"]}
    # A host no longer in the plan keeps no private key here.
    current = {f"host-{host.name}.sls" for host in hosts}
    for stale in (directory / "sqlgate").glob("host-*.sls"):
        if stale.name not in current:
            stale.unlink()
    for host in hosts:
        if host.role in SECRETS_OF_ROLE:
            _write_private(directory / "sqlgate" / f"host-{host.name}.sls",
                           pillar.hosts[host.name])
            top[host.name] = [f"sqlgate.{host.role}", f"sqlgate.host-{host.name}"]
    _write_private(directory / "top.sls", {"base": top})
