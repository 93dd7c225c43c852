"""The loopback stack's certificates: a throw-away CA of its own, and the files it issues.

Every link of the loopback stack runs the deployed TLS set-up (clients to the Gatekeeper over
HTTPS, the Gatekeeper to the Proxy with a client certificate, the Proxy and the replicas to the
database servers over TLS), so each certificate names ``127.0.0.1`` and ``localhost`` beside its
role's name: the services and the tests reach each other by loopback address and check it.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from cluster.pki import CertificateAuthority
from cluster.state import write_private
from services.client import TlsFiles

LOOPBACK_NAMES = ("127.0.0.1", "localhost")
# The client certificate of whoever reaches a Proxy directly on loopback: the tests, the bench
# and the health checks, as the Gatekeeper would.
CLIENT_NAME = "loopback-client"


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path
    ca: Path


class LoopbackPki:
    """A CA kept in ``directory`` (``ca.crt``), and certificates issued into it on demand."""

    def __init__(self, directory: Path, name: str = "loopback") -> None:
        self.directory = directory
        # Open to every process (the database servers run as mysql); the keys in it are 0600.
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.ca = CertificateAuthority.create(name)
        self.ca_file = write_private(directory / "ca.crt", self.ca.cert_pem)
        self.ca_file.chmod(0o644)  # a CA certificate is public; every process reads it
        self._issued: dict[str, CertFiles] = {}

    def issue(self, name: str, *, client_only: bool = False, owner: str | None = None
              ) -> CertFiles:
        """``name.crt``/``name.key`` (0600), for a server (with the loopback names) that is also
        a client of the next hop, or, with ``client_only``, for a client alone. ``owner``: the
        system user that must read the key (the database servers run as ``mysql`` under root).
        The same name twice gives the same files."""
        if name in self._issued:
            return self._issued[name]
        issued = (self.ca.issue(name, server=False, client=True) if client_only
                  else self.ca.issue(name, (name, *LOOPBACK_NAMES), server=True, client=True))
        files = CertFiles(write_private(self.directory / f"{name}.crt", issued.cert),
                          write_private(self.directory / f"{name}.key", issued.key),
                          self.ca_file)
        if owner is not None and os.geteuid() == 0:
            account = pwd.getpwnam(owner)
            for path in (files.cert, files.key):
                os.chown(path, account.pw_uid, account.pw_gid)
        self._issued[name] = files
        return files

    def server_tls(self) -> TlsFiles:
        """How a client verifies a loopback server: this CA, no client certificate."""
        return TlsFiles(str(self.ca_file))

    def client_tls(self) -> TlsFiles:
        """The same, with the loopback client certificate a Proxy asks for."""
        files = self.issue(CLIENT_NAME, client_only=True)
        return TlsFiles(str(self.ca_file), str(files.cert), str(files.key))
