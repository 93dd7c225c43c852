"""What every provider's ``up`` prepares the same way before the pillar is written: the
cluster's certificates (``cluster.pki``) in its private directory, the certificate the user
may bring for the public endpoint, the HTTPS URL clients use and the CA copy they check it with.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from cluster.errors import ClusterError
from cluster.pki import ClusterTls, Issued, load_public
from cluster.record import ca_path, write_ca
from cluster.state import write_private
from cluster.topology import GATEKEEPER_PORT

TLS_DIR = "tls"
# The user's own public certificate, copied here by the ``up`` that was given it and used by
# every later ``up`` (and ``keys --apply``) until another one is given.
PUBLIC_CERT, PUBLIC_KEY = "public.crt", "public.key"


def https_url(host: str, port: int = GATEKEEPER_PORT) -> str:
    return f"https://{host}" if port == 443 else f"https://{host}:{port}"


def public_certificate(tls_dir: Path, cert_file: str | None,
                       key_file: str | None) -> Issued | None:
    """The user's certificate for the public endpoint: the one given now (checked, then kept
    in ``tls_dir``), else the one kept by an earlier ``up``, else None (the cluster CA's)."""
    if cert_file or key_file:
        if not (cert_file and key_file):
            raise ClusterError("--tls-cert and --tls-key go together")
        try:
            public = load_public(Path(cert_file), Path(key_file))
        except (OSError, ValueError, TypeError) as error:
            raise ClusterError(f"--tls-cert {cert_file} --tls-key {key_file}: {error}") from None
        write_private(tls_dir / PUBLIC_CERT, public.cert)
        write_private(tls_dir / PUBLIC_KEY, public.key)
        return public
    cert, key = tls_dir / PUBLIC_CERT, tls_dir / PUBLIC_KEY
    if cert.exists() and key.exists():
        return Issued(cert.read_text(), key.read_text(), "")
    return None


def cluster_tls(private_dir: Path, cluster_name: str, hosts: dict[str, list[str]],
                cert_file: str | None = None, key_file: str | None = None) -> ClusterTls:
    """The CA and every host's certificate under ``private_dir/tls`` (reused while they still
    cover the names), with the user's public certificate if there is one."""
    tls_dir = private_dir / TLS_DIR
    public = public_certificate(tls_dir, cert_file, key_file)
    return ClusterTls.load_or_create(tls_dir, cluster_name, hosts, public)


def public_host(tls: ClusterTls, address: str) -> str:
    """The host name clients use: the first DNS name of the user's certificate (the user
    points it at ``address``), else ``address``, which the cluster CA's certificate names."""
    if tls.public is None:
        return address
    cert = x509.load_pem_x509_certificate(tls.public.cert.encode())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return address
    dns = names.get_values_for_type(x509.DNSName)
    return dns[0] if dns else address


def publish_ca(provider: str, tls: ClusterTls) -> str | None:
    """The CA copy clients verify the Gatekeeper with, next to the cluster record; none when
    the public certificate is the user's (publicly trusted: the system's CAs check it)."""
    if tls.public is not None:
        ca_path(provider).unlink(missing_ok=True)
        return None
    return str(write_ca(provider, tls.ca))


def public_trust(private_dir: Path) -> str | None:
    """Besides the system's CAs, what ``up`` and ``status`` accept the user's certificate with
    (a self-signed or private one, too): the copy kept in the private directory."""
    cert = private_dir / TLS_DIR / PUBLIC_CERT
    return str(cert) if cert.exists() else None
