"""Typed service configuration, read once at start-up.

Each field can come from (strongest first) a command-line flag, an environment variable, or an
env file (``KEY=value`` lines, as written by the Salt states), else its default. The variable
name is the service's prefix plus the field name in upper case: ``PROXY_PORT``,
``GATEKEEPER_API_KEY``...
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from services.contract import SCOPES

T = TypeVar("T")

# What reads do when no replica is in rotation: the primary serves them, or they fail (503).
READ_FALLBACKS = ("primary", "error")


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
    transaction_idle_timeout: float = 10.0
    transaction_max_age: float = 60.0
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
        if not re.fullmatch(r"[A-Za-z0-9-]{1,63}", self.instance_name):
            raise ValueError("PROXY_INSTANCE_NAME: 1-63 letters, digits or -")
        if self.max_transactions == -1:
            object.__setattr__(self, "max_transactions", self.pool_max_size // 2)
        if not 0 <= self.max_transactions < self.pool_max_size:
            raise ValueError(f"PROXY_MAX_TRANSACTIONS must be below "
                             f"PROXY_POOL_MAX_SIZE ({self.pool_max_size}), so that open "
                             "transactions always leave connections for other requests")
        if self.transaction_idle_timeout <= 0 or self.transaction_max_age <= 0:
            raise ValueError("transaction timeouts must be positive")
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
    proxy_url: str = "https://127.0.0.1:5000"
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
        if not re.fullmatch(r"https?://[^/\s]+/?", self.proxy_url):
            raise ValueError("GATEKEEPER_PROXY_URL: https://host:port (http:// for development)")
        if not self.proxy_tls_name:
            raise ValueError("GATEKEEPER_PROXY_TLS_NAME: the name the Proxy's certificate carries")
        check_workers_and_metrics(self, self.ENV_PREFIX)
        if self.metrics_port and self.metrics_port in (self.port, self.redirect_port):
            raise ValueError("GATEKEEPER_METRICS_PORT must differ from the other ports")

    @property
    def proxy_over_tls(self) -> bool:
        return self.proxy_url.startswith("https://")

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
        if not self.proxy_over_tls and not self.insecure_http:
            raise ValueError("GATEKEEPER_PROXY_URL is plain http://: use https:// with "
                             "GATEKEEPER_PROXY_CA (GATEKEEPER_INSECURE_HTTP=true allows it, for "
                             "development only)")
        if self.redirect_port and not self.tls_cert:
            raise ValueError("GATEKEEPER_REDIRECT_PORT redirects to HTTPS, which needs "
                             "GATEKEEPER_TLS_CERT")

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
