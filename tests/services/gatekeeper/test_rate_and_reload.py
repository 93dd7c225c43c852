"""Per-key rate limits, and key changes that apply without a restart."""

from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid

from cluster.waiting import wait_until
from services.client import request
from tests.services.gatekeeper.conftest import (
    gatekeeper_process,
    https_connection,
    new_key,
    read_json,
    write_keys,
)
from tests.services.scrape import request_lines


def test_the_eleventh_request_in_a_second_of_a_10_per_second_key_is_429(
        tls_dir, fake_proxy, keys, tmp_path):
    """Eleven requests at once, each on a connection of its own (already through its TLS
    handshake), so that they arrive within milliseconds even on a busy machine."""
    service = gatekeeper_process(tls_dir, fake_proxy.url, tmp_path / "gatekeeper.log",
                                 write_keys(tmp_path / "keys.json", *keys.all()))
    with service.running():
        connections = [https_connection(service) for _ in range(11)]
        for conn in connections:
            conn.connect()
        start = threading.Barrier(11)

        def send(conn) -> tuple[int, str | None, dict]:
            start.wait()
            conn.request("POST", "/query", body=b'{"sql": "SELECT 1"}',
                         headers={"X-API-Key": keys.limited.secret})
            answer = conn.getresponse()
            return answer.status, answer.getheader("Retry-After"), read_json(answer)

        with concurrent.futures.ThreadPoolExecutor(11) as pool:
            answers = list(pool.map(send, connections))
        for conn in connections:
            conn.close()
        assert sorted(status for status, _, _ in answers) == [200] * 10 + [429], answers
        (refused,) = [answer for answer in answers if answer[0] == 429]
        assert refused[1] == "1"  # Retry-After, whole seconds
        assert refused[2]["retry_after"] == 1
        assert "'limited'" in refused[2]["error"]
        # Another key is not held back by this one's bucket...
        with service.client(keys.read.secret) as other:
            assert other.query("SELECT 1").status == 200
        # ...and this one is served again once its bucket refilled.
        with service.client(keys.limited.secret) as client:
            assert wait_until(lambda: client.query("SELECT 1").status == 200, 3, "a token")


def test_a_changed_keys_file_applies_within_two_seconds_without_a_restart(
        tls_dir, fake_proxy, keys, tmp_path):
    path = write_keys(tmp_path / "keys.json", keys.write, keys.read)
    service = gatekeeper_process(tls_dir, fake_proxy.url, tmp_path / "gatekeeper.log", path)
    fresh = new_key("fresh", "read")
    with service.running(), concurrent.futures.ThreadPoolExecutor(1) as pool:
        pid = service.process.pid
        # In flight across the change, with the key that is about to be revoked.
        slow = pool.submit(request, service.url + "/query", {"sql": "SELECT 'slow:3'"},
                           {"X-API-Key": keys.write.secret}, tls=service.tls, timeout=20)
        wait_until(lambda: any(seen.body == b'{"sql": "SELECT \'slow:3\'"}'
                               for seen in fake_proxy.seen), 5, "the slow request")

        def status(key) -> int:
            return request(service.url + "/query", {"sql": "SELECT 1"},
                           {"X-API-Key": key.secret}, tls=service.tls).status

        assert (status(fresh), status(keys.write)) == (401, 200)
        changed = time.monotonic()
        write_keys(path, fresh, keys.read)
        wait_until(lambda: status(fresh) == 200, 5, "the new key")
        assert time.monotonic() - changed < 2.5
        assert status(keys.write) == 401  # revoked
        assert status(keys.read) == 200
        assert slow.result().status == 200  # the in-flight request was not cut
        assert service.process.pid == pid

        # A broken file is logged and changes nothing.
        path.write_text('{"keys": [{"name": "x"')
        wait_until(lambda: "not usable" in (tmp_path / "gatekeeper.log").read_text(), 5,
                   "the complaint about the file")
        assert (status(fresh), status(keys.write)) == (200, 401)
        assert service.process.pid == pid


def test_requests_carry_ids_and_each_is_one_json_line(tls_dir, fake_proxy, keys, tmp_path):
    log_path = tmp_path / "gatekeeper.log"
    service = gatekeeper_process(tls_dir, fake_proxy.url, log_path,
                                 write_keys(tmp_path / "keys.json", *keys.all()))
    secret_value = "parameter-" + uuid.uuid4().hex
    with service.running():
        ids = {}
        for name, key, body in (("ok", keys.write, {"sql": "SELECT ?", "params": [secret_value]}),
                                ("bad key", None, {"sql": "SELECT 1"}),
                                ("bad json", keys.read, b"{nope")):
            request_id = uuid.uuid4().hex
            headers = {"X-Request-Id": request_id,
                       "X-API-Key": key.secret if key else "wrong-" + keys.write.secret}
            answer = request(service.url + "/query", body, headers, tls=service.tls)
            assert answer.headers["X-Request-Id"] == request_id
            ids[name] = (request_id, answer.status)

    def logged() -> list[dict]:  # the lines are written in batches, a fifth of a second apart
        wanted = {request_id for request_id, _ in ids.values()}
        return [line for line in request_lines(log_path) if line["request_id"] in wanted]

    wait_until(lambda: len(logged()) == len(ids), 10, "a line per request")
    lines = logged()
    for name, key_name in (("ok", keys.write.name), ("bad key", None), ("bad json", "reports")):
        request_id, status = ids[name]
        (line,) = [line for line in lines if line["request_id"] == request_id]
        assert (line["key"], line["status"], line["endpoint"]) == (key_name, status,
                                                                   "POST /query"), line
        assert line["service"] == "gatekeeper" and line["elapsed_ms"] >= 0
    text = log_path.read_text()
    for key in keys.all():
        assert key.secret not in text
    assert secret_value not in text
