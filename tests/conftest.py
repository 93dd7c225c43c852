"""Session fixtures: a replicated MariaDB trio and both services running as processes, in the
deployed security set-up: HTTPS to the Gatekeeper, mutual TLS to the Proxy, TLS to MariaDB,
one database user per scope, and an ``admin`` API key from a keys file."""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import Callable, Iterator
from http.client import HTTPConnection, HTTPSConnection
from pathlib import Path

import pytest

from cluster import loopback
from cluster.loopback import gatekeeper_service, write_keys_file
from cluster.loopback.mariadb import MariaDBCluster
from cluster.loopback.services import ServiceProcess
from services.client import Answer, TlsFiles, request
from services.contract import SCOPE_HEADER

pytest_plugins = [
    "tests.aws_moto",  # the moto server fixtures, for the AWS provider's tests
    "tests.monitoring",  # Prometheus scraping services with metrics ports; headless Chromium
]

# Fast health checks and short timeouts, so failures show within a test's patience.
FAST_PROXY = {
    "PROXY_HEALTH_INTERVAL": "0.2",
    "PROXY_PING_INTERVAL": "0.5",
    "PROXY_CONNECT_TIMEOUT": "1",
}


@pytest.fixture(scope="session")
def db_cluster() -> Iterator[MariaDBCluster]:
    cluster = MariaDBCluster(replicas=2)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


def proxy_service(cluster: MariaDBCluster, log_path: Path | None = None,
                  **overrides: str) -> ServiceProcess:
    """A Proxy of a test's own on ``cluster`` (TLS, a user per scope:
    ``cluster.loopback.proxy_settings_for``, with FAST_PROXY), reached with the loopback client
    certificate (``http()`` finds it by its URL)."""
    return loopback.proxy_service(cluster, log_path, **{**FAST_PROXY, **overrides})


@pytest.fixture(scope="session")
def proxy(db_cluster, tmp_path_factory) -> Iterator[ServiceProcess]:
    # Tests send up to 16 requests at once without a key name (one anonymous key), to touch
    # every pooled connection: the whole pool is that key's share.
    service = proxy_service(db_cluster, tmp_path_factory.mktemp("logs") / "proxy.log",
                            PROXY_MAX_ROWS="100", PROXY_QUERY_TIMEOUT="2",
                            PROXY_MAX_STATEMENTS_PER_KEY="16")
    with service.running():
        yield service


@pytest.fixture(scope="session")
def api_key() -> str:
    """The secret of the session Gatekeeper's ``admin`` key."""
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="session")
def keys_file(api_key, tmp_path_factory) -> Path:
    """The session Gatekeeper's keys file: the ``admin`` key alone. A test may rewrite it
    (``cluster.keys.KeySet(...).save``: the Gatekeeper reloads it) and must put it back."""
    return write_keys_file(tmp_path_factory.mktemp("keys") / "keys.json", api_key)


@pytest.fixture(scope="session")
def gatekeeper(db_cluster, proxy, keys_file, tmp_path_factory) -> Iterator[ServiceProcess]:
    service = gatekeeper_service(db_cluster, proxy.url, keys_file,
                                 tmp_path_factory.mktemp("logs") / "gatekeeper.log",
                                 GATEKEEPER_MAX_BODY_BYTES="4096")
    with service.running():
        yield service


def connection(service: ServiceProcess, timeout: float = 10) -> HTTPConnection:
    """A raw connection to a running service, for requests the client would not send (headers
    without their body, chunked bodies), over TLS the way the service asks."""
    if service.tls is None:
        return HTTPConnection("127.0.0.1", service.port, timeout=timeout)
    return HTTPSConnection("127.0.0.1", service.port, timeout=timeout,
                           context=service.tls.context())


def http(url: str, body: bytes | dict | None = None, headers: dict[str, str] | None = None,
         method: str | None = None, timeout: float = 20, *, scope: str | None = "admin",
         tls: TlsFiles | None = None) -> Answer:
    """One real HTTP request; the answer's body must be JSON, whatever the status.

    A running service of the tests is reached the way it asks (its CA, and the client
    certificate a Proxy asks for), unless ``tls`` says otherwise. A Proxy, reached directly, is
    told ``scope`` as the Gatekeeper would tell it (None: no scope header, the Proxy's default).
    """
    service = ServiceProcess.serving(url)
    if tls is None and service is not None:
        tls = service.tls
    if scope is not None and service is not None and service.module == "services.proxy":
        headers = {SCOPE_HEADER: scope, **(headers or {})}
    return request(url, body, headers, method, timeout, tls)


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
