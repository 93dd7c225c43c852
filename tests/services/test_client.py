"""``services.client.Client`` on a kept-alive connection that the server (or a balancer in
front of it: HAProxy cuts the sessions of a Gatekeeper it marks down) closes while it is idle:
the next request goes out on a new connection instead of failing on the dead one.

A real HTTP server on loopback that answers one request per connection with keep-alive
announced, then closes the connection after a moment.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from services.client import Client

ANSWER = json.dumps({"ok": True}).encode()


@pytest.fixture
def closing_server() -> Iterator[tuple[str, list[int]]]:
    """A server that answers the first request of each connection and closes the connection
    1 s later, as an idle connection cut by the other side; the ports its peers used."""
    listener = socket.create_server(("127.0.0.1", 0))
    peers: list[int] = []
    stop = threading.Event()

    def serve(connection: socket.socket) -> None:
        with connection:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                               b"Connection: keep-alive\r\nContent-Length: "
                               + str(len(ANSWER)).encode() + b"\r\n\r\n" + ANSWER)
            time.sleep(1.0)

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, (_, port) = listener.accept()
            except TimeoutError:
                continue
            peers.append(port)
            threading.Thread(target=serve, args=(connection,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", peers
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_a_connection_closed_while_idle_is_replaced_before_a_request(closing_server):
    url, peers = closing_server
    with Client(url) as client:
        assert client.query("SELECT 1").json == {"ok": True}
        time.sleep(1.5)  # the server closed the connection meanwhile
        assert client.query("SELECT 2").json == {"ok": True}
        time.sleep(1.5)
        assert client.query("SELECT 3").json == {"ok": True}
    assert len(peers) == 3 and len(set(peers)) == 3  # each request on a connection of its own


def test_a_kept_alive_connection_the_server_keeps_is_reused(closing_server):
    """Without a close in between, the connection stays (no needless new connection)."""
    url, peers = closing_server
    with Client(url) as client:
        assert client.query("SELECT 1").json == {"ok": True}
        with pytest.raises(OSError):  # this server answers one request per connection
            client.query("SELECT 2")
    assert len(peers) == 1
