"""Session fixtures: a replicated MariaDB trio and both services running as processes."""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import Callable, Iterator

import pytest

from cluster.loopback import proxy_settings_for
from cluster.loopback.mariadb import MariaDBCluster
from cluster.loopback.services import ServiceProcess
from services.client import Answer, request

pytest_plugins = ["tests.aws_moto"]  # the moto server fixtures, for the AWS provider's tests


@pytest.fixture(scope="session")
def db_cluster() -> Iterator[MariaDBCluster]:
    cluster = MariaDBCluster(replicas=2)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


def proxy_env(cluster: MariaDBCluster, **overrides: str) -> dict[str, str]:
    """Fast health checks and short timeouts, so failures show within a test's patience."""
    return proxy_settings_for(cluster, **{
        "PROXY_HEALTH_INTERVAL": "0.2",
        "PROXY_PING_INTERVAL": "0.5",
        "PROXY_CONNECT_TIMEOUT": "1",
        **overrides,
    })


@pytest.fixture(scope="session")
def proxy(db_cluster, tmp_path_factory) -> Iterator[ServiceProcess]:
    service = ServiceProcess("services.proxy", proxy_env(db_cluster, PROXY_MAX_ROWS="100",
                                                         PROXY_QUERY_TIMEOUT="2"),
                             log_path=tmp_path_factory.mktemp("logs") / "proxy.log")
    with service.running():
        yield service


@pytest.fixture(scope="session")
def api_key() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="session")
def gatekeeper(proxy, api_key, tmp_path_factory) -> Iterator[ServiceProcess]:
    service = ServiceProcess("services.gatekeeper", {
        "GATEKEEPER_LISTEN_ADDRESS": "127.0.0.1",
        "GATEKEEPER_PROXY_URL": proxy.url,
        "GATEKEEPER_API_KEY": api_key,
        "GATEKEEPER_MAX_BODY_BYTES": "4096",
    }, log_path=tmp_path_factory.mktemp("logs") / "gatekeeper.log")
    with service.running():
        yield service


def http(url: str, body: bytes | dict | None = None, headers: dict[str, str] | None = None,
         method: str | None = None, timeout: float = 20) -> Answer:
    """One real HTTP request; the answer's body must be JSON, whatever the status."""
    return request(url, body, headers, method, timeout)


@pytest.fixture
def query(gatekeeper, api_key):
    """POST /query through the Gatekeeper with the right key."""
    def send(sql: str, mode: str = "direct", **extra) -> Answer:
        return http(gatekeeper.url + "/query", {"sql": sql, "mode": mode, **extra},
                    {"X-API-Key": api_key})
    return send


@contextlib.contextmanager
def scratch_tables(cluster: MariaDBCluster, prefix: str) -> Iterator[Callable[..., str]]:
    """Make uniquely named tables in sqlgate_test (as root); all are dropped afterwards."""
    made: list[str] = []

    def make(columns: str = "id INT PRIMARY KEY, v VARCHAR(64)") -> str:
        name = f"sqlgate_test.{prefix}_{uuid.uuid4().hex[:12]}"
        cluster.primary.sql(f"CREATE TABLE {name} ({columns})")
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in made:
            cluster.primary.sql(f"DROP TABLE IF EXISTS {name}")
