"""The whole stack on loopback ports, without namespaces or Salt: for benchmarks and tests.

``python -m cluster.loopback`` runs it in the foreground until Ctrl-C, writing
``.cluster/loopback.json`` like the real providers do, so the load tests can aim at it.

It runs the deployed security set-up: clients reach the Gatekeeper over HTTPS with the stack's
CA and an API key from its keys file (hashes only); the Gatekeeper reaches the Proxy with a
client certificate, and the Proxy accepts no other; the Proxy connects to the databases over
TLS, as one database user per scope. Every certificate comes from the database cluster's
throw-away CA (``MariaDBCluster.pki``).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from cluster.keys import KeySet
from cluster.loopback.mariadb import MariaDBCluster
from cluster.loopback.services import ServiceProcess
from cluster.record import ClusterRecord, HostRecord


def proxy_settings_for(db: MariaDBCluster, **overrides: str) -> dict[str, str]:
    """The Proxy's environment for this database cluster: HTTPS for the Gatekeeper's client
    certificate only, TLS to every node, and the database user of each scope."""
    proxy = db.pki.issue("proxy")
    users = {f"PROXY_DB_{scope.upper()}_{part}": value
             for scope, user in (*db.app_users.items(), ("monitor", db.monitor))
             for part, value in (("USER", user.name), ("PASSWORD", user.password))}
    return {
        "PROXY_LISTEN_ADDRESS": "127.0.0.1",
        "PROXY_PRIMARY": f"{db.primary.name}=127.0.0.1:{db.primary.port}",
        "PROXY_REPLICAS": ",".join(f"{node.name}=127.0.0.1:{node.port}" for node in db.replicas),
        "PROXY_TLS_CERT": str(proxy.cert),
        "PROXY_TLS_KEY": str(proxy.key),
        "PROXY_TLS_CLIENT_CA": str(db.ca_file),
        "PROXY_DB_TLS_CA": str(db.ca_file),
        **users,
        **overrides,
    }


def proxy_service(db: MariaDBCluster, log_path: Path | None = None,
                  **overrides: str) -> ServiceProcess:
    """A Proxy for ``db`` (``proxy_settings_for``), reached with the loopback client
    certificate."""
    return ServiceProcess("services.proxy", proxy_settings_for(db, **overrides),
                          log_path=log_path, tls=db.pki.client_tls())


def write_keys_file(path: Path, admin_secret: str) -> Path:
    """A Gatekeeper keys file holding one key, ``admin`` (admin scope, unlimited), whose secret
    is ``admin_secret``: its hash only."""
    return KeySet().with_admin(admin_secret).save(path)


def gatekeeper_settings_for(db: MariaDBCluster, proxy_url: str, keys_file: Path,
                            **overrides: str) -> dict[str, str]:
    """The Gatekeeper's environment: HTTPS with its certificate, the keys file, and mutual TLS
    to the Proxy at ``proxy_url`` (its own certificate is its client certificate, as on a
    deployed host)."""
    own = db.pki.issue("gatekeeper")
    return {
        "GATEKEEPER_LISTEN_ADDRESS": "127.0.0.1",
        "GATEKEEPER_TLS_CERT": str(own.cert),
        "GATEKEEPER_TLS_KEY": str(own.key),
        "GATEKEEPER_KEYS_FILE": str(keys_file),
        "GATEKEEPER_PROXY_URL": proxy_url,
        "GATEKEEPER_PROXY_CA": str(db.ca_file),
        "GATEKEEPER_PROXY_CLIENT_CERT": str(own.cert),
        "GATEKEEPER_PROXY_CLIENT_KEY": str(own.key),
        **overrides,
    }


def gatekeeper_service(db: MariaDBCluster, proxy_url: str, keys_file: Path,
                       log_path: Path | None = None, **overrides: str) -> ServiceProcess:
    """A Gatekeeper in front of the Proxy at ``proxy_url`` (``gatekeeper_settings_for``),
    verified with the cluster's CA."""
    return ServiceProcess("services.gatekeeper",
                          gatekeeper_settings_for(db, proxy_url, keys_file, **overrides),
                          log_path=log_path, tls=db.pki.server_tls())


class LoopbackStack:
    """A MariaDB primary with replicas, a Proxy and a Gatekeeper, all as local processes."""

    def __init__(self, replicas: int = 2, log_dir: Path | None = None,
                 proxy_settings: dict[str, str] | None = None,
                 gatekeeper_port: int | None = None,
                 gatekeeper_settings: dict[str, str] | None = None) -> None:
        self.db = MariaDBCluster(replicas=replicas)
        self.api_key = secrets.token_urlsafe(24)  # the admin key's secret
        self.keys_file = write_keys_file(self.db.root / "gatekeeper-keys.json", self.api_key)
        self.log_dir = log_dir or self.db.root / "logs"
        self.proxy = proxy_service(self.db, self.log_dir / "proxy.log",
                                   **(proxy_settings or {}))
        self.gatekeeper = gatekeeper_service(self.db, self.proxy.url, self.keys_file,
                                             self.log_dir / "gatekeeper.log",
                                             **(gatekeeper_settings or {}))
        if gatekeeper_port:
            self.gatekeeper.port = gatekeeper_port

    @property
    def ca_file(self) -> Path:
        """What clients verify the Gatekeeper (and every other service) with."""
        return self.db.ca_file

    def start(self) -> None:
        try:
            self.db.start()
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.proxy.start()
            self.gatekeeper.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.gatekeeper.stop()
        self.proxy.stop()
        self.db.destroy()

    def describe(self) -> ClusterRecord:
        """The cluster record, as the real providers write it."""
        return ClusterRecord(
            provider="loopback", cluster_name="loopback", gatekeeper_url=self.gatekeeper.url,
            api_key=self.api_key, ca_file=str(self.ca_file), sb_password=self.db.sb_password,
            hosts=(
                HostRecord("gatekeeper", "gatekeeper", "127.0.0.1", port=self.gatekeeper.port),
                HostRecord("proxy", "proxy", "127.0.0.1", port=self.proxy.port),
                *(HostRecord(node.name, "primary" if node is self.db.primary else "replica",
                             "127.0.0.1", port=node.port) for node in self.db.nodes),
            ))

    def __enter__(self) -> LoopbackStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
