"""Both services as several worker processes over the same ports (``services/workers.py``).

Real processes on the loopback MariaDB: a Proxy and a Gatekeeper with WORKERS=2. Every request
goes on a connection of its own, so the kernel hands them to either worker; a transaction's
requests then land on both, and the one that does not hold it passes them on.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import secrets
import signal
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from cluster.loopback import gatekeeper_service
from cluster.loopback.processes import free_port
from cluster.loopback.services import ServiceProcess
from cluster.waiting import wait_until
from services.config import ProxyConfig, worker_instance_name
from services.contract import TRANSACTION_ID_PATTERN
from services.requestlog import FLUSH_SECONDS
from tests.conftest import Answer, http, proxy_service, scratch_tables
from tests.services.gatekeeper.conftest import Key, new_key, write_keys
from tests.services.scrape import Samples, scrape

INSTANCE = "wtest"
RATE, BURST = 5.0, 5


@pytest.fixture(scope="module")
def proxy2(db_cluster, tmp_path_factory) -> Iterator[ServiceProcess]:
    service = proxy_service(db_cluster, tmp_path_factory.mktemp("logs") / "proxy2.log",
                            PROXY_WORKERS="2", PROXY_INSTANCE_NAME=INSTANCE,
                            PROXY_METRICS_PORT=str(free_port()))
    with service.running():
        yield service


@pytest.fixture(scope="module")
def keys2() -> dict[str, Key]:
    return {"admin": new_key("ops", "admin"),
            "limited": new_key("limited", "read", rate=RATE, burst=BURST)}


@pytest.fixture(scope="module")
def gatekeeper2(db_cluster, proxy2, keys2, tmp_path_factory) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("gatekeeper2")
    service = gatekeeper_service(db_cluster, proxy2.url,
                                 write_keys(root / "keys.json", *keys2.values()),
                                 root / "gatekeeper.log", GATEKEEPER_WORKERS="2")
    with service.running():
        yield service


@pytest.fixture(scope="module")
def scratch(db_cluster) -> Iterator[Callable[..., str]]:
    with scratch_tables(db_cluster, "workers") as make:
        yield make


def workers_of(service: ServiceProcess) -> list[psutil.Process]:
    return psutil.Process(service.process.pid).children()


def on_many_connections(send: Callable[[], Answer], count: int) -> list[Answer]:
    """``count`` requests, four at a time, each on a connection of its own."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda _: send(), range(count)))


def workers_seen(service: ServiceProcess, count: int = 40) -> set[int]:
    answers = on_many_connections(lambda: http(service.url + "/health"), count)
    assert all(answer.status == 200 for answer in answers), answers
    return {answer.json["worker"] for answer in answers}


# --- the Proxy ----------------------------------------------------------------------------------

@pytest.mark.parametrize("instance", ["p", "proxy-1", "x" * 63])
def test_a_workers_instance_name_is_its_own_and_still_a_valid_one(instance):
    config = ProxyConfig(instance_name=instance, workers=12)
    names = {config.for_worker(index).instance_name for index in range(12)}
    assert len(names) == 12
    assert config.for_worker(11).instance_name == worker_instance_name(instance, 11)
    for name in names:
        assert TRANSACTION_ID_PATTERN.fullmatch(f"{name}.{'a' * 24}")
        assert name.startswith(instance[:59])



def test_the_proxy_answers_from_both_workers_each_with_its_own_heartbeat(proxy2, db_cluster):
    assert len(workers_of(proxy2)) == 2
    assert wait_until(lambda: workers_seen(proxy2) == {0, 1}, 20, "both workers answering")
    rows = db_cluster.primary.sql("SELECT proxy FROM sqlgate.heartbeat")
    assert {f"{INSTANCE}-w0", f"{INSTANCE}-w1"} <= {row["proxy"] for row in rows}


def test_a_transaction_over_many_connections_always_reaches_its_worker(
        proxy2, db_cluster, scratch):
    """Two transactions, one held by each worker, used turn about, a connection a request:
    every statement reaches its transaction (it sees the rows written before it in the same
    transaction, and only those) and both commits land on the primary."""
    table = scratch()
    base = proxy2.url
    held: dict[int, str] = {}
    for _ in range(40):
        opened = http(base + "/transactions", b"")
        assert opened.status == 201, opened.json
        tid = opened.json["transaction_id"]
        worker = int(tid.split(".")[0].rsplit("-w", 1)[1])
        if worker in held:
            assert http(f"{base}/transactions/{tid}/rollback", b"").status == 200
        else:
            held[worker] = tid
        if len(held) == 2:
            break
    assert sorted(held) == [0, 1], held
    for row in range(12):
        for worker, tid in held.items():
            key = 100 * worker + row
            answer = http(base + "/query", {"sql": f"INSERT INTO {table} (id, v) VALUES (?, ?)",
                                            "params": [key, f"w{worker}"],
                                            "transaction_id": tid})
            assert answer.status == 200, answer.json
            seen = http(base + "/query", {"sql": f"SELECT COUNT(*) FROM {table}",
                                          "transaction_id": tid})
            assert seen.status == 200 and seen.json["rows"] == [[row + 1]], seen.json
    batch = http(base + "/batch", {"statements": [{"sql": f"SELECT COUNT(*) FROM {table}"}],
                                   "transaction_id": held[0]})
    assert batch.status == 200 and batch.json["results"][0]["rows"] == [[12]], batch.json
    for worker, tid in held.items():
        committed = http(f"{base}/transactions/{tid}/commit", b"")
        assert committed.status == 200, committed.json
        assert committed.json["status"] == "committed"
        assert committed.json["statements"] == 24 + (worker == 0)  # the batch's one
        again = http(f"{base}/transactions/{tid}/commit", b"")
        assert again.status in (404, 409), again.json  # ended: never committed twice
    rows = db_cluster.primary.sql(f"SELECT id, v FROM {table} ORDER BY id")
    assert [(row["id"], row["v"]) for row in rows] == \
        [(row, "w0") for row in range(12)] + [(100 + row, "w1") for row in range(12)]


def proxy2_metrics(service: ServiceProcess) -> Samples:
    return scrape(int(service.env["PROXY_METRICS_PORT"]), service.tls)


def settled_metrics(service: ServiceProcess) -> Samples:
    """A scrape that counts every request answered before it: the earlier tests' requests
    may still wait in a worker's batch (made at most FLUSH_SECONDS after them), so two
    scrapes more than that apart must agree."""
    def settled() -> Samples | None:
        first = proxy2_metrics(service)
        time.sleep(2 * FLUSH_SECONDS)
        second = proxy2_metrics(service)
        return second if second.total("sqlgate_proxy_requests_total") == \
            first.total("sqlgate_proxy_requests_total") else None

    return wait_until(settled, 10, "the workers' batches written")


def test_metrics_add_up_across_workers_and_a_passed_request_counts_once(proxy2, scratch):
    """Reads spread over both workers and one transaction's statements (half of them passed
    from the worker that took the connection to the one holding it): the one metrics port
    counts each request exactly once, whichever worker served it or scraped."""
    table = scratch()
    query = {"endpoint": "POST /query"}
    before = settled_metrics(proxy2)
    reads = on_many_connections(lambda: http(proxy2.url + "/query",
                                             {"sql": "SELECT 1", "mode": "random"}), 40)
    assert all(answer.status == 200 for answer in reads), reads
    assert workers_seen(proxy2) == {0, 1}
    opened = http(proxy2.url + "/transactions", b"")
    assert opened.status == 201, opened.json
    tid = opened.json["transaction_id"]
    for row in range(10):
        answer = http(proxy2.url + "/query", {"sql": f"INSERT INTO {table} (id, v) VALUES "
                                                     "(?, 'm')", "params": [row],
                                              "transaction_id": tid})
        assert answer.status == 200, answer.json
    assert http(f"{proxy2.url}/transactions/{tid}/commit", b"").status == 200

    def grown(after: Samples, endpoint: str) -> float:
        return after.total("sqlgate_proxy_requests_total", endpoint=endpoint) - \
            before.total("sqlgate_proxy_requests_total", endpoint=endpoint)

    def settled() -> Samples | None:
        # The scraped worker counts what it answered; the other one within its batch's 0.2 s.
        samples = proxy2_metrics(proxy2)
        done = grown(samples, "POST /query") >= 40 + 10 and \
            grown(samples, "POST /transactions/{id}/commit") >= 1
        return samples if done else None

    after = wait_until(settled, 10, "every request counted")
    assert grown(after, "POST /query") == 40 + 10
    assert grown(after, "POST /transactions/{id}/commit") == 1
    assert after.total("sqlgate_proxy_request_duration_seconds_count", **query) - \
        before.total("sqlgate_proxy_request_duration_seconds_count", **query) == 40 + 10
    assert after.value("sqlgate_proxy_in_flight_requests") == 0
    assert after.value("sqlgate_proxy_open_transactions") == 0


def test_a_transaction_through_the_gatekeeper_keeps_its_request_id_and_scope(
        gatekeeper2, keys2, db_cluster, scratch):
    table = scratch()
    headers = {"X-API-Key": keys2["admin"].secret}
    url = gatekeeper2.url
    opened = http(url + "/transactions", b"", headers)
    assert opened.status == 201, opened.json
    tid = opened.json["transaction_id"]
    for row in range(10):
        request_id = f"workers-{row}"
        answer = http(url + "/query", {"sql": f"INSERT INTO {table} (id, v) VALUES (?, 'x')",
                                       "params": [row], "transaction_id": tid},
                      {**headers, "X-Request-Id": request_id})
        assert answer.status == 200, answer.json
        assert answer.json["request_id"] == request_id
        assert answer.headers["X-Request-Id"] == request_id
    # The read key's scope goes along to the holder, which refuses the write.
    limited = http(url + "/query", {"sql": f"INSERT INTO {table} (id, v) VALUES (99, 'x')",
                                    "transaction_id": tid},
                   {"X-API-Key": keys2["limited"].secret})
    assert limited.status in (403, 429), limited.json
    committed = http(f"{url}/transactions/{tid}/commit", b"", headers)
    assert committed.status == 200, committed.json
    assert len(db_cluster.primary.sql(f"SELECT id FROM {table}")) == 10


@pytest.mark.parametrize("owner", ["w0", "w1", "w7"])
def test_an_unknown_transaction_of_any_worker_is_404(proxy2, owner):
    tid = f"{INSTANCE}-{owner}.{secrets.token_urlsafe(18)}"
    for path, body in (("/query", {"sql": "SELECT 1", "transaction_id": tid}),
                       (f"/transactions/{tid}/commit", b"")):
        for _ in range(6):  # on either worker
            answer = http(proxy2.url + path, body)
            assert answer.status == 404, answer.json
            assert answer.json["transaction_id"] == tid


# --- the Gatekeeper -----------------------------------------------------------------------------

WORKER_IN_LOG = re.compile(r"gatekeeper\[w(\d+)\].*key=limited|\"worker\": ?(\d+).*limited")


def test_a_rate_limited_key_gets_its_rate_once_whatever_the_number_of_workers(
        gatekeeper2, keys2):
    """Six clients as fast as they can, a connection a request, for three seconds: the key
    gets at most its burst plus its rate over the time measured, though both workers answer."""
    secret = keys2["limited"].secret
    statuses: list[int] = []
    began = time.monotonic()

    def send() -> Answer:
        return http(gatekeeper2.url + "/query", {"sql": "SELECT 1"}, {"X-API-Key": secret})

    while time.monotonic() - began < 3.0:
        statuses += [answer.status for answer in on_many_connections(send, 12)]
    elapsed = time.monotonic() - began
    granted = statuses.count(200)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) > 0
    assert granted <= BURST + RATE * elapsed + 1, (granted, elapsed)
    assert granted >= RATE * elapsed * 0.5, (granted, elapsed)  # and it is served at its rate

    def workers() -> set[int]:  # from the request lines, written in batches
        text = Path(gatekeeper2.log_path).read_text()
        return {int(a or b) for a, b in WORKER_IN_LOG.findall(text)}

    wait_until(lambda: workers() == {0, 1}, 10, "both workers to have answered the key")


# --- restarts and stops -------------------------------------------------------------------------

def runtime_dirs(service: ServiceProcess) -> tuple[Path, Path]:
    """The metrics and runtime directories, as the parent's log names them."""
    (root,) = re.findall(r"workers started \(private directory (\S+)\)",
                         Path(service.log_path).read_text())
    return Path(root) / "metrics", Path(root) / "run"


def check_restart_and_stop(service: ServiceProcess, send: Callable[[], Answer]) -> None:
    """A worker killed outright is started again and every request after that is served;
    SIGTERM to the parent stops every worker and removes the private directories."""
    before = workers_of(service)
    assert len(before) == 2
    metrics, runtime = runtime_dirs(service)
    for path in (metrics, runtime):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    victim = before[0]
    os.kill(victim.pid, signal.SIGKILL)
    wait_until(lambda: len(workers_of(service)) == 2 and victim.pid not in
               {worker.pid for worker in workers_of(service)}, 20, "the worker started again")
    time.sleep(1.0)  # the new worker is listening once its application is up
    answers = on_many_connections(send, 40)
    assert [answer.status for answer in answers] == [200] * 40, answers
    workers, process = workers_of(service), service.process
    service.stop()
    assert process.returncode == 0
    for worker in workers:
        assert not worker.is_running()
    assert not metrics.exists() and not runtime.exists() and not metrics.parent.exists()


def test_a_killed_proxy_worker_is_replaced_and_sigterm_stops_all(db_cluster, tmp_path):
    service = proxy_service(db_cluster, tmp_path / "proxy.log", PROXY_WORKERS="2")
    with service.running():
        runtime = runtime_dirs(service)[1]
        assert sorted(path.name for path in runtime.iterdir()) == ["w0.sock", "w1.sock"]
        assert stat.S_IMODE((runtime / "w0.sock").stat().st_mode) == 0o600
        check_restart_and_stop(service, lambda: http(service.url + "/query",
                                                     {"sql": "SELECT 1"}))


def test_a_killed_gatekeeper_worker_is_replaced_and_sigterm_stops_all(
        db_cluster, proxy2, keys2, tmp_path):
    redirect_port = free_port()
    service = gatekeeper_service(db_cluster, proxy2.url,
                                 write_keys(tmp_path / "keys.json", keys2["admin"]),
                                 tmp_path / "gatekeeper.log", GATEKEEPER_WORKERS="2",
                                 GATEKEEPER_REDIRECT_PORT=str(redirect_port))
    with service.running():
        # The redirect port is bound by the parent too, and served by the workers.
        redirected = http(f"http://127.0.0.1:{redirect_port}/query", {"sql": "SELECT 1"})
        assert redirected.status == 308
        assert redirected.headers["Location"] == f"https://127.0.0.1:{service.port}/query"
        check_restart_and_stop(service, lambda: http(
            service.url + "/query", {"sql": "SELECT 1"}, {"X-API-Key": keys2["admin"].secret}))


def test_workers_that_keep_dying_at_start_stop_the_service_with_an_error(
        db_cluster, proxy2, keys2, tmp_path):
    """The keys file was there when the parent checked it, and is gone when a worker starts
    again: that worker cannot start, and after a few tries the whole service gives up."""
    keys_file = write_keys(tmp_path / "keys.json", keys2["admin"])
    service = gatekeeper_service(db_cluster, proxy2.url, keys_file, tmp_path / "gatekeeper.log",
                                 GATEKEEPER_WORKERS="2")
    with service.running():
        workers = workers_of(service)
        keys_file.unlink()
        os.kill(workers[0].pid, signal.SIGKILL)
        service.process.wait(30)
        assert service.process.returncode == 1
        assert not workers[1].is_running()
        assert "giving up" in Path(service.log_path).read_text()
