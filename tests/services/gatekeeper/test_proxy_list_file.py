"""A Proxy list the Gatekeeper re-reads (``GATEKEEPER_PROXIES_FILE``,
``services/gatekeeper/proxylist.py``, ``Proxies.update``): Proxies added and removed under
load, without a restart and without a failed request.

Real parts first: two Proxy processes (pl-one, pl-two) on the session's MariaDB behind one
Gatekeeper whose file names pl-one only. Under continuous plain traffic the file names both:
requests reach pl-two within seconds; a transaction opens on pl-two; the file names pl-one
only again: new requests all go to pl-one while the transaction on pl-two still commits through
the Gatekeeper, until pl-two has retired. Bad files leave the list in force. Then the parts
in-process: a joining Proxy gets nothing before a check finds it healthy, the file's checks,
and the settings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.loopback import gatekeeper_service
from cluster.loopback.processes import free_port
from cluster.loopback.services import ServiceProcess
from cluster.waiting import wait_until
from services.config import GatekeeperConfig, NamedProxy, load_config, parse_proxies_file
from services.gatekeeper.forwarder import ProxyForwarder
from services.gatekeeper.proxies import Proxies, Proxy
from services.gatekeeper.proxylist import ProxyListFile
from services.gatekeeper.tls import proxy_client_context
from tests.conftest import http, scratch_tables
from tests.services.gatekeeper.conftest import FakeProxy, running_proxies
from tests.services.gatekeeper.traffic import PlainTraffic
from tests.services.scrape import scrape

NAMES = ("pl-one", "pl-two")
RETIRE_SECONDS = 6.0


def write_list(path: Path, listed: dict[str, str] | str) -> None:
    """Written whole then renamed into place, as the Salt state does."""
    text = listed if isinstance(listed, str) else json.dumps(
        {"proxies": [{"name": name, "url": url} for name, url in listed.items()]})
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(path)


# --- real Proxies ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def proxies(db_cluster, tmp_path_factory) -> Iterator[dict[str, ServiceProcess]]:
    with running_proxies(db_cluster, tmp_path_factory.mktemp("proxy-list"), NAMES) as services:
        yield services


@pytest.fixture(scope="module")
def list_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("proxy-list-file") / "proxies.json"


@pytest.fixture(scope="module")
def front(db_cluster, proxies, keys_file, list_file, tmp_path_factory
          ) -> Iterator[ServiceProcess]:
    write_list(list_file, {"pl-one": proxies["pl-one"].url})
    service = gatekeeper_service(db_cluster, "", keys_file,
                                 tmp_path_factory.mktemp("front") / "gatekeeper.log",
                                 GATEKEEPER_PROXIES_FILE=str(list_file),
                                 GATEKEEPER_RETIRE_SECONDS=str(RETIRE_SECONDS),
                                 GATEKEEPER_METRICS_PORT=str(free_port()))
    with service.running():
        yield service


def forwarded(front: ServiceProcess) -> dict[str, float]:
    """The requests each Proxy answered, by the Gatekeeper's metrics."""
    samples = scrape(int(front.env["GATEKEEPER_METRICS_PORT"]), front.tls)
    return {name: samples.value("sqlgate_gatekeeper_proxy_requests_total", proxy=name)
            for name in NAMES}


def proxy_up(front: ServiceProcess, name: str) -> float:
    samples = scrape(int(front.env["GATEKEEPER_METRICS_PORT"]), front.tls)
    return samples.value("sqlgate_gatekeeper_proxy_up", proxy=name)


def send(front: ServiceProcess, api_key: str, path: str, body: dict | None = None):
    return http(front.url + path, body if body is not None else {}, {"X-API-Key": api_key},
                timeout=10)


def log_of(front: ServiceProcess) -> str:
    assert front.log_path is not None
    return front.log_path.read_text(errors="replace")


def test_proxies_join_and_retire_without_a_failed_request(front, proxies, list_file, api_key,
                                                          db_cluster):
    both = {name: service.url for name, service in proxies.items()}
    with scratch_tables(db_cluster, "proxylist") as make:
        table = make()
        with PlainTraffic(front, api_key) as traffic:
            time.sleep(0.5)
            assert forwarded(front)["pl-two"] == 0
            write_list(list_file, both)
            listed_at = time.monotonic()
            wait_until(lambda: forwarded(front)["pl-two"] > 0, 5, "requests reaching pl-two",
                       interval=0.1)
            joined = time.monotonic() - listed_at
            assert joined < 3.5, joined

            # A transaction on pl-two (the ties go round: one of a few lands there).
            held = None
            for _ in range(6):
                tid = send(front, api_key, "/transactions").json["transaction_id"]
                if tid.startswith("pl-two.") and held is None:
                    held = tid
                else:
                    assert send(front, api_key, f"/transactions/{tid}/rollback").status == 200
            assert held is not None
            answer = send(front, api_key, "/query", {
                "sql": f"INSERT INTO {table} (id, v) VALUES (1, 'kept')",
                "transaction_id": held})
            assert answer.status == 200, answer.json

            write_list(list_file, {"pl-one": both["pl-one"]})
            wait_until(lambda: proxy_up(front, "pl-two") == 0, 5, "pl-two removed",
                       interval=0.1)
            before = forwarded(front)["pl-two"]
            time.sleep(1.0)  # the traffic goes on: none of it to pl-two
            for _ in range(5):  # nor a new transaction
                tid = send(front, api_key, "/transactions").json["transaction_id"]
                assert tid.startswith("pl-one."), tid
                assert send(front, api_key, f"/transactions/{tid}/rollback").status == 200
            assert forwarded(front)["pl-two"] == before
            # The transaction it holds is still its own, through the Gatekeeper.
            answer = send(front, api_key, f"/transactions/{held}/commit")
            assert (answer.status, answer.json.get("status")) == (200, "committed"), answer.json
            assert forwarded(front)["pl-two"] == before + 1
        assert len(traffic.statuses) > 100, len(traffic.statuses)
        assert traffic.failed() == [], traffic.failed()
        rows = db_cluster.primary.sql(f"SELECT v FROM {table} WHERE id = 1")
        assert [row["v"] for row in rows] == ["kept"]
    print(f"plain requests: {len(traffic.statuses)}, 0 failed; pl-two reached "
          f"{joined:.1f} s after the list named it")

    # Retired after GATEKEEPER_RETIRE_SECONDS: an id naming it is no transaction of ours.
    def retired() -> bool:
        answer = send(front, api_key, f"/transactions/{held}/commit")
        return answer.status == 404
    wait_until(retired, RETIRE_SECONDS + 5, "pl-two retired", interval=0.5)
    assert "proxy pl-two (" in log_of(front) and "retired" in log_of(front)


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "not JSON"),
    ('{"proxies": [{"name": "pl-one", "url": "%s", "weight": 2}]}', "unknown field(s) weight"),
    ('{"proxies": []}', "no proxy"),
])
def test_a_bad_list_file_is_logged_and_the_list_in_force_stays(front, proxies, list_file,
                                                               api_key, text, message):
    good = {"pl-one": proxies["pl-one"].url}
    write_list(list_file, good)
    wait_until(lambda: proxy_up(front, "pl-one") == 1, 5, "pl-one serving")
    with PlainTraffic(front, api_key) as traffic:
        write_list(list_file, text.replace("%s", proxies["pl-one"].url))
        wait_until(lambda: message in log_of(front), 5, f"the log saying {message!r}",
                   interval=0.1)
        time.sleep(0.5)
    assert "keeping the 1 proxies in force" in log_of(front)
    assert traffic.statuses and traffic.failed() == []
    assert front.health()[0] == 200
    write_list(list_file, good)


# --- in-process -----------------------------------------------------------------------------

def test_a_new_proxy_gets_requests_once_checked_healthy_and_a_removed_one_retires(tls_dir):
    with FakeProxy(tls_dir).running() as fake:
        async def scenario() -> None:
            context = proxy_client_context(tls_dir.ca_crt, tls_dir.gatekeeper_crt,
                                           tls_dir.gatekeeper_key)

            def make(named: NamedProxy) -> Proxy:
                return Proxy(named.name, ProxyForwarder(named.url, 5, 4, ssl_context=context,
                                                        tls_name="proxy"), url=named.url)
            gone = NamedProxy("gone", f"http://127.0.0.1:{free_port()}")
            proxies = Proxies([make(gone)], by_name=True, factory=make, check_interval=60,
                              retire_seconds=0.3)
            await proxies.start()
            try:
                assert not await proxies.update([gone])  # the same list: nothing to do
                assert await proxies.update([gone, NamedProxy("fake", fake.url)])
                old, new = proxies.proxies
                assert new.joining
                assert [proxy.name for proxy in proxies.candidates()] == ["gone"]
                await proxies.check(new)
                assert not new.joining
                assert "fake" in [proxy.name for proxy in proxies.candidates()]
                # Removed: retiring, still the holder of its ids, then let go.
                assert await proxies.update([NamedProxy("fake", fake.url)])
                assert old.retiring and proxies.retiring == (old,)
                assert proxies.holder("gone.abcdefghijklmnopqrstuvwx") is old
                assert [proxy.name for proxy in proxies.candidates()] == ["fake"]
                await asyncio.sleep(0.6)
                assert proxies.retiring == ()
                assert proxies.holder("gone.abcdefghijklmnopqrstuvwx") is None
                # A new URL under the same name: another Proxy.
                assert await proxies.update([NamedProxy("fake", gone.url)])
                assert proxies.proxies[0] is not new and proxies.retiring == (new,)
                # Listed again while it retires: back as it was.
                assert await proxies.update([NamedProxy("fake", fake.url)])
                assert proxies.proxies == (new,) and not new.retiring
            finally:
                await proxies.close()

        asyncio.run(scenario())


def test_the_list_file_is_reloaded_when_it_changes_and_kept_when_bad(tmp_path, caplog):
    path = tmp_path / "proxies.json"
    write_list(path, {"a": "https://10.0.0.5:5000"})
    listed = ProxyListFile(str(path))
    assert listed.proxies == (NamedProxy("a", "https://10.0.0.5:5000"),)
    assert not listed.reload_if_changed()
    write_list(path, {"a": "https://10.0.0.5:5000", "b": "https://10.0.0.6:5000/"})
    assert listed.reload_if_changed()
    assert [proxy.url for proxy in listed.proxies] == ["https://10.0.0.5:5000",
                                                       "https://10.0.0.6:5000"]
    with caplog.at_level(logging.ERROR):
        for bad in ('{"proxies": [{"name": "c", "url": "http://10.0.0.7:5000"}]}',
                    '{"proxies": [], "extra": 1}', "[]", "",
                    '{"proxies": [{"name": "c", "url": "https://x:1"}, '
                    '{"name": "c-w1", "url": "https://y:1"}]}'):
            write_list(path, bad)
            os.utime(path, ns=(time.time_ns(), time.time_ns() + 1))
            assert not listed.reload_if_changed()
            assert len(listed.proxies) == 2
        path.unlink()
        assert not listed.reload_if_changed()
    assert "plain http://" in caplog.text and "unknown field(s) extra" in caplog.text
    assert "unreadable" in caplog.text and "worker 1 of 'c'" in caplog.text
    with pytest.raises(ValueError, match="no proxy"):
        parse_proxies_file('{"proxies": []}', "f.json")
    with pytest.raises(FileNotFoundError):
        ProxyListFile(str(path))


def test_the_list_file_setting_excludes_the_others(tmp_path):
    path = tmp_path / "proxies.json"
    write_list(path, {"p1": "https://10.0.0.5:5000"})
    for other, value in (("GATEKEEPER_PROXIES", "p1=https://a:1"),
                         ("GATEKEEPER_PROXY_URL", "https://b:1")):
        with pytest.raises(ValueError, match=f"GATEKEEPER_PROXIES_FILE and {other}: set one"):
            load_config(GatekeeperConfig, [], {"GATEKEEPER_PROXIES_FILE": str(path),
                                               other: value})
    with pytest.raises(ValueError, match="GATEKEEPER_RETIRE_SECONDS"):
        load_config(GatekeeperConfig, [], {"GATEKEEPER_PROXIES_FILE": str(path),
                                           "GATEKEEPER_RETIRE_SECONDS": "-1"})
    config = load_config(GatekeeperConfig, [], {"GATEKEEPER_PROXIES_FILE": str(path),
                                                "GATEKEEPER_KEYS_FILE": "/k.json",
                                                "GATEKEEPER_TLS_CERT": "/c",
                                                "GATEKEEPER_TLS_KEY": "/k"})
    assert config.proxy_list == (NamedProxy("p1", "https://10.0.0.5:5000"),)
    assert config.proxy_over_tls and config.retire_seconds == 75.0
    config.check_startup()
    write_list(path, {"p1": "http://10.0.0.5:5000"})
    with pytest.raises(ValueError, match="GATEKEEPER_PROXIES_FILE is plain http://"):
        config.check_startup()
