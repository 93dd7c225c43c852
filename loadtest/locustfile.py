"""Locust scenarios for the Gatekeeper: reads and writes per routing mode.

``locust -f loadtest/locustfile.py`` opens the web UI aimed at the cluster that
``bootstrap.py up`` made: the Gatekeeper URL, the API key and the CA to verify its HTTPS with come
from ``.cluster/<provider>.json`` (local, else aws, else loopback; ``--provider`` or
``$SQLGATE_PROVIDER`` chooses). The routing
mode, the share of writes and the write table are options, shown in the web UI. Writes go to a
table of the load test's own, created if missing, so a run can be repeated at will.
"""

from __future__ import annotations

import logging
import random
from collections import deque

import gevent.ssl
from locust import FastHttpUser, constant, events, task
from locust.env import Environment

from loadtest.target import PREFERRED_PROVIDERS, PROVIDER_ENV, find_target, gatekeeper_tls
from loadtest.workload import (
    DEFAULT_TABLE,
    MODES,
    create_table_sql,
    new_run_id,
    read_statement,
    write_statement,
)
from services.client import Client, TlsFiles
from services.contract import API_KEY_HEADER

log = logging.getLogger("sqlgate.locust")
ALL_MODES = "all"


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    parser.add_argument("--mode", choices=[ALL_MODES, *MODES], default=ALL_MODES,
                        help="routing mode of every request; 'all' picks one per request")
    parser.add_argument("--write-percent", type=int, default=50,
                        help="share of requests that are writes, 0-100 (the rest are reads)")
    parser.add_argument("--table", default=DEFAULT_TABLE,
                        help="write table ([schema.]name), created if missing")
    parser.add_argument("--provider", choices=PREFERRED_PROVIDERS, default=None,
                        env_var=PROVIDER_ENV, include_in_web_ui=False,
                        help="cluster file to read (default: local, else aws, else loopback)")
    parser.add_argument("--api-key", default="", env_var="SQLGATE_API_KEY", is_secret=True,
                        help="Gatekeeper API key (default: the cluster file's)")
    parser.add_argument("--ca-file", default="", env_var="SQLGATE_CA_FILE",
                        include_in_web_ui=False,
                        help="CA certificate to verify the Gatekeeper's HTTPS with (default: the "
                             "cluster file's; none there: the system's trust store)")


@events.init.add_listener
def _find_cluster(environment: Environment, **_) -> None:
    """Aim at the cluster file's Gatekeeper unless --host was given; keep its key and CA."""
    options = environment.parsed_options
    environment.sqlgate_api_key = options.api_key if options else ""
    environment.sqlgate_ca_file = options.ca_file if options else ""
    try:
        target = find_target(options.provider if options else None)
    except LookupError as error:
        if not environment.host:
            log.warning("%s", error)
        return
    if not environment.host:
        environment.host = target.gatekeeper_url
    if not environment.sqlgate_api_key:
        environment.sqlgate_api_key = target.api_key
    if not environment.sqlgate_ca_file and (tls := gatekeeper_tls(target)):
        environment.sqlgate_ca_file = tls.ca_file
    log.info("Gatekeeper %s from the %s cluster file", environment.host, target.provider)


def _tls(environment: Environment) -> TlsFiles | None:
    """How to verify the Gatekeeper: None for http://, else the CA given or found (empty: the
    system's trust store)."""
    if not (environment.host or "").startswith("https://"):
        return None
    return TlsFiles(getattr(environment, "sqlgate_ca_file", ""))


@events.test_start.add_listener
def _create_table(environment: Environment, **_) -> None:
    """Once per test, before the users start: the write table, through the Gatekeeper."""
    if not environment.host:
        return
    try:
        with Client(environment.host.rstrip("/"), environment.sqlgate_api_key,
                    tls=_tls(environment)) as client:
            answer = client.query(create_table_sql(environment.parsed_options.table))
    except (OSError, ValueError) as error:
        log.error("cannot create the write table: %s", error)
        return
    if not answer.ok:
        log.error("cannot create the write table: %s %s", answer.status, answer.json)


class GatekeeperUser(FastHttpUser):
    """One client sending reads and writes back to back, in the chosen mode and mix."""

    wait_time = constant(0)
    insecure = False  # HTTPS is verified, against the cluster's CA when there is one

    def __init__(self, environment: Environment) -> None:
        tls = _tls(environment)
        ca_file = tls.ca_file if tls else ""
        # gevent's context (Locust runs on gevent), checking the certificate and the name.
        self.ssl_context_factory = lambda: gevent.ssl.create_default_context(
            cafile=ca_file or None)
        super().__init__(environment)

    def on_start(self) -> None:
        self.run_id = new_run_id()
        self.seq = 0
        self.row_ids: deque[int] = deque(maxlen=1000)  # rows this user wrote, for point reads

    @task
    def query(self) -> None:
        options = self.environment.parsed_options
        mode = random.choice(MODES) if options.mode == ALL_MODES else options.mode
        kind = "write" if random.uniform(0, 100) < options.write_percent else "read"
        self.seq += 1
        if kind == "write":
            statement = write_statement(options.table, self.run_id, mode, self.seq)
        else:
            statement = read_statement(options.table,
                                       random.choice(self.row_ids) if self.row_ids else None)
        request_id = f"{self.run_id}-{self.seq}"
        with self.client.post("/query", json={**statement, "mode": mode,
                                              "request_id": request_id},
                              headers={API_KEY_HEADER: self.environment.sqlgate_api_key},
                              name=f"{mode} {kind}", catch_response=True) as answer:
            try:
                data = answer.json()
            except ValueError:
                data = {}
            if answer.status_code != 200:
                answer.failure(f"{answer.status_code}: {data.get('error', answer.text)}")
            elif data.get("request_id") != request_id:
                answer.failure(f"answer for another request: {data.get('request_id')!r}")
            elif kind == "write" and data.get("last_insert_id"):
                self.row_ids.append(int(data["last_insert_id"]))
