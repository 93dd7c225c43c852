"""Every SLS of the Salt tree renders, for both database flavours and every role.

Rendering goes through Salt itself (``salt-call --local state.show_sls``) with the OS grains
overridden (``tests/salt/saltcall.py``). The pillar is the one ``cluster.pillar`` writes, plus
fixed addresses standing in for the Salt mine (no master here).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import yaml

from cluster.loopback.redis import acl_line
from cluster.pillar import build_pillar, write_pillar_tree
from cluster.secrets import ClusterSecrets
from cluster.state import PROJECT_ROOT
from cluster.topology import plan_hosts
from tests.salt.pillars import api_keys, cluster_tls
from tests.salt.saltcall import (
    FLAVOURS,
    SALT_TREE,
    Flavour,
    SaltCall,
    state_args,
    state_function,
)

SAKILA_URL = "https://downloads.mysql.com/docs/sakila-db.tar.gz"

# Which minion each SLS is rendered as: the role that applies it.
HOST_OF_SLS = {
    "sqlgate._mapdata": "proxy",
    "sqlgate.db": "primary",
    "sqlgate.db.package": "primary",
    "sqlgate.db.config": "primary",
    "sqlgate.db.tls": "replica1",
    "sqlgate.db.service": "primary",
    "sqlgate.db.users": "primary",
    "sqlgate.db.sakila": "primary",
    "sqlgate.db.heartbeat": "primary",
    "sqlgate.db.primary": "primary",
    "sqlgate.db.replica": "replica1",
    "sqlgate.db.replication": "replica1",
    "sqlgate.db.node": "replica1",
    "sqlgate.db.watch": "replica1",
    "sqlgate.db.writable": "primary",
    "sqlgate.supervisor": "proxy",
    "sqlgate.supervisor.package": "proxy",
    "sqlgate.supervisor.config": "proxy",
    "sqlgate.supervisor.service": "proxy",
    "sqlgate.app": "proxy",
    "sqlgate.app.user": "proxy",
    "sqlgate.app.tls": "proxy",
    "sqlgate.app.install": "proxy",
    "sqlgate.proxy": "proxy",
    "sqlgate.proxy.config": "proxy",
    "sqlgate.proxy.service": "proxy",
    "sqlgate.gatekeeper": "gatekeeper",
    "sqlgate.gatekeeper.config": "gatekeeper",
    "sqlgate.gatekeeper.service": "gatekeeper",
    "sqlgate.exporters": "replica1",
    "sqlgate.exporters.node": "proxy",
    "sqlgate.exporters.mysqld": "replica1",
    "sqlgate.balancer": "balancer",
    "sqlgate.balancer.package": "balancer",
    "sqlgate.balancer.tls": "balancer",
    "sqlgate.balancer.config": "balancer",
    "sqlgate.balancer.service": "balancer",
    "sqlgate.monitor": "monitor",
    "sqlgate.monitor.package": "monitor",
    "sqlgate.monitor.tls": "monitor",
    "sqlgate.monitor.config": "monitor",
    "sqlgate.monitor.service": "monitor",
    "sqlgate.monitor.ratestore": "monitor",
}
ROLE_SLS = {"primary": "sqlgate.db.primary", "replica1": "sqlgate.db.replica",
            "proxy": "sqlgate.proxy", "gatekeeper": "sqlgate.gatekeeper",
            "balancer": "sqlgate.balancer", "monitor": "sqlgate.monitor"}
# A state ID: the sls area's prefix and short kebab words, or a managed service's
# `<name>-<what>` (services.jinja).
STATE_ID = re.compile(r"^(sqlgate-[a-z]+(-[a-z0-9]+)*|(mariadb|mysql|sqlgate-proxy|"
                      r"sqlgate-gatekeeper|haproxy|prometheus|prometheus-node-exporter|"
                      r"prometheus-mysqld-exporter|redis-server)-(unit|program|loaded|restart|running|"
                      r"ready))$")


def sls_names() -> list[str]:
    """Every SLS under salt/sqlgate, by its dotted name."""
    names = []
    for path in sorted((SALT_TREE / "sqlgate").rglob("*.sls")):
        parts = list(path.relative_to(SALT_TREE).with_suffix("").parts)
        if parts[-1] == "init":
            parts.pop()
        names.append(".".join(parts))
    return names


class SaltRenderer(SaltCall):
    """``SaltCall`` with the pillar tree of ``cluster.pillar`` for a two-replica cluster with
    two Gatekeepers and two Proxies behind a balancer host (with a public certificate for the
    Gatekeepers when ``public``)."""

    def __init__(self, root: Path, flavour: Flavour, service_venv: Path,
                 public: bool = False) -> None:
        super().__init__(root, flavour)
        hosts = plan_hosts(2, gatekeepers=2, proxies=2, balancer=True)
        self.secrets = ClusterSecrets.generate()
        self.pillar = build_pillar("render", hosts, self.secrets, provider="aws",
                                   sakila_source=SAKILA_URL, tls=cluster_tls(hosts, public),
                                   api_keys=api_keys())
        common = self.pillar.common["sqlgate"]
        common["addresses"] = {h.name: f"10.0.0.{10 + i}" for i, h in enumerate(hosts)}
        self.addresses: dict[str, str] = common["addresses"]
        # A virtualenv path that exists, so that systemd-analyze can check the units' ExecStart.
        common["lookup"] = {"app": {"venv": str(service_venv)}}
        write_pillar_tree(self.pillar, hosts, self.pillar_dir)


def service_venv(root: Path) -> Path:
    """A stand-in for the services' virtualenv whose python exists (systemd-analyze checks)."""
    venv_bin = root / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    return root / "venv"


@pytest.fixture(scope="module", params=sorted(FLAVOURS))
def renderer(request, tmp_path_factory) -> SaltRenderer:
    root = tmp_path_factory.mktemp(f"render-{request.param}")
    return SaltRenderer(root, FLAVOURS[request.param], service_venv(root))


def key_paths(data: dict, prefix: str = "") -> set[str]:
    """Every key of a pillar as a dotted path; the names of hosts, roles and addresses as *."""
    paths = set()
    for key, value in data.items():
        name = "*" if prefix.endswith(("hosts.", "roles.", "addresses.")) else key
        paths.add(prefix + name)
        if isinstance(value, dict):
            paths |= key_paths(value, f"{prefix}{name}.")
    return paths


def test_pillar_example_documents_every_key_bootstrap_writes():
    example = yaml.safe_load((PROJECT_ROOT / "pillar" / "pillar.example").read_text())
    hosts = plan_hosts(2, gatekeepers=2, proxies=2, balancer=True)
    written = build_pillar("c", hosts, ClusterSecrets.generate(), provider="local",
                           sakila_source="/tmp/sakila", tls=cluster_tls(hosts, public=True),
                           api_keys=api_keys())
    seen = set().union(*(key_paths(written.of(host.name)) for host in hosts))
    assert seen - key_paths(example) == set()
    assert {"sqlgate.tls.cert", "sqlgate.tls.gatekeeper_public.key", "sqlgate.api_keys"} <= seen


def test_every_sls_has_a_host_to_render_it_as():
    assert set(sls_names()) == set(HOST_OF_SLS)


@pytest.mark.parametrize("sls", sorted(HOST_OF_SLS))
def test_sls_renders(renderer, sls):
    states = renderer.show_sls(HOST_OF_SLS[sls], sls)
    assert states, f"{sls} rendered no state"
    long = [sid for sid in states if not STATE_ID.match(sid)]
    assert not long, f"state IDs outside the scheme: {long}"


def test_init_files_only_include():
    """Each area's init.sls names its parts (template-formula's _mapdata excepted)."""
    for path in (SALT_TREE / "sqlgate").rglob("init.sls"):
        if path.parent.name == "_mapdata":
            continue
        data = yaml.safe_load(path.read_text())
        assert list(data) == ["include"], path


def test_replica_follows_the_primary_over_tls_with_its_flavours_statement(renderer):
    states = renderer.show_sls("replica1", ROLE_SLS["replica1"])
    assert state_function(states, "sqlgate-db-replication-source") == \
        "sqlgate_replication.following"
    follow = state_args(states, "sqlgate-db-replication-source")
    assert follow["change_source"].startswith(renderer.flavour.change_source)
    assert (follow["source"], follow["port"], follow["user"]) == \
        (renderer.addresses["primary"], 3306, "repl")
    assert follow["password"] == renderer.secrets.repl_password
    assert follow["password"] not in follow["change_source"]  # a template, not the statement
    assert follow["ssl_ca"] == "/etc/sqlgate/tls/ca.crt"
    prefix = "SOURCE" if renderer.flavour.name == "mysql" else "MASTER"
    assert follow["change_source_ssl"] == f"{prefix}_SSL={{ssl}}, {prefix}_SSL_CA='{{ssl_ca}}'"
    # The channel has TLS: MySQL needs no RSA key exchange for the password.
    assert "GET_SOURCE_PUBLIC_KEY" not in follow["change_source"]
    assert (follow["client"], follow["socket"]) == (renderer.flavour.name,
                                                    "/run/mysqld/mysqld.sock")
    service = "mysql" if renderer.flavour.name == "mysql" else "mariadb"
    assert follow["require"] == [{"cmd": f"{service}-ready"}, {"file": "sqlgate-tls-ca"}]
    threads = state_args(states, "sqlgate-db-replication-running")
    assert state_function(states, "sqlgate-db-replication-running") == \
        "sqlgate_replication.running"
    assert threads["require"] == [{"sqlgate_replication": "sqlgate-db-replication-source"}]


def test_no_state_checks_with_a_shell_pipeline_on_the_database(renderer):
    """The database guards are Python (the sqlgate_db module), not client | grep pipelines."""
    for minion in ("primary", "replica1"):
        states = renderer.show_sls(minion, ROLE_SLS[minion])
        for sid in states:
            if sid.startswith("sqlgate-db-"):
                unless = state_args(states, sid).get("unless")
                assert not isinstance(unless, str), (sid, unless)


def test_proxy_settings_quote_the_passwords_use_tls_and_ping_only_as_the_service_group(
        tmp_path):
    from services.config import ProxyConfig, load_config, read_env_file

    renderer = SaltRenderer(tmp_path, FLAVOURS["mariadb"], tmp_path / "venv")
    passwords = {scope: f"it's a $pass#word \\ \"{scope}\""
                 for scope in ("read", "write", "admin", "monitor")}
    proxy_pillar = tmp_path / "pillar" / "sqlgate" / "proxy.sls"
    proxy_pillar.write_text(yaml.safe_dump({"sqlgate": {
        "secrets": {("monitor_password" if scope == "monitor" else f"app_{scope}_password"):
                    password for scope, password in passwords.items()},
        "proxy": {"settings": {"max_transactions": 4, "transaction_idle_timeout": 2.5}}}}))
    states = renderer.show_sls("proxy", "sqlgate.proxy.config")
    env_file = tmp_path / "proxy.env"
    env_file.write_text(state_args(states, "sqlgate-proxy-env")["contents"])
    config = load_config(ProxyConfig, ["--env-file", str(env_file)], environ={})
    users = {"read": "app_read", "write": "app_write", "admin": "app_admin",
             "monitor": "sqlgate_monitor"}
    for scope, password in passwords.items():
        assert config.db_credentials(scope) == (users[scope], password)
    # The fallback user is the weakest one.
    assert (config.db_user, config.db_password) == ("app_read", passwords["read"])
    assert (config.tls_cert, config.tls_key) == ("/etc/sqlgate/tls/proxy.crt",
                                                 "/etc/sqlgate/tls/proxy.key")
    assert config.tls_client_ca == config.db_tls_ca == "/etc/sqlgate/tls/ca.crt"
    assert (config.max_transactions, config.transaction_idle_timeout) == (4, 2.5)
    assert "PROXY_DB_PASSWORD" in read_env_file(env_file)
    ping = state_args(states, "sqlgate-proxy-ping-group")
    assert ping["name"] == "net.ipv4.ping_group_range"
    assert ping["value"].count("id -g sqlgate") == 2, ping["value"]


def test_database_settings_follow_the_flavour(renderer):
    """Every server, the primary's host too, starts read-only with semi-sync's replica side on,
    AFTER_SYNC, and durable commits (docs/failover.md); the flavours name them differently."""
    for host in ("primary", "replica1"):
        settings = state_args(renderer.show_sls(host, ROLE_SLS[host]), "sqlgate-db-config")
        options = settings["context"]["options"]
        assert options["read_only"] == "ON"
        assert options["sync_binlog"] == options["innodb_flush_log_at_trx_commit"] == 1
        if renderer.flavour.name == "mysql":
            assert options["gtid_mode"] == "ON"
            # MySQL bounds statements server-wide (milliseconds), MariaDB per user.
            assert options["max_execution_time"] == 10000
            assert options["super_read_only"] == "ON"
            assert options["rpl_semi_sync_replica_enabled"] == "ON"
            assert options["rpl_semi_sync_source_wait_point"] == "AFTER_SYNC"
        else:
            assert options["gtid_strict_mode"] == "ON"
            assert "max_execution_time" not in options
            assert options["rpl_semi_sync_slave_enabled"] == "ON"
            assert options["rpl_semi_sync_master_wait_point"] == "AFTER_SYNC"
            assert options["init_rpl_role"] == "SLAVE"
        assert "replica_options" not in settings["context"]
    assert settings["context"]["tls"] == {"ca": "/etc/sqlgate/tls/ca.crt",
                                          "cert": "/etc/sqlgate/tls/replica1.crt",
                                          "key": "/etc/sqlgate/tls/replica1.key"}


def render_file(states: dict, state_id: str) -> str:
    """A file.managed template of the tree rendered with its state's context."""
    managed = state_args(states, state_id)
    template = (SALT_TREE / managed["source"].removeprefix("salt://")).read_text()
    return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(template).render(
        **managed["context"])


def test_database_servers_require_tls_over_the_network(renderer):
    states = renderer.show_sls("primary", ROLE_SLS["primary"])
    text = render_file(states, "sqlgate-db-config")
    for line in ("ssl_ca = /etc/sqlgate/tls/ca.crt", "ssl_cert = /etc/sqlgate/tls/primary.crt",
                 "ssl_key = /etc/sqlgate/tls/primary.key", "require_secure_transport = ON"):
        assert f"\n{line}\n" in text, text
    # Without `tls` in its context (as another user of the template may render it): no TLS.
    context = dict(state_args(states, "sqlgate-db-config")["context"])
    del context["tls"]
    template = (SALT_TREE / "sqlgate" / "files" / "server.cnf.jinja").read_text()
    plain = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(template).render(
        **context)
    assert "ssl" not in plain and f"server-id = {context['server_id']}" in plain


# Every database user and its privileges (one entry per grant), as the contract says.
def expected_grants(flavour: str) -> dict[tuple[str, str], dict[str, set[str]]]:
    admin = ("SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, CREATE VIEW, "
             "SHOW VIEW, CREATE TEMPORARY TABLES, LOCK TABLES, EXECUTE, REFERENCES")
    monitor = {"mariadb": "SLAVE MONITOR", "mysql": "REPLICATION CLIENT"}[flavour]
    exporter = {"mariadb": "PROCESS, BINLOG MONITOR, SLAVE MONITOR",
                "mysql": "PROCESS, REPLICATION CLIENT"}[flavour]
    table = {
        ("app_read", "%"): {"sakila.*": "SELECT"},
        ("app_write", "%"): {"sakila.*": "SELECT, INSERT, UPDATE, DELETE"},
        ("app_admin", "%"): {"sakila.*": admin},
        ("sqlgate_monitor", "%"): {"*.*": monitor, "sqlgate.*": "SELECT, INSERT, UPDATE"},
        ("repl", "%"): {"*.*": "REPLICATION SLAVE"},
        ("sb", "localhost"): {"sbtest.*": "ALL PRIVILEGES"},
        ("sqlgate_exporter", "127.0.0.1"): {"*.*": exporter,
                                            "performance_schema.*": "SELECT"},
    }
    return {user: {on: {p.strip() for p in privileges.split(",")}
                   for on, privileges in grants.items()}
            for user, grants in table.items()}


def test_the_users_and_their_grants(renderer):
    states = renderer.show_sls("primary", ROLE_SLS["primary"])
    grants: dict[tuple[str, str], dict[str, set[str]]] = {}
    for sid in states:
        if state_function(states, sid) == "mysql_grants.present":
            args = state_args(states, sid)
            privileges = {p.strip() for p in args["grant"].split(",")}
            grants.setdefault((args["user"], args["host"]), {})[args["database"]] = privileges
    assert grants == expected_grants(renderer.flavour.name)
    for user, on in grants.items():
        for database, privileges in on.items():
            assert not privileges & {"SUPER", "FILE", "GRANT OPTION", "ALL"}, user
            # PROCESS only for the exporter, which reads the process list, from its host.
            assert "PROCESS" not in privileges or user == ("sqlgate_exporter", "127.0.0.1")
            assert database != "*.*" or user[0] in ("repl", "sqlgate_monitor",
                                                    "sqlgate_exporter"), user
    schemas = {state_args(states, sid)["name"] for sid in states
               if state_function(states, sid) == "mysql_database.present"}
    assert schemas == {"sakila", "sqlgate", "sbtest"}


def test_every_network_user_requires_tls_and_app_users_are_bounded(renderer):
    states = renderer.show_sls("primary", ROLE_SLS["primary"])
    users = {}
    for sid in states:
        if state_function(states, sid) == "sqlgate_users.present":
            args = state_args(states, sid)
            users[(args["name"], args["host"])] = args
    assert set(users) == set(expected_grants(renderer.flavour.name))
    bounded = {"max_user_connections": 60}
    if renderer.flavour.name == "mariadb":
        bounded["max_statement_time"] = 10
    flavour = yaml.safe_load((SALT_TREE / "sqlgate" / "flavours.yaml").read_text())[
        renderer.flavour.name]
    secrets = renderer.secrets
    passwords = {"app_read": secrets.app_read_password, "app_write": secrets.app_write_password,
                 "app_admin": secrets.app_admin_password, "repl": secrets.repl_password,
                 "sqlgate_monitor": secrets.monitor_password, "sb": secrets.sb_password,
                 "sqlgate_exporter": secrets.exporter_password}
    for (name, host), args in users.items():
        # sb@localhost comes over the socket only; everyone else over the network, with TLS.
        assert args["require_ssl"] is (host != "localhost"), name
        limits = {"sqlgate_exporter": {"max_user_connections": 3}}.get(
            name, bounded if name.startswith("app_") else {})
        assert args["limits"] == limits, name
        assert args["password"] == passwords[name]
        assert args["identified"] == flavour["identified_by_hash"]
        assert (args["client"], args["socket"]) == (renderer.flavour.name,
                                                    "/run/mysqld/mysqld.sock")
    retired = state_args(states, "sqlgate-db-users-app-retired")
    assert state_function(states, "sqlgate-db-users-app-retired") == "sqlgate_users.absent"
    assert (retired["name"], retired["host"]) == ("app", "%")


def test_the_heartbeat_table_is_created_once_from_the_shared_file(renderer):
    states = renderer.show_sls("primary", ROLE_SLS["primary"])
    table = state_args(states, "sqlgate-db-heartbeat-table")
    shared = (SALT_TREE / "sqlgate" / "files" / "heartbeat.sql").read_text()
    assert table["stdin"].strip() == shared.strip()  # the loopback stack runs the same file
    assert table["name"].endswith(" sqlgate")
    (guard,) = table["unless"]
    assert (guard["fun"], guard["schema"], guard["table"]) == \
        ("sqlgate_db.table_exists", "sqlgate", "heartbeat")


def test_sakila_is_loaded_only_into_an_empty_schema(renderer):
    states = renderer.show_sls("primary", ROLE_SLS["primary"])
    assert state_function(states, "sqlgate-db-sakila-loaded") == "sqlgate_schema.loaded"
    load = state_args(states, "sqlgate-db-sakila-loaded")
    directory = "/var/cache/sqlgate/sakila/sakila-db"
    assert load["name"] == "sakila"
    assert load["files"] == [f"{directory}/sakila-schema.sql", f"{directory}/sakila-data.sql"]
    assert not {"unless", "onlyif", "creates"} & set(load)  # the state itself checks
    archive = state_args(states, "sqlgate-db-sakila-archive")
    assert archive["source"] == SAKILA_URL
    assert archive["require_in"] == [{"sqlgate_schema": "sqlgate-db-sakila-loaded"}]


@pytest.mark.parametrize("minion_id", ["primary", "replica1", "proxy", "gatekeeper"])
def test_every_host_gets_its_own_tls_files_readable_by_its_service_only(renderer, minion_id):
    states = renderer.show_sls(minion_id, ROLE_SLS[minion_id])
    owner = "mysql" if minion_id in ("primary", "replica1") else "sqlgate"
    issued = renderer.pillar.hosts[minion_id]["sqlgate"]["tls"]
    directory = state_args(states, "sqlgate-tls-directory")
    assert (directory["name"], directory["user"], directory["group"], directory["mode"]) == \
        ("/etc/sqlgate/tls", "root", owner, "0750")
    for sid, path, mode, text in (
            ("sqlgate-tls-ca", "ca.crt", "0444", renderer.pillar.common["sqlgate"]["tls"]["ca"]),
            ("sqlgate-tls-cert", f"{minion_id}.crt", "0444", issued["cert"]),
            ("sqlgate-tls-key", f"{minion_id}.key", "0400", issued["key"])):
        args = state_args(states, sid)
        assert (args["name"], args["user"], args["group"], args["mode"]) == \
            (f"/etc/sqlgate/tls/{path}", owner, owner, mode), sid
        assert args["show_changes"] is False and args["contents"] == text, sid
    keys = [args["contents"] for sid in states if state_function(states, sid) == "file.managed"
            for args in [state_args(states, sid)] if "PRIVATE KEY" in str(args.get("contents"))]
    assert keys == [issued["key"]]  # no other host's key, nor the public one, is here


def test_the_gatekeeper_serves_https_and_reaches_the_proxy_over_mutual_tls(renderer):
    from services.config import read_env_file

    states = renderer.show_sls("gatekeeper", ROLE_SLS["gatekeeper"])
    env = state_args(states, "sqlgate-gatekeeper-env")["contents"]
    path = renderer.root / "gatekeeper.env"
    path.write_text(env)
    assert read_env_file(path) == {
        "GATEKEEPER_LISTEN_ADDRESS": "0.0.0.0",
        "GATEKEEPER_PORT": "443",
        "GATEKEEPER_REDIRECT_PORT": "80",
        "GATEKEEPER_TLS_CERT": "/etc/sqlgate/tls/gatekeeper.crt",
        "GATEKEEPER_TLS_KEY": "/etc/sqlgate/tls/gatekeeper.key",
        "GATEKEEPER_KEYS_FILE": "/etc/sqlgate/gatekeeper-keys.json",
        # The Proxies in a file it re-reads; PROXY headers from the balancer only.
        "GATEKEEPER_PROXIES_FILE": "/etc/sqlgate/gatekeeper-proxies.json",
        "GATEKEEPER_PROXY_PROTOCOL_FROM": renderer.addresses["balancer"],
        "GATEKEEPER_PROXY_CA": "/etc/sqlgate/tls/ca.crt",
        "GATEKEEPER_PROXY_CLIENT_CERT": "/etc/sqlgate/tls/gatekeeper.crt",
        "GATEKEEPER_PROXY_CLIENT_KEY": "/etc/sqlgate/tls/gatekeeper.key",
        "GATEKEEPER_WORKERS": "0",
        "GATEKEEPER_DRAIN_SECONDS": "3",  # HAProxy's 2 checks 1 s apart (on AWS, the provider's)
        "GATEKEEPER_METRICS_PORT": "9180",
        "GATEKEEPER_METRICS_CLIENT_CA": "/etc/sqlgate/tls/ca.crt",
        "GATEKEEPER_RATE_STORE": f"rediss://gatekeeper@{renderer.addresses['monitor']}:6379",
        "GATEKEEPER_RATE_STORE_PASSWORD_FILE": "/etc/sqlgate/gatekeeper-ratestore.password",
        "GATEKEEPER_RATE_STORE_PEERS": "2",
        "GATEKEEPER_RATE_STORE_TIMEOUT": "0.1",
    }
    password = state_args(states, "sqlgate-gatekeeper-ratestore-password")
    assert (password["mode"], password["contents"]) == ("0400",
                                                       renderer.secrets.ratestore_password)
    # The keys file (hashes) replaced a file holding one key in clear, which goes.
    assert "sqlgate-gatekeeper-key" not in states
    assert state_function(states, "sqlgate-gatekeeper-key-absent") == "file.absent"
    assert state_args(states, "sqlgate-gatekeeper-key-absent")["name"] == \
        "/etc/sqlgate/gatekeeper.key"
    if renderer.flavour.service_manager == "supervisor":
        low = state_args(states, "sqlgate-gatekeeper-low-ports")
        assert (low["name"], low["value"]) == ("net.ipv4.ip_unprivileged_port_start", 80)
    else:
        assert "CAP_NET_BIND_SERVICE" in state_args(states, "sqlgate-gatekeeper-unit")[
            "context"]["capabilities"]


def test_the_gatekeeper_settings_are_fields_of_its_configuration(renderer):
    """Every GATEKEEPER_ variable the states write is a field services.config reads."""
    import dataclasses

    from services.config import GatekeeperConfig, read_env_file

    states = renderer.show_sls("gatekeeper", ROLE_SLS["gatekeeper"])
    path = renderer.root / "gatekeeper-fields.env"
    path.write_text(state_args(states, "sqlgate-gatekeeper-env")["contents"])
    written = {name.removeprefix("GATEKEEPER_").lower() for name in read_env_file(path)}
    assert written - {f.name for f in dataclasses.fields(GatekeeperConfig)} == set()


def test_the_gatekeeper_serves_the_public_certificate_the_user_brought(tmp_path):
    from services.config import read_env_file

    renderer = SaltRenderer(tmp_path, FLAVOURS["mysql"], service_venv(tmp_path), public=True)
    states = renderer.show_sls("gatekeeper", ROLE_SLS["gatekeeper"])
    brought = renderer.pillar.roles["gatekeeper"]["sqlgate"]["tls"]["gatekeeper_public"]
    for name, mode in (("cert", "0444"), ("key", "0400")):
        args = state_args(states, f"sqlgate-gatekeeper-public-{name}")
        suffix = "crt" if name == "cert" else "key"
        assert (args["name"], args["user"], args["mode"], args["contents"]) == \
            (f"/etc/sqlgate/tls/public.{suffix}", "sqlgate", mode, brought[name])
        assert args["show_changes"] is False
    path = tmp_path / "gatekeeper.env"
    path.write_text(state_args(states, "sqlgate-gatekeeper-env")["contents"])
    env = read_env_file(path)
    assert (env["GATEKEEPER_TLS_CERT"], env["GATEKEEPER_TLS_KEY"]) == \
        ("/etc/sqlgate/tls/public.crt", "/etc/sqlgate/tls/public.key")
    # The link to the Proxy keeps the cluster certificate.
    assert env["GATEKEEPER_PROXY_CLIENT_CERT"] == "/etc/sqlgate/tls/gatekeeper.crt"
    watch = {next(iter(item.values()))
             for item in state_args(states, "sqlgate-gatekeeper-running")["watch"]}
    assert {"sqlgate-gatekeeper-public-cert", "sqlgate-gatekeeper-public-key"} <= watch


def test_the_api_keys_file_holds_hashes_only_and_restarts_nothing(renderer):
    import json

    from tests.salt.pillars import API_KEY_SECRETS

    states = renderer.show_sls("gatekeeper", ROLE_SLS["gatekeeper"])
    staged = state_args(states, "sqlgate-gatekeeper-keys-staged")
    assert (staged["name"], staged["user"], staged["group"], staged["mode"]) == \
        ("/etc/sqlgate/.gatekeeper-keys.json.staged", "sqlgate", "sqlgate", "0400")
    assert json.loads(staged["contents"]) == {"keys": api_keys()}
    # It reaches the file the Gatekeeper reads with its owner and mode, in one rename.
    install = state_args(states, "sqlgate-gatekeeper-keys")
    final = "/etc/sqlgate/gatekeeper-keys.json"
    assert install["name"] == (f"cp -p {staged['name']} {final}.new && "
                               f"mv -f {final}.new {final}")
    assert install["unless"] == f"cmp -s {staged['name']} {final}"
    rendered = json.dumps(states)
    assert not any(secret in rendered for secret in API_KEY_SECRETS.values())
    assert renderer.secrets.api_key not in rendered
    for sid in states:
        args = state_args(states, sid)
        for requisite in ("watch", "onchanges", "listen", "watch_in", "onchanges_in"):
            assert "sqlgate-gatekeeper-keys" not in json.dumps(args.get(requisite, [])), sid


def test_the_proxy_list_file_names_every_proxy_and_restarts_nothing(renderer):
    """The Proxies (every Proxy host by its instance name and private address) go to a file
    the Gatekeeper re-reads, installed in one rename: a Proxy added or removed restarts no
    Gatekeeper. The list checks out as the Gatekeeper checks it."""
    import json

    from services.config import NamedProxy, parse_proxies_file

    states = renderer.show_sls("gatekeeper", ROLE_SLS["gatekeeper"])
    staged = state_args(states, "sqlgate-gatekeeper-proxies-staged")
    assert (staged["name"], staged["user"], staged["mode"]) == \
        ("/etc/sqlgate/.gatekeeper-proxies.json.staged", "sqlgate", "0444")
    assert parse_proxies_file(staged["contents"]) == tuple(
        NamedProxy(name, f"https://{renderer.addresses[name]}:5000")
        for name in ("proxy", "proxy2"))
    install = state_args(states, "sqlgate-gatekeeper-proxies")
    final = "/etc/sqlgate/gatekeeper-proxies.json"
    assert install["name"] == (f"cp -p {staged['name']} {final}.new && "
                               f"mv -f {final}.new {final}")
    assert install["unless"] == f"cmp -s {staged['name']} {final}"
    # The env file (which restarts it) is written once the list is there, and names it only.
    assert {"cmd": "sqlgate-gatekeeper-proxies"} in \
        state_args(states, "sqlgate-gatekeeper-env")["require"]
    for sid in states:
        args = state_args(states, sid)
        for requisite in ("watch", "onchanges", "listen", "watch_in", "onchanges_in"):
            assert "sqlgate-gatekeeper-proxies" not in json.dumps(args.get(requisite, [])), sid


def test_services_use_the_hosts_service_manager(renderer):
    states = renderer.show_sls("proxy", ROLE_SLS["proxy"])
    if renderer.flavour.service_manager == "systemd":
        assert "sqlgate-proxy-unit" in states
        assert "sqlgate-supervisor-running" not in states
        assert state_function(states, "sqlgate-proxy-running") == "service.running"
    else:
        assert "sqlgate-proxy-program" in states
        assert "sqlgate-proxy-unit" not in states
        assert state_function(states, "sqlgate-proxy-running") == "cmd.run"


@pytest.mark.parametrize("minion_id", ["primary", "proxy", "gatekeeper"])
def test_what_others_require_of_a_service_is_its_ready_state(renderer, minion_id):
    """services.jinja's contract: `cmd: <name>-ready` exists on both kinds of host."""
    states = renderer.show_sls(minion_id, ROLE_SLS[minion_id])
    name = {"primary": "mysql" if renderer.flavour.name == "mysql" else "mariadb",
            "proxy": "sqlgate-proxy", "gatekeeper": "sqlgate-gatekeeper"}[minion_id]
    assert state_function(states, f"{name}-ready") == "cmd.run"
    ready = state_args(states, f"{name}-ready")
    kind = "service" if renderer.flavour.service_manager == "systemd" else "cmd"
    assert ready["require"] == [{kind: f"{name}-running"}]


def test_the_services_are_ready_when_they_answer_over_https(renderer):
    proxy = state_args(renderer.show_sls("proxy", ROLE_SLS["proxy"]), "sqlgate-proxy-ready")
    # The Proxy wants a client certificate: the host's own, checked under its name.
    for part in ("--cacert /etc/sqlgate/tls/ca.crt", "--cert /etc/sqlgate/tls/proxy.crt",
                 "--key /etc/sqlgate/tls/proxy.key", "--resolve proxy:5000:127.0.0.1",
                 "https://proxy:5000/health"):
        assert part in proxy["unless"], proxy["unless"]
    gatekeeper = state_args(renderer.show_sls("gatekeeper", ROLE_SLS["gatekeeper"]),
                            "sqlgate-gatekeeper-ready")
    assert "https://127.0.0.1:443/health" in gatekeeper["unless"]


TLS_FILES = {"sqlgate-tls-ca", "sqlgate-tls-cert", "sqlgate-tls-key"}


def test_the_rate_store_is_redis_on_the_monitor_over_tls_with_a_hashed_password(renderer):
    states = renderer.show_sls("monitor", "sqlgate.monitor")
    config = state_args(states, "sqlgate-ratestore-config")
    assert (config["name"], config["mode"], config["user"]) == ("/etc/redis/redis.conf",
                                                                "0600", "redis")
    lines = config["contents"].splitlines()
    assert f"bind {renderer.addresses['monitor']}" in lines
    assert {"port 0", "tls-port 6379", "tls-auth-clients yes", "user default off",
            'save ""', "appendonly no"} <= set(lines)
    password = renderer.secrets.ratestore_password
    digest = hashlib.sha256(password.encode()).hexdigest()
    assert acl_line(password) in lines  # the same ACL as the tests' own Redis
    assert f"#{digest}" in config["contents"] and password not in config["contents"]
    assert state_args(states, "sqlgate-ratestore-tls-key")["mode"] == "0400"
    assert "sqlgate-ratestore-config" in {next(iter(item.values())) for item in (
        state_args(states, "redis-server-running")["watch"]
        if renderer.flavour.service_manager == "systemd"
        else state_args(states, "redis-server-restart")["onchanges"])}


def test_services_restart_when_their_settings_code_or_certificates_change(renderer):
    database = "mysql" if renderer.flavour.name == "mysql" else "mariadb"
    for minion_id, name, watched in (
            ("proxy", "sqlgate-proxy", {"sqlgate-proxy-env", "sqlgate-app-installed"}),
            ("gatekeeper", "sqlgate-gatekeeper", {"sqlgate-gatekeeper-env",
                                                  "sqlgate-app-installed",
                                                  "sqlgate-gatekeeper-ratestore-password"}),
            ("primary", database, {"sqlgate-db-config"}),
            ("replica1", database, {"sqlgate-db-config"})):
        states = renderer.show_sls(minion_id, ROLE_SLS[minion_id])
        watched = watched | TLS_FILES
        if renderer.flavour.service_manager == "systemd":
            watch = state_args(states, f"{name}-running")["watch"]
            if not name.startswith(database):
                watched = watched | {f"{name}-unit"}
        else:
            watch = state_args(states, f"{name}-restart")["onchanges"]
        assert {next(iter(item.values())) for item in watch} == watched, minion_id


def test_mysql_may_read_the_tls_files_under_apparmor(renderer):
    states = renderer.show_sls("primary", ROLE_SLS["primary"])
    if renderer.flavour.name == "mariadb":
        assert "sqlgate-db-apparmor" not in states
        return
    rule = state_args(states, "sqlgate-db-apparmor")
    assert rule["name"] == "/etc/apparmor.d/local/usr.sbin.mysqld"
    assert rule["content"].split() == ["/etc/sqlgate/tls/", "r,", "/etc/sqlgate/tls/*", "r,"]
    reload = state_args(states, "sqlgate-db-apparmor-reload")
    assert reload["name"] == "apparmor_parser -r /etc/apparmor.d/usr.sbin.mysqld"
    assert reload["onchanges"] == [{"file": "sqlgate-db-apparmor"}]
    assert {"sls": "sqlgate.db.tls"} in state_args(states, "mysql-running")["require"]


@pytest.mark.parametrize("minion_id", ["proxy", "gatekeeper"])
def test_systemd_units_pass_systemd_analyze_verify(minion_id, tmp_path):
    renderer = SaltRenderer(tmp_path, FLAVOURS["mysql"], service_venv(tmp_path))
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    states = renderer.show_sls(minion_id, ROLE_SLS[minion_id])
    name = f"sqlgate-{minion_id}"
    unit = state_args(states, f"{name}-unit")
    template = (SALT_TREE / unit["source"].removeprefix("salt://")).read_text()
    path = tmp_path / f"{name}.service"
    path.write_text(jinja2.Template(template).render(**unit["context"]))
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True,
                            timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if str(path) in line or name in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_orchestration_renders_in_role_order(tmp_path):
    renderer = SaltRenderer(tmp_path, FLAVOURS["mariadb"], tmp_path / "venv")
    states = renderer.show_sls("saltmaster_master", "orch")
    order = sorted(states, key=lambda sid: states[sid][next(iter(states[sid]))][-1]["order"])
    assert order == [
        "sqlgate-orch-sync",
        "sqlgate-orch-pillar",
        "sqlgate-orch-mine",
        "sqlgate-orch-primary",
        "sqlgate-orch-replica",
        "sqlgate-orch-proxy",
        "sqlgate-orch-gatekeeper",
        "sqlgate-orch-balancer",
        "sqlgate-orch-monitor",
    ]
    everyone = "primary,replica1,replica2,proxy,proxy2,gatekeeper,gatekeeper2,balancer,monitor"
    sync = state_args(states, "sqlgate-orch-sync")
    assert (sync["name"], sync["tgt"], sync["tgt_type"]) == ("saltutil.sync_all", everyone,
                                                             "list")
    assert state_args(states, "sqlgate-orch-pillar")["require"] == [{"salt": "sqlgate-orch-sync"}]
    assert state_args(states, "sqlgate-orch-mine")["require"] == [{"salt": "sqlgate-orch-pillar"}]
    replicas = state_args(states, "sqlgate-orch-replica")
    assert replicas["tgt"] == "replica1,replica2" and replicas["highstate"] is True
    assert replicas["require"] == [{"salt": "sqlgate-orch-primary"}]
    # The balancer checks the Gatekeepers: it comes once they are up; the monitor scrapes
    # everyone: it comes last.
    assert state_args(states, "sqlgate-orch-balancer")["require"] == [
        {"salt": "sqlgate-orch-gatekeeper"}]
    assert state_args(states, "sqlgate-orch-monitor")["require"] == [
        {"salt": "sqlgate-orch-balancer"}]


def test_the_rolling_restart_takes_one_host_at_a_time_proxies_first(tmp_path):
    """salt/orch/rolling.sls: the modules synced, then each Proxy restarted after the one
    before, then each Gatekeeper drained at the balancer, restarted and made ready there;
    every step requires the one before, so a failed step stops the run."""
    renderer = SaltRenderer(tmp_path, FLAVOURS["mariadb"], tmp_path / "venv")
    states = renderer.show_sls("saltmaster_master", "orch.rolling")
    order = sorted(states, key=lambda sid: states[sid][next(iter(states[sid]))][-1]["order"])
    assert order == [
        "sqlgate-rolling-sync",
        "sqlgate-rolling-proxy", "sqlgate-rolling-proxy2",
        "sqlgate-rolling-gatekeeper-drain", "sqlgate-rolling-gatekeeper",
        "sqlgate-rolling-gatekeeper-ready",
        "sqlgate-rolling-gatekeeper2-drain", "sqlgate-rolling-gatekeeper2",
        "sqlgate-rolling-gatekeeper2-ready",
    ]
    for before, step in itertools.pairwise(order):
        assert state_args(states, step)["require"] == [{"salt": before}], step
    proxy = state_args(states, "sqlgate-rolling-proxy2")
    assert (proxy["name"], proxy["tgt"], proxy["arg"]) == (
        "sqlgate_service.restart", "proxy2", ["sqlgate-proxy", "sqlgate.proxy.service"])
    drain = state_args(states, "sqlgate-rolling-gatekeeper-drain")
    assert (drain["name"], drain["tgt"], drain["arg"]) == (
        "sqlgate_balancer.drain", "balancer", ["gatekeeper"])
    assert state_args(states, "sqlgate-rolling-gatekeeper-ready")["name"] == \
        "sqlgate_balancer.ready"
    # The restarts' own ready checks are the formula's: the IDs they name exist.
    for role, sls in (("proxy", "sqlgate.proxy.service"),
                      ("gatekeeper", "sqlgate.gatekeeper.service")):
        assert f"sqlgate-{role}-ready" in renderer.show_sls(role, sls)


def scale_steps(renderer: SaltRenderer, added: list[str], removed: dict[str, str]
                ) -> list[tuple[str, str | None, str, list | None]]:
    """salt/orch/scale.sls for a change, as (id, function, targets, arguments) in the order
    it runs; every step requires the one before (a failed step stops the run)."""
    pillar = json.dumps({"sqlgate_scale": {"added": added, "removed": removed}})
    states = renderer.run("saltmaster_master", "state.show_sls", "orch.scale",
                          f"pillar={pillar}")
    assert isinstance(states, dict), states
    order = sorted(states, key=lambda sid: states[sid][next(iter(states[sid]))][-1]["order"])
    for before, step in itertools.pairwise(order):
        assert state_args(states, step)["require"] == [{"salt": before}], step
    return [(sid, state_args(states, sid).get("name"), state_args(states, sid)["tgt"],
             state_args(states, sid).get("arg")) for sid in order]


def test_scaling_up_starts_the_new_hosts_then_restarts_the_others_one_at_a_time(tmp_path):
    """Adding a Gatekeeper, a Proxy and a replica (the pillar's hosts are the cluster to be):
    the databases first (the new replica is cloned there), the new Proxy, each old Proxy
    alone (its replicas changed), the new Gatekeeper, each old Gatekeeper alone between
    the balancer's drain and ready (its share of a rate changed), then the balancer's new
    list, the new Gatekeeper in once up, and the monitor."""
    renderer = SaltRenderer(tmp_path, FLAVOURS["mariadb"], tmp_path / "venv")
    steps = scale_steps(renderer, ["gatekeeper2", "proxy2", "replica2"], {})
    assert [(sid, function, targets) for sid, function, targets, _ in steps[4:]] == [
        ("sqlgate-scale-databases", None, "primary,replica1,replica2"),
        ("sqlgate-scale-proxies-new", None, "proxy2"),
        ("sqlgate-scale-proxy", None, "proxy"),
        ("sqlgate-scale-gatekeepers-new", None, "gatekeeper2"),
        ("sqlgate-scale-gatekeeper-drain", "sqlgate_balancer.drain", "balancer"),
        ("sqlgate-scale-gatekeeper", None, "gatekeeper"),
        ("sqlgate-scale-gatekeeper-ready", "sqlgate_balancer.ready", "balancer"),
        ("sqlgate-scale-balancer", None, "balancer"),
        ("sqlgate-scale-balancer-gatekeeper2-ready", "sqlgate_balancer.ready", "balancer"),
        ("sqlgate-scale-monitor", None, "monitor"),
    ]
    assert [step[0] for step in steps[:4]] == [
        "sqlgate-scale-sync", "sqlgate-scale-sync-states", "sqlgate-scale-pillar",
        "sqlgate-scale-mine"]


def test_scaling_down_stops_a_host_only_once_nothing_sends_to_it(tmp_path):
    """Removing the third of each: they are synced (for the stop) but keep their pillar; the
    Gatekeeper is drained and dropped by the balancer before it stops, the Proxy stops after
    every Gatekeeper dropped it, the replica (its failover watch first) after every Proxy."""
    renderer = SaltRenderer(tmp_path, FLAVOURS["mariadb"], tmp_path / "venv")
    removed = {"gatekeeper3": "gatekeeper", "proxy3": "proxy", "replica3": "replica"}
    steps = scale_steps(renderer, [], removed)
    ids = [step[0] for step in steps]
    assert set(removed) <= set(steps[0][2].split(","))  # synced
    assert not set(removed) & set(steps[2][2].split(","))  # their pillar is left as it was
    assert ids.index("sqlgate-scale-balancer-gatekeeper3-drain") < \
        ids.index("sqlgate-scale-balancer") < ids.index("sqlgate-scale-gatekeeper3-stop")
    assert ids.index("sqlgate-scale-gatekeeper2") < ids.index("sqlgate-scale-proxy3-stop")
    assert ids.index("sqlgate-scale-proxy2") < ids.index("sqlgate-scale-replica3-unwatch") < \
        ids.index("sqlgate-scale-replica3-stop")
    stops = {sid: (function, targets, args) for sid, function, targets, args in steps
             if sid.endswith(("-stop", "-unwatch"))}
    assert stops == {
        "sqlgate-scale-gatekeeper3-stop": ("sqlgate_service.stop", "gatekeeper3",
                                           ["sqlgate-gatekeeper"]),
        "sqlgate-scale-proxy3-stop": ("sqlgate_service.stop", "proxy3", ["sqlgate-proxy"]),
        "sqlgate-scale-replica3-unwatch": ("schedule.delete", "replica3", ["sqlgate-db-watch"]),
        "sqlgate-scale-replica3-stop": ("sqlgate_service.stop", "replica3", ["database"]),
    }


def test_a_scale_that_changes_no_count_drains_nothing(tmp_path):
    """Run again with the same numbers: every host's states are applied, the services' all at
    once per role (nothing of theirs changes), and no Gatekeeper leaves the balancer."""
    renderer = SaltRenderer(tmp_path, FLAVOURS["mariadb"], tmp_path / "venv")
    steps = scale_steps(renderer, [], {})
    assert [(sid, targets) for sid, _, targets, _ in steps[4:]] == [
        ("sqlgate-scale-databases", "primary,replica1,replica2"),
        ("sqlgate-scale-proxies", "proxy,proxy2"),
        ("sqlgate-scale-gatekeepers", "gatekeeper,gatekeeper2"),
        ("sqlgate-scale-balancer", "balancer"), ("sqlgate-scale-monitor", "monitor")]


def test_a_proxy_added_alone_restarts_no_service(tmp_path):
    """Only a Proxy added: the others' settings do not change (all at once), and the
    Gatekeepers re-read their list of Proxies without leaving the balancer."""
    renderer = SaltRenderer(tmp_path, FLAVOURS["mariadb"], tmp_path / "venv")
    steps = scale_steps(renderer, ["proxy2"], {})
    assert [(sid, targets) for sid, _, targets, _ in steps[4:7]] == [
        ("sqlgate-scale-databases", "primary,replica1,replica2"),
        ("sqlgate-scale-proxies-new", "proxy2"), ("sqlgate-scale-proxies", "proxy")]
    assert "sqlgate-scale-gatekeepers" in [step[0] for step in steps]
    assert not [step for step in steps if "drain" in step[0]]


# --- monitoring ---------------------------------------------------------------------------

def test_top_gives_every_minion_the_exporters_only_when_there_is_a_monitor(tmp_path):
    renderer = SaltRenderer(tmp_path, FLAVOURS["mariadb"], tmp_path / "venv")
    top = renderer.run("proxy", "state.show_top")
    assert top == {"base": ["sqlgate.proxy", "sqlgate.exporters"]}
    assert renderer.run("monitor", "state.show_top") == {
        "base": ["sqlgate.monitor", "sqlgate.exporters"]}
    common = renderer.pillar_dir / "sqlgate" / "common.sls"
    data = yaml.safe_load(common.read_text())
    del data["sqlgate"]["hosts"]["monitor"]
    common.write_text(yaml.safe_dump(data))
    assert renderer.run("proxy", "state.show_top") == {"base": ["sqlgate.proxy"]}
    # Without a monitor, the services open no metrics port.
    from services.config import read_env_file
    env = tmp_path / "proxy-unmonitored.env"
    env.write_text(state_args(renderer.show_sls("proxy", "sqlgate.proxy.config"),
                              "sqlgate-proxy-env")["contents"])
    assert read_env_file(env)["PROXY_METRICS_PORT"] == "0"


def prometheus_config(states: dict) -> dict:
    return yaml.safe_load(state_args(states, "sqlgate-monitor-config")["contents"])


def test_prometheus_scrapes_every_host_with_host_and_role_labels(renderer):
    states = renderer.show_sls("monitor", ROLE_SLS["monitor"])
    config = prometheus_config(states)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert list(jobs) == ["gatekeeper", "proxy", "node", "mysqld", "prometheus"]
    address = renderer.pillar.common["sqlgate"]["addresses"]

    def targets(job: str) -> dict[str, tuple[str, str]]:
        return {static["labels"]["host"]: (static["targets"][0], static["labels"]["role"])
                for static in jobs[job]["static_configs"]}

    hosts = {name: entry["role"] for name, entry in
             renderer.pillar.common["sqlgate"]["hosts"].items()}
    assert targets("node") == {name: (f"{address[name]}:9100", role)
                               for name, role in hosts.items()}
    assert targets("mysqld") == {name: (f"{address[name]}:9104", hosts[name])
                                 for name in ("primary", "replica1", "replica2")}
    assert targets("gatekeeper") == {name: (f"{address[name]}:9180", "gatekeeper")
                                     for name in ("gatekeeper", "gatekeeper2")}
    assert targets("proxy") == {name: (f"{address[name]}:9181", "proxy")
                                for name in ("proxy", "proxy2")}
    assert targets("prometheus") == {"monitor": (f"{address['monitor']}:9090", "monitor")}
    # The services' metrics over HTTPS, checked under the service host's name, with the
    # monitor's certificate as the client certificate they require.
    for job in ("gatekeeper", "proxy"):
        assert jobs[job]["scheme"] == "https"
        assert jobs[job]["tls_config"] == {
            "ca_file": "/etc/sqlgate/tls/ca.crt", "cert_file": "/etc/sqlgate/tls/monitor.crt",
            "key_file": "/etc/sqlgate/tls/monitor.key", "server_name": job}
    assert jobs["prometheus"]["tls_config"] == {"ca_file": "/etc/sqlgate/tls/ca.crt",
                                                "server_name": "monitor"}
    assert "scheme" not in jobs["node"] and "scheme" not in jobs["mysqld"]
    assert config["rule_files"] == ["/etc/prometheus/sqlgate-alerts.rules.yml"]
    assert config["global"]["scrape_interval"] == "15s"
    web = yaml.safe_load(state_args(states, "sqlgate-monitor-web")["contents"])
    assert web == {"tls_server_config": {"cert_file": "/etc/sqlgate/tls/monitor.crt",
                                         "key_file": "/etc/sqlgate/tls/monitor.key"}}
    args = state_args(states, "sqlgate-monitor-args")["contents"]
    for part in ("--web.config.file=/etc/prometheus/sqlgate-web.yml",
                 "--web.console.templates=/etc/prometheus/sqlgate-consoles",
                 "--web.console.libraries=/etc/prometheus/sqlgate-consoles",
                 "--config.file=/etc/prometheus/prometheus.yml", "0.0.0.0:9090"):
        assert part in args, args
    consoles = state_args(states, "sqlgate-monitor-consoles")
    assert consoles["source"] == "salt://sqlgate/monitor/files/consoles"
    # The monitor's TLS files belong to Prometheus's user.
    assert state_args(states, "sqlgate-tls-key")["user"] == "prometheus"
    ready = state_args(states, "prometheus-ready")["unless"]
    assert "--resolve monitor:9090:127.0.0.1 https://monitor:9090/-/ready" in ready


def test_the_alert_rules_get_their_thresholds_and_the_proxys_lag_limit(tmp_path):
    renderer = SaltRenderer(tmp_path, FLAVOURS["mariadb"], tmp_path / "venv")
    common = renderer.pillar_dir / "sqlgate" / "common.sls"
    data = yaml.safe_load(common.read_text())
    data["sqlgate"]["proxy"] = {"settings": {"max_replica_lag": 2.5}}
    data["sqlgate"]["monitor"] = {"scrape_interval": "1s", "alerts": {"for": "3s"}}
    common.write_text(yaml.safe_dump(data))
    states = renderer.show_sls("monitor", "sqlgate.monitor.config")
    rules = state_args(states, "sqlgate-monitor-rules")
    assert rules["source"] == "salt://sqlgate/monitor/files/alerts.rules.yml.jinja"
    assert rules["context"]["alerts"] == {"for": "3s", "replica_lag_seconds": 2.5,
                                          "error_ratio": 0.05, "p95_seconds": 0.5,
                                          "quarantine_for": "10m"}
    assert rules["check_cmd"] == "/usr/bin/promtool check rules"
    assert prometheus_config(states)["global"]["scrape_interval"] == "1s"
    # The rules file renders with that context into rules promtool accepts.
    text = render_file(states, "sqlgate-monitor-rules")
    assert isinstance(yaml.safe_load(text)["groups"], list)


def test_every_minion_runs_node_exporter_and_database_hosts_mysqld_exporter(renderer):
    for minion_id in ("proxy", "gatekeeper", "primary", "replica1", "monitor"):
        states = renderer.show_sls(minion_id, "sqlgate.exporters")
        assert "sqlgate-exporters-node-args" in states, minion_id
        assert state_args(states, "sqlgate-exporters-node-args")["contents"].endswith(
            'ARGS="--web.listen-address=:9100 '
            '--collector.textfile.directory=/var/lib/prometheus/node-exporter"\n')
        database = minion_id in ("primary", "replica1")
        assert ("prometheus-mysqld-exporter-ready" in states) is database, minion_id
    states = renderer.show_sls("replica1", "sqlgate.exporters")
    credentials = state_args(states, "sqlgate-exporters-mysqld-credentials")
    assert (credentials["name"], credentials["user"], credentials["mode"]) == \
        ("/etc/prometheus/sqlgate-mysqld-exporter.cnf", "prometheus", "0600")
    assert credentials["show_changes"] is False
    lines = credentials["contents"].splitlines()
    for line in ("[client]", "user=sqlgate_exporter", "host=127.0.0.1", "port=3306",
                 f"password={renderer.secrets.exporter_password}",
                 "ssl-ca=/etc/prometheus/sqlgate-ca.crt",
                 "ssl-cert=/etc/prometheus/sqlgate-exporter.crt",
                 "ssl-key=/etc/prometheus/sqlgate-exporter.key"):
        assert line in lines, lines
    key = state_args(states, "sqlgate-exporters-mysqld-key")
    assert (key["user"], key["mode"], key["show_changes"]) == ("prometheus", "0400", False)
    assert key["contents"] == renderer.pillar.hosts["replica1"]["sqlgate"]["tls"]["key"]
    args = state_args(states, "sqlgate-exporters-mysqld-args")["contents"]
    assert "--config.my-cnf=/etc/prometheus/sqlgate-mysqld-exporter.cnf" in args
    # The password is in the 0600 file only: never on a command line.
    rendered = json.dumps({sid: state_args(states, sid) for sid in states
                           if sid != "sqlgate-exporters-mysqld-credentials"
                           and not sid.startswith("sqlgate-db-")})
    assert renderer.secrets.exporter_password not in rendered
    assert "mysql_up 1" in state_args(states, "prometheus-mysqld-exporter-ready")["unless"]


def test_the_proxy_and_gatekeeper_serve_metrics_and_take_their_workers(tmp_path):
    from services.config import GatekeeperConfig, ProxyConfig, load_config

    renderer = SaltRenderer(tmp_path, FLAVOURS["mariadb"], tmp_path / "venv")
    common = renderer.pillar_dir / "sqlgate" / "common.sls"
    data = yaml.safe_load(common.read_text())
    data["sqlgate"]["proxy"] = {"workers": 3}
    data["sqlgate"]["gatekeeper"] = {"workers": 2, "proxy_protocol_from": "10.0.0.5, 10.1.0.0/24"}
    common.write_text(yaml.safe_dump(data))
    for name, config_type, workers, port in (("proxy", ProxyConfig, 3, 9181),
                                             ("gatekeeper", GatekeeperConfig, 2, 9180)):
        states = renderer.show_sls(name, f"sqlgate.{name}.config")
        env = tmp_path / f"{name}.env"
        env.write_text(state_args(states, f"sqlgate-{name}-env")["contents"])
        config = load_config(config_type, ["--env-file", str(env)], environ={})
        assert (config.workers, config.metrics_port) == (workers, port), name
    assert config.metrics_client_ca == "/etc/sqlgate/tls/ca.crt"
    # The balancer host's address first, then the pillar's own.
    assert [str(network) for network in config.proxy_protocol_networks] == [
        f"{renderer.addresses['balancer']}/32", "10.0.0.5/32", "10.1.0.0/24"]


def test_on_aws_the_gatekeepers_trust_the_network_load_balancers_network(tmp_path):
    """No balancer host (AWS's balancer is a Network Load Balancer): the PROXY header is
    trusted from the network the provider names (the VPC's), in the Gatekeepers' pillar."""
    from services.config import read_env_file

    renderer = SaltRenderer(tmp_path, FLAVOURS["mysql"], service_venv(tmp_path))
    hosts = plan_hosts(2, gatekeepers=2, proxies=2)
    pillar = build_pillar("render", hosts, renderer.secrets, provider="aws",
                          sakila_source=SAKILA_URL, tls=cluster_tls(hosts), api_keys=api_keys(),
                          gatekeeper={"proxy_protocol_from": "172.31.0.0/16",
                                      "drain_seconds": 40, "stop_seconds": 76})
    assert "gatekeeper" not in pillar.common["sqlgate"]  # the Gatekeepers' file only
    assert "gatekeeper" not in pillar.roles["proxy"]["sqlgate"]
    pillar.common["sqlgate"]["addresses"] = renderer.addresses
    pillar.common["sqlgate"]["lookup"] = {"app": {"venv": str(tmp_path / "venv")}}
    write_pillar_tree(pillar, hosts, renderer.pillar_dir)
    for gatekeeper in ("gatekeeper", "gatekeeper2"):
        states = renderer.show_sls(gatekeeper, "sqlgate.gatekeeper.config")
        env = tmp_path / f"{gatekeeper}.env"
        env.write_text(state_args(states, "sqlgate-gatekeeper-env")["contents"])
        settings = read_env_file(env)
        assert settings["GATEKEEPER_PROXY_PROTOCOL_FROM"] == "172.31.0.0/16"
        assert settings["GATEKEEPER_DRAIN_SECONDS"] == "40"  # the NLB's checks take longer


def test_the_balancer_passes_tls_through_to_every_gatekeeper_with_their_clients_address(
        renderer, tmp_path):
    """HAProxy's file, rendered from the state's context and checked by HAProxy itself: every
    Gatekeeper behind both public ports, TLS passed through, checked over HTTPS on /health
    against the cluster CA, PROXY protocol v2 on the HTTPS side; reloaded, not restarted."""
    states = renderer.show_sls("balancer", ROLE_SLS["balancer"])
    config = state_args(states, "sqlgate-balancer-config")
    assert config["check_cmd"] == "/usr/sbin/haproxy -c -q -f"
    template = (SALT_TREE / "sqlgate" / "balancer" / "files" / "haproxy.cfg.jinja").read_text()
    text = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(template).render(
        **config["context"])
    if shutil.which("haproxy"):
        path = tmp_path / "haproxy.cfg"
        path.write_text(text.replace("/etc/sqlgate/tls/ca.crt", str(renderer.root / "ca.crt")))
        (renderer.root / "ca.crt").write_text(renderer.pillar.common["sqlgate"]["tls"]["ca"])
        checked = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True,
                                 text=True, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    address = renderer.addresses
    lines = [line.strip() for line in text.splitlines()]
    for port, backend in ((443, "gatekeepers"), (80, "gatekeepers-redirect")):
        assert f"bind :{port}" in lines and f"default_backend {backend}" in lines
        for name in ("gatekeeper", "gatekeeper2"):
            assert f"server {name} {address[name]}:{port}" in lines
    checks = next(line for line in lines if line.startswith("default-server") and "ssl" in line)
    assert "check-ssl verify required ca-file /etc/sqlgate/tls/ca.crt" in checks
    assert "verifyhost gatekeeper" in checks and checks.endswith("send-proxy-v2")
    assert "on-marked-down shutdown-sessions" in checks  # a lost Gatekeeper's clients move on
    assert "mode tcp" in lines and "option httpchk GET /health" in lines
    if renderer.flavour.service_manager == "supervisor":
        assert "signal USR2" in state_args(states, "haproxy-restart")["name"]
    else:
        assert state_args(states, "haproxy-running")["reload"] is True
