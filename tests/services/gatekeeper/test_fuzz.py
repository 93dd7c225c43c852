"""A property-based fuzz run of the public API, from its own OpenAPI document, against a real
Gatekeeper over HTTPS (verified with the CA) in front of a real Proxy on the loopback MariaDB:
no 5xx, no hang, every answer (status, content type, headers, body) as the document says.

Bounded so that it runs in well under a minute: a few dozen examples per operation, a
deadline per example, a timeout per request, and pytest's own timeout for the whole.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cluster.loopback import gatekeeper_service, proxy_service
from cluster.loopback.services import ServiceProcess
from services.gatekeeper.openapi import openapi_document
from tests.services.gatekeeper.conftest import new_key, write_keys

schema = schemathesis.openapi.from_dict(openapi_document())
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
FUZZ_KEY = new_key("fuzz", "write")
REQUEST_TIMEOUT = 10


@pytest.fixture(scope="module")
def fuzzed(db_cluster, tmp_path_factory) -> Iterator[ServiceProcess]:
    """A Proxy and a Gatekeeper of the fuzz run's own (the transactions it opens are rolled
    back at once; the made-up ids of the others never match one)."""
    logs = tmp_path_factory.mktemp("fuzz")
    proxy = proxy_service(db_cluster, logs / "proxy.log", PROXY_TRANSACTION_IDLE_TIMEOUT="2",
                          PROXY_QUERY_TIMEOUT="3", PROXY_MAX_ROWS="50")
    with proxy.running():
        gatekeeper = gatekeeper_service(db_cluster, proxy.url,
                                        write_keys(logs / "keys.json", FUZZ_KEY),
                                        logs / "gatekeeper.log")
        with gatekeeper.running():
            yield gatekeeper


@pytest.fixture(scope="module")
def session(fuzzed) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers["X-API-Key"] = FUZZ_KEY.secret
        yield session


@pytest.mark.timeout(120)
@schema.parametrize()
@settings(max_examples=25, deadline=REQUEST_TIMEOUT * 1000, derandomize=True,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_the_public_api_keeps_its_contract(case, fuzzed, session):
    response = case.call_and_validate(base_url=fuzzed.url, session=session, checks=CHECKS,
                                      timeout=REQUEST_TIMEOUT, verify=fuzzed.tls.ca_file)
    if response.status_code == 201:  # an opened transaction: let the next example have room
        ended = session.post(f"{fuzzed.url}/transactions/{response.json()['transaction_id']}"
                             "/rollback", timeout=REQUEST_TIMEOUT, verify=fuzzed.tls.ca_file)
        assert ended.status_code == 200, ended.text
