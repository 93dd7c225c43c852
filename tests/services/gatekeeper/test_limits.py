"""What one client can make the Gatekeeper read, hold and wait for, and what it gets back."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from cluster.waiting import wait_until
from services.client import request
from tests.services.gatekeeper.conftest import (
    gatekeeper_process,
    https_connection,
    read_json,
    write_keys,
)

MiB = 1024 * 1024
CAP = 4096


@pytest.fixture(scope="module")
def limited(tls_dir, fake_proxy, keys, tmp_path_factory) -> Iterator:
    """A Gatekeeper with tight limits in front of the stand-in Proxy."""
    root = tmp_path_factory.mktemp("limits")
    service = gatekeeper_process(
        tls_dir, fake_proxy.url, root / "gatekeeper.log",
        write_keys(root / "keys.json", *keys.all()),
        GATEKEEPER_MAX_BODY_BYTES=str(CAP), GATEKEEPER_IDLE_TIMEOUT="1",
        GATEKEEPER_BODY_TIMEOUT="1", GATEKEEPER_MAX_HEADER_BYTES="4096",
        GATEKEEPER_MAX_ANSWER_BYTES=str(MiB), GATEKEEPER_PROXY_TIMEOUT="1.5")
    with service.running():
        yield service


def forwarded(fake_proxy, request_id: str) -> list:
    return [seen for seen in fake_proxy.seen if seen.headers.get("X-Request-Id") == request_id]


def query_body(size: int) -> bytes:
    body = b'{"sql": "SELECT \'' + b"x" * size + b'\'"}'
    return body


# --- bodies over the cap -----------------------------------------------------------------------

def test_a_12_mib_declared_body_gets_a_413_the_client_reads(limited, keys, fake_proxy):
    """The client sends the whole body before it reads: the Gatekeeper answers at once, reads
    and drops the rest, and the client gets the answer instead of a reset connection."""
    conn = https_connection(limited, timeout=30)
    request_id = uuid.uuid4().hex
    conn.request("POST", "/query", body=query_body(12 * MiB),
                 headers={"X-API-Key": keys.write.secret, "X-Request-Id": request_id,
                          "Content-Type": "application/json"})
    answer = conn.getresponse()
    assert answer.status == 413
    assert answer.getheader("Content-Type") == "application/json"
    assert f"larger than {CAP} bytes" in read_json(answer)["error"]
    conn.close()
    assert forwarded(fake_proxy, request_id) == []


def test_a_client_that_stops_after_the_headers_gets_the_413_too(limited, keys):
    conn = https_connection(limited)
    conn.putrequest("POST", "/query")
    conn.putheader("X-API-Key", keys.write.secret)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(12 * MiB))
    conn.endheaders()  # and nothing more: it waits for an answer
    started = time.monotonic()
    answer = conn.getresponse()
    assert answer.status == 413
    assert "larger than" in read_json(answer)["error"]
    assert time.monotonic() - started < 1.0  # not after the body timeout
    conn.close()


def test_curl_with_expect_100_continue_gets_the_413_without_sending(limited, keys, tls_dir,
                                                                    tmp_path):
    body = tmp_path / "body.json"
    body.write_bytes(query_body(12 * MiB))
    done = subprocess.run(
        ["curl", "-sS", "--cacert", tls_dir.ca_crt, "-H", f"X-API-Key: {keys.write.secret}",
         "-H", "Content-Type: application/json", "--data-binary", f"@{body}",
         "-w", "\n%{http_code} %{size_upload}", f"https://127.0.0.1:{limited.port}/query"],
        capture_output=True, text=True, timeout=30, check=True)
    payload, status_line = done.stdout.rsplit("\n", 1)
    status, uploaded = status_line.split()
    assert status == "413"
    assert "larger than" in json.loads(payload)["error"]
    assert float(uploaded) < MiB  # curl waited for 100 Continue, got the 413 and stopped


@pytest.mark.parametrize("total", [CAP + 2000, 12 * MiB])
def test_a_chunked_body_over_the_cap_gets_413(limited, keys, fake_proxy, total):
    conn = https_connection(limited, timeout=30)
    request_id = uuid.uuid4().hex
    piece = b"x" * 8192
    chunks = [b'{"sql": "SELECT \'', *([piece] * (total // len(piece))),
              b"x" * (total % len(piece)), b"'\"}"]
    conn.request("POST", "/query", body=iter(chunks), encode_chunked=True,
                 headers={"X-API-Key": keys.write.secret, "X-Request-Id": request_id,
                          "Content-Type": "application/json"})
    answer = conn.getresponse()
    assert answer.status == 413
    assert f"larger than {CAP}" in read_json(answer)["error"]
    conn.close()
    assert forwarded(fake_proxy, request_id) == []


def test_a_wrong_key_with_a_large_body_gets_its_401(limited):
    conn = https_connection(limited, timeout=30)
    conn.request("POST", "/query", body=query_body(3 * MiB),
                 headers={"X-API-Key": "wrong", "Content-Type": "application/json"})
    answer = conn.getresponse()
    assert answer.status == 401
    assert "X-API-Key" in read_json(answer)["error"]
    conn.close()


def test_a_refusal_with_a_small_body_keeps_the_connection(limited, keys):
    """A 401 (or 429) after a body within the cap: the next request goes on the same
    connection, with no new TLS handshake."""
    conn = https_connection(limited)
    conn.request("POST", "/query", body=query_body(100), headers={"X-API-Key": "wrong"})
    answer = conn.getresponse()
    assert answer.status == 401 and answer.getheader("Connection") is None
    read_json(answer)
    conn.request("POST", "/query", body=b'{"sql": "SELECT 1"}',
                 headers={"X-API-Key": keys.write.secret})
    answer = conn.getresponse()
    assert answer.status == 200, read_json(answer)
    conn.close()


# --- time and size limits ----------------------------------------------------------------------

def tls_socket(port: int, ca_file: str) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=ca_file)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(sock, server_hostname="127.0.0.1")


def closed_within(sock: ssl.SSLSocket, seconds: float) -> bool:
    """Whether the server closes the connection within ``seconds`` (it sends nothing)."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except (ConnectionResetError, ssl.SSLError):
        return True


def test_an_idle_connection_is_closed(limited, tls_dir):
    with tls_socket(limited.port, tls_dir.ca_crt) as sock:
        assert closed_within(sock, 5)


def test_a_slow_body_is_cut_at_the_body_timeout(limited, keys, tls_dir):
    with tls_socket(limited.port, tls_dir.ca_crt) as sock:
        sock.sendall(b"POST /query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"X-API-Key: " + keys.write.secret.encode() +
                     b"\r\nContent-Length: 100\r\n\r\n{\"sql\": ")
        started = time.monotonic()
        assert closed_within(sock, 5)
        assert time.monotonic() - started < 4


def test_headers_over_the_cap_are_not_served(limited, keys, fake_proxy):
    request_id = uuid.uuid4().hex
    answer = request(limited.url + "/query", {"sql": "SELECT 1"},
                     {"X-API-Key": keys.write.secret, "X-Pad": "p" * 1000,
                      "X-Request-Id": request_id}, tls=limited.tls)
    assert answer.status == 200  # within the cap
    with pytest.raises((ConnectionError, OSError)):
        request(limited.url + "/query", {"sql": "SELECT 1"},
                {"X-API-Key": keys.write.secret, "X-Pad": "p" * 5000}, tls=limited.tls)


# --- what comes back from the Proxy ------------------------------------------------------------

@pytest.mark.parametrize("order", ["big:2000000", "stream:2000000000"])
def test_an_answer_over_the_cap_is_a_502_read_no_further(limited, keys, fake_proxy, order):
    streamed_before = len(fake_proxy.streamed)
    answer = request(limited.url + "/query", {"sql": f"SELECT '{order}'"},
                     {"X-API-Key": keys.write.secret}, tls=limited.tls, timeout=30)
    assert answer.status == 502
    assert answer.json["error"] == f"the answer is larger than {MiB} bytes"
    if order.startswith("stream"):
        # 2 GB on offer: the Gatekeeper dropped the connection, having let little through.
        sent = wait_until(lambda: fake_proxy.streamed[streamed_before:], 10,
                          "the stream to end")
        assert sent[0] < 16 * MiB, sent


def test_a_proxy_that_does_not_answer_in_time_is_a_504(limited, keys):
    answer = request(limited.url + "/query", {"sql": "SELECT 'slow:3'"},
                     {"X-API-Key": keys.write.secret}, tls=limited.tls)
    assert answer.status == 504
    assert answer.json["error"] == "the proxy did not answer in time"


# --- connections -------------------------------------------------------------------------------

def test_past_max_connections_clients_get_a_503_with_retry_after(tls_dir, fake_proxy, keys,
                                                                 tmp_path):
    service = gatekeeper_process(tls_dir, fake_proxy.url, tmp_path / "gatekeeper.log",
                                 write_keys(tmp_path / "keys.json", *keys.all()),
                                 GATEKEEPER_MAX_CONNECTIONS="3")
    with service.running():
        held = []
        # Each is served once, and stays open (keep-alive): three are the limit.
        for _ in range(3):
            conn = https_connection(service)
            conn.request("GET", "/openapi.json")
            assert conn.getresponse().read()
            held.append(conn)
        answer = request(service.url + "/openapi.json", tls=service.tls)
        assert answer.status == 503
        assert answer.headers["Retry-After"] == "1"
        assert "connection limit" in answer.json["error"]
        held.pop().close()
        assert wait_until(lambda: request(service.url + "/openapi.json",
                                          tls=service.tls).status == 200,
                          5, "a free connection")
        for conn in held:
            conn.close()
