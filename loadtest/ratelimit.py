"""Does a key's rate limit hold across Gatekeepers? The accepted rate of one key, through 1 and
2 Gatekeeper processes sharing a Redis rate store, with 1 and 8 client connections.

    python -m loadtest.ratelimit [--seconds 30] [--rate 100] [--burst 20]

Everything runs on loopback: a redis-server of its own (TLS, client certificates, the ACL the
formula sets), the Gatekeepers (HTTPS, one worker each, ``GATEKEEPER_RATE_STORE_PEERS`` 2) and a
stand-in Proxy in this process that answers every query at once, so that only the Gatekeepers
decide what is accepted. Each combination gets a key of its own; the clients send as fast as
they are answered, and the accepted rate is the count of 200 answers that came back within the
window (after a warm-up that spends the key's burst), divided by its length: a count, not a
latency, so a busy machine changes how many 429s there are, not the figure.

``c`` connections through ``g`` Gatekeepers: ``c`` clients, each sending one request at a
time and taking the Gatekeepers in turn, over a keep-alive connection to each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import secrets
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import tornado.web
from tornado.httpserver import HTTPServer

from cluster.loopback.processes import free_port
from cluster.loopback.redis import RedisServer
from cluster.loopback.services import ServiceProcess
from cluster.pki import CertificateAuthority
from services.client import TlsFiles

QUERY = json.dumps({"sql": "SELECT 1"}).encode()


@dataclass(frozen=True)
class Answer:
    done: float      # time.monotonic() when it came back
    gatekeeper: int  # index of the Gatekeeper that answered
    status: int      # 0: no answer (a connection error)


async def _client(urls: list[str], key: str, until: float, context: ssl.SSLContext,
                  answers: list[Answer], first: int) -> None:
    connector = aiohttp.TCPConnector(ssl=context, limit_per_host=1)
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    turn = first
    async with aiohttp.ClientSession(connector=connector) as session:
        while time.monotonic() < until:
            index = turn % len(urls)
            turn += 1
            try:
                async with session.post(urls[index] + "/query", data=QUERY,
                                        headers=headers) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, OSError):
                status = 0
            answers.append(Answer(time.monotonic(), index, status))


def run_load(urls: list[str], key: str, connections: int, seconds: float,
             cafile: str) -> list[Answer]:
    """``connections`` clients sending as fast as they are answered for ``seconds``; every
    answer, in the order they came back."""
    context = ssl.create_default_context(cafile=cafile)
    answers: list[Answer] = []

    async def main() -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(*(_client(urls, key, until, context, answers, first)
                               for first in range(connections)))

    asyncio.run(main())
    return answers


def accepted(answers: list[Answer], start: float, end: float,
             gatekeeper: int | None = None) -> int:
    """How many 200s came back in [start, end) (from one Gatekeeper, or any)."""
    return sum(1 for answer in answers if answer.status == 200 and start <= answer.done < end
               and gatekeeper in (None, answer.gatekeeper))


def measure(urls: list[str], key: str, connections: int, window: float, cafile: str,
            warmup: float = 1.5) -> tuple[float, dict[int, int]]:
    """The accepted rate over ``window`` seconds after ``warmup``, and the statuses seen."""
    started = time.monotonic()
    answers = run_load(urls, key, connections, warmup + window, cafile)
    statuses: dict[int, int] = {}
    for answer in answers:
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
    return accepted(answers, started + warmup, started + warmup + window) / window, statuses


# --- the processes ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Key:
    name: str
    secret: str
    rate: float
    burst: int

    def entry(self) -> dict:
        return {"name": self.name, "scope": "read", "rate": self.rate, "burst": self.burst,
                "sha256": hashlib.sha256(self.secret.encode()).hexdigest()}


class _Answer(tornado.web.RequestHandler):
    def get(self) -> None:  # /health
        self.write({"service": "proxy", "status": "ok"})

    def post(self) -> None:
        self.write({"columns": ["1"], "rows": [[1]], "rowcount": 1})


@contextlib.contextmanager
def stand_in_proxy(tls: Path) -> Iterator[str]:
    """A Proxy that answers at once, over mutual TLS, in a thread of this process."""
    port = free_port()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls / "proxy.crt", tls / "proxy.key")
    context.load_verify_locations(cafile=tls / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    ready, stop = threading.Event(), {}

    async def serve() -> None:
        server = HTTPServer(tornado.web.Application([(r"/.*", _Answer)]), ssl_options=context)
        server.listen(port, "127.0.0.1")
        stop["event"], stop["loop"] = asyncio.Event(), asyncio.get_running_loop()
        ready.set()
        await stop["event"].wait()
        server.stop()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        stop["loop"].call_soon_threadsafe(stop["event"].set)
        thread.join(10)


def issue_tls(root: Path) -> Path:
    """A CA, the Gatekeepers' certificate (server and client), the Proxy's and the store's."""
    ca = CertificateAuthority.create("ratelimit-bench")
    ca.issue("gatekeeper", ["127.0.0.1"], server=True, client=True).write(root, "gatekeeper")
    ca.issue("proxy", ["127.0.0.1"], server=True, client=False).write(root, "proxy")
    ca.issue("store", ["127.0.0.1"], server=True, client=False).write(root, "store")
    (root / "ca.crt").write_text(ca.cert_pem)
    return root


def gatekeeper(tls: Path, proxy_url: str, keys_file: Path, store: RedisServer | None,
               peers: int, log_path: Path) -> ServiceProcess:
    env = {"GATEKEEPER_LISTEN_ADDRESS": "127.0.0.1",
           "GATEKEEPER_TLS_CERT": str(tls / "gatekeeper.crt"),
           "GATEKEEPER_TLS_KEY": str(tls / "gatekeeper.key"),
           "GATEKEEPER_PROXY_URL": proxy_url, "GATEKEEPER_PROXY_CA": str(tls / "ca.crt"),
           "GATEKEEPER_PROXY_CLIENT_CERT": str(tls / "gatekeeper.crt"),
           "GATEKEEPER_PROXY_CLIENT_KEY": str(tls / "gatekeeper.key"),
           "GATEKEEPER_PROXY_TLS_NAME": "proxy", "GATEKEEPER_KEYS_FILE": str(keys_file),
           "GATEKEEPER_LOG_REQUESTS": "false"}
    if store is not None:
        env.update(GATEKEEPER_RATE_STORE=store.url,
                   GATEKEEPER_RATE_STORE_PASSWORD_FILE=str(store.password_file),
                   GATEKEEPER_RATE_STORE_PEERS=str(peers))
    return ServiceProcess("services.gatekeeper", env, log_path=log_path,
                          tls=TlsFiles(str(tls / "ca.crt")))


COMBINATIONS = ((1, 1), (1, 8), (2, 1), (2, 8))  # (Gatekeepers, connections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="the window (30 s)")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--burst", type=int, default=20)
    args = parser.parse_args()
    keys = {combo: Key(f"bench-{combo[0]}gk-{combo[1]}c", secrets.token_urlsafe(24),
                       args.rate, args.burst) for combo in COMBINATIONS}
    with tempfile.TemporaryDirectory(prefix="sqlgate-ratelimit-") as temporary:
        root = Path(temporary)
        tls = issue_tls(root / "tls")
        keys_file = root / "keys.json"
        keys_file.write_text(json.dumps({"keys": [key.entry() for key in keys.values()]}))
        store = RedisServer((str(tls / "ca.crt"), str(tls / "store.crt"),
                             str(tls / "store.key")))
        gatekeepers: list[ServiceProcess] = []
        try:
            store.start()
            with stand_in_proxy(tls) as proxy_url:
                for index in range(2):
                    gatekeepers.append(gatekeeper(tls, proxy_url, keys_file, store, 2,
                                                  root / f"gatekeeper{index}.log"))
                    gatekeepers[-1].start()
                print(f"key: rate {args.rate:g}/s, burst {args.burst}; window {args.seconds:g} s"
                      " after a 1.5 s warm-up; Redis store over TLS")
                print(f"{'Gatekeepers':>11}  {'connections':>11}  {'accepted/s':>10}  "
                      f"{'vs rate':>7}  {'sent/s':>7}  {'429s':>7}  other")
                for combo in COMBINATIONS:
                    count, connections = combo
                    rate, statuses = measure([g.url for g in gatekeepers[:count]],
                                             keys[combo].secret, connections, args.seconds,
                                             str(tls / "ca.crt"))
                    other = {s: n for s, n in statuses.items() if s not in (200, 429)}
                    sent = sum(statuses.values()) / (args.seconds + 1.5)
                    print(f"{count:>11}  {connections:>11}  {rate:>10.1f}  "
                          f"{(rate / args.rate - 1) * 100:>+6.1f}%  {sent:>7.0f}  "
                          f"{statuses.get(429, 0):>7}  {other or '-'}")
        finally:
            for process in gatekeepers:
                process.stop()
            store.close()


if __name__ == "__main__":
    main()
