"""Monitoring for the tests (a pytest plugin, listed in tests/conftest.py): a real Prometheus
scraping real services, and headless Chromium to look at what it serves.

- ``require_tool``: a program the test needs; missing, the test skips with the Debian package
  to install, except under CI (``CI=true``), where a missing tool is a failure, not a skip.
- ``PrometheusServer``: ``prometheus`` on a free loopback port with a temporary config and
  TSDB, the formula's consoles, a short scrape interval; stopped by its own process handle and
  its directory removed.
- ``metrics_services``: a Proxy and a Gatekeeper of their own on the session's database
  cluster, with their metrics ports (PROXY_METRICS_PORT, GATEKEEPER_METRICS_PORT) served over
  HTTPS with the loopback CA, client certificate required, as on a deployed host.
- ``prometheus``: a PrometheusServer scraping those two as jobs ``proxy`` and ``gatekeeper``
  (labels ``host``, ``role``, as the monitor role's scrape configuration sets them).
- ``chromium``: ``--dump-dom`` and ``--screenshot`` of a page, with a fresh profile each time.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from cluster import loopback
from cluster.formula import FORMULA_DIR
from cluster.loopback.processes import free_port, terminate
from cluster.loopback.services import ServiceProcess
from cluster.waiting import GiveUp, wait_until
from services.client import TlsFiles

CONSOLES_DIR = FORMULA_DIR / "monitor" / "files" / "consoles"
SCRAPE_INTERVAL = "1s"


def require_tool(name: str, package: str) -> str:
    """The path of ``name``; skip without it (fail under CI=true, where it must be there)."""
    path = shutil.which(name)
    if path:
        return path
    reason = f"{name} is not installed (Debian package: {package})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true requires it")
    pytest.skip(reason)


@dataclass(frozen=True)
class ScrapeTarget:
    """One target of a scrape job, with the labels the monitor role gives every target."""

    job: str
    address: str  # host:port
    host: str
    role: str
    tls: TlsFiles | None = None  # HTTPS: the CA to check it with, our client certificate


@dataclass
class PrometheusServer:
    """A real Prometheus of a test's own (see the module's docstring)."""

    targets: list[ScrapeTarget]
    rule_files: list[Path] = field(default_factory=list)
    scrape_interval: str = SCRAPE_INTERVAL
    consoles: Path = CONSOLES_DIR
    port: int = field(default_factory=free_port)
    root: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict:
        jobs: dict[str, dict] = {}
        for target in self.targets:
            job = jobs.setdefault(target.job, {"job_name": target.job, "static_configs": []})
            if target.tls is not None:
                job["scheme"] = "https"
                job["tls_config"] = {"ca_file": target.tls.ca_file,
                                     **({"cert_file": target.tls.cert_file,
                                         "key_file": target.tls.key_file}
                                        if target.tls.cert_file else {})}
            job["static_configs"].append({"targets": [target.address],
                                          "labels": {"host": target.host, "role": target.role}})
        return {"global": {"scrape_interval": self.scrape_interval,
                           "evaluation_interval": self.scrape_interval},
                "rule_files": [str(path) for path in self.rule_files],
                "scrape_configs": [{"job_name": "prometheus", "static_configs": [
                    {"targets": [f"127.0.0.1:{self.port}"],
                     "labels": {"host": "monitor", "role": "monitor"}}]},
                    *jobs.values()]}

    def start(self) -> None:
        binary = require_tool("prometheus", "prometheus")
        self.root = Path(tempfile.mkdtemp(prefix="sqlgate-prometheus-"))
        config = self.root / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        log = (self.root / "prometheus.log").open("wb")
        with log:
            self.process = subprocess.Popen([
                binary, f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.console.templates={self.consoles}",
                f"--web.console.libraries={self.consoles}",
                "--storage.tsdb.retention.time=1h", "--log.level=warn",
            ], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_until(self._ready, 30, f"prometheus on {self.url}")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise GiveUp(f"prometheus exited with {self.process.returncode}: "
                               f"{self.log()[-2000:]}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as answer:
                return answer.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def log(self) -> str:
        path = self.root / "prometheus.log" if self.root else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def stop(self) -> None:
        terminate(self.process, grace=10)
        self.process = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def api(self, path: str, **params: object) -> object:
        """``GET /api/v1/<path>``: its ``data``."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def targets_health(self) -> dict[str, str]:
        """Each active target's job -> health, with the last scrape error when there is one."""
        return {t["labels"]["job"]: t["health"] + (f" ({t['lastError']})" if t["lastError"]
                                                   else "")
                for t in self.api("targets")["activeTargets"]}

    def wait_for(self, expr: str, timeout: float = 30) -> list[dict]:
        """The result of ``expr`` once it is not empty; on timeout, an error that says what
        each target's scrape last did (a missing metrics endpoint shows there)."""
        found: list[dict] = []

        def ready() -> bool:
            found[:] = self.query(expr)
            return bool(found)

        try:
            wait_until(ready, timeout, f"{expr!r} in Prometheus", interval=0.5)
        except Exception as error:
            raise AssertionError(f"{error}; targets: {self.targets_health()}") from error
        return found

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class MetricsServices:
    """A Proxy and a Gatekeeper with metrics ports, and how to scrape them."""

    proxy: ServiceProcess
    gatekeeper: ServiceProcess
    api_key: str
    proxy_metrics_port: int
    gatekeeper_metrics_port: int
    scrape_tls: TlsFiles

    def targets(self) -> list[ScrapeTarget]:
        return [ScrapeTarget("proxy", f"127.0.0.1:{self.proxy_metrics_port}", "proxy",
                             "proxy", self.scrape_tls),
                ScrapeTarget("gatekeeper", f"127.0.0.1:{self.gatekeeper_metrics_port}",
                             "gatekeeper", "gatekeeper", self.scrape_tls)]


@pytest.fixture(scope="module")
def metrics_services(db_cluster, tmp_path_factory) -> Iterator[MetricsServices]:
    """Our own Proxy and Gatekeeper (the session's have no metrics ports), metrics on, for one
    module: the other tests never see a second Proxy checking the same databases. The Proxy
    has a heartbeat row of its own (its instance name), so it never reads the session Proxy's
    heartbeat as its own, nor the other way round."""
    from tests.conftest import FAST_PROXY

    logs = tmp_path_factory.mktemp("metrics-logs")
    api_key = "metrics-" + os.urandom(12).hex()
    keys_file = loopback.write_keys_file(tmp_path_factory.mktemp("metrics-keys") / "keys.json",
                                         api_key)
    proxy_port, gatekeeper_port = free_port(), free_port()
    proxy = loopback.proxy_service(db_cluster, logs / "proxy.log", **FAST_PROXY,
                                   PROXY_METRICS_PORT=str(proxy_port),
                                   PROXY_INSTANCE_NAME="metrics-proxy")
    with proxy.running():
        gatekeeper = loopback.gatekeeper_service(
            db_cluster, proxy.url, keys_file, logs / "gatekeeper.log",
            GATEKEEPER_METRICS_PORT=str(gatekeeper_port),
            GATEKEEPER_METRICS_CLIENT_CA=str(db_cluster.ca_file))
        with gatekeeper.running():
            # Prometheus's client certificate: one from the cluster CA, as the monitor host's.
            yield MetricsServices(proxy, gatekeeper, api_key, proxy_port, gatekeeper_port,
                                  db_cluster.pki.client_tls())


@pytest.fixture(scope="module")
def prometheus(metrics_services) -> Iterator[PrometheusServer]:
    with PrometheusServer(metrics_services.targets()) as server:
        yield server


# --- Chromium ---------------------------------------------------------------------------------

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--disable-extensions", "--mute-audio")


def chromium(url: str, *flags: str, timeout: float = 90) -> str:
    """Headless Chromium on ``url`` with a fresh profile (removed after); its stdout."""
    binary = require_tool("chromium", "chromium")
    profile = tempfile.mkdtemp(prefix="sqlgate-chromium-")
    try:
        done = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags,
                               url], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


def dump_dom(url: str, budget_ms: int = 15000) -> str:
    """The page's DOM after its scripts ran (virtual time: timers do not make it wait)."""
    return chromium(url, f"--virtual-time-budget={budget_ms}", "--dump-dom")


def screenshot(url: str, path: Path, size: str = "1280,1400", budget_ms: int = 15000) -> Path:
    chromium(url, f"--virtual-time-budget={budget_ms}", f"--screenshot={path}",
             f"--window-size={size}")
    assert path.exists(), f"chromium wrote no screenshot at {path}"
    return path



def png_size(path: Path) -> tuple[int, int]:
    """A whole PNG's width and height (a truncated or foreign file fails)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path}: not a PNG"
    assert data[-8:-4] == b"IEND", f"{path}: truncated"
    return struct.unpack(">II", data[16:24])
