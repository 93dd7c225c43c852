"""The ``sqlgate_balancer`` execution module (salt/_modules/sqlgate_balancer.py) against a real
HAProxy with the balancer's backends and server options: a Gatekeeper that stops on purpose
(drained first) has no connection cut and is not marked down; one that is lost is marked down
and its connections are cut (``on-marked-down shutdown-sessions``); ``ready`` brings a drained
one back once HAProxy finds it up.

The "Gatekeeper" is a plain HTTP server on loopback answering 200 to every request, which the
test starts and stops; a client connection through HAProxy stays open on it, idle.
"""

from __future__ import annotations

import contextlib
import http.server
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.loopback.processes import free_port, terminate
from cluster.waiting import GiveUp, wait_until
from tests.salt.saltcall import load_salt_module

CONFIG = """\
global
    stats socket {run_dir}/admin.sock mode 600 level admin
defaults
    mode tcp
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 1s
frontend https
    bind 127.0.0.1:{port}
    default_backend gatekeepers
frontend http
    bind 127.0.0.1:{redirect_port}
    default_backend gatekeepers-redirect
backend gatekeepers
    balance leastconn
    option httpchk GET /health
    http-check expect status 200
    default-server check inter 100 fall 2 rise 2 on-marked-down shutdown-sessions
    server gatekeeper 127.0.0.1:{server_port}
backend gatekeepers-redirect
    default-server check inter 100 fall 2 rise 2
    server gatekeeper 127.0.0.1:{server_port}
"""


class Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Backend:
    """The stand-in Gatekeeper: started and stopped on the same port."""

    port: int
    server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Healthy)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """No new connection is accepted; the ones open stay open."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@dataclass
class Balancer:
    port: int
    module: object
    backend: Backend

    def status(self) -> str:
        return self.module.servers()["gatekeepers/gatekeeper"]["status"]

    def idle_client(self) -> socket.socket:
        """A client connection through HAProxy to the Gatekeeper, sending nothing."""
        client = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        wait_until(lambda: self.module.servers()["gatekeepers/gatekeeper"]["sessions"] >= 1,
                   5, "the session at HAProxy", interval=0.05)
        return client


def cut(client: socket.socket, wait: float) -> bool:
    """Whether the other side closed ``client`` (within ``wait`` seconds)."""
    client.settimeout(wait)
    try:
        return client.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


@pytest.fixture
def balancer(tmp_path) -> Iterator[Balancer]:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        pytest.fail("haproxy is not installed (packages.apt: make system-packages)")
    backend = Backend(free_port())
    backend.start()
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG.format(run_dir=tmp_path, port=port, redirect_port=free_port(),
                                    server_port=backend.port))
    context: dict = {}
    module = load_salt_module("modules", "sqlgate_balancer", {})
    module.__pillar__ = {"sqlgate": {"balancer": {"run_dir": str(tmp_path)}}}
    module.__context__ = context
    with (tmp_path / "haproxy.log").open("wb") as log:
        process = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log, stderr=log)
    found = Balancer(port, module, backend)

    def up() -> bool:
        if process.poll() is not None:
            raise GiveUp(f"haproxy exited: {(tmp_path / 'haproxy.log').read_text()}")
        with contextlib.suppress(OSError):
            return {server["status"] for server in module.servers().values()} == {"UP"}
        return False

    try:
        wait_until(up, 10, "HAProxy to see the Gatekeeper UP", interval=0.05)
        yield found
    finally:
        terminate(process, grace=5)
        backend.stop()


def test_servers_lists_the_gatekeeper_in_both_backends(balancer):
    servers = balancer.module.servers()
    assert set(servers) == {"gatekeepers/gatekeeper", "gatekeepers-redirect/gatekeeper"}
    assert {server["status"] for server in servers.values()} == {"UP"}
    assert servers["gatekeepers/gatekeeper"]["check"].endswith("L7OK")


def test_a_lost_gatekeeper_is_marked_down_and_its_connections_cut(balancer):
    client = balancer.idle_client()
    balancer.backend.stop()  # its checks fail from now on
    wait_until(lambda: balancer.status() == "DOWN", 5, "the Gatekeeper marked down",
               interval=0.05)
    assert cut(client, 2.0)


def test_a_drained_gatekeeper_keeps_its_connections_while_it_stops_then_comes_back(balancer):
    client = balancer.idle_client()
    drained = balancer.module.drain("gatekeeper")
    assert drained == {"drained": True, "errors": {}, "sessions": 1}
    assert {server["status"] for server in balancer.module.servers().values()} == {"DRAIN"}
    balancer.backend.stop()  # as a restart stops the Gatekeeper: checks would fail
    assert not cut(client, 1.5)  # ten checks' time: not marked down, nothing cut
    assert balancer.status() == "DRAIN"
    client.close()
    balancer.backend.start()
    ready = balancer.module.ready("gatekeeper", timeout=10)
    assert ready["up"] is True and ready["errors"] == {}, ready
    assert {server["status"] for server in balancer.module.servers().values()} == {"UP"}
    assert "retcode" not in balancer.module.__context__
    # Back in service: a new connection reaches it.
    with socket.create_connection(("127.0.0.1", balancer.port), timeout=5) as again:
        again.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert again.recv(64).startswith(b"HTTP/1.0 200")


def test_an_unknown_gatekeeper_is_an_error_the_orchestration_sees(balancer):
    drained = balancer.module.drain("gatekeeper9")
    assert drained["drained"] is False and drained["errors"]
    assert balancer.module.__context__["retcode"] == 1
