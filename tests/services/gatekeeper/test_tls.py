"""HTTPS to the Gatekeeper, the redirect-only plain port, and mutual TLS to the Proxy."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from cryptography import x509

from cluster.loopback.processes import free_port
from cluster.loopback.services import PROJECT_ROOT, ServiceProcess
from cluster.pki import CertificateAuthority
from cluster.waiting import wait_until
from services.client import request
from tests.services.gatekeeper.conftest import FakeProxy, gatekeeper_process, write_keys


@pytest.fixture(scope="module")
def keys_path(keys, tmp_path_factory):
    return write_keys(tmp_path_factory.mktemp("tls-keys") / "keys.json", *keys.all())


@pytest.fixture(scope="module")
def served(tls_dir, fake_proxy, keys_path, tmp_path_factory) -> Iterator[ServiceProcess]:
    """HTTPS on one port, the redirect on another."""
    service = gatekeeper_process(tls_dir, fake_proxy.url,
                                 tmp_path_factory.mktemp("tls") / "gatekeeper.log", keys_path,
                                 GATEKEEPER_REDIRECT_PORT=str(free_port()))
    with service.running():
        yield service


def redirect_port(service: ServiceProcess) -> int:
    return int(service.env["GATEKEEPER_REDIRECT_PORT"])


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=30)


def test_curl_over_https_with_the_ca_works(served, tls_dir, keys):
    done = curl("--cacert", tls_dir.ca_crt, "-H", f"X-API-Key: {keys.write.secret}",
                "-H", "Content-Type: application/json", "-d", '{"sql": "SELECT 1"}',
                "-w", "\n%{http_code}", f"https://127.0.0.1:{served.port}/query")
    body, status = done.stdout.rsplit("\n", 1)
    assert (done.returncode, status) == (0, "200"), done.stderr
    assert json.loads(body)["rows"] == [[1]]


def test_a_client_without_the_ca_refuses_the_certificate(served):
    done = curl(f"https://127.0.0.1:{served.port}/health")
    assert done.returncode == 60  # curl: the peer's certificate cannot be verified


def test_plain_http_on_the_https_port_reaches_nothing(served, keys, fake_proxy):
    request_id = uuid.uuid4().hex
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        conn.request("POST", "/query", body=b'{"sql": "SELECT 1"}',
                     headers={"X-API-Key": keys.write.secret, "X-Request-Id": request_id})
        conn.getresponse().read()
    conn.close()
    assert not [seen for seen in fake_proxy.seen if seen.headers.get("X-Request-Id") == request_id]


@pytest.mark.parametrize(("method", "path"), [("GET", "/health"), ("POST", "/query?x=1"),
                                              ("DELETE", "/anything")])
def test_the_plain_port_only_redirects_to_https(served, keys, fake_proxy, method, path):
    request_id = uuid.uuid4().hex
    conn = http.client.HTTPConnection("127.0.0.1", redirect_port(served), timeout=10)
    conn.request(method, path, body=b'{"sql": "SELECT 1"}' if method == "POST" else None,
                 headers={"X-API-Key": keys.write.secret, "X-Request-Id": request_id,
                          "Host": f"127.0.0.1:{redirect_port(served)}"})
    answer = conn.getresponse()
    payload = json.loads(answer.read())
    conn.close()
    assert answer.status == 308
    assert answer.getheader("Location") == f"https://127.0.0.1:{served.port}{path}"
    assert "plain HTTP is not served" in payload["error"]
    assert "unencrypted: replace that key" in payload["error"]
    assert not [seen for seen in fake_proxy.seen if seen.headers.get("X-Request-Id") == request_id]


def test_curl_following_the_redirect_lands_on_https(served, tls_dir, keys):
    done = curl("-L", "--cacert", tls_dir.ca_crt, "-H", f"X-API-Key: {keys.write.secret}",
                "-H", "Content-Type: application/json", "-d", '{"sql": "SELECT 1"}',
                "-w", "\n%{http_code} %{num_redirects}",
                f"http://127.0.0.1:{redirect_port(served)}/query")
    body, status = done.stdout.rsplit("\n", 1)
    assert status == "200 1", done.stderr
    assert json.loads(body)["rows"] == [[1]]  # 308 kept the method and the body


def test_a_redirect_without_a_usable_host_is_a_400(served):
    with socket.create_connection(("127.0.0.1", redirect_port(served))) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")  # no Host header to redirect to
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        assert answer.status == 400
        assert "Host" in json.loads(answer.read())["error"]


def run_gatekeeper(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.gatekeeper"], capture_output=True,
                          text=True, env={"PATH": os.environ["PATH"], **env}, timeout=30,
                          cwd=PROJECT_ROOT)


def test_it_refuses_to_start_without_tls(keys_path, fake_proxy):
    done = run_gatekeeper({"GATEKEEPER_KEYS_FILE": str(keys_path),
                           "GATEKEEPER_PROXY_URL": fake_proxy.url,
                           "GATEKEEPER_PORT": str(free_port())})
    assert done.returncode != 0
    assert "no TLS certificate" in done.stderr and "GATEKEEPER_INSECURE_HTTP" in done.stderr


def test_it_refuses_a_plain_proxy_url_without_insecure_http(tls_dir, keys_path):
    done = run_gatekeeper({"GATEKEEPER_KEYS_FILE": str(keys_path),
                           "GATEKEEPER_TLS_CERT": tls_dir.gatekeeper_crt,
                           "GATEKEEPER_TLS_KEY": tls_dir.gatekeeper_key,
                           "GATEKEEPER_PROXY_URL": "http://127.0.0.1:5000",
                           "GATEKEEPER_PORT": str(free_port())})
    assert done.returncode != 0 and "plain http://" in done.stderr


def test_insecure_http_serves_plain_http_for_development(fake_proxy, keys, tls_dir, tmp_path):
    service = ServiceProcess("services.gatekeeper", {
        "GATEKEEPER_LISTEN_ADDRESS": "127.0.0.1", "GATEKEEPER_INSECURE_HTTP": "true",
        "GATEKEEPER_API_KEY": keys.admin.secret, "GATEKEEPER_PROXY_URL": fake_proxy.url,
        "GATEKEEPER_PROXY_CA": tls_dir.ca_crt,
        "GATEKEEPER_PROXY_CLIENT_CERT": tls_dir.gatekeeper_crt,
        "GATEKEEPER_PROXY_CLIENT_KEY": tls_dir.gatekeeper_key,
    }, log_path=tmp_path / "gatekeeper.log")
    with service.running():
        answer = request(service.url + "/query", {"sql": "SELECT 1"},
                         {"X-API-Key": keys.admin.secret})
        assert answer.status == 200
        assert (answer.json["key"], answer.json["scope"]) == ("default", "admin")


# --- to the Proxy --------------------------------------------------------------------------

def test_the_key_s_scope_and_name_go_to_the_proxy_never_its_secret(served, keys, fake_proxy):
    for key in (keys.read, keys.write, keys.admin):
        request_id = uuid.uuid4().hex
        answer = request(served.url + "/query", {"sql": "SELECT 1"},
                         {"X-API-Key": key.secret, "X-Request-Id": request_id,
                          # a client cannot pass its own: the Gatekeeper sets them
                          "X-Sqlgate-Scope": "admin", "X-Sqlgate-Key": "someone"},
                         tls=served.tls)
        assert answer.status == 200, answer.json
        assert (answer.json["scope"], answer.json["key"]) == (key.scope, key.name)
        (seen,) = [seen for seen in fake_proxy.seen
                   if seen.headers.get("X-Request-Id") == request_id]
        assert key.secret not in json.dumps(seen.headers)
        assert "X-Api-Key" not in seen.headers


@pytest.mark.parametrize(("proxy_cert", "client_cert", "tls_name"), [
    ("proxy", False, None),            # the Gatekeeper shows no client certificate
    ("wrongname", True, None),         # the Proxy's certificate does not name "proxy"
    ("stranger", True, None),          # nor comes from the cluster CA
])
def test_mutual_tls_to_the_proxy_fails_closed_and_quietly(tls_dir, keys, tmp_path, proxy_cert,
                                                          client_cert, tls_name):
    if proxy_cert == "stranger":
        stranger = tls_dir.root / "stranger"
        shutil.copy(stranger / "gatekeeper.crt", tls_dir.root / "stranger.crt")
        shutil.copy(stranger / "gatekeeper.key", tls_dir.root / "stranger.key")
    with FakeProxy(tls_dir, cert=proxy_cert).running() as proxy:
        overrides = {} if client_cert else {"GATEKEEPER_PROXY_CLIENT_CERT": "",
                                            "GATEKEEPER_PROXY_CLIENT_KEY": ""}
        service = gatekeeper_process(tls_dir, proxy.url, tmp_path / "gatekeeper.log",
                                     write_keys(tmp_path / "keys.json", *keys.all()),
                                     **overrides)
        with service.running(expect_healthy=False):
            answer = request(service.url + "/query", {"sql": "SELECT 1"},
                             {"X-API-Key": keys.write.secret}, tls=service.tls)
            assert answer.status in (502, 503)
            assert answer.json["error"] in ("the proxy is unreachable",
                                            "bad answer from the proxy")
            assert service.health()[0] == 503
        assert proxy.requests_to("/query") == []
        log = (tmp_path / "gatekeeper.log").read_text()
        assert "request " in log and ("certificate" in log.lower() or "ssl" in log.lower())


def test_the_proxy_s_certificate_name_can_be_configured(tls_dir, keys, tmp_path):
    with FakeProxy(tls_dir, cert="wrongname").running() as proxy:
        service = gatekeeper_process(tls_dir, proxy.url, tmp_path / "gatekeeper.log",
                                     write_keys(tmp_path / "keys.json", *keys.all()),
                                     GATEKEEPER_PROXY_TLS_NAME="other-name")
        with service.running():
            answer = request(service.url + "/query", {"sql": "SELECT 1"},
                             {"X-API-Key": keys.write.secret}, tls=service.tls)
            assert answer.status == 200


def test_a_renewed_certificate_is_served_without_a_restart(tls_dir, fake_proxy, keys,
                                                           tmp_path):
    cert, key = tmp_path / "public.crt", tmp_path / "public.key"
    shutil.copy(tls_dir.gatekeeper_crt, cert)
    shutil.copy(tls_dir.gatekeeper_key, key)
    service = gatekeeper_process(tls_dir, fake_proxy.url, tmp_path / "gatekeeper.log",
                                 write_keys(tmp_path / "keys.json", *keys.all()),
                                 GATEKEEPER_TLS_CERT=str(cert), GATEKEEPER_TLS_KEY=str(key))

    def served_serial() -> int:
        pem = ssl.get_server_certificate(("127.0.0.1", service.port))
        return x509.load_pem_x509_certificate(pem.encode()).serial_number

    with service.running():
        pid, before = service.process.pid, served_serial()
        ca = CertificateAuthority.create("renewed")
        ca.issue("gatekeeper", ["127.0.0.1"]).write(tmp_path / "renewed", "public")
        # The key first, then the certificate, as a renewal tool might: never a mismatch for long.
        shutil.copy(tmp_path / "renewed" / "public.key", key)
        shutil.copy(tmp_path / "renewed" / "public.crt", cert)
        wait_until(lambda: served_serial() != before, 5, "the renewed certificate")
        assert service.process.pid == pid
