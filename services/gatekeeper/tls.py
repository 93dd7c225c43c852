"""The Gatekeeper's TLS: its public certificate, and its client side toward the Proxy.

The public certificate (the cluster CA's, or one the user brings, such as Let's Encrypt's) is
read again when its files change, into the same context, so a renewed certificate serves new
connections without a restart; a pair that does not load is logged and the old one stays.
"""

from __future__ import annotations

import logging
import os
import ssl

log = logging.getLogger(__name__)


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


class ServerCertificate:
    """The server context with the certificate chain and key in force."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self.context = _harden(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
        self.context.load_cert_chain(cert_file, key_file)
        self._state = self._stat()

    def _stat(self) -> tuple:
        return tuple((info.st_ino, info.st_size, info.st_mtime_ns)
                     for info in map(os.stat, (self.cert_file, self.key_file)))

    def reload_if_changed(self) -> bool:
        try:
            state = self._stat()
            if state == self._state:
                return False
            self._state = state
            self.context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as error:
            # A renewal half-written (the certificate before its key) lands here; the next
            # change of either file tries again.
            log.error("the TLS certificate changed but does not load, keeping the old one: %s",
                      error)
            return False
        log.info("reloaded the TLS certificate %s", self.cert_file)
        return True


def metrics_server_context(cert_file: str, key_file: str, client_ca: str) -> ssl.SSLContext:
    """The metrics port's HTTPS: the Gatekeeper's certificate and, with ``client_ca``, only
    clients holding a certificate of that CA (the monitor host's), refused in the handshake.
    Read once: a renewed certificate reaches this port at the next restart."""
    context = _harden(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    context.load_cert_chain(cert_file, key_file)
    if client_ca:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def proxy_client_context(ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext:
    """How the Gatekeeper reaches the Proxy: the Proxy's certificate checked against the
    cluster CA (the system's store without one), and the Gatekeeper's own shown to it."""
    context = _harden(ssl.create_default_context(cafile=ca_file or None))
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context
