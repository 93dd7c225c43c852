"""Pillar inputs for the tests: a throw-away cluster CA with a certificate per host, and a key
set as bootstrap.py hands them to ``cluster.pillar.build_pillar``."""

from __future__ import annotations

import hashlib

from cluster.pki import CertificateAuthority, ClusterTls, Issued
from cluster.topology import Host

API_KEY_SECRETS = {"admin": "admin-secret-for-tests", "ci": "ci-secret-for-tests"}


def api_keys() -> list[dict]:
    """An admin key without limit and a rate-limited write key: hashes only."""
    return [
        {"name": "admin", "scope": "admin", "rate": 0.0, "burst": 0,
         "sha256": hashlib.sha256(API_KEY_SECRETS["admin"].encode()).hexdigest()},
        {"name": "ci", "scope": "write", "rate": 50.0, "burst": 100,
         "sha256": hashlib.sha256(API_KEY_SECRETS["ci"].encode()).hexdigest()},
    ]


def cluster_tls(hosts: list[Host], public: bool = False) -> ClusterTls:
    """A CA and one certificate per host (server and client); with ``public``, a stand-in for
    the certificate a user brings for the Gatekeeper (from another CA)."""
    ca = CertificateAuthority.create("test")
    issued = {host.name: ca.issue(host.name, server=True, client=True) for host in hosts}
    brought = None
    if public:
        other = CertificateAuthority.create("public")
        full = other.issue("sqlgate.example.com")
        brought = Issued(full.cert + other.cert_pem, full.key, "")
    return ClusterTls(ca.cert_pem, issued, brought)
