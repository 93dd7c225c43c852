"""The PROXY protocol v2: the parser alone, then a Gatekeeper behind a real HAProxy.

HAProxy (``mode tcp``, TLS passed through, ``send-proxy-v2``) connects from 127.0.0.1, the one
address the Gatekeeper believes headers from; clients bind 127.0.0.2 and 127.0.0.3, so the
Gatekeeper's request log can tell whose address it recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import ipaddress
import json
import shutil
import socket
import ssl
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cluster.loopback.balancer import show_stat
from cluster.loopback.processes import free_port, terminate
from cluster.loopback.services import ServiceProcess
from cluster.waiting import GiveUp, wait_until
from services.config import GatekeeperConfig
from services.proxyproto import (
    SIGNATURE,
    Command,
    NothingSent,
    ProxyProtocolError,
    is_from,
    parse_header,
    parse_networks,
    read_header,
    sends_signature,
)
from tests.services.gatekeeper.conftest import TlsDir, gatekeeper_env, write_keys
from tests.services.scrape import request_lines

BALANCER, CLIENT, DIRECT = "127.0.0.1", "127.0.0.2", "127.0.0.3"


# --- headers, written here byte by byte from the spec (not with the code under test) ----------

def v2(command: int, family_protocol: int, body: bytes) -> bytes:
    return SIGNATURE + bytes([0x20 | command, family_protocol]) + struct.pack("!H", len(body)) \
        + body


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def proxy_header(source: str, destination: str, source_port: int = 51234,
                 destination_port: int = 443, tlvs: bytes = b"") -> bytes:
    """A PROXY command for TCP over the addresses' family."""
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(destination)
    family_protocol = 0x11 if src.version == 4 else 0x21
    return v2(0x1, family_protocol, src.packed + dst.packed
              + struct.pack("!HH", source_port, destination_port) + tlvs)


LOCAL = v2(0x0, 0x00, b"")  # what HAProxy's health checks send


# --- the parser ---------------------------------------------------------------------------------

def test_an_ipv4_header_names_the_client_and_leaves_what_follows():
    header = proxy_header("192.0.2.7", "198.51.100.1")
    parsed = parse_header(header + b"\x16\x03\x01 a ClientHello")
    assert parsed.command is Command.PROXY
    assert (parsed.source, parsed.destination) == (("192.0.2.7", 51234), ("198.51.100.1", 443))
    assert parsed.size == len(header) == 16 + 12 and parsed.tlvs == ()


def test_an_ipv6_header():
    parsed = parse_header(proxy_header("2001:db8::7", "2001:db8::1", 40000, 8443))
    assert (parsed.source, parsed.destination) == (("2001:db8::7", 40000),
                                                   ("2001:db8::1", 8443))
    assert parsed.size == 16 + 36


def test_local_keeps_the_connections_own_address_whatever_it_carries():
    assert parse_header(LOCAL).source is None and parse_header(LOCAL).size == 16
    # LOCAL with an address block (a sender may): skipped, never believed.
    with_addresses = v2(0x0, 0x11, proxy_header("10.9.9.9", "10.0.0.1")[16:])
    parsed = parse_header(with_addresses)
    assert (parsed.command, parsed.source, parsed.size) == (Command.LOCAL, None, 28)


def test_tlvs_are_skipped():
    tlvs = tlv(0x04, b"") + tlv(0x02, b"api.example.com") + tlv(0x05, b"\x01" * 128)
    header = proxy_header("192.0.2.7", "198.51.100.1", tlvs=tlvs)
    parsed = parse_header(header + b"rest")
    assert parsed.source == ("192.0.2.7", 51234) and parsed.size == len(header)
    assert parsed.tlvs == ((0x04, b""), (0x02, b"api.example.com"), (0x05, b"\x01" * 128))


@pytest.mark.parametrize("header, says", [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32), "no signature"),
    (b"PROXY TCP4 10.9.9.9 10.0.0.1 1234 443\r\n", "no signature"),  # version 1: not spoken
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "no signature"),
    (SIGNATURE + b"\x11\x11\x00\x00", "version 1"),
    (SIGNATURE + b"\x22\x11\x00\x00", "unknown PROXY command"),
    (SIGNATURE + b"\x21\x41\x00\x00", "unknown PROXY address family"),
    (SIGNATURE + b"\x21\x13\x00\x00", "unknown PROXY address family"),
    (v2(0x1, 0x00, b""), "only TCP over IPv4 or IPv6"),      # PROXY with no address
    (v2(0x1, 0x12, bytes(12)), "only TCP over IPv4 or IPv6"),  # UDP
    (v2(0x1, 0x31, bytes(216)), "only TCP over IPv4 or IPv6"),  # unix
    (v2(0x1, 0x11, bytes(8)), "too short for its INET addresses"),
    (v2(0x1, 0x21, bytes(12)), "too short for its INET6 addresses"),
    (proxy_header("10.9.9.9", "10.0.0.1", tlvs=b"\x02\x00\x09abc"), "overruns"),
    (proxy_header("10.9.9.9", "10.0.0.1", tlvs=b"\x04\x00"), "truncated TLV"),
    (SIGNATURE + b"\x21\x11\xff\xff" + bytes(65535), "over the 2048 allowed"),
])
def test_malformed_headers_are_refused(header, says):
    with pytest.raises(ProxyProtocolError, match=says):
        parse_header(header)


def test_every_truncation_is_refused():
    header = proxy_header("2001:db8::7", "2001:db8::1", tlvs=tlv(0x02, b"api.example.com"))
    for cut in range(len(header)):
        with pytest.raises(ProxyProtocolError, match=r"truncated|no signature"):
            parse_header(header[:cut])


def test_the_balancers_setting():
    assert parse_networks("") == ()
    networks = parse_networks(" 10.0.0.5, 10.1.0.0/24 ,fd00::/64")
    assert [str(network) for network in networks] == ["10.0.0.5/32", "10.1.0.0/24", "fd00::/64"]
    assert is_from("10.1.0.77", networks) and is_from("::ffff:10.0.0.5", networks)
    assert is_from("fd00::1", networks) and not is_from("10.0.0.6", networks)
    with pytest.raises(ValueError, match="'balancer' is not an IP address"):
        parse_networks("10.0.0.5, balancer")
    with pytest.raises(ValueError, match="GATEKEEPER_PROXY_PROTOCOL_FROM"):
        GatekeeperConfig(proxy_protocol_from="10.0.0.0/33")
    assert GatekeeperConfig().proxy_protocol_networks == ()


def test_reading_from_a_socket_takes_exactly_the_header_within_its_bounds():
    async def scenario() -> None:
        reader, writer = socket.socketpair()
        with reader, writer:
            reader.setblocking(False)
            header = proxy_header("192.0.2.7", "198.51.100.1")
            writer.sendall(header[:5])  # in pieces, as a slow sender would
            pending = asyncio.ensure_future(read_header(reader, timeout=2))
            await asyncio.sleep(0.05)
            writer.sendall(header[5:] + b"\x16\x03 ClientHello")
            assert (await pending).source == ("192.0.2.7", 51234)
            assert reader.recv(100) == b"\x16\x03 ClientHello"  # left for TLS, untouched
            writer.sendall(header[:20])
            began = time.monotonic()
            with pytest.raises(ProxyProtocolError, match=r"no whole PROXY header within 0\.3s"):
                await read_header(reader, timeout=0.3)
            assert time.monotonic() - began < 1
        reader, writer = socket.socketpair()
        with reader:
            reader.setblocking(False)
            writer.close()
            with pytest.raises(NothingSent):
                await read_header(reader, timeout=1)

    asyncio.run(scenario())


def test_looking_for_a_signature_takes_nothing():
    async def scenario() -> None:
        reader, writer = socket.socketpair()
        with reader, writer:
            reader.setblocking(False)
            assert await sends_signature(reader, 0.2) is None  # nothing sent
            writer.sendall(SIGNATURE[:4])
            looking = asyncio.ensure_future(sends_signature(reader, 2))
            await asyncio.sleep(0.1)
            writer.sendall(SIGNATURE[4:])
            assert await looking is True
            assert reader.recv(100) == SIGNATURE  # still all there
            writer.sendall(b"\x16\x03\x01")
            assert await sends_signature(reader, 1) is False
            assert reader.recv(100) == b"\x16\x03\x01"

    asyncio.run(scenario())


# --- clients that choose their source address and what they send first -----------------------

class _Connection(http.client.HTTPSConnection):
    """HTTPS from ``source``, with ``first`` written in clear before the TLS handshake."""

    def __init__(self, port: int, source: str, first: bytes, context: ssl.SSLContext) -> None:
        super().__init__("127.0.0.1", port, timeout=10, context=context,
                         source_address=(source, 0))
        self.first = first
        self.tls_context = context

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        if self.first:
            self.sock.sendall(self.first)
        self.sock = self.tls_context.wrap_socket(self.sock, server_hostname=self.host)


def call(port: int, tls: TlsDir, path: str = "/health", source: str = DIRECT,
         first: bytes = b"", body: dict | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    connection = _Connection(port, source, first, tls.client.context())
    try:
        connection.request("GET" if body is None else "POST", path,
                           None if body is None else json.dumps(body).encode(),
                           {"Content-Type": "application/json", **(headers or {})})
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


@dataclass
class BalancedGatekeeper(ServiceProcess):
    """A Gatekeeper that believes PROXY headers from 127.0.0.1: its readiness is checked
    from there as the balancer checks it, with a LOCAL header."""

    tls_dir: TlsDir | None = None

    def health(self, timeout: float = 5) -> tuple[int, dict]:
        assert self.tls_dir is not None
        return call(self.port, self.tls_dir, source=BALANCER, first=LOCAL)


@pytest.fixture(scope="module")
def balanced(tls_dir, fake_proxy, keys, tmp_path_factory) -> Iterator[BalancedGatekeeper]:
    root = tmp_path_factory.mktemp("proxy-protocol")
    env = gatekeeper_env(tls_dir, fake_proxy.url, write_keys(root / "keys.json", *keys.all()),
                         GATEKEEPER_PROXY_PROTOCOL_FROM=BALANCER,
                         GATEKEEPER_REDIRECT_PORT=str(free_port()))
    service = BalancedGatekeeper("services.gatekeeper", env, log_path=root / "gatekeeper.log",
                                 tls=tls_dir.client, tls_dir=tls_dir)
    with service.running():
        yield service


# --- HAProxy ------------------------------------------------------------------------------------

@dataclass
class HAProxy:
    port: int
    stats: Path

    def server(self) -> dict[str, str]:
        (row,) = [row for row in show_stat(self.stats) if (row["pxname"], row["svname"]) == (
            "gatekeepers", "gk1")]
        return row


HAPROXY_CONFIG = """\
global
    stats socket {stats} mode 600 level admin
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend public
    bind 127.0.0.1:{port}
    default_backend gatekeepers
backend gatekeepers
    option httpchk
    http-check send meth GET uri /health ver HTTP/1.1 hdr Host 127.0.0.1
    http-check expect status 200
    default-server inter 200 fall 1 rise 1 verify required ca-file {ca}
    server gk1 127.0.0.1:{gatekeeper} send-proxy-v2 check check-send-proxy check-ssl
"""


@pytest.fixture(scope="module")
def haproxy(balanced, tls_dir, tmp_path_factory) -> Iterator[HAProxy]:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        pytest.fail("haproxy is not installed (packages.apt: make system-packages)")
    root = tmp_path_factory.mktemp("haproxy")
    balancer = HAProxy(free_port(), root / "stats.sock")
    config = root / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(stats=balancer.stats, port=balancer.port,
                                            gatekeeper=balanced.port, ca=tls_dir.ca_crt))
    with (root / "haproxy.log").open("wb") as log:
        process = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log, stderr=log)

    def up() -> bool:
        if process.poll() is not None:
            raise GiveUp(f"haproxy exited with {process.returncode}: "
                         f"{(root / 'haproxy.log').read_text()}")
        return balancer.server()["status"] == "UP"

    try:
        wait_until(up, 10, "HAProxy to see the Gatekeeper UP")
        yield balancer
    finally:
        terminate(process, grace=5)
        shutil.rmtree(root, ignore_errors=True)


def lines_with(service: ServiceProcess, request_id: str) -> list[dict]:
    assert service.log_path is not None
    return [line for line in request_lines(service.log_path)
            if line["request_id"] == request_id]


def logged_line(service: ServiceProcess, request_id: str) -> dict:
    (line,) = wait_until(lambda: lines_with(service, request_id), 10,
                         f"the request line of {request_id}")
    return line


def log_text(service: ServiceProcess) -> str:
    assert service.log_path is not None
    return service.log_path.read_text()


def query(port: int, tls: TlsDir, secret: str, source: str, first: bytes = b"") -> str:
    request_id = "pp-" + uuid.uuid4().hex
    status, answer = call(port, tls, "/query", source, first, {"sql": "SELECT 1"},
                          {"X-API-Key": secret, "X-Request-Id": request_id})
    assert status == 200 and answer["rows"] == [[1]], answer
    return request_id


# --- the Gatekeeper behind HAProxy ----------------------------------------------------------------

def test_a_client_through_haproxy_is_logged_with_its_own_address(haproxy, balanced, tls_dir,
                                                                 keys):
    request_id = query(haproxy.port, tls_dir, keys.write.secret, CLIENT)
    line = logged_line(balanced, request_id)
    assert (line["client"], line["key"], line["status"]) == (CLIENT, keys.write.name, 200)


def test_a_direct_client_without_a_header_is_served_as_before(balanced, tls_dir, keys):
    request_id = query(balanced.port, tls_dir, keys.write.secret, DIRECT)
    assert logged_line(balanced, request_id)["client"] == DIRECT


def test_a_forged_header_from_elsewhere_is_refused_and_logged(balanced, tls_dir, keys):
    refusal = f"refused a connection from {DIRECT}: it sent a PROXY protocol header"
    before = log_text(balanced).count(refusal)
    forged = proxy_header("10.9.9.9", "127.0.0.1")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        query(balanced.port, tls_dir, keys.write.secret, DIRECT, forged)
    wait_until(lambda: log_text(balanced).count(refusal) == before + 1, 5, "the refusal's line")
    time.sleep(0.3)  # a batch of request lines would be out by now
    assert log_text(balanced).count(refusal) == before + 1
    assert "10.9.9.9" not in log_text(balanced)  # neither served nor logged as that client


def test_the_balancer_may_name_an_ipv6_client(balanced, tls_dir, keys):
    request_id = query(balanced.port, tls_dir, keys.write.secret, BALANCER,
                       proxy_header("2001:db8::7", "2001:db8::1"))
    assert logged_line(balanced, request_id)["client"] == "2001:db8::7"


def test_the_balancer_must_send_its_header(balanced, tls_dir):
    warning = f"closed a connection from the load balancer {BALANCER}: not a PROXY"
    before = log_text(balanced).count(warning)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        call(balanced.port, tls_dir, source=BALANCER)  # TLS straight away
    wait_until(lambda: log_text(balanced).count(warning) == before + 1, 5, "the warning")
    # Silent: closed after the header's timeout (3 s), not the idle one (30 s).
    with socket.create_connection(("127.0.0.1", balanced.port), timeout=10,
                                  source_address=(BALANCER, 0)) as sock:
        began = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(100) == b""
        assert 2.5 < time.monotonic() - began < 6
    wait_until(lambda: "no whole PROXY header within 3s" in log_text(balanced), 5,
               "the timeout's warning")


def test_the_redirect_port_takes_no_header(balanced):
    port = int(balanced.env["GATEKEEPER_REDIRECT_PORT"])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                            source_address=(BALANCER, 0))
    try:
        connection.request("GET", "/health", headers={"Host": "127.0.0.1"})
        assert connection.getresponse().status == 308
    finally:
        connection.close()


def test_haproxys_health_checks_keep_the_gatekeeper_up(haproxy, balanced):
    time.sleep(1)  # a few more checks, every 0.2 s
    server = haproxy.server()
    assert (server["status"], server["check_status"], server["check_code"]) == (
        "UP", "L7OK", "200"), server
    assert (server["chkfail"], server["chkdown"]) == ("0", "0"), server
    assert "closed a connection from the load balancer 127.0.0.1: " \
           "the connection failed" not in log_text(balanced)
