"""The OpenAPI document follows the contract; the Gatekeeper's settings are checked at start."""

from __future__ import annotations

import json
import re

import pytest
from openapi_spec_validator import validate

from services.config import GatekeeperConfig, load_config
from services.contract import (
    BATCH_FIELDS,
    BATCH_STATEMENT_FIELDS,
    ENDPOINTS,
    ISOLATION_LEVELS,
    MODES,
    QUERY_FIELDS,
    TRANSACTION_FIELDS,
)
from services.gatekeeper.openapi import openapi_bytes, openapi_document

DOCUMENT = openapi_document()
SCHEMAS = DOCUMENT["components"]["schemas"]


def test_it_is_a_valid_openapi_3_1_document():
    assert DOCUMENT["openapi"].startswith("3.1")
    validate(DOCUMENT)
    assert json.loads(openapi_bytes()) == DOCUMENT


@pytest.mark.parametrize(("schema", "fields", "required"), [
    ("QueryRequest", QUERY_FIELDS, ["sql"]),
    ("BatchRequest", BATCH_FIELDS, ["statements"]),
    ("BatchStatement", BATCH_STATEMENT_FIELDS, ["sql"]),
    ("TransactionRequest", TRANSACTION_FIELDS, None),
])
def test_request_bodies_have_exactly_the_contract_s_fields(schema, fields, required):
    assert set(SCHEMAS[schema]["properties"]) == fields
    assert SCHEMAS[schema]["additionalProperties"] is False
    assert SCHEMAS[schema].get("required") == required


def test_every_endpoint_of_the_contract_is_documented():
    documented = {f"{method.upper()} {path}" for path, item in DOCUMENT["paths"].items()
                  for method in item}
    assert documented == {*ENDPOINTS, "GET /openapi.json"}
    assert SCHEMAS["QueryRequest"]["properties"]["mode"]["enum"] == list(MODES)


def test_isolation_levels_match_in_any_case_and_nothing_else():
    pattern = re.compile(SCHEMAS["TransactionRequest"]["properties"]["isolation"]["pattern"])
    for level in ISOLATION_LEVELS:
        assert pattern.match(level) and pattern.match(level.lower())
    assert not pattern.match("SNAPSHOT") and not pattern.match("READ COMMITTED ")


def test_the_key_goes_in_a_header_and_the_public_endpoints_need_none():
    assert DOCUMENT["components"]["securitySchemes"] == {
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
    assert DOCUMENT["security"] == [{"apiKey": []}]
    for path in ("/health", "/openapi.json"):
        assert DOCUMENT["paths"][path]["get"]["security"] == []


def test_every_error_answer_is_the_error_schema():
    for path, item in DOCUMENT["paths"].items():
        for operation in item.values():
            for status, answer in operation["responses"].items():
                if int(status) >= 400 and path not in ("/health",):
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (path, status)
    assert SCHEMAS["Error"]["required"] == ["error"]


# --- settings -------------------------------------------------------------------------------

def test_secure_defaults():
    config = load_config(GatekeeperConfig, [], {})
    assert (config.port, config.redirect_port, config.insecure_http) == (443, 0, False)
    assert config.proxy_url.startswith("https://") and config.proxy_tls_name == "proxy"
    assert (config.max_connections, config.idle_timeout, config.body_timeout,
            config.max_header_bytes, config.max_answer_bytes) == (1000, 30.0, 10.0, 16384,
                                                                  16 * 1024 * 1024)


@pytest.mark.parametrize(("environ", "message"), [
    ({}, "no API key"),
    ({"GATEKEEPER_API_KEY": "short"}, "at least 16 characters"),
    ({"GATEKEEPER_KEYS_FILE": "/k.json"}, "no TLS certificate"),
    ({"GATEKEEPER_KEYS_FILE": "/k.json", "GATEKEEPER_TLS_CERT": "/c", "GATEKEEPER_TLS_KEY": "/k",
      "GATEKEEPER_PROXY_URL": "http://10.0.0.4:5000"}, "plain http://"),
    ({"GATEKEEPER_KEYS_FILE": "/k.json", "GATEKEEPER_INSECURE_HTTP": "true",
      "GATEKEEPER_REDIRECT_PORT": "80"}, "needs GATEKEEPER_TLS_CERT"),
])
def test_what_is_missing_to_start_is_named(environ, message):
    with pytest.raises(ValueError, match=message):
        load_config(GatekeeperConfig, [], environ).check_startup()


def test_insecure_http_allows_plain_http_for_development():
    load_config(GatekeeperConfig, [], {"GATEKEEPER_API_KEY": "0123456789abcdef",
                                       "GATEKEEPER_INSECURE_HTTP": "1",
                                       "GATEKEEPER_PROXY_URL": "http://127.0.0.1:5000"}
                ).check_startup()


@pytest.mark.parametrize(("environ", "message"), [
    ({"GATEKEEPER_TLS_CERT": "/c"}, "go together"),
    ({"GATEKEEPER_PROXY_CLIENT_KEY": "/k"}, "go together"),
    ({"GATEKEEPER_PORT": "70000"}, "GATEKEEPER_PORT"),
    ({"GATEKEEPER_REDIRECT_PORT": "443"}, "must differ"),
    ({"GATEKEEPER_MAX_CONNECTIONS": "0"}, "GATEKEEPER_MAX_CONNECTIONS"),
    ({"GATEKEEPER_IDLE_TIMEOUT": "0"}, "GATEKEEPER_IDLE_TIMEOUT"),
    ({"GATEKEEPER_PROXY_URL": "ftp://x"}, "GATEKEEPER_PROXY_URL"),
])
def test_bad_values_are_refused_at_load(environ, message):
    with pytest.raises(ValueError, match=message):
        load_config(GatekeeperConfig, [], environ)
