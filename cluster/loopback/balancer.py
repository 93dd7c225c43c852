"""HAProxy as the loopback stack's balancer: ``mode tcp``, TLS passed through, ``leastconn``,
each Gatekeeper checked on ``/health`` over TLS with a PROXY v2 header, as the local cluster's
balancer host runs it (``salt/sqlgate/balancer/files/haproxy.cfg.jinja``).

It connects to the Gatekeepers from ``BALANCER_SOURCE`` (127.0.0.2, also on ``lo``), the one
address the Gatekeepers are told to take PROXY headers from
(``GATEKEEPER_PROXY_PROTOCOL_FROM``): everyone else on 127.0.0.1 (the readiness checks of
``ServiceProcess``, a test's direct client) still reaches them as before, without a header.
"""

from __future__ import annotations

import csv
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cluster.loopback.processes import free_port, terminate
from cluster.waiting import GiveUp, wait_until
from services.client import Client, TlsFiles

BALANCER_SOURCE = "127.0.0.2"

CONFIG = """\
global
    maxconn 4096
    stats socket {stats} mode 600 level admin
defaults
    mode tcp
    timeout connect 2s
    timeout check 2s
    timeout client 5m
    timeout server 5m
    retries 2
    option redispatch
"""

FRONTEND = """\
frontend {name}
    bind 127.0.0.1:{port}
    default_backend {name}
backend {name}
    balance leastconn
    option httpchk GET /health
    http-check expect status 200
    default-server check inter 1s fall 2 rise 2 check-ssl verify required ca-file {ca} \
check-sni gatekeeper verifyhost gatekeeper send-proxy-v2 check-send-proxy source {source}
{servers}
"""


def show_stat(stats_socket: Path) -> list[dict[str, str]]:
    """``show stat`` on an HAProxy admin socket, as rows by column name."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(stats_socket))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return list(csv.DictReader(data.decode().removeprefix("# ").splitlines()))


@dataclass
class Frontend:
    """One public port of the balancer and the Gatekeepers (loopback ports) behind it."""

    name: str
    gatekeepers: tuple[int, ...]
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@dataclass
class HAProxy:
    """An HAProxy process with ``frontends``, its files in ``directory`` (made by the caller,
    removed by it), stopped by its own pid."""

    directory: Path
    ca_file: Path
    frontends: list[Frontend]
    process: subprocess.Popen | None = None

    @property
    def stats(self) -> Path:
        return self.directory / "haproxy-stats.sock"

    @property
    def log_path(self) -> Path:
        return self.directory / "haproxy.log"

    def config(self) -> str:
        return CONFIG.format(stats=self.stats) + "".join(
            FRONTEND.format(name=frontend.name, port=frontend.port, ca=self.ca_file,
                            source=BALANCER_SOURCE,
                            servers="\n".join(f"    server gk{number} 127.0.0.1:{port}"
                                              for number, port in
                                              enumerate(frontend.gatekeepers, 1)))
            for frontend in self.frontends)

    def start(self, timeout: float = 15) -> None:
        """Start it and wait until it sees every Gatekeeper UP."""
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            raise RuntimeError("haproxy is not installed (packages.apt: make system-packages)")
        config = self.directory / "haproxy.cfg"
        config.write_text(self.config())
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log,
                                            stderr=log)
        try:
            wait_until(self._all_up, timeout, "HAProxy to see every Gatekeeper UP")
        except BaseException:
            self.stop()
            raise

    def _all_up(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise GiveUp(f"haproxy exited: {self.log_path.read_text()}")
        try:
            servers = self.servers()
        except OSError:  # the stats socket is not there yet
            return False
        return bool(servers) and all(row["status"] == "UP" for row in servers)

    def show_stat(self) -> list[dict[str, str]]:
        return show_stat(self.stats)

    def servers(self) -> list[dict[str, str]]:
        """The rows of the Gatekeepers (not the frontends' and backends' totals)."""
        return [row for row in self.show_stat()
                if row["svname"] not in ("FRONTEND", "BACKEND")]

    def stop(self) -> None:
        terminate(self.process, grace=5)
        self.process = None


@dataclass(frozen=True)
class Endpoint:
    """A public URL and how to verify it: what ``loadtest.bench_overhead.check_answers``
    needs of a service, for a balancer's frontend (TLS passes through to a Gatekeeper)."""

    url: str
    tls: TlsFiles

    def client(self, api_key: str = "", timeout: float = 30.0) -> Client:
        return Client(self.url, api_key, timeout, tls=self.tls)
