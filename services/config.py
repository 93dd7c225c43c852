"""Typed service configuration, read once at start-up.

Each field can come from (strongest first) a command-line flag, an environment variable, or an
env file (``KEY=value`` lines, as written by the Salt states), else its default. The variable
name is the service's prefix plus the field name in upper case: ``PROXY_PORT``,
``GATEKEEPER_API_KEY``...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from services.contract import SCOPES
from services.proxyproto import IPNetwork, parse_networks

T = TypeVar("T")

# What reads do when no replica is in rotation: the primary serves them, or they fail (503).
READ_FALLBACKS = ("primary", "error")
# A Proxy's instance name (PROXY_INSTANCE_NAME, and the Gatekeeper's names of its Proxies).
INSTANCE_NAME_PATTERN = re.compile(r"[A-Za-z0-9-]{1,63}")
PROXY_URL_PATTERN = re.compile(r"https?://[^/\s]+/?")
RATE_STORE_PATTERN = re.compile(r"rediss?://([A-Za-z0-9._-]+@)?[^/\s@:]+:[0-9]{1,5}/?")
DEFAULT_PROXY_URL = "https://127.0.0.1:5000"
# The Proxy of the one-Proxy form (GATEKEEPER_PROXY_URL): a name for its logs and metrics only.
SINGLE_PROXY_NAME = "proxy"
# The longest drain either service accepts (GATEKEEPER_DRAIN_SECONDS, PROXY_DRAIN_SECONDS).
MAX_DRAIN_SECONDS = 3600


@dataclass(frozen=True)
class NodeAddress:
    """A database node as named in the configuration: ``name=host:port``."""

    name: str
    host: str
    port: int = 3306

    @classmethod
    def parse(cls, text: str) -> NodeAddress:
        name, sep, address = text.strip().partition("=")
        if not sep:
            name, address = text.strip(), text.strip()
        host, _, port = address.rpartition(":") if ":" in address else (address, "", "3306")
        if not name or not host:
            raise ValueError(f"bad node address {text!r}: expected name=host:port")
        return cls(name=name, host=host, port=int(port))


def _parse_nodes(text: str) -> tuple[NodeAddress, ...]:
    return tuple(NodeAddress.parse(item) for item in text.split(",") if item.strip())


@dataclass(frozen=True)
class NamedProxy:
    """One Proxy behind the Gatekeeper: its instance name (``PROXY_INSTANCE_NAME``, the prefix
    of its transaction ids) and its URL."""

    name: str
    url: str


def parse_proxies(text: str, setting: str = "GATEKEEPER_PROXIES") -> tuple[NamedProxy, ...]:
    """``name=url,name=url``: each name a Proxy's instance name (unique, and none that one of
    another's workers would carry, ``<name>-w<i>``: their transaction ids would be alike),
    each URL ``https://host:port``. Raises ValueError naming ``setting``."""
    proxies: list[NamedProxy] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, url = (piece.strip() for piece in item.partition("="))
        if not sep:
            raise ValueError(f"{setting}: {item!r} is not name=url "
                             "(e.g. proxy1=https://10.0.0.5:5000)")
        proxies.append(_named_proxy(name, url, setting))
    if not proxies:
        raise ValueError(f"{setting}: no proxy: name=url pairs, separated by commas")
    return _distinct(proxies, setting)


def parse_proxies_file(text: str, source: str = "GATEKEEPER_PROXIES_FILE"
                       ) -> tuple[NamedProxy, ...]:
    """A Proxy list file (``GATEKEEPER_PROXIES_FILE``): JSON, ``{"proxies": [{"name":
    "proxy1", "url": "https://10.0.0.5:5000"}, ...]}``, checked as ``parse_proxies`` checks
    its pairs; no other field (a typo must not pass for a setting), and at least one Proxy
    (an empty list is a mistake, never a way to stop serving). Raises ValueError naming
    ``source``."""
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{source}: not JSON: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("proxies"), list):
        raise ValueError(f'{source}: expected {{"proxies": [{{"name": ..., "url": ...}}]}}')
    unknown = sorted(set(data) - {"proxies"})
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {', '.join(unknown)}")
    proxies: list[NamedProxy] = []
    for index, item in enumerate(data["proxies"]):
        where = f"{source}: proxies[{index}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: each Proxy is an object {{name, url}}")
        unknown = sorted(set(item) - {"name", "url"})
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
        name, url = item.get("name"), item.get("url")
        if not isinstance(name, str) or not isinstance(url, str):
            raise ValueError(f"{where}: 'name' and 'url' are strings")
        proxies.append(_named_proxy(name.strip(), url.strip(), source))
    if not proxies:
        raise ValueError(f"{source}: no proxy: at least one is needed")
    return _distinct(proxies, source)


def _named_proxy(name: str, url: str, setting: str) -> NamedProxy:
    if not INSTANCE_NAME_PATTERN.fullmatch(name):
        raise ValueError(f"{setting}: bad name {name!r}: 1-63 letters, digits or -, the "
                         "Proxy's PROXY_INSTANCE_NAME")
    if not PROXY_URL_PATTERN.fullmatch(url):
        raise ValueError(f"{setting}: bad URL {url!r} for {name}: https://host:port "
                         "(http:// for development)")
    return NamedProxy(name, url.rstrip("/"))


def _distinct(proxies: list[NamedProxy], setting: str) -> tuple[NamedProxy, ...]:
    """The list, when no two of its names could be taken for each other in an id."""
    names = [proxy.name for proxy in proxies]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"{setting}: the name {name!r} is given twice")
        worker_of = re.fullmatch(r"(.+)-w([0-9]+)", name)
        if worker_of and worker_of.group(1) in names:
            raise ValueError(f"{setting}: {name!r} is also the name of worker "
                             f"{worker_of.group(2)} of {worker_of.group(1)!r}: their "
                             "transaction ids could not be told apart")
    return tuple(proxies)


def check_workers_and_metrics(config: Any, prefix: str) -> None:
    """The fields both services share: process count and metrics port."""
    if not 0 <= config.workers <= 64:
        raise ValueError(f"{prefix}WORKERS: 0 (one per core) to 64")
    if not 0 <= config.metrics_port <= 65535:
        raise ValueError(f"{prefix}METRICS_PORT: a port number, 0-65535 (0: no metrics)")
    if config.metrics_port and config.metrics_port == config.port:
        raise ValueError(f"{prefix}METRICS_PORT must differ from {prefix}PORT")


def worker_count(config: Any) -> int:
    """How many processes ``workers`` means on this machine (0: one per usable core)."""
    if config.workers:
        return config.workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def worker_instance_name(instance: str, index: int) -> str:
    """A Proxy worker's own name, ``<instance>-w<index>``, within the 63 characters a name may
    have (the instance's part shortened if need be): its heartbeat row and its transaction ids
    carry it, so that every worker's are its own."""
    suffix = f"-w{index}"
    return instance[:63 - len(suffix)] + suffix


@dataclass(frozen=True)
class ProxyConfig:
    listen_address: str = "0.0.0.0"
    port: int = 5000
    primary: NodeAddress = field(default_factory=lambda: NodeAddress("primary", "127.0.0.1"))
    replicas: tuple[NodeAddress, ...] = ()
    db_user: str = "app"
    db_password: str = ""
    db_name: str = ""
    pool_max_size: int = 16
    connect_timeout: float = 2.0
    query_timeout: float = 10.0
    max_rows: int = 1000
    max_body_bytes: int = 64 * 1024
    health_interval: float = 0.25
    ping_interval: float = 1.0
    ping_privileged: bool = True
    ping_smoothing: float = 0.3
    # Replicas: out of rotation past this lag (seconds) or with a stopped thread; back after
    # this many good checks in a row; with none left, reads go to the primary or fail (503).
    max_replica_lag: float = 1.0
    replica_recovery_checks: int = 3
    read_fallback: str = "primary"
    # The Proxy's heartbeat row on the primary, read back on each replica to measure lag.
    heartbeat_table: str = "sqlgate.heartbeat"
    # Failover (docs/failover.md): each promotion's epoch row, read on every node to tell the
    # current primary from an old one; how long writes wait for a primary while none is known
    # (a failover, a switchover) before a 503; and whether writes are accepted while the
    # primary's semi-synchronous replication is off (then an acknowledged write may live on
    # the primary's disk only, and a failover can lose it).
    epoch_table: str = "sqlgate.epoch"
    write_hold: float = 15.0
    allow_async: bool = False
    # Read-your-writes: how long a replica may wait for a token's position before the read
    # moves on; the tokens' key (default: derived from db_password, shared by every Proxy).
    causal_wait: float = 0.5
    token_secret: str = ""
    # Named in every transaction id, so that a front can tell which Proxy holds one.
    instance_name: str = ""
    max_transactions: int = -1  # -1: half of pool_max_size
    # What one key (the Gatekeeper's key name; requests without one are one anonymous key)
    # may hold of them, so that no key keeps the others out: past it, 429. -1: half of
    # max_transactions, at least 1.
    max_transactions_per_key: int = -1
    # What one key may have in flight at once outside transactions (a /query, a /batch:
    # running, or waiting for a connection or a primary), so that no key holds every pooled
    # connection while the others wait: past it, 429 at once (services/proxy/shares.py).
    # -1: three quarters of pool_max_size, at least 1, which leaves the others a quarter of
    # the pool while a key is at its share, and lets a key's burst of fast statements (the
    # eight writers and a reader of the fault tests, one key, writes held in a failover) use
    # most of it unrefused. pool_max_size or more: no share beyond the pool's own bound.
    max_statements_per_key: int = -1
    transaction_idle_timeout: float = 10.0
    transaction_max_age: float = 60.0
    # On SIGTERM the Proxy opens no new transaction and serves on until its open ones have
    # ended, for at most this long (then it rolls back those left). -1: the idle timeout + 2 s,
    # by when the idle ones have been rolled back anyway.
    drain_seconds: float = -1.0
    # HTTPS: with tls_cert set the Proxy speaks TLS only, and with tls_client_ca it refuses, at
    # the handshake, any client without a certificate from that CA (the Gatekeeper's). The
    # scope headers are trusted only because of that. Empty: plain HTTP, for development.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Database TLS: every connection verifies the server's certificate against this CA.
    db_tls_ca: str = ""
    # One database user per scope (the database enforces the scope again) and the health
    # monitor's; an empty one falls back to db_user/db_password.
    db_read_user: str = ""
    db_read_password: str = ""
    db_write_user: str = ""
    db_write_password: str = ""
    db_admin_user: str = ""
    db_admin_password: str = ""
    db_monitor_user: str = ""
    db_monitor_password: str = ""
    # The scope of a request without the scope header: the weakest, so that a caller that
    # forgot to say gets less, never more.
    default_scope: str = "read"
    # Rows are cut (truncated: true) once the answer's rows would pass this many bytes.
    max_result_bytes: int = 8 * 1024 * 1024
    # Processes serving the port(s) together: 0 one per core, N exactly N. Metrics add up
    # across them, and a transaction's requests always reach the process that holds it.
    workers: int = 1
    # Prometheus metrics (GET /metrics) on a port of their own, never on the service's port:
    # 0 none, and none recorded. With a TLS certificate it is HTTPS, and with a client CA it
    # admits only clients with a certificate from that CA (the monitoring host's).
    metrics_port: int = 0
    # One JSON line per request on stderr (request id, key name, mode, node, status, times).
    log_requests: bool = True

    ENV_PREFIX = "PROXY_"

    def __post_init__(self) -> None:
        if not self.instance_name:
            host = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname()).strip("-")
            object.__setattr__(self, "instance_name", host[:63] or "proxy")
        if not INSTANCE_NAME_PATTERN.fullmatch(self.instance_name):
            raise ValueError("PROXY_INSTANCE_NAME: 1-63 letters, digits or -")
        if self.max_transactions == -1:
            object.__setattr__(self, "max_transactions", self.pool_max_size // 2)
        if not 0 <= self.max_transactions < self.pool_max_size:
            raise ValueError(f"PROXY_MAX_TRANSACTIONS must be below "
                             f"PROXY_POOL_MAX_SIZE ({self.pool_max_size}), so that open "
                             "transactions always leave connections for other requests")
        if self.max_transactions_per_key == -1:
            object.__setattr__(self, "max_transactions_per_key",
                               max(1, self.max_transactions // 2))
        if self.max_transactions_per_key < 1 or (
                self.max_transactions and self.max_transactions_per_key > self.max_transactions):
            raise ValueError(f"PROXY_MAX_TRANSACTIONS_PER_KEY must be between 1 and "
                             f"PROXY_MAX_TRANSACTIONS ({self.max_transactions})")
        if self.max_statements_per_key == -1:
            object.__setattr__(self, "max_statements_per_key",
                               max(1, self.pool_max_size * 3 // 4))
        if self.max_statements_per_key < 1:
            raise ValueError(f"PROXY_MAX_STATEMENTS_PER_KEY must be at least 1 (-1: three "
                             f"quarters of PROXY_POOL_MAX_SIZE, {self.pool_max_size})")
        if self.transaction_idle_timeout <= 0 or self.transaction_max_age <= 0:
            raise ValueError("transaction timeouts must be positive")
        if self.drain_seconds == -1:
            object.__setattr__(self, "drain_seconds", self.transaction_idle_timeout + 2.0)
        if not 0 <= self.drain_seconds <= MAX_DRAIN_SECONDS:
            raise ValueError(f"PROXY_DRAIN_SECONDS: 0 to {MAX_DRAIN_SECONDS} seconds")
        if self.read_fallback not in READ_FALLBACKS:
            raise ValueError(f"PROXY_READ_FALLBACK: one of {', '.join(READ_FALLBACKS)}")
        if self.max_replica_lag <= 0 or self.replica_recovery_checks < 1:
            raise ValueError("PROXY_MAX_REPLICA_LAG must be positive and "
                             "PROXY_REPLICA_RECOVERY_CHECKS at least 1")
        if not 0 <= self.causal_wait <= self.query_timeout:
            raise ValueError("PROXY_CAUSAL_WAIT must be between 0 and PROXY_QUERY_TIMEOUT")
        for name in ("heartbeat_table", "epoch_table"):
            if not re.fullmatch(r"[A-Za-z0-9_]{1,64}\.[A-Za-z0-9_]{1,64}", getattr(self, name)):
                raise ValueError(f"PROXY_{name.upper()}: schema.table")
        if self.write_hold < 0:
            raise ValueError("PROXY_WRITE_HOLD must be 0 or more seconds")
        if self.default_scope not in SCOPES:
            raise ValueError(f"PROXY_DEFAULT_SCOPE: one of {', '.join(SCOPES)}")
        if self.max_result_bytes < 1:
            raise ValueError("PROXY_MAX_RESULT_BYTES must be positive")
        check_workers_and_metrics(self, self.ENV_PREFIX)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("PROXY_TLS_CERT and PROXY_TLS_KEY go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("PROXY_TLS_CLIENT_CA needs PROXY_TLS_CERT: client certificates "
                             "are only asked for over TLS")

    @property
    def nodes(self) -> tuple[NodeAddress, ...]:
        return (self.primary, *self.replicas)

    @property
    def finish_seconds(self) -> float:
        """After the drain, how long the requests in flight get to be answered: a statement's
        time limit, and a connection's."""
        return self.query_timeout + self.connect_timeout + 1.0

    @property
    def stop_seconds(self) -> float:
        """The longest a SIGTERM takes to stop the Proxy (its drain and the requests in flight),
        and a margin: a worker still running after it is killed."""
        return self.drain_seconds + self.finish_seconds + 5.0

    def for_worker(self, index: int) -> ProxyConfig:
        """The configuration of worker ``index`` of several: its own ``instance_name``
        (checked again like any other)."""
        return dataclasses.replace(self, instance_name=worker_instance_name(self.instance_name,
                                                                            index))

    def db_credentials(self, scope: str) -> tuple[str, str]:
        """The database user and password for a scope (``read``, ``write``, ``admin``) or for
        the health monitor (``monitor``); each empty field falls back to db_user/db_password."""
        user = getattr(self, f"db_{scope}_user")
        password = getattr(self, f"db_{scope}_password")
        return user or self.db_user, password or self.db_password


@dataclass(frozen=True)
class GatekeeperConfig:
    listen_address: str = "0.0.0.0"
    port: int = 443
    # HTTPS with this certificate (full chain) and key; without them the Gatekeeper refuses to
    # start, unless insecure_http allows plain HTTP (development only, as for a plain proxy_url).
    tls_cert: str = ""
    tls_key: str = ""
    insecure_http: bool = False
    # A plain-HTTP port that only redirects (308) to HTTPS and never forwards; 0: none.
    redirect_port: int = 0
    # The Proxy, over mutual TLS: its certificate is checked against proxy_ca and must name
    # proxy_tls_name (it is reached by address); the Gatekeeper shows its own client certificate.
    proxy_url: str = DEFAULT_PROXY_URL
    # Several Proxies instead (name=url,...; each name the Proxy's PROXY_INSTANCE_NAME): a
    # transaction's requests go to the Proxy its id names, the others to the least busy one.
    proxies: str = ""
    # Or a JSON file listing them (parse_proxies_file), re-read every second by each worker: a
    # Proxy added gets requests once checked healthy; one removed gets none but its open
    # transactions', for retire_seconds (above PROXY_TRANSACTION_MAX_AGE), then is let go.
    proxies_file: str = ""
    retire_seconds: float = 75.0
    proxy_ca: str = ""
    proxy_client_cert: str = ""
    proxy_client_key: str = ""
    proxy_tls_name: str = "proxy"
    # The keys: a JSON file of names, scopes, sha256 hashes and rates, reloaded when it changes.
    # An inline api_key (or api_key_file holding it) is one admin key named "default", unlimited:
    # a development shortcut.
    keys_file: str = ""
    api_key: str = ""
    api_key_file: str = ""
    max_body_bytes: int = 64 * 1024
    max_answer_bytes: int = 16 * 1024 * 1024  # a larger answer from the Proxy is a 502
    proxy_timeout: float = 30.0  # above the Proxy's worst case: failovers + query timeout
    proxy_connections: int = 64
    # What one client can hold: connections at once, seconds idle (waiting for headers) and
    # reading a body, and the size of a request's headers.
    max_connections: int = 1000
    idle_timeout: float = 30.0
    body_timeout: float = 10.0
    max_header_bytes: int = 16384
    # Processes serving the port(s) together: 0 one per core, N exactly N. Metrics add up
    # across them, and a transaction's requests always reach the process that holds it.
    workers: int = 1
    # Prometheus metrics (GET /metrics) on a port of their own, never on the service's port:
    # 0 none, and none recorded. With a TLS certificate it is HTTPS, and with a client CA it
    # admits only clients with a certificate from that CA (the monitoring host's).
    metrics_port: int = 0
    # One JSON line per request on stderr (request id, key name, mode, node, status, times).
    log_requests: bool = True
    # The metrics port's client CA (the Proxy's port uses tls_client_ca for both).
    metrics_client_ca: str = ""
    # The TCP load balancers in front (comma-separated addresses or CIDR networks): their
    # connections to the service's port must begin with a PROXY protocol v2 header naming the
    # client (HAProxy's send-proxy-v2), and nobody else's may. Empty: no balancer.
    proxy_protocol_from: str = ""
    # On SIGTERM the health check fails at once, and requests are still served for this long,
    # so that a load balancer checking it (every 1 s, down after 2 failures) stops sending new
    # connections first; then it stops listening and finishes what is in flight.
    drain_seconds: float = 3.0
    # The keys' token buckets shared by every Gatekeeper: a Redis, rediss://user@host:port
    # (TLS, the store's certificate checked against proxy_ca, this host's proxy_client_cert
    # shown to it; redis:// for development). Empty: this host's buckets only, so N
    # Gatekeepers grant a key N times its rate. The password is read from a file only the
    # service's user may read; rate_store_peers Gatekeepers share the store, and while it does
    # not answer within rate_store_timeout each grants rate / peers from its own buckets.
    rate_store: str = ""
    rate_store_password_file: str = ""
    rate_store_peers: int = 1
    rate_store_timeout: float = 0.1

    ENV_PREFIX = "GATEKEEPER_"

    def __post_init__(self) -> None:
        for name in ("port", "redirect_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"GATEKEEPER_{name.upper()}: a port number, 0-65535")
        if self.redirect_port and self.redirect_port == self.port:
            raise ValueError("GATEKEEPER_REDIRECT_PORT must differ from GATEKEEPER_PORT")
        for name in ("max_body_bytes", "max_answer_bytes", "proxy_connections",
                     "max_connections", "max_header_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"GATEKEEPER_{name.upper()} must be at least 1")
        for name in ("proxy_timeout", "idle_timeout", "body_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GATEKEEPER_{name.upper()} must be positive")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("GATEKEEPER_TLS_CERT and GATEKEEPER_TLS_KEY go together")
        if bool(self.proxy_client_cert) != bool(self.proxy_client_key):
            raise ValueError("GATEKEEPER_PROXY_CLIENT_CERT and GATEKEEPER_PROXY_CLIENT_KEY go "
                             "together")
        if self.proxies_file:
            for setting, value in (("GATEKEEPER_PROXIES", self.proxies),
                                   ("GATEKEEPER_PROXY_URL",
                                    self.proxy_url not in ("", DEFAULT_PROXY_URL))):
                if value:
                    raise ValueError(f"GATEKEEPER_PROXIES_FILE and {setting}: set one of them "
                                     "(the file is the list the Gatekeeper re-reads)")
        elif self.proxies:
            if self.proxy_url not in ("", DEFAULT_PROXY_URL):
                raise ValueError("GATEKEEPER_PROXIES and GATEKEEPER_PROXY_URL: set one of them "
                                 "(GATEKEEPER_PROXY_URL is the one-Proxy form)")
            parse_proxies(self.proxies)
        elif not PROXY_URL_PATTERN.fullmatch(self.proxy_url):
            raise ValueError("GATEKEEPER_PROXY_URL: https://host:port (http:// for development)")
        if not self.proxy_tls_name:
            raise ValueError("GATEKEEPER_PROXY_TLS_NAME: the name the Proxy's certificate carries")
        check_workers_and_metrics(self, self.ENV_PREFIX)
        if self.metrics_port and self.metrics_port in (self.port, self.redirect_port):
            raise ValueError("GATEKEEPER_METRICS_PORT must differ from the other ports")
        try:
            parse_networks(self.proxy_protocol_from)
        except ValueError as error:
            raise ValueError(f"GATEKEEPER_PROXY_PROTOCOL_FROM: {error}") from None
        if not 0 <= self.drain_seconds <= MAX_DRAIN_SECONDS:
            raise ValueError(f"GATEKEEPER_DRAIN_SECONDS: 0 to {MAX_DRAIN_SECONDS} seconds")
        if not 0 <= self.retire_seconds <= MAX_DRAIN_SECONDS:
            raise ValueError(f"GATEKEEPER_RETIRE_SECONDS: 0 to {MAX_DRAIN_SECONDS} seconds")
        if self.rate_store and not RATE_STORE_PATTERN.fullmatch(self.rate_store):
            raise ValueError("GATEKEEPER_RATE_STORE: rediss://[user@]host:port (redis:// for "
                             "development), or empty")
        if not 1 <= self.rate_store_peers <= 1000:
            raise ValueError("GATEKEEPER_RATE_STORE_PEERS: how many Gatekeepers share the "
                             "rate store, at least 1")
        if not 0 < self.rate_store_timeout <= 5:
            raise ValueError("GATEKEEPER_RATE_STORE_TIMEOUT: seconds, above 0 and at most 5")

    @property
    def proxy_list(self) -> tuple[NamedProxy, ...]:
        """The Proxies behind: ``proxies``, or the one of ``proxy_url`` (named
        ``SINGLE_PROXY_NAME``; it gets every transaction, whatever the id names, and answers
        404 itself for one it does not hold, as before there could be several)."""
        if self.proxies_file:  # as it is now: the Gatekeeper re-reads it (proxylist.py)
            return parse_proxies_file(Path(self.proxies_file).read_text(), self.proxies_file)
        if self.proxies:
            return parse_proxies(self.proxies)
        return (NamedProxy(SINGLE_PROXY_NAME, self.proxy_url.rstrip("/")),)

    @property
    def proxy_setting(self) -> str:
        """The setting that names the Proxies, for messages."""
        if self.proxies_file:
            return "GATEKEEPER_PROXIES_FILE"
        return "GATEKEEPER_PROXIES" if self.proxies else "GATEKEEPER_PROXY_URL"

    @property
    def proxy_over_tls(self) -> bool:
        """Any Proxy over HTTPS: the client certificate and the CA are then needed. Always
        with a list file: a Proxy over HTTPS may be added to it later."""
        return bool(self.proxies_file) or any(proxy.url.startswith("https://")
                                              for proxy in self.proxy_list)

    @property
    def proxy_over_plain_http(self) -> bool:
        return any(proxy.url.startswith("http://") for proxy in self.proxy_list)

    @property
    def finish_seconds(self) -> float:
        """After the drain, how long the requests in flight get: the Proxy's time to answer."""
        return self.proxy_timeout + 1.0

    @property
    def stop_seconds(self) -> float:
        """The longest a SIGTERM takes to stop the Gatekeeper, and a margin: a worker still
        running after it is killed."""
        return self.drain_seconds + self.finish_seconds + 5.0

    @property
    def proxy_protocol_networks(self) -> tuple[IPNetwork, ...]:
        """The balancers of ``proxy_protocol_from``, parsed (checked at construction)."""
        return parse_networks(self.proxy_protocol_from)

    def check_startup(self) -> None:
        """What the Gatekeeper needs to start, beyond well-formed values: keys, and TLS unless
        plain HTTP was asked for. Raises ValueError saying what is missing."""
        inline = self.inline_api_key() if self.keys_file else self.resolved_api_key()
        if inline and len(inline) < 16:
            raise ValueError("the API key must be at least 16 characters")
        if not self.tls_cert and not self.insecure_http:
            raise ValueError("no TLS certificate: set GATEKEEPER_TLS_CERT and GATEKEEPER_TLS_KEY "
                             "(GATEKEEPER_INSECURE_HTTP=true serves plain HTTP, for development "
                             "only)")
        if self.proxy_over_plain_http and not self.insecure_http:
            raise ValueError(f"{self.proxy_setting} is plain http://: use https:// with "
                             "GATEKEEPER_PROXY_CA (GATEKEEPER_INSECURE_HTTP=true allows it, for "
                             "development only)")
        if self.redirect_port and not self.tls_cert:
            raise ValueError("GATEKEEPER_REDIRECT_PORT redirects to HTTPS, which needs "
                             "GATEKEEPER_TLS_CERT")
        if self.rate_store.startswith("redis://") and not self.insecure_http:
            raise ValueError("GATEKEEPER_RATE_STORE is plain redis://: use rediss:// (TLS; "
                             "GATEKEEPER_INSECURE_HTTP=true allows it, for development only)")
        if self.rate_store:
            self.rate_store_password()

    def rate_store_password(self) -> str:
        """The rate store's password, from ``rate_store_password_file`` ("" without one),
        which nobody but its owner may read or write: it is never given in the environment
        or on a command line, where other users of the host could see it."""
        if not self.rate_store_password_file:
            return ""
        path = Path(self.rate_store_password_file)
        if path.stat().st_mode & 0o077:
            raise ValueError(f"GATEKEEPER_RATE_STORE_PASSWORD_FILE: {path} must be readable "
                             "by its owner only (mode 0600 or 0400)")
        return path.read_text().strip()

    def inline_api_key(self) -> str:
        """The development key (``api_key``, or read from ``api_key_file``); "" when none."""
        return self.resolved_api_key() if self.api_key or self.api_key_file else ""

    def resolved_api_key(self) -> str:
        """The key itself, read from ``api_key_file`` when it is not given inline."""
        if self.api_key:
            return self.api_key
        if self.api_key_file:
            return Path(self.api_key_file).read_text().strip()
        raise ValueError("no API key: set GATEKEEPER_KEYS_FILE (or GATEKEEPER_API_KEY or "
                         "GATEKEEPER_API_KEY_FILE, for development)")


def read_env_file(path: str | os.PathLike) -> dict[str, str]:
    """``KEY=value`` lines; blank lines and ``#`` comments skipped; values may be shell-quoted."""
    values: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep:
            raise ValueError(f"{path}:{number}: expected KEY=value")
        parts = shlex.split(value) if value.strip() else [""]
        values[key.strip()] = parts[0] if len(parts) == 1 else value.strip()
    return values


def _convert(raw: str, default: Any, name: str) -> Any:
    if isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
            raise ValueError(f"{name}: expected a boolean, got {raw!r}")
        return lowered in {"1", "true", "yes", "on"}
    if isinstance(default, NodeAddress):
        return NodeAddress.parse(raw)
    if isinstance(default, tuple):
        return _parse_nodes(raw)
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


def load_config(cls: type[T], argv: list[str] | None = None,
                environ: dict[str, str] | None = None) -> T:
    """Build ``cls`` from flags, environment and env file; raise ValueError on a bad value."""
    prefix = cls.ENV_PREFIX  # type: ignore[attr-defined]
    environ = dict(os.environ if environ is None else environ)
    defaults = cls()
    parser = argparse.ArgumentParser(prog=f"python -m services.{prefix.lower().rstrip('_')}")
    parser.add_argument("--env-file", default=environ.get(f"{prefix}ENV_FILE"),
                        help=f"KEY=value file (env {prefix}ENV_FILE)")
    for item in dataclasses.fields(cls):
        parser.add_argument(f"--{item.name.replace('_', '-')}", dest=item.name,
                            help=f"env {prefix}{item.name.upper()}")
    args = parser.parse_args(argv)
    merged = read_env_file(args.env_file) if args.env_file else {}
    merged.update({key: value for key, value in environ.items() if key.startswith(prefix)})
    values: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        env_name = f"{prefix}{item.name.upper()}"
        raw = getattr(args, item.name)
        if raw is None:
            raw = merged.get(env_name)
        if raw is not None:
            try:
                values[item.name] = _convert(raw, getattr(defaults, item.name), env_name)
            except ValueError as error:
                raise ValueError(f"{env_name}: {error}") from None
    return cls(**values)
