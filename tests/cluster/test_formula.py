"""cluster.formula reads the Salt formula's settings as map.jinja merges them, and the loopback
cluster runs with them: the same server options and the same users and grants as db/users.sls.

The map.jinja comparison renders it through Salt itself (``salt-call --local``) on a host whose
OS has no entry in osfamilymap.yaml or osmap.yaml, with the flavour picked by the pillar.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.formula import FORMULA_DIR, db_settings, flavours, formula_settings, merge
from cluster.loopback.mariadb import CONNECT_RETRY_SECONDS, FLAVOUR, change_source_sql

SALT_CALL = Path(sys.executable).parent / "salt-call"
DUMP_SLS = """\
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
settings are dumped:
  test.nop:
    - settings: {{ sqlgate | json }}
"""


def test_both_flavours_are_read():
    assert flavours() == ("mariadb", "mysql")
    with pytest.raises(ValueError, match="unknown database flavour"):
        formula_settings("postgres")


# Every server, whatever its role, starts read-only, with semi-sync's replica side on,
# AFTER_SYNC, durable commits, and a short network timeout (docs/failover.md).
DURABLE = {"read_only": "ON", "sync_binlog": 1, "innodb_flush_log_at_trx_commit": 1}


@pytest.mark.parametrize(("flavour", "service", "options", "monitor", "change_source"), [
    ("mariadb", "mariadb",
     {"gtid_strict_mode": "ON", "log_slave_updates": "ON", **DURABLE,
      "rpl_semi_sync_slave_enabled": "ON", "rpl_semi_sync_master_wait_point": "AFTER_SYNC",
      "rpl_semi_sync_master_timeout": 3000, "slave_net_timeout": 10, "idle_transaction_timeout": 30,
      "init_rpl_role": "SLAVE"},
     "SLAVE MONITOR", "CHANGE MASTER TO MASTER_HOST='{source}'"),
    ("mysql", "mysql",
     {"gtid_mode": "ON", "enforce_gtid_consistency": "ON", "log_replica_updates": "ON",
      **DURABLE, "super_read_only": "ON",
      "plugin_load_add": "semisync_source.so;semisync_replica.so",
      "rpl_semi_sync_replica_enabled": "ON", "rpl_semi_sync_source_wait_point": "AFTER_SYNC",
      "rpl_semi_sync_source_timeout": 3000, "replica_net_timeout": 10},
     "REPLICATION CLIENT", "CHANGE REPLICATION SOURCE TO SOURCE_HOST='{source}'"),
])
def test_db_settings_have_the_flavour_under_the_defaults(flavour, service, options, monitor,
                                                         change_source):
    db = db_settings(flavour)
    assert db["flavour"] == flavour
    assert db["service"] == service
    assert db["server_options"] == options
    assert "replica_options" not in db
    assert db["monitor_privilege"] == monitor
    assert db["change_source"].startswith(change_source)
    for field in ("source", "port", "user", "password"):
        assert "{" + field + "}" in db["change_source"]
    # The defaults' db part, whatever the flavour: one user per key scope, each a superset of
    # the weaker one's rights, none with ALL; the monitor alone in the heartbeat's schema.
    assert db["app_schemas"] == ["sakila"]
    privileges = {scope: set(spec["privileges"].split(", "))
                  for scope, spec in db["app_users"].items()}
    assert privileges["read"] == {"SELECT"}
    assert privileges["write"] == {"SELECT", "INSERT", "UPDATE", "DELETE"}
    assert privileges["read"] < privileges["write"] < privileges["admin"]
    assert not any("ALL" in names or "PROCESS" in names for names in privileges.values())
    assert db["monitor"]["schema"] == "sqlgate" and db["monitor"]["schema"] not in \
        db["app_schemas"]
    assert db["bench_schema"] == "sbtest"
    assert db["binlog_expire_seconds"] == 604800
    assert db["socket"] == "/run/mysqld/mysqld.sock"
    # The rest of the defaults, untouched by the flavour.
    settings = formula_settings(flavour)
    from cluster.topology import PORTS
    assert settings["ports"] == PORTS
    assert {settings["ports"][name] for name in ("gatekeeper_metrics", "proxy_metrics",
                                                 "node_exporter", "mysqld_exporter",
                                                 "prometheus")} == {9180, 9181, 9100, 9104, 9090}
    assert settings["app"]["user"] == "sqlgate"
    assert settings["service_manager"] == ""


def test_settings_are_a_fresh_copy_each_time():
    db_settings("mariadb")["server_options"]["gtid_strict_mode"] = "OFF"
    formula_settings("mariadb")["app"]["packages"].append("vim")
    assert db_settings("mariadb")["server_options"]["gtid_strict_mode"] == "ON"
    assert formula_settings("mariadb")["app"]["packages"] == ["python3-venv"]


def test_merge_is_salts_defaults_merge():
    dictupdate = pytest.importorskip("salt.utils.dictupdate")
    dest = {"a": {"b": 1, "c": [1, 2]}, "d": "x", "e": {"f": {"g": 1}}}
    upd = {"a": {"c": [3], "h": 2}, "d": {"now": "a mapping"}, "e": {"f": {"i": 2}}, "j": None}
    assert merge(json.loads(json.dumps(dest)), upd) == dictupdate.update(
        json.loads(json.dumps(dest)), upd, merge_lists=False)


@pytest.mark.skipif(not SALT_CALL.exists(), reason="salt-call is not installed in the venv")
@pytest.mark.parametrize("flavour", ["mariadb", "mysql"])
def test_settings_match_what_map_jinja_yields(flavour, tmp_path):
    """The formula's tree plus a second file root holding one SLS that dumps map.jinja's
    ``sqlgate`` (Salt finds map.jinja in the first root)."""
    dump_root = tmp_path / "dump"
    (dump_root / FORMULA_DIR.name).mkdir(parents=True)
    (dump_root / FORMULA_DIR.name / "settings_dump.sls").write_text(DUMP_SLS)
    pillar_root = tmp_path / "pillar"
    pillar_root.mkdir()
    (pillar_root / "top.sls").write_text(yaml.safe_dump({"base": {"*": ["flavour"]}}))
    (pillar_root / "flavour.sls").write_text(
        yaml.safe_dump({"sqlgate": {"db": {"flavour": flavour}}}))
    config = tmp_path / "config"
    config.mkdir()
    (config / "minion").write_text(yaml.safe_dump({
        "id": "formula-test",
        "file_client": "local",
        "root_dir": str(tmp_path / "root"),
        "file_roots": {"base": [str(FORMULA_DIR.parent), str(dump_root)]},
        "pillar_roots": {"base": [str(pillar_root)]},
        # No entry in osfamilymap.yaml or osmap.yaml: only the pillar picks the flavour.
        "grains": {"os": "Elsewhere", "os_family": "Elsewhere", "init": "systemd"},
        "log_level": "quiet",
    }))
    result = subprocess.run([str(SALT_CALL), "--local", "-c", str(config), "state.show_sls",
                             f"{FORMULA_DIR.name}.settings_dump", "--out=json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    state = json.loads(result.stdout)["local"]["settings are dumped"]["test"]
    rendered = next(arg["settings"] for arg in state if isinstance(arg, dict)
                    and "settings" in arg)
    assert rendered["service_manager"] == "systemd"  # from the init grain, which we leave out
    rendered["service_manager"] = ""
    assert formula_settings(flavour) == rendered


def test_the_loopback_overrides_only_the_connect_retry():
    db = db_settings(FLAVOUR)
    formula = (db["change_source"].format(source="127.0.0.1", port=3306, user="repl",
                                          password="secret")
               + ", " + db["change_source_ssl"].format(ssl=1, ssl_ca="/ca.crt"))
    loopback = change_source_sql("127.0.0.1", 3306, "repl", "secret", "/ca.crt")
    retry = re.compile(r"MASTER_CONNECT_RETRY=\d+")
    assert retry.sub("", loopback) == retry.sub("", formula)
    assert f"MASTER_CONNECT_RETRY={CONNECT_RETRY_SECONDS}" in loopback


GRANT = re.compile(r"^GRANT (?P<privileges>.+) ON (?P<object>\S+) TO \S+"
                   r"(?: IDENTIFIED BY PASSWORD '[^']*')?(?: REQUIRE SSL)?(?: WITH .*)?$")


def grants(node, account: str) -> dict[str, set[str]]:
    """SHOW GRANTS as object -> privileges."""
    found: dict[str, set[str]] = {}
    for row in node.sql(f"SHOW GRANTS FOR {account}"):
        (line,) = row.values()
        match = GRANT.match(line)
        assert match, line
        found.setdefault(match["object"], set()).update(match["privileges"].split(", "))
    return found


def test_loopback_users_have_the_formulas_grants(db_cluster):
    db = db_settings(FLAVOUR)
    app_schemas = (*db["app_schemas"], "sqlgate_test")
    assert db_cluster.app_schemas == app_schemas
    monitor = {"*.*": {db["monitor_privilege"]},
               f"`{db['monitor']['schema']}`.*": set(db["monitor"]["privileges"].split(", "))}
    sb = {"*.*": {"USAGE"}, f"`{db['bench_schema']}`.*": {"ALL PRIVILEGES"}}
    for node in db_cluster.nodes:  # made on the primary, replicated to the others
        for scope, spec in db["app_users"].items():
            wanted = {"*.*": {"USAGE"}, **{f"`{schema}`.*": set(spec["privileges"].split(", "))
                                           for schema in app_schemas}}
            assert grants(node, f"'{spec['user']}'@'%'") == wanted, (node.name, scope)
        assert grants(node, f"'{db['monitor']['user']}'@'%'") == monitor, node.name
        assert grants(node, "'repl'@'%'") == {"*.*": {"REPLICATION SLAVE"}}, node.name
        assert grants(node, "'sb'@'localhost'") == sb, node.name
    network_users = [spec["user"] for spec in db["app_users"].values()]
    rows = db_cluster.primary.sql(
        "SELECT User, ssl_type, max_user_connections, max_statement_time FROM mysql.user "
        "WHERE Host = '%' AND User IN ("
        + ", ".join(f"'{name}'" for name in (*network_users, db["monitor"]["user"], "repl"))
        + ")")
    assert {row["User"] for row in rows} == {*network_users, db["monitor"]["user"], "repl"}
    assert all(row["ssl_type"] == "ANY" for row in rows), rows  # REQUIRE SSL
    for row in rows:
        if row["User"] in network_users:
            assert row["max_user_connections"] == db["max_user_connections"], row
            assert float(row["max_statement_time"]) == db["statement_seconds"], row
    schemas = {row["Database"] for row in db_cluster.primary.sql("SHOW DATABASES")}
    assert {*app_schemas, db["bench_schema"]} <= schemas


def server_value(value: str) -> int | str:
    """An option file's ON/OFF as the server shows the variable."""
    return {"ON": 1, "OFF": 0}.get(str(value).upper(), value)


# Start-up options that are no variable to read back.
STARTUP_ONLY = frozenset({"init_rpl_role"})


def test_loopback_servers_run_with_the_formulas_options(db_cluster):
    """Every option the formula gives, as the server runs with it; read_only is the formula's
    ON everywhere but on the primary, which a promotion made writable."""
    db = db_settings(FLAVOUR)
    for node in db_cluster.nodes:
        replica = node in db_cluster.replicas
        expected = {name: value for name, value in db["server_options"].items()
                    if name not in STARTUP_ONLY and (replica or name != "read_only")}
        names = sorted({*expected, "read_only"})
        row = node.sql("SELECT " + ", ".join(f"@@GLOBAL.{name} AS {name}" for name in names)
                       + ", @@GLOBAL.binlog_expire_logs_seconds AS expiry,"
                       " @@GLOBAL.binlog_format AS format, @@GLOBAL.log_bin AS log_bin")[0]
        assert {name: row[name] for name in expected} == {
            name: server_value(value) for name, value in expected.items()}, node.name
        assert row["read_only"] == (1 if replica else 0), node.name
        assert row["expiry"] == db["binlog_expire_seconds"], node.name
        assert (row["format"], row["log_bin"]) == ("ROW", 1), node.name
    for replica in db_cluster.replicas:
        status = replica.sql("SHOW SLAVE STATUS")[0]
        assert status["Using_Gtid"] == "Slave_Pos", replica.name
        assert status["Connect_Retry"] == CONNECT_RETRY_SECONDS, replica.name
        assert (status["Slave_IO_Running"], status["Slave_SQL_Running"]) == ("Yes", "Yes")
