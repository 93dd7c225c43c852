"""Reaching a cluster over HTTPS (``cluster.access``): the printed curl line checks the
Gatekeeper against the cluster CA, and the health checks of ``up`` and ``status`` verify the
certificate, also one the user brought for a DNS name that does not point at the cluster yet."""

from __future__ import annotations

import http.server
import shlex
import ssl
import subprocess
import threading
from collections.abc import Iterator

import jinja2
import pytest

from cluster import access
from cluster.pki import CertificateAuthority, Issued


@pytest.fixture
def https_server(tmp_path) -> Iterator:
    """An HTTPS server on 127.0.0.1 answering 200 on /health, with a certificate that the
    test chooses (``serve(issued)`` -> port)."""
    servers = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    def serve(issued: Issued) -> int:
        cert, key, _ = issued.write(tmp_path, f"server{len(servers)}")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_curl_line_checks_the_gatekeeper_against_the_cluster_ca():
    line = access.curl_line("https://10.0.0.3", "$(cat key)", "/home/me/.cluster/local-ca.crt")
    assert line.startswith("curl -s --cacert /home/me/.cluster/local-ca.crt -X POST "
                           "https://10.0.0.3/query ")
    assert "--cacert" not in access.curl_line("https://api.example.test", "$(cat key)")
    lines = access.access_lines("https://10.0.0.3", "in key", "$(cat key)", "/ca.crt")
    assert lines[1].startswith("CA:         /ca.crt") and "--cacert /ca.crt" in lines[-1]


def test_health_is_checked_against_the_cluster_ca(https_server, tmp_path):
    ca = CertificateAuthority.create("test")
    port = https_server(ca.issue("gatekeeper", ["127.0.0.1"]))
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text(ca.cert_pem)
    url = f"https://127.0.0.1:{port}"
    assert access.health_ok(url, ca_file=str(ca_file))
    assert not access.health_ok(url)  # the system's CAs do not know the cluster's
    other = tmp_path / "other.crt"
    other.write_text(CertificateAuthority.create("other").cert_pem)
    assert not access.health_ok(url, ca_file=str(other))
    assert access.wait_for_health(url, deadline_s=5, ca_file=str(ca_file))


def test_health_of_a_users_certificate_before_its_name_points_here(https_server, tmp_path):
    issued = CertificateAuthority.create("someone's").issue("api.example.test")
    port = https_server(issued)
    kept = tmp_path / "public.crt"
    kept.write_text(issued.cert)
    url = f"https://api.example.test:{port}"
    assert access.health_ok(url, also_trust=str(kept), address="127.0.0.1")
    assert not access.health_ok(url, address="127.0.0.1")  # not publicly trusted
    # The name is still checked: the certificate is not one for the address.
    assert not access.health_ok(f"https://127.0.0.1:{port}", also_trust=str(kept))


def test_the_proxy_health_command_uses_the_hosts_own_certificate():
    call = access.PROXY_HEALTH_CALL
    assert call[0] == "cmd.run" and call[2] == "template=jinja"
    rendered = jinja2.Template(call[1]).render(grains={"id": "proxy"})
    argv = shlex.split(rendered)
    assert argv[:2] == ["curl", "-s"]
    options = dict(zip(argv[2::2], argv[3::2], strict=False))
    assert options["--cacert"] == "/etc/sqlgate/tls/ca.crt"
    assert options["--cert"] == "/etc/sqlgate/tls/proxy.crt"
    assert options["--key"] == "/etc/sqlgate/tls/proxy.key"
    assert options["--resolve"] == "proxy:5000:127.0.0.1"
    assert argv[-1] == "https://proxy:5000/health"


def test_the_proxy_health_command_works_against_a_mutual_tls_server(tmp_path):
    """curl with the command's options reaches a server that demands a client certificate."""
    ca = CertificateAuthority.create("test")
    server_files = ca.issue("proxy", ["127.0.0.1"], server=True, client=True)
    cert, key, ca_file = server_files.write(tmp_path, "proxy")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca_file)
    context.verify_mode = ssl.CERT_REQUIRED

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"nodes": {}}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        command = access.proxy_health_command("proxy").replace("/etc/sqlgate/tls", str(tmp_path))
        command = command.replace(":5000", f":{port}")
        done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=30)
        assert done.stdout == '{"nodes": {}}', done.stderr
        without = command.replace(f"--cert {tmp_path}/proxy.crt --key {tmp_path}/proxy.key", "")
        refused = subprocess.run(without, shell=True, capture_output=True, text=True, timeout=30)
        assert refused.stdout == ""
    finally:
        server.shutdown()
        server.server_close()
