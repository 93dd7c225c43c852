"""The whole stack on loopback ports, without namespaces or Salt: for benchmarks and tests.

``python -m cluster.loopback`` runs it in the foreground until Ctrl-C, writing
``.cluster/loopback.json`` like the real providers do, so the load tests can aim at it.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from cluster.loopback.mariadb import MariaDBCluster
from cluster.loopback.services import ServiceProcess
from cluster.record import ClusterRecord, HostRecord


def proxy_settings_for(db: MariaDBCluster, **overrides: str) -> dict[str, str]:
    """The Proxy's environment for this database cluster."""
    return {
        "PROXY_LISTEN_ADDRESS": "127.0.0.1",
        "PROXY_PRIMARY": f"{db.primary.name}=127.0.0.1:{db.primary.port}",
        "PROXY_REPLICAS": ",".join(f"{node.name}=127.0.0.1:{node.port}" for node in db.replicas),
        "PROXY_DB_USER": db.app_user,
        "PROXY_DB_PASSWORD": db.app_password,
        **overrides,
    }


class LoopbackStack:
    """A MariaDB primary with replicas, a Proxy and a Gatekeeper, all as local processes."""

    def __init__(self, replicas: int = 2, log_dir: Path | None = None,
                 proxy_settings: dict[str, str] | None = None,
                 gatekeeper_port: int | None = None) -> None:
        self.db = MariaDBCluster(replicas=replicas)
        self.api_key = secrets.token_urlsafe(24)
        self.log_dir = log_dir or self.db.root / "logs"
        self.proxy_settings = proxy_settings or {}
        self.proxy = ServiceProcess("services.proxy", {}, log_path=self.log_dir / "proxy.log")
        self.gatekeeper = ServiceProcess("services.gatekeeper", {
            "GATEKEEPER_LISTEN_ADDRESS": "127.0.0.1",
            "GATEKEEPER_API_KEY": self.api_key,
        }, log_path=self.log_dir / "gatekeeper.log")
        if gatekeeper_port:
            self.gatekeeper.port = gatekeeper_port

    def start(self) -> None:
        try:
            self.db.start()
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.proxy.env.update(proxy_settings_for(self.db, **self.proxy_settings))
            self.proxy.start()
            self.gatekeeper.env["GATEKEEPER_PROXY_URL"] = self.proxy.url
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
            api_key=self.api_key,
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
