"""TLS on both sides of the Proxy: clients must show a certificate from the cluster's CA, and
every database connection is encrypted and checked against the CA it is given."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from http.client import HTTPConnection, HTTPException
from pathlib import Path

import pytest

from cluster.loopback.services import ServiceProcess
from cluster.pki import CertificateAuthority
from services.client import TlsFiles, request
from services.contract import SCOPE_HEADER
from services.proxy.pools import db_tls_context
from tests.conftest import http, proxy_service

READ = {"sql": "SELECT COUNT(*) FROM sakila.actor"}


@pytest.fixture(scope="module")
def tls_proxy(db_cluster, tmp_path_factory) -> Iterator[ServiceProcess]:
    service = proxy_service(db_cluster, tmp_path_factory.mktemp("logs") / "proxy.log")
    with service.running():
        yield service


@pytest.fixture(scope="module")
def intruder(tmp_path_factory) -> TlsFiles:
    """A client certificate that looks right (a client named like the Gatekeeper) from a CA
    that is not the cluster's."""
    directory = tmp_path_factory.mktemp("intruder")
    issued = CertificateAuthority.create("intruder").issue("gatekeeper", server=False,
                                                          client=True)
    cert, key, _ = issued.write(directory, "gatekeeper")
    return TlsFiles("", str(cert), str(key))


def tls_handshake(service: ServiceProcess, context: ssl.SSLContext) -> str:
    """A TLS 1.2 handshake alone (in 1.2 the server's verdict on the client's certificate is
    part of the handshake; 1.3 sends it after): the version agreed, or the SSLError raised."""
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        return conn.version()


def client_context(db_cluster, tls: TlsFiles | None = None) -> ssl.SSLContext:
    """Verifies the Proxy against the cluster's CA; with ``tls``, shows its certificate."""
    context = ssl.create_default_context(cafile=str(db_cluster.ca_file))
    if tls is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


def test_a_client_without_a_certificate_fails_the_handshake(tls_proxy, db_cluster):
    with pytest.raises(ssl.SSLError):
        tls_handshake(tls_proxy, client_context(db_cluster))
    # TLS 1.3: the refusal comes with the first read, and no HTTP answer with it.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        request(tls_proxy.url + "/query", READ, timeout=5,
                tls=TlsFiles(str(db_cluster.ca_file)))


def test_a_certificate_from_another_ca_fails_the_handshake(tls_proxy, db_cluster, intruder):
    with pytest.raises(ssl.SSLError):
        tls_handshake(tls_proxy, client_context(db_cluster, intruder))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        request(tls_proxy.url + "/query", READ, timeout=5,
                tls=TlsFiles(str(db_cluster.ca_file), intruder.cert_file, intruder.key_file))


def test_the_cluster_certificate_is_let_in(tls_proxy, db_cluster):
    client = db_cluster.pki.client_tls()
    assert tls_handshake(tls_proxy, client_context(db_cluster, client)) == "TLSv1.2"
    answer = request(tls_proxy.url + "/query", READ, {SCOPE_HEADER: "read"}, tls=client)
    assert answer.status == 200, answer.json
    assert answer.json["rows"] == [[200]]


def test_plain_http_gets_no_answer(tls_proxy):
    connection = HTTPConnection("127.0.0.1", tls_proxy.port, timeout=5)
    try:
        with pytest.raises((HTTPException, ConnectionError)):
            connection.request("POST", "/query", json.dumps(READ),
                               {"Content-Type": "application/json"})
            connection.getresponse().read()
    finally:
        connection.close()


def test_refused_clients_do_not_disturb_the_others(tls_proxy, db_cluster, intruder):
    for _ in range(20):
        with pytest.raises(ssl.SSLError):
            tls_handshake(tls_proxy, client_context(db_cluster, intruder))
    assert http(tls_proxy.url + "/query", READ, scope="read").status == 200


@pytest.mark.parametrize("mode", ["direct", "random"])
def test_database_connections_are_encrypted(tls_proxy, mode):
    """The server's own view of the Proxy's connection, on the primary and on a replica."""
    answer = http(tls_proxy.url + "/query",
                  {"sql": "SHOW SESSION STATUS LIKE 'Ssl_version'", "mode": mode}, scope="read")
    assert answer.status == 200, answer.json
    assert answer.json["rows"][0][1] in ("TLSv1.2", "TLSv1.3"), answer.json


def test_a_database_certificate_from_another_ca_is_refused(db_cluster, tmp_path):
    other = tmp_path / "other-ca.crt"
    other.write_text(CertificateAuthority.create("other").cert_pem)
    service = proxy_service(db_cluster, tmp_path / "proxy.log", PROXY_DB_TLS_CA=str(other))
    with service.running(expect_healthy=False):
        status, health = service.health()
        assert status == 503, health
        assert all(node["up"] is False for node in health["nodes"].values())
        assert "certificate verify failed" in health["nodes"]["primary"]["last_error"]
        answer = http(service.url + "/query", READ, scope="read")
        assert answer.status == 503, answer.json


def test_without_tls_the_database_refuses_the_users(db_cluster, tmp_path):
    """The users require TLS: a Proxy configured without it cannot log in."""
    service = proxy_service(db_cluster, tmp_path / "proxy.log", PROXY_DB_TLS_CA="")
    with service.running(expect_healthy=False):
        answer = http(service.url + "/query", READ, scope="read")
        assert answer.status == 503, answer.json
        assert "Access denied" in json.dumps(answer.json["failures"])


def test_the_database_tls_context_verifies_the_chain_not_the_name(db_cluster):
    context = db_tls_context(str(db_cluster.ca_file))
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname is False
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert len(context.get_ca_certs()) == 1


def test_the_proxy_refuses_to_start_with_an_unreadable_certificate(db_cluster, tmp_path):
    service = proxy_service(db_cluster, tmp_path / "proxy.log",
                            PROXY_TLS_CERT=str(tmp_path / "missing.crt"))
    with pytest.raises(Exception, match="exited"):
        service.start()
    assert "bad configuration" in Path(tmp_path / "proxy.log").read_text()
