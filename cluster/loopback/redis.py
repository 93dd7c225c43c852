"""A Redis of the tests' own (the Gatekeepers' shared rate store) on a free loopback port.

Configured as the formula configures the monitor host's
(``salt/sqlgate/monitor/ratestore.sls``): TLS only, client certificates of the given CA
required, the default user off and one user,
``gatekeeper``, whose password the configuration holds only as a SHA-256 hash, allowed the
rate limits' keys and the commands the token bucket's script runs; nothing saved to disk. It
is started and stopped by its own process handle, and can be started again on the same port
(the store coming back).
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cluster.formula import formula_settings
from cluster.loopback.processes import free_port, terminate
from cluster.waiting import GiveUp, wait_until

SETTINGS = formula_settings()["ratestore"]
USER = SETTINGS["acl_user"]
# What the Gatekeeper's client and the token bucket's script run, and nothing else: the
# formula's list.
COMMANDS = " ".join("+" + command for command in SETTINGS["acl_commands"])


def acl_line(password: str, user: str = USER) -> str:
    """The store's one user: its password as a hash, the rate keys only, those commands."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    return f"user {user} on #{digest} resetkeys ~sqlgate:rate:* resetchannels -@all {COMMANDS}"


@dataclass
class RedisServer:
    """``tls``: (CA, server certificate, server key) files; None: plain, for development."""

    tls: tuple[str, str, str] | None
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sqlgate-redis-")))
    process: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        lines = ["bind 127.0.0.1", f"dir {self.root}", 'save ""', "appendonly no",
                 "protected-mode yes", "user default off", acl_line(self.password)]
        if self.tls:
            ca, cert, key = self.tls
            lines += ["port 0", f"tls-port {self.port}", f"tls-ca-cert-file {ca}",
                      f"tls-cert-file {cert}", f"tls-key-file {key}", "tls-auth-clients yes",
                      "tls-protocols \"TLSv1.2 TLSv1.3\""]
        else:
            lines.append(f"port {self.port}")
        self.config.write_text("\n".join(lines) + "\n")
        self.config.chmod(0o600)
        self.password_file.write_text(self.password + "\n")
        self.password_file.chmod(0o600)

    @property
    def config(self) -> Path:
        return self.root / "redis.conf"

    @property
    def password_file(self) -> Path:
        """What the Gatekeepers read the password from (0600)."""
        return self.root / "password"

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{USER}@127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        with (self.root / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(["redis-server", str(self.config)],
                                            cwd=self.root, stdout=log, stderr=log)
        wait_until(self._listening, 10, f"redis-server on port {self.port}")
        return self

    def _listening(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise GiveUp(f"redis-server exited: see {self.root / 'redis.log'}")
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True

    def stop(self) -> None:
        terminate(self.process, grace=10)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
