"""One Gatekeeper in front of several Proxies (``GATEKEEPER_PROXIES``,
``services/gatekeeper/proxies.py``).

Real parts first: two Proxy processes (``PROXY_INSTANCE_NAME`` mp-one and mp-two) on the
session's MariaDB cluster behind one Gatekeeper; requests spread over both, a transaction's
requests reach the Proxy that holds it, and when one Proxy is killed (SIGKILL) its transactions
answer 409 at once and leave nothing in the database while the other's commit, plain requests
go on, and the Proxy started again comes back into rotation. Then stand-ins, for what a real
Proxy will not do on demand: take a request and close the connection without an answer (a
commit's outcome is then unknown), or not be there at all from the start. Last, the pure parts:
the settings' checks, which Proxy an id names, the order of the choice, the answers' wording.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cluster.loopback import gatekeeper_service
from cluster.loopback.processes import free_port
from cluster.loopback.services import ServiceProcess
from cluster.waiting import wait_until
from services.client import Answer, request
from services.config import GatekeeperConfig, load_config, parse_proxies
from services.errors import ApiError
from services.gatekeeper.forwarder import ProxyForwarder, ProxyLost
from services.gatekeeper.proxies import Proxies, Proxy, ended_unreachable, lost_during
from tests.conftest import http, scratch_tables
from tests.services.gatekeeper.conftest import (
    FakeProxy,
    TlsDir,
    gatekeeper_process,
    running_proxies,
    write_keys,
)
from tests.services.gatekeeper.traffic import PlainTraffic
from tests.services.scrape import scrape

NAMES = ("mp-one", "mp-two")


def transaction_id(instance: str) -> str:
    """A well-formed id naming ``instance`` (its random part never given by any Proxy)."""
    return f"{instance}.{secrets.token_urlsafe(18)}"


# --- real Proxies ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def proxies(db_cluster, tmp_path_factory) -> Iterator[dict[str, ServiceProcess]]:
    # One key opens every transaction here: it may hold them all (not half, the default share).
    with running_proxies(db_cluster, tmp_path_factory.mktemp("several-proxies"), NAMES,
                         PROXY_MAX_TRANSACTIONS_PER_KEY="8") as services:
        yield services


@pytest.fixture(scope="module")
def front(db_cluster, proxies, keys_file, tmp_path_factory) -> Iterator[ServiceProcess]:
    listed = ",".join(f"{name}={service.url}" for name, service in proxies.items())
    service = gatekeeper_service(db_cluster, "", keys_file,
                                 tmp_path_factory.mktemp("front") / "gatekeeper.log",
                                 GATEKEEPER_PROXIES=listed,
                                 GATEKEEPER_METRICS_PORT=str(free_port()))
    with service.running():
        yield service


@pytest.fixture(scope="module")
def table(db_cluster) -> Iterator[str]:
    with scratch_tables(db_cluster, "several") as make:
        yield make()


def lines_with(service: ServiceProcess, marker: str) -> int:
    """The Proxy's request log lines of requests whose id starts with ``marker``."""
    assert service.log_path is not None
    text = service.log_path.read_text(errors="replace")
    return text.count(f'"request_id": "{marker}')


def send(front: ServiceProcess, api_key: str, path: str, body: dict | None = None,
         request_id: str | None = None) -> Answer:
    headers = {"X-API-Key": api_key}
    if request_id:
        headers["X-Request-Id"] = request_id
    return http(front.url + path, body if body is not None else {}, headers, timeout=10)


def test_requests_spread_over_both_proxies(front, proxies, api_key):
    marker = f"spread{secrets.token_hex(4)}-"
    with front.client(api_key) as client:
        for index in range(20):
            answer = client.post("/query", {"sql": "SELECT 1"},
                                 {"X-Request-Id": f"{marker}{index}"})
            assert answer.status == 200, answer.json

    def counted() -> dict[str, int] | None:
        counts = {name: lines_with(service, marker) for name, service in proxies.items()}
        return counts if sum(counts.values()) == 20 else None

    # One at a time, none outstanding: the ties go round, so each gets half.
    assert wait_until(counted, 5, "every request in a Proxy's log") == {"mp-one": 10,
                                                                        "mp-two": 10}
    samples = scrape(int(front.env["GATEKEEPER_METRICS_PORT"]), front.tls)
    for name in NAMES:
        assert samples.value("sqlgate_gatekeeper_proxy_requests_total", proxy=name) >= 10
        assert samples.value("sqlgate_gatekeeper_proxy_up", proxy=name) == 1
        assert samples.value("sqlgate_gatekeeper_proxy_outstanding_requests", proxy=name) == 0
    # The public health says that it can serve, and nothing of the Proxies behind.
    assert front.health() == (200, {"service": "gatekeeper", "status": "ok"})


def test_a_transaction_s_requests_reach_the_proxy_that_holds_it(front, api_key, db_cluster,
                                                                table):
    opened = [send(front, api_key, "/transactions") for _ in range(4)]
    assert [answer.status for answer in opened] == [201] * 4
    ids = [answer.json["transaction_id"] for answer in opened]
    assert {tid.split(".")[0] for tid in ids} == set(NAMES)
    for index, tid in enumerate(ids, 1000):
        answer = send(front, api_key, "/batch", {
            "statements": [{"sql": f"INSERT INTO {table} (id, v) VALUES (?, ?)",
                            "params": [index, tid]}], "transaction_id": tid})
        assert answer.status == 200, answer.json
        # A Proxy that does not hold it would answer 404 ("not held by this proxy").
        answer = send(front, api_key, f"/transactions/{tid}/commit")
        assert (answer.status, answer.json.get("status")) == (200, "committed"), answer.json
    committed = {row["v"] for row in db_cluster.primary.sql(
        f"SELECT v FROM {table} WHERE id BETWEEN 1000 AND 1003")}
    assert committed == set(ids)
    # An id naming no Proxy of this Gatekeeper: as unknown as one never given.
    stranger = transaction_id("mp-three")
    answer = send(front, api_key, f"/transactions/{stranger}/commit")
    assert (answer.status, answer.json["transaction_id"]) == (404, stranger)


def test_a_killed_proxy_s_transactions_end_at_once_and_the_other_s_commit(
        front, proxies, api_key, db_cluster, table):
    opened = [send(front, api_key, "/transactions") for _ in range(10)]
    assert [answer.status for answer in opened] == [201] * 10
    ids = [answer.json["transaction_id"] for answer in opened]
    held = {name: [tid for tid in ids if tid.startswith(f"{name}.")] for name in NAMES}
    assert all(held.values()), held  # both hold some
    rows = {tid: index for index, tid in enumerate(ids, 1)}
    for tid, row in rows.items():
        answer = send(front, api_key, "/query", {
            "sql": f"INSERT INTO {table} (id, v) VALUES (?, ?)", "params": [row, tid],
            "transaction_id": tid})
        assert answer.status == 200, answer.json
    victim, survivor = NAMES
    killed = proxies[victim]

    with PlainTraffic(front, api_key) as traffic:
        time.sleep(0.5)
        os.kill(killed.process.pid, signal.SIGKILL)
        killed.process.wait(10)
        killed_at = time.monotonic()
        for tid in held[victim]:  # its next statement, then its commit
            statement = {"sql": f"UPDATE {table} SET v = 'after' WHERE id = {rows[tid]}",
                         "transaction_id": tid}
            for path, body in (("/query", statement), (f"/transactions/{tid}/commit", {})):
                began = time.monotonic()
                answer = send(front, api_key, path, body)
                assert time.monotonic() - began < 2, (path, answer.json)
                assert answer.status == 409, answer.json
                assert answer.json["transaction_id"] == tid
                assert answer.json["outcome"] == "rolled back"
                assert "proxy is unreachable" in answer.json["error"]
        for tid in held[survivor]:
            answer = send(front, api_key, f"/transactions/{tid}/commit")
            assert (answer.status, answer.json.get("status")) == (200, "committed"), answer.json
        time.sleep(1.5)
    in_flight = traffic.failed()
    assert not traffic.failed(after=killed_at + 1.0), in_flight
    assert len(traffic.answers) > 50 and len(in_flight) <= 2, in_flight
    print(f"plain requests: {len(traffic.answers)}, failed in flight at the kill: "
          f"{len(in_flight)} {[status for _, status in in_flight]}")

    present = {row["v"] for row in db_cluster.primary.sql(
        f"SELECT v FROM {table} WHERE id BETWEEN 1 AND 10")}
    assert present == set(held[survivor])  # the victim's rows were never committed

    samples = scrape(int(front.env["GATEKEEPER_METRICS_PORT"]), front.tls)
    assert samples.value("sqlgate_gatekeeper_proxy_up", proxy=victim) == 0
    assert front.health() == (200, {"service": "gatekeeper", "status": "ok"})

    # Started again on its port, it is back in rotation by itself (the next check finds it).
    killed.start()
    marker = f"back{secrets.token_hex(4)}-"

    def reached_again() -> bool:
        with front.client(api_key) as client:
            for index in range(4):
                assert client.post("/query", {"sql": "SELECT 1"},
                                   {"X-Request-Id": f"{marker}{index}"}).status == 200
        time.sleep(0.3)  # the Proxy writes its request log lines within 0.2 s
        return lines_with(killed, marker) > 0

    wait_until(reached_again, 5, f"requests reaching {victim} again", interval=0.2)
    answer = send(front, api_key, "/transactions")
    second = send(front, api_key, "/transactions")
    assert {answer.json["transaction_id"].split(".")[0],
            second.json["transaction_id"].split(".")[0]} == set(NAMES)
    for opened_again in (answer, second):
        tid = opened_again.json["transaction_id"]
        assert send(front, api_key, f"/transactions/{tid}/rollback").status == 200


def test_new_transactions_go_to_the_other_proxy_while_one_drains(front, proxies, api_key):
    """mp-two gets SIGTERM while it holds a transaction (so it drains, refusing new ones with
    503 ``draining``): every new transaction through the Gatekeeper opens on mp-one, with no
    503, whether the Gatekeeper's check or a refusal told it first. Once the held transaction
    ends, mp-two exits, and is started again."""
    stopping = proxies["mp-two"]
    held = None
    for _ in range(6):  # the ties go round: one of the first ones lands on mp-two
        tid = send(front, api_key, "/transactions").json["transaction_id"]
        if tid.startswith("mp-two.") and held is None:
            held = tid
        else:
            assert send(front, api_key, f"/transactions/{tid}/rollback").status == 200
    assert held is not None
    stopping.process.send_signal(signal.SIGTERM)
    try:
        assert wait_until(lambda: stopping.health()[0] == 503, 2, "mp-two draining",
                          interval=0.02)
        for _ in range(10):  # one at a time, within the key's share
            answer = send(front, api_key, "/transactions")
            assert answer.status == 201, answer.json
            tid = answer.json["transaction_id"]
            assert tid.startswith("mp-one."), tid
            assert send(front, api_key, f"/transactions/{tid}/rollback").status == 200
        # The held one is still served by the draining Proxy, then it may exit.
        assert send(front, api_key, f"/transactions/{held}/rollback").status == 200
        assert stopping.process.wait(30) == 0
    finally:
        stopping.stop()  # at once, if the test failed before it exited
        stopping.start()


# --- stand-ins: a Proxy that takes a request and closes, a Proxy that is not there ----------

@dataclass
class CuttingProxy:
    """Speaks mutual TLS like a Proxy, reads a whole request, and closes the connection
    without answering: a Proxy lost after the request reached it."""

    tls: TlsDir
    port: int = field(default_factory=free_port)
    seen: list[str] = field(default_factory=list)  # request lines, in order

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def posts(self) -> list[str]:
        return [line for line in self.seen if line.startswith("POST ")]

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls.proxy_crt, self.tls.proxy_key)
        context.load_verify_locations(cafile=self.tls.ca_crt)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    async def _take(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ssl.SSLError):
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            self.seen.append(head.split(b"\r\n", 1)[0].decode())
        writer.transport.abort()

    @contextlib.contextmanager
    def running(self) -> Iterator[CuttingProxy]:
        ready = threading.Event()
        holder: dict = {}

        async def serve() -> None:
            server = await asyncio.start_server(self._take, "127.0.0.1", self.port,
                                                ssl=self._context())
            holder["stop"], holder["loop"] = asyncio.Event(), asyncio.get_running_loop()
            ready.set()
            await holder["stop"].wait()
            server.close()

        thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
        thread.start()
        assert ready.wait(10), "the cutting proxy did not start"
        try:
            yield self
        finally:
            holder["loop"].call_soon_threadsafe(holder["stop"].set)
            thread.join(10)


@pytest.fixture(scope="module")
def stand_in_keys(tmp_path_factory, keys) -> Path:
    return write_keys(tmp_path_factory.mktemp("stand-in-keys") / "keys.json", *keys.all())


def test_a_commit_lost_after_it_was_sent_has_an_unknown_outcome(tls_dir, keys, stand_in_keys,
                                                                 tmp_path):
    gone = f"https://127.0.0.1:{free_port()}"
    with CuttingProxy(tls_dir).running() as cutting:
        service = gatekeeper_process(tls_dir, "", tmp_path / "gatekeeper.log", stand_in_keys,
                                     GATEKEEPER_PROXIES=f"cut={cutting.url},gone={gone}")
        with service.running(expect_healthy=False):
            def post(path: str, body: dict | None = None) -> Answer:
                return request(service.url + path, body or {},
                               {"X-API-Key": keys.write.secret}, tls=service.tls)

            tid = transaction_id("cut")
            answer = post(f"/transactions/{tid}/commit")
            assert answer.status == 503, answer.json
            assert (answer.json["outcome"], answer.json["transaction_id"]) == ("unknown", tid)
            assert "may or may not have been committed" in answer.json["error"]
            assert cutting.posts() == [f"POST /transactions/{tid}/commit HTTP/1.1"]

            answer = post("/query", {"sql": "SELECT 1", "transaction_id": tid})
            assert (answer.status, answer.json["outcome"]) == (503, "unknown")
            answer = post(f"/transactions/{tid}/rollback")
            assert (answer.status, answer.json["outcome"]) == (503, "rolled back")

            # A plain request that went out is never sent again, even with another Proxy.
            answer = post("/query", {"sql": "SELECT 1"})
            assert (answer.status, answer.json["error"]) == (502, "bad answer from the proxy")
            assert cutting.posts()[-1] == "POST /query HTTP/1.1"
            assert len(cutting.posts()) == 4

            # A Proxy not there: its transactions have ended, at once, even a worker's.
            for lost in (transaction_id("gone"), transaction_id("gone-w3")):
                began = time.monotonic()
                answer = post(f"/transactions/{lost}/commit")
                assert time.monotonic() - began < 2
                assert answer.status == 409, answer.json
                assert answer.json == {
                    "error": f"transaction {lost} has ended: its proxy is unreachable; "
                             "nothing in it was committed",
                    "transaction_id": lost, "outcome": "rolled back",
                    "request_id": answer.json["request_id"]}
            nobody = transaction_id("nobody")
            answer = post("/query", {"sql": "SELECT 1", "transaction_id": nobody})
            assert (answer.status, answer.json["error"]) == (404, f"no transaction {nobody}")
            assert service.health() == (503, {"service": "gatekeeper",
                                              "status": "unavailable"})
            assert len(cutting.posts()) == 4  # none of these reached it


def test_a_proxy_refusing_connections_is_skipped(tls_dir, keys, stand_in_keys, tmp_path):
    gone = f"https://127.0.0.1:{free_port()}"
    with FakeProxy(tls_dir).running() as fake:
        service = gatekeeper_process(tls_dir, "", tmp_path / "gatekeeper.log", stand_in_keys,
                                     GATEKEEPER_PROXIES=f"gone={gone},fake={fake.url}")
        with service.running():  # healthy: one of its Proxies is
            for _ in range(10):
                answer = request(service.url + "/query", {"sql": "SELECT 1"},
                                 {"X-API-Key": keys.read.secret}, tls=service.tls)
                assert answer.status == 200, answer.json
            assert len(fake.requests_to("/query")) == 10
            tid = transaction_id("fake")
            answer = request(service.url + f"/transactions/{tid}/commit", {},
                             {"X-API-Key": keys.write.secret}, tls=service.tls)
            assert answer.status == 200
            assert fake.requests_to(f"/transactions/{tid}/commit")


# --- the pure parts -------------------------------------------------------------------------

@pytest.mark.parametrize(("proxies", "message"), [
    ("p1", "is not name=url"),
    ("p1=https://10.0.0.5:5000,p1=https://10.0.0.6:5000", "given twice"),
    ("p_1=https://10.0.0.5:5000", "bad name 'p_1'"),
    ("p1=ftp://10.0.0.5", "bad URL 'ftp://10.0.0.5' for p1"),
    ("p1=https://10.0.0.5:5000/path", "bad URL"),
    ("p1=", "bad URL"),
    (" , ", "no proxy"),
    ("p=https://a:1,p-w2=https://b:1", "worker 2 of 'p'"),
])
def test_bad_proxy_lists_are_refused_naming_the_setting(proxies, message):
    with pytest.raises(ValueError, match="GATEKEEPER_PROXIES") as raised:
        load_config(GatekeeperConfig, [], {"GATEKEEPER_PROXIES": proxies})
    assert message in str(raised.value)


def test_the_proxy_settings_and_their_forms():
    config = load_config(GatekeeperConfig, [], {
        "GATEKEEPER_PROXIES": " p1=https://10.0.0.5:5000/, p2=http://10.0.0.6:5000 ",
        "GATEKEEPER_KEYS_FILE": "/k.json", "GATEKEEPER_TLS_CERT": "/c",
        "GATEKEEPER_TLS_KEY": "/k"})
    assert [(proxy.name, proxy.url) for proxy in config.proxy_list] == [
        ("p1", "https://10.0.0.5:5000"), ("p2", "http://10.0.0.6:5000")]
    assert config.proxy_over_tls and config.proxy_over_plain_http
    with pytest.raises(ValueError, match="GATEKEEPER_PROXIES is plain http://"):
        config.check_startup()
    with pytest.raises(ValueError, match="set one of them"):
        load_config(GatekeeperConfig, [], {"GATEKEEPER_PROXIES": "p1=https://a:1",
                                           "GATEKEEPER_PROXY_URL": "https://b:1"})
    # The one-Proxy form, unchanged: one Proxy, named "proxy" in the logs and metrics.
    single = load_config(GatekeeperConfig, [], {"GATEKEEPER_PROXY_URL": "https://10.0.0.5:5000"})
    assert [(proxy.name, proxy.url) for proxy in single.proxy_list] == [
        ("proxy", "https://10.0.0.5:5000")]
    assert not single.proxies and parse_proxies("a=https://x:1")[0].name == "a"


def _proxies(*names: str, by_name: bool = True) -> Proxies:
    return Proxies([Proxy(name, ProxyForwarder(f"https://127.0.0.1:{port}", 5, 4))
                    for port, name in enumerate(names, 5000)], by_name=by_name)


def test_the_holder_is_the_proxy_the_id_names_or_its_worker_s():
    proxies = _proxies("p1", "p2", "a" * 62)
    holder = proxies.holder
    assert holder(transaction_id("p1")).name == "p1"
    assert holder(transaction_id("p2-w0")).name == "p2"
    assert holder(transaction_id("p2-w13")).name == "p2"
    assert holder(transaction_id("a" * 60 + "-w1")).name == "a" * 62  # shortened by its worker
    assert holder(transaction_id("p3")) is None
    assert holder(transaction_id("p1x-w1")) is None
    # One Proxy (GATEKEEPER_PROXY_URL) holds every transaction: it answers for the others.
    assert _proxies("proxy", by_name=False).holder(transaction_id("host-7")).name == "proxy"


def test_the_choice_prefers_healthy_then_idle_then_takes_turns():
    proxies = _proxies("p1", "p2", "p3")
    p1, p2, p3 = proxies.proxies
    for proxy in proxies.proxies:
        proxy.healthy = True
    firsts = [proxies.candidates()[0].name for _ in range(6)]
    assert firsts == ["p1", "p2", "p3", "p1", "p2", "p3"]
    p1.outstanding = 2
    p2.outstanding = 1
    assert [proxy.name for proxy in proxies.candidates()] == ["p3", "p2", "p1"]
    p3.healthy = False
    assert [proxy.name for proxy in proxies.candidates()] == ["p2", "p1", "p3"]
    p2.reachable = False
    assert [proxy.name for proxy in proxies.candidates()] == ["p1", "p3"]
    p1.reachable = p3.reachable = False
    assert {proxy.name for proxy in proxies.candidates()} == {"p1", "p2", "p3"}
    assert not proxies.healthy


def test_what_a_lost_proxy_means_for_a_transaction():
    tid = transaction_id("p1")
    ended = ended_unreachable(tid)
    assert (ended.status, ended.details) == (409, {"transaction_id": tid,
                                                   "outcome": "rolled back"})
    cut = ProxyLost(502, "bad answer from the proxy", cause="bad_answer")
    late = ProxyLost(504, "the proxy did not answer in time", cause="timeout")
    for lost, status in ((cut, 503), (late, 504)):
        commit = lost_during(tid, "commit", lost)
        assert (commit.status, commit.details["outcome"]) == (status, "unknown")
        statement = lost_during(tid, "statement", lost)
        assert (statement.status, statement.details["outcome"]) == (status, "unknown")
        assert "not committed" in statement.message
        rollback = lost_during(tid, "rollback", lost)
        assert (rollback.status, rollback.details["outcome"]) == (status, "rolled back")


def test_a_proxy_whose_host_is_cut_off_becomes_unreachable_after_two_checks():
    """A host cut off the network answers nothing, not even a refusal: here a listener whose
    backlog is full and which never accepts, so that a new connection waits forever, as one to
    a cut host does. The checks, each on a new connection, find no connection twice in a row:
    the Proxy is then unreachable, and its transactions end at once (409) instead of waiting
    out the request timeout on a connection kept from before the cut."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filling = []
    for _ in range(8):  # fill the backlog: the next connections get no answer to their SYN
        held = socket.socket()
        held.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            held.connect(("127.0.0.1", port))
        filling.append(held)

    async def attempt() -> tuple[list[bool], float, ApiError]:
        cut = Proxy("cut", ProxyForwarder(f"http://127.0.0.1:{port}", 30, 4),
                    checker=ProxyForwarder(f"http://127.0.0.1:{port}", 30, 1, fresh=True))
        proxies = Proxies([cut], by_name=True, check_timeout=0.4)
        await proxies.start()  # the first check runs at once: stop it, check by hand
        await proxies.close()
        for forwarder in cut.forwarders():
            await forwarder.start()
        seen = []
        for _ in range(2):
            await proxies.check(cut)
            seen.append(cut.reachable)
        began = time.monotonic()
        try:
            await proxies.forward("POST", "/query", "r1", b"{}", scope="read",
                                  key_name="k", transaction_id=transaction_id("cut"),
                                  action="commit")
        except ApiError as error:
            ended = error
        took = time.monotonic() - began
        for forwarder in cut.forwarders():
            await forwarder.close()
        return seen, took, ended

    try:
        seen, took, ended = asyncio.run(attempt())
    finally:
        for held in filling:
            held.close()
        listener.close()
    assert seen == [True, False]  # one check without a connection may be a blip
    assert ended.status == 409 and ended.details["outcome"] == "rolled back", ended.to_json()
    assert took < 0.1, took
