"""The PROXY protocol, version 2: the client's address, from a TCP load balancer.

A balancer in TCP mode (HAProxy's ``mode tcp`` with ``send-proxy-v2``) passes TLS through, so
the Gatekeeper would see only the balancer's address. With ``send-proxy-v2`` the balancer
first writes a small binary header, in clear, ahead of the client's bytes (its TLS ClientHello):
the header carries the client's address. Spec:
https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt (section 2.2).

    12 bytes  signature      0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A
     1 byte   version (high nibble, always 2) and command (LOCAL 0, PROXY 1)
     1 byte   address family (high nibble) and transport protocol (low nibble)
     2 bytes  length of what follows, big-endian
     then     the addresses (and ports), then TLVs up to that length

LOCAL is a connection the balancer makes for itself (its health checks): the connection's own
address stands. PROXY relays a client: for TCP over IPv4 or IPv6 the source address is the
client's. TLVs (type, 2-byte length, value) are framed-checked and otherwise ignored.

Anybody can write such a header, so it is believed only from the balancers' addresses
(``parse_networks``); the server decides who those are (``services.http``). The reading
functions here take the bytes straight from the socket, exactly the header and never more:
what follows it is the TLS handshake, which the TLS layer must find untouched.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from dataclasses import dataclass
from enum import IntEnum

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
FIXED_BYTES = 16  # signature, version and command, family and protocol, length
VERSION = 2
# A header larger than this is refused (the length field allows 64 KiB): the addresses take
# at most 216 bytes, and what a balancer adds as TLVs (an id, the SNI, a checksum) a few
# hundred more.
MAX_HEADER_BYTES = 2048
HEADER_TIMEOUT = 3.0  # seconds a balancer has to send its whole header
PEEK_INTERVAL = 0.02  # seconds between looks at a signature that arrives in pieces

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ProxyProtocolError(ValueError):
    """A PROXY header that is malformed, truncated, too large or too slow: the connection it
    came on must be closed (the spec's "must drop"), never served."""


class NothingSent(ProxyProtocolError):
    """The connection closed before its first byte: what a balancer's plain TCP check does
    (worth no warning, unlike a header that is wrong)."""


class Command(IntEnum):
    LOCAL = 0x0
    PROXY = 0x1


class Family(IntEnum):
    UNSPEC = 0x0
    INET = 0x1
    INET6 = 0x2
    UNIX = 0x3


class Transport(IntEnum):
    UNSPEC = 0x0
    STREAM = 0x1
    DGRAM = 0x2


# Address block sizes (two addresses, two ports) of the families a PROXY command may carry.
_ADDRESS_BYTES = {Family.INET: 12, Family.INET6: 36}


@dataclass(frozen=True)
class ProxyHeader:
    """One parsed header. ``source``/``destination``: (address, port) of the client and of
    the address it reached on the balancer; None for LOCAL (the connection's own stand).
    ``size``: the bytes the header took, so what follows it is the client's."""

    command: Command
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    tlvs: tuple[tuple[int, bytes], ...]
    size: int


def starts_like_signature(data: bytes) -> bool:
    """Whether ``data`` is the signature, or the start of it, or begins with it."""
    return data[:len(SIGNATURE)] == SIGNATURE[:len(data)]


def header_size(fixed: bytes, max_bytes: int = MAX_HEADER_BYTES) -> int:
    """The whole header's size, from its first 16 bytes, which are checked here: what a
    reader needs to read exactly the header and not one byte of what follows it."""
    if len(fixed) < FIXED_BYTES:
        raise ProxyProtocolError(f"truncated PROXY header: {len(fixed)} of its first "
                                 f"{FIXED_BYTES} bytes")
    if fixed[:12] != SIGNATURE:
        raise ProxyProtocolError("not a PROXY protocol v2 header (no signature)")
    version, command = fixed[12] >> 4, fixed[12] & 0x0F
    if version != VERSION:
        raise ProxyProtocolError(f"PROXY protocol version {version}: only 2 is spoken")
    if command not in Command._value2member_map_:
        raise ProxyProtocolError(f"unknown PROXY command 0x{command:x}")
    family, transport = fixed[13] >> 4, fixed[13] & 0x0F
    if family not in Family._value2member_map_ or transport not in Transport._value2member_map_:
        raise ProxyProtocolError(f"unknown PROXY address family and protocol 0x{fixed[13]:02x}")
    (length,) = struct.unpack_from("!H", fixed, 14)
    size = FIXED_BYTES + length
    if size > max_bytes:
        raise ProxyProtocolError(f"PROXY header of {size} bytes, over the {max_bytes} allowed")
    return size


def parse_header(data: bytes, max_bytes: int = MAX_HEADER_BYTES) -> ProxyHeader:
    """The header at the start of ``data`` (bytes after it are not looked at). Raises
    ProxyProtocolError for anything but a whole, well-formed v2 header that is LOCAL, or
    PROXY for TCP over IPv4 or IPv6 (a balancer in front of an HTTPS port relays nothing
    else, and a client whose address is unknown must not pass for the balancer)."""
    size = header_size(data[:FIXED_BYTES], max_bytes)
    if len(data) < size:
        raise ProxyProtocolError(f"truncated PROXY header: {len(data)} of its {size} bytes")
    command = Command(data[12] & 0x0F)
    if command is Command.LOCAL:
        # The spec: accept, and discard the rest of the block, family included.
        return ProxyHeader(command, None, None, (), size)
    family, transport = Family(data[13] >> 4), Transport(data[13] & 0x0F)
    if family not in _ADDRESS_BYTES or transport is not Transport.STREAM:
        raise ProxyProtocolError(f"PROXY command for {family.name}/{transport.name}: only "
                                 "TCP over IPv4 or IPv6 is accepted")
    body = data[FIXED_BYTES:size]
    address_bytes = _ADDRESS_BYTES[family]
    if len(body) < address_bytes:
        raise ProxyProtocolError(f"PROXY header too short for its {family.name} addresses: "
                                 f"{len(body)} of {address_bytes} bytes")
    width = (address_bytes - 4) // 2
    source = ipaddress.ip_address(body[:width])
    destination = ipaddress.ip_address(body[width:2 * width])
    source_port, destination_port = struct.unpack_from("!HH", body, 2 * width)
    return ProxyHeader(command, (str(source), source_port),
                       (str(destination), destination_port),
                       parse_tlvs(body[address_bytes:]), size)


def parse_tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """The TLVs after the addresses, as (type, value). None is acted on; their framing is
    checked all the same, since a header whose lengths do not add up is not one to trust."""
    tlvs = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProxyProtocolError(f"truncated TLV at byte {offset} of {len(data)}")
        kind, length = data[offset], struct.unpack_from("!H", data, offset + 1)[0]
        end = offset + 3 + length
        if end > len(data):
            raise ProxyProtocolError(f"TLV 0x{kind:02x} of {length} bytes overruns the header")
        tlvs.append((kind, data[offset + 3:end]))
        offset = end
    return tuple(tlvs)


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Comma-separated addresses or CIDR networks (``10.0.0.5, 10.1.0.0/24, fd00::/64``);
    empty: none. Raises ValueError naming the entry that is neither."""
    networks = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network") from None
    return tuple(networks)


def peer_address(ip: str) -> IPAddress:
    """A connection's peer as an address; an IPv4 peer of a dual-stack socket
    (``::ffff:10.0.0.5``) as the IPv4 address it is, so IPv4 networks match it."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_from(ip: str, networks: tuple[IPNetwork, ...]) -> bool:
    """Whether the peer ``ip`` is in one of ``networks``."""
    address = peer_address(ip)
    return any(address in network for network in networks)


async def _readable(sock: socket.socket) -> None:
    """Wait until ``sock`` has something to read (or was closed)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _receive(sock: socket.socket, size: int, flags: int = 0) -> bytes:
    """Up to ``size`` bytes from the non-blocking ``sock``, once there are any; b"" at its
    end. Never more than asked: the rest stays in the socket for the TLS layer."""
    while True:
        try:
            return sock.recv(size, flags)
        except (BlockingIOError, InterruptedError):
            await _readable(sock)


async def _receive_exactly(sock: socket.socket, data: bytearray, size: int) -> None:
    while len(data) < size:
        chunk = await _receive(sock, size - len(data))
        if not chunk and not data:
            raise NothingSent("the connection closed before sending anything")
        if not chunk:
            raise ProxyProtocolError(f"truncated PROXY header: the connection closed after "
                                     f"{len(data)} bytes")
        data += chunk


async def read_header(sock: socket.socket, timeout: float = HEADER_TIMEOUT,
                      max_bytes: int = MAX_HEADER_BYTES) -> ProxyHeader:
    """Read and parse the header a balancer must send first on ``sock`` (non-blocking),
    within ``timeout`` seconds and ``max_bytes`` bytes, taking exactly its bytes from the
    socket. Raises ProxyProtocolError when it does not come whole and well-formed in time."""
    data = bytearray()
    try:
        async with asyncio.timeout(timeout):
            await _receive_exactly(sock, data, FIXED_BYTES)
            await _receive_exactly(sock, data, header_size(bytes(data), max_bytes))
    except TimeoutError:
        raise ProxyProtocolError(f"no whole PROXY header within {timeout:g}s (got "
                                 f"{len(data)} bytes)") from None
    except OSError as error:  # reset by the peer
        raise ProxyProtocolError(f"the connection failed during the PROXY header: "
                                 f"{error}") from None
    return parse_header(bytes(data), max_bytes)


async def sends_signature(sock: socket.socket, timeout: float) -> bool | None:
    """Whether a connection begins with the PROXY v2 signature, looked at without taking
    its bytes (a TLS ClientHello starts otherwise, and must reach the TLS layer whole).
    None: it sent nothing within ``timeout`` seconds, or closed, or failed."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                data = await _receive(sock, len(SIGNATURE), socket.MSG_PEEK)
                if not data:
                    return None
                if not starts_like_signature(data):
                    return False
                if len(data) == len(SIGNATURE):
                    return True
                # The start of the signature and no more yet: peeked bytes stay readable, so
                # waiting for readability would return at once; look again a little later.
                await asyncio.sleep(PEEK_INTERVAL)
    except (TimeoutError, OSError):
        return None
