"""Gatekeepers of the tests' own, as processes over HTTPS, and a stand-in Proxy behind them.

The stand-in (``FakeProxy``) speaks mutual TLS like the real Proxy, records what reaches it,
and answers as the statement's text asks (``SELECT 'slow:2'``, ``'stream:1000000000'``...), so
that timeouts, caps and error paths can be provoked without a database. The tests that need
the real chain use the real Proxy on the loopback MariaDB (``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPResponse, HTTPSConnection
from pathlib import Path
from typing import Any

import pytest
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError

from cluster.loopback.processes import free_port
from cluster.loopback.services import ServiceProcess
from cluster.pki import CertificateAuthority
from services.client import TlsFiles
from tests.conftest import proxy_service


@dataclass(frozen=True)
class TlsDir:
    """A CA and what it issued: the Gatekeeper's certificate (server and client, names
    127.0.0.1 and localhost), the stand-in Proxy's (name ``proxy``), and, from another CA, a
    stranger's."""

    root: Path

    def __getattr__(self, name: str) -> str:
        if name.startswith("_"):
            raise AttributeError(name)
        return str(self.root / name.replace("_", "."))

    @property
    def client(self) -> TlsFiles:
        return TlsFiles(str(self.root / "ca.crt"))


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory) -> TlsDir:
    root = tmp_path_factory.mktemp("tls")
    ca = CertificateAuthority.create("gatekeeper-tests")
    ca.issue("gatekeeper", ["127.0.0.1", "localhost"], server=True, client=True).write(
        root, "gatekeeper")
    ca.issue("proxy", ["127.0.0.1"], server=True, client=False).write(root, "proxy")
    ca.issue("other-name", ["127.0.0.1"], server=True, client=False).write(root, "wrongname")
    stranger = CertificateAuthority.create("stranger")
    stranger.issue("gatekeeper", ["127.0.0.1"], server=True, client=True).write(
        root / "stranger", "gatekeeper")
    # write() puts each issuer's ca.crt beside its certificates: keep ours at the top.
    (root / "ca.crt").write_text(ca.cert_pem)
    return TlsDir(root)


@dataclass(frozen=True)
class Key:
    name: str
    scope: str
    secret: str
    rate: float = 0.0
    burst: int = 0

    def entry(self) -> dict[str, Any]:
        return {"name": self.name, "scope": self.scope,
                "sha256": hashlib.sha256(self.secret.encode()).hexdigest(),
                "rate": self.rate, "burst": self.burst}


def new_key(name: str, scope: str = "write", rate: float = 0.0, burst: int = 0) -> Key:
    return Key(name, scope, f"{name}-" + secrets.token_urlsafe(24), rate, burst)


def write_keys(path: Path, *keys: Key) -> Path:
    """Written whole then renamed into place, as Salt's file.managed does."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"keys": [key.entry() for key in keys]}, indent=1))
    temporary.replace(path)
    return path


# --- the stand-in Proxy ---------------------------------------------------------------------

@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeProxy:
    """An HTTPS server in a thread of the test process, asking for client certificates."""

    tls: TlsDir
    cert: str = "proxy"
    require_client_cert: bool = True
    port: int = field(default_factory=free_port)
    seen: list[Seen] = field(default_factory=list)
    streamed: list[int] = field(default_factory=list)  # bytes sent by each streamed answer

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(getattr(self.tls, f"{self.cert}_crt"),
                                getattr(self.tls, f"{self.cert}_key"))
        if self.require_client_cert:
            context.load_verify_locations(cafile=self.tls.ca_crt)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    @contextlib.contextmanager
    def running(self) -> Iterator[FakeProxy]:
        ready = threading.Event()
        holder: dict[str, Any] = {}

        async def serve() -> None:
            app = tornado.web.Application([(r"/health", _FakeHealth),
                                           (r"/.*", _FakeAnswer, {"proxy": self})])
            server = HTTPServer(app, ssl_options=self.context())
            server.listen(self.port, "127.0.0.1")
            holder["stop"] = asyncio.Event()
            holder["loop"] = asyncio.get_running_loop()
            ready.set()
            await holder["stop"].wait()
            server.stop()
            await server.close_all_connections()

        thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
        thread.start()
        assert ready.wait(10), "the stand-in proxy did not start"
        try:
            yield self
        finally:
            holder["loop"].call_soon_threadsafe(holder["stop"].set)
            thread.join(10)

    def requests_to(self, path: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.path == path]


class _FakeHealth(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write({"service": "proxy", "status": "ok"})


class _FakeAnswer(tornado.web.RequestHandler):
    def initialize(self, proxy: FakeProxy) -> None:
        self.proxy = proxy

    async def post(self) -> None:
        self.proxy.seen.append(Seen(self.request.method, self.request.path,
                                    dict(self.request.headers), self.request.body))
        try:
            sql = json.loads(self.request.body or b"{}").get("sql", "")
        except ValueError:
            sql = ""
        order = sql.removeprefix("SELECT '").removesuffix("'")
        what, _, arg = order.partition(":")
        if what == "slow":
            await asyncio.sleep(float(arg))
        elif what == "stream":
            await self._stream(int(arg))
            return
        elif what == "big":
            self.set_header("Content-Type", "application/json")
            self.finish(b'{"rows": "' + b"x" * int(arg) + b'"}')
            return
        elif what == "leak":
            self.set_status(400)
            self.finish({"error": "Access denied for user 'app_read'@'10.9.8.7' to database "
                                  "'mysql'", "failures": [
                                      "Can't connect to MySQL server on '10.9.8.6:3306' (111)",
                                      "lost db-node.internal:3306 (port 3306)"]})
            return
        elif what == "garbage":
            self.set_status(500)
            self.set_header("Content-Type", "text/html")
            self.finish(b"<html>Traceback at 10.9.8.7</html>")
            return
        self.finish({"request_id": self.request.headers.get("X-Request-Id"),
                     "columns": ["1"], "rows": [[1]], "rowcount": 1,
                     "scope": self.request.headers.get("X-Sqlgate-Scope"),
                     "key": self.request.headers.get("X-Sqlgate-Key")})

    async def _stream(self, total: int) -> None:
        """A chunked answer of ``total`` bytes, counting what actually left."""
        self.set_header("Content-Type", "application/json")
        chunk = b"x" * 65536
        sent = 0
        try:
            while sent < total:
                self.write(chunk)
                await self.flush()
                sent += len(chunk)
            self.finish()
        except StreamClosedError:
            pass
        finally:
            self.proxy.streamed.append(sent)


@pytest.fixture(scope="module")
def fake_proxy(tls_dir) -> Iterator[FakeProxy]:
    with FakeProxy(tls_dir).running() as proxy:
        yield proxy


# --- Gatekeepers ------------------------------------------------------------------------------

def gatekeeper_env(tls: TlsDir, proxy_url: str, keys_file: Path | None = None,
                   **overrides: str) -> dict[str, str]:
    env = {
        "GATEKEEPER_LISTEN_ADDRESS": "127.0.0.1",
        "GATEKEEPER_TLS_CERT": tls.gatekeeper_crt,
        "GATEKEEPER_TLS_KEY": tls.gatekeeper_key,
        "GATEKEEPER_PROXY_URL": proxy_url,
        "GATEKEEPER_PROXY_CA": tls.ca_crt,
        "GATEKEEPER_PROXY_CLIENT_CERT": tls.gatekeeper_crt,
        "GATEKEEPER_PROXY_CLIENT_KEY": tls.gatekeeper_key,
    }
    if keys_file is not None:
        env["GATEKEEPER_KEYS_FILE"] = str(keys_file)
    return {**env, **overrides}


def gatekeeper_process(tls: TlsDir, proxy_url: str, log_path: Path,
                       keys_file: Path | None = None, **overrides: str) -> ServiceProcess:
    return ServiceProcess("services.gatekeeper",
                          gatekeeper_env(tls, proxy_url, keys_file, **overrides),
                          log_path=log_path, tls=tls.client)


@dataclass(frozen=True)
class Keys:
    admin: Key
    write: Key
    read: Key
    limited: Key

    def all(self) -> tuple[Key, ...]:
        return (self.admin, self.write, self.read, self.limited)


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(new_key("ops", "admin"), new_key("ci", "write"), new_key("reports", "read"),
                new_key("limited", "read", rate=10, burst=10))


def https_connection(service: ServiceProcess, timeout: float = 10) -> HTTPSConnection:
    """A raw HTTPS connection to a test Gatekeeper, for requests a client would not send."""
    assert service.tls is not None
    return HTTPSConnection("127.0.0.1", service.port, timeout=timeout,
                           context=service.tls.context())


def read_json(answer: HTTPResponse) -> Any:
    return json.loads(answer.read())


@contextlib.contextmanager
def running_proxies(db_cluster: Any, logs: Path, names: tuple[str, ...],
                    **env: str) -> Iterator[dict[str, ServiceProcess]]:
    """One Proxy per name on the loopback cluster (its instance name, a 30 s idle timeout for
    transactions, ``env``), all running until the block ends."""
    services = {name: proxy_service(db_cluster, logs / f"{name}.log", PROXY_INSTANCE_NAME=name,
                                    PROXY_TRANSACTION_IDLE_TIMEOUT="30", **env)
                for name in names}
    with contextlib.ExitStack() as stack:
        for service in services.values():
            stack.enter_context(service.running())
        yield services

