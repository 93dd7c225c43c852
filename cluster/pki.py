"""The cluster's own certificate authority and the certificates it signs.

Every TLS link of the cluster is checked against this CA: clients reach the Gatekeeper over
HTTPS, the Gatekeeper shows the Proxy a client certificate (the Proxy refuses anyone else), and
the Proxy and the replicas reach the database servers over TLS. ``bootstrap.py up`` makes the CA
once per cluster and keeps it in the cluster's private directory (keys 0600); the loopback stack
makes a throw-away one. A user who brings a public certificate for the Gatekeeper (Let's Encrypt,
say) replaces only that one; the internal links keep the cluster CA.

Keys are ECDSA P-256: small, fast handshakes, and accepted by OpenSSL, MariaDB, MySQL 8, curl
and every browser.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cluster.state import write_private

CA_DAYS = 3650
LEAF_DAYS = 825  # the longest lifetime Apple's and browsers' rules accept for a server cert


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, PEM-encoded; ``ca`` is the issuer's certificate."""

    cert: str
    key: str
    ca: str

    def write(self, directory: Path, name: str) -> tuple[Path, Path, Path]:
        """``name.crt`` (0644 content, written 0600 like everything here), ``name.key`` and
        ``ca.crt`` under ``directory``."""
        paths = (directory / f"{name}.crt", directory / f"{name}.key", directory / "ca.crt")
        for path, text in zip(paths, (self.cert, self.key, self.ca), strict=True):
            write_private(path, text)
        return paths


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _alt_names(names: Iterable[str]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


class CertificateAuthority:
    """A CA certificate and key; ``issue`` signs server and client certificates."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert, self.key = cert, key

    @classmethod
    def create(cls, name: str) -> CertificateAuthority:
        key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} cluster CA"),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sqlgate")])
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                             crl_sign=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        return cls(cert, key)

    @classmethod
    def load_or_create(cls, directory: Path, name: str) -> CertificateAuthority:
        """The CA kept as ``ca.crt``/``ca.key`` under ``directory`` (made on first use, 0600),
        so that a second ``up`` keeps every certificate the hosts and clients already trust."""
        cert_path, key_path = directory / "ca.crt", directory / "ca.key"
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return cls(cert, key)
        ca = cls.create(name)
        write_private(key_path, _pem_key(ca.key))
        write_private(cert_path, ca.cert_pem)
        return ca

    @property
    def cert_pem(self) -> str:
        return _pem_cert(self.cert)

    def issue(self, common_name: str, names: Iterable[str] = (), *, server: bool = True,
              client: bool = False) -> Issued:
        """A leaf certificate for ``common_name``; ``names`` (host names and IP addresses) go
        into its subjectAltName, which is what TLS clients check."""
        key = _key()
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
            ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        now = _now()
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                               common_name)]))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self.key.public_key()), critical=False))
        alt = _alt_names([common_name, *names] if server else names)
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(_pem_cert(cert), _pem_key(key), self.cert_pem)


def covers(cert_pem: str, names: Iterable[str]) -> bool:
    """Whether a certificate (still valid for a month) names every one of ``names``: a second
    ``up`` reissues a certificate only when an address changed or it is about to expire."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    if cert.not_valid_after_utc - _now() < datetime.timedelta(days=30):
        return False
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    present = {str(v) for v in alt.get_values_for_type(x509.IPAddress)} | \
        set(alt.get_values_for_type(x509.DNSName))
    return set(names) <= present


def load_or_issue(directory: Path, ca: CertificateAuthority, name: str,
                  names: Iterable[str] = ()) -> Issued:
    """``name``'s certificate kept under ``directory``, issued again only when it no longer
    covers ``names`` or nears its end: a second ``up`` then changes no file on any host."""
    wanted = [name, *names]
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    if cert_path.exists() and key_path.exists() and covers(cert_path.read_text(), wanted):
        return Issued(cert_path.read_text(), key_path.read_text(), ca.cert_pem)
    # Every cluster host is both a server (its service) and a client (of the next hop).
    issued = ca.issue(name, names, server=True, client=True)
    write_private(key_path, issued.key)
    write_private(cert_path, issued.cert)
    return issued


@dataclass(frozen=True)
class ClusterTls:
    """The certificates of one cluster: the CA, one certificate per host (by host name), and
    optionally the public certificate the user brings for the Gatekeeper (``ca`` empty)."""

    ca: str
    hosts: dict[str, Issued]
    public: Issued | None = None

    @classmethod
    def load_or_create(cls, directory: Path, cluster_name: str,
                       hosts: dict[str, Iterable[str]],
                       public: Issued | None = None) -> ClusterTls:
        """``hosts``: host name -> the other names and addresses its certificate must carry."""
        ca = CertificateAuthority.load_or_create(directory, cluster_name)
        return cls(ca.cert_pem,
                   {name: load_or_issue(directory / "hosts", ca, name, names)
                    for name, names in hosts.items()},
                   public)


def load_public(cert_file: Path, key_file: Path) -> Issued:
    """A certificate the user brings for the public endpoint (full chain first, then the key);
    refused early when the key does not belong to the certificate."""
    cert_pem, key_pem = cert_file.read_text(), key_file.read_text()
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise ValueError(f"{key_file} is not the key of {cert_file}")
    return Issued(cert_pem, key_pem, "")
