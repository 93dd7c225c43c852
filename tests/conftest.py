"""Session fixtures: a replicated MariaDB trio and both services running as processes."""

from __future__ import annotations

import contextlib
import json
import secrets
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message

import pytest

from cluster.loopback import proxy_settings_for
from cluster.loopback.mariadb import MariaDBCluster
from cluster.loopback.services import ServiceProcess


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


@dataclass
class Answer:
    status: int
    json: dict
    headers: Message  # case-insensitive, as HTTP header names are


def http(url: str, body: bytes | dict | None = None, headers: dict[str, str] | None = None,
         method: str | None = None, timeout: float = 20) -> Answer:
    """One real HTTP request; the answer's body must be JSON, whatever the status."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return Answer(answer.status, json.load(answer), answer.headers)
    except urllib.error.HTTPError as error:
        return Answer(error.code, json.load(error), error.headers)


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
