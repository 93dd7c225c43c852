"""Configuration: flags over environment over env file over defaults, and clear errors."""

import pytest

from services.config import GatekeeperConfig, NodeAddress, ProxyConfig, load_config


def test_default_ports():
    assert load_config(ProxyConfig, [], {}).port == 5000
    assert load_config(GatekeeperConfig, [], {}).port == 443  # HTTPS by default


def test_env_file_then_environment_then_flags(tmp_path):
    env_file = tmp_path / "proxy.env"
    env_file.write_text(
        "# written by Salt\n"
        "PROXY_PORT=5001\n"
        "PROXY_PRIMARY=primary=10.0.0.5:3306\n"
        "PROXY_REPLICAS=replica1=10.0.0.6:3306,replica2=10.0.0.7:3307\n"
        "PROXY_DB_PASSWORD='s3cret with spaces'\n"
        "PROXY_PING_PRIVILEGED=false\n"
        "PROXY_MAX_ROWS=10\n"
    )
    config = load_config(ProxyConfig, ["--env-file", str(env_file), "--max-rows", "20"],
                         {"PROXY_PORT": "5002"})
    assert config.port == 5002  # environment beats the file
    assert config.max_rows == 20  # a flag beats both
    assert config.primary == NodeAddress("primary", "10.0.0.5", 3306)
    assert config.replicas == (NodeAddress("replica1", "10.0.0.6", 3306),
                               NodeAddress("replica2", "10.0.0.7", 3307))
    assert config.db_password == "s3cret with spaces"
    assert config.ping_privileged is False


def test_env_file_named_by_environment(tmp_path):
    env_file = tmp_path / "gatekeeper.env"
    env_file.write_text("GATEKEEPER_API_KEY_FILE=" + str(tmp_path / "key") + "\n")
    (tmp_path / "key").write_text("0123456789abcdef-key\n")
    config = load_config(GatekeeperConfig, [], {"GATEKEEPER_ENV_FILE": str(env_file)})
    assert config.resolved_api_key() == "0123456789abcdef-key"


@pytest.mark.parametrize(("environ", "message"), [
    ({"PROXY_PORT": "eighty"}, "PROXY_PORT"),
    ({"PROXY_PING_PRIVILEGED": "maybe"}, "PROXY_PING_PRIVILEGED"),
    ({"PROXY_PRIMARY": "=:"}, "PROXY_PRIMARY"),
])
def test_bad_values_name_the_variable(environ, message):
    with pytest.raises(ValueError, match=message):
        load_config(ProxyConfig, [], environ)


def test_missing_api_key_is_an_error():
    with pytest.raises(ValueError, match="no API key"):
        load_config(GatekeeperConfig, [], {}).resolved_api_key()


def test_service_refuses_to_start_with_a_bad_configuration():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "services.gatekeeper"], capture_output=True,
                            text=True, env={"PATH": "/usr/bin:/bin"}, timeout=30)
    assert result.returncode != 0
    assert "bad configuration" in result.stderr and "API key" in result.stderr


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("PROXY_READ_FALLBACK", "replica", "PROXY_READ_FALLBACK: one of primary, error"),
    ("PROXY_MAX_REPLICA_LAG", "0", "PROXY_MAX_REPLICA_LAG must be positive"),
    ("PROXY_REPLICA_RECOVERY_CHECKS", "0", "PROXY_REPLICA_RECOVERY_CHECKS at least 1"),
    ("PROXY_CAUSAL_WAIT", "60", "PROXY_CAUSAL_WAIT must be between 0 and PROXY_QUERY_TIMEOUT"),
    ("PROXY_HEARTBEAT_TABLE", "heartbeat; DROP TABLE t", "PROXY_HEARTBEAT_TABLE: schema.table"),
])
def test_replication_settings_are_checked_at_start(variable, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        load_config(ProxyConfig, [], {variable: value})


def test_replication_settings_read_fractions():
    config = load_config(ProxyConfig, [], {"PROXY_MAX_REPLICA_LAG": "0.25",
                                          "PROXY_READ_FALLBACK": "error"})
    assert (config.max_replica_lag, config.read_fallback) == (0.25, "error")
    assert config.health_interval == 0.25  # the lag's resolution


def test_transaction_shares_and_drains_default_from_the_other_settings():
    config = load_config(ProxyConfig, [], {})
    assert (config.max_transactions, config.max_transactions_per_key) == (8, 4)
    assert config.drain_seconds == config.transaction_idle_timeout + 2.0
    small = load_config(ProxyConfig, [], {"PROXY_POOL_MAX_SIZE": "4",
                                          "PROXY_TRANSACTION_IDLE_TIMEOUT": "1"})
    assert (small.max_transactions, small.max_transactions_per_key) == (2, 1)
    assert small.drain_seconds == 3.0
    assert load_config(ProxyConfig, [], {"PROXY_MAX_TRANSACTIONS": "1"}) \
        .max_transactions_per_key == 1  # at least one
    off = load_config(ProxyConfig, [], {"PROXY_MAX_TRANSACTIONS": "0"})
    assert (off.max_transactions, off.max_transactions_per_key) == (0, 1)
    assert load_config(ProxyConfig, [], {"PROXY_MAX_TRANSACTIONS_PER_KEY": "8",
                                         "PROXY_DRAIN_SECONDS": "0"}).drain_seconds == 0
    assert load_config(GatekeeperConfig, [], {}).drain_seconds == 3.0
    assert load_config(GatekeeperConfig, [], {"GATEKEEPER_DRAIN_SECONDS": "0.5"}) \
        .drain_seconds == 0.5


def test_a_keys_share_of_statements_defaults_to_three_quarters_of_the_pool():
    assert load_config(ProxyConfig, [], {}).max_statements_per_key == 12
    assert load_config(ProxyConfig, [], {"PROXY_POOL_MAX_SIZE": "1"}) \
        .max_statements_per_key == 1  # at least one
    assert load_config(ProxyConfig, [], {"PROXY_POOL_MAX_SIZE": "4"}) \
        .max_statements_per_key == 3
    # At or above the pool's size: no share beyond the pool's own bound.
    assert load_config(ProxyConfig, [], {"PROXY_MAX_STATEMENTS_PER_KEY": "64"}) \
        .max_statements_per_key == 64


@pytest.mark.parametrize(("config", "environ", "message"), [
    (ProxyConfig, {"PROXY_MAX_STATEMENTS_PER_KEY": "0"},
     "PROXY_MAX_STATEMENTS_PER_KEY must be at least 1 (-1: three quarters of "
     "PROXY_POOL_MAX_SIZE, 16)"),
    (ProxyConfig, {"PROXY_MAX_STATEMENTS_PER_KEY": "many"}, "PROXY_MAX_STATEMENTS_PER_KEY"),
    (ProxyConfig, {"PROXY_MAX_TRANSACTIONS_PER_KEY": "0"},
     "PROXY_MAX_TRANSACTIONS_PER_KEY must be between 1 and PROXY_MAX_TRANSACTIONS (8)"),
    (ProxyConfig, {"PROXY_MAX_TRANSACTIONS_PER_KEY": "9"},
     "PROXY_MAX_TRANSACTIONS_PER_KEY must be between 1 and PROXY_MAX_TRANSACTIONS (8)"),
    (ProxyConfig, {"PROXY_MAX_TRANSACTIONS_PER_KEY": "two"}, "PROXY_MAX_TRANSACTIONS_PER_KEY"),
    (ProxyConfig, {"PROXY_DRAIN_SECONDS": "-2"}, "PROXY_DRAIN_SECONDS: 0 to 3600 seconds"),
    (ProxyConfig, {"PROXY_DRAIN_SECONDS": "forever"}, "PROXY_DRAIN_SECONDS"),
    (GatekeeperConfig, {"GATEKEEPER_DRAIN_SECONDS": "-1"},
     "GATEKEEPER_DRAIN_SECONDS: 0 to 3600 seconds"),
    (GatekeeperConfig, {"GATEKEEPER_DRAIN_SECONDS": "4000"},
     "GATEKEEPER_DRAIN_SECONDS: 0 to 3600 seconds"),
])
def test_shares_and_drains_are_checked_at_start(config, environ, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(config, [], environ)
