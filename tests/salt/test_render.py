"""Every SLS of the Salt tree renders, for both database flavours and every role.

Rendering goes through Salt itself (``salt-call --local state.show_sls``) with the OS grains
overridden (``tests/salt/saltcall.py``). The pillar is the one ``cluster.pillar`` writes, plus
fixed addresses standing in for the Salt mine (no master here).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import yaml

from cluster.pillar import build_pillar, write_pillar_tree
from cluster.secrets import ClusterSecrets
from cluster.state import PROJECT_ROOT
from cluster.topology import plan_hosts
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
    "sqlgate.db.service": "primary",
    "sqlgate.db.users": "primary",
    "sqlgate.db.sakila": "primary",
    "sqlgate.db.heartbeat": "primary",
    "sqlgate.db.primary": "primary",
    "sqlgate.db.replica": "replica1",
    "sqlgate.db.replication": "replica1",
    "sqlgate.supervisor": "proxy",
    "sqlgate.supervisor.package": "proxy",
    "sqlgate.supervisor.config": "proxy",
    "sqlgate.supervisor.service": "proxy",
    "sqlgate.app": "proxy",
    "sqlgate.app.user": "proxy",
    "sqlgate.app.install": "proxy",
    "sqlgate.proxy": "proxy",
    "sqlgate.proxy.config": "proxy",
    "sqlgate.proxy.service": "proxy",
    "sqlgate.gatekeeper": "gatekeeper",
    "sqlgate.gatekeeper.config": "gatekeeper",
    "sqlgate.gatekeeper.service": "gatekeeper",
}
ROLE_SLS = {"primary": "sqlgate.db.primary", "replica1": "sqlgate.db.replica",
            "proxy": "sqlgate.proxy", "gatekeeper": "sqlgate.gatekeeper"}
# A state ID: the sls area's prefix and short kebab words, or a managed service's
# `<name>-<what>` (services.jinja).
STATE_ID = re.compile(r"^(sqlgate-[a-z]+(-[a-z0-9]+)*|(mariadb|mysql|sqlgate-proxy|"
                      r"sqlgate-gatekeeper)-(unit|program|loaded|restart|running|ready))$")


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
    """``SaltCall`` with the pillar tree of ``cluster.pillar`` for a two-replica cluster."""

    def __init__(self, root: Path, flavour: Flavour, service_venv: Path) -> None:
        super().__init__(root, flavour)
        hosts = plan_hosts(2)
        pillar = build_pillar("render", hosts, ClusterSecrets.generate(), provider="aws",
                              sakila_source=SAKILA_URL)
        pillar["sqlgate"]["addresses"] = {h.name: f"10.0.0.{10 + i}"
                                          for i, h in enumerate(hosts)}
        # A virtualenv path that exists, so that systemd-analyze can check the units' ExecStart.
        pillar["sqlgate"]["lookup"] = {"app": {"venv": str(service_venv)}}
        write_pillar_tree(pillar, hosts, self.pillar_dir)


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
    written = build_pillar("c", plan_hosts(2), ClusterSecrets.generate(), provider="local",
                           sakila_source="/tmp/sakila")
    assert key_paths(written) - key_paths(example) == set()


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


def test_replica_follows_the_primary_with_its_flavours_statement(renderer):
    states = renderer.show_sls("replica1", ROLE_SLS["replica1"])
    assert state_function(states, "sqlgate-db-replication-source") == \
        "sqlgate_replication.following"
    follow = state_args(states, "sqlgate-db-replication-source")
    assert follow["change_source"].startswith(renderer.flavour.change_source)
    assert (follow["source"], follow["port"], follow["user"]) == ("10.0.0.12", 3306, "repl")
    assert follow["password"] not in follow["change_source"]  # a template, not the statement
    if renderer.flavour.name == "mysql":
        # caching_sha2_password over a channel without TLS needs the source's RSA key.
        assert "GET_SOURCE_PUBLIC_KEY=1" in follow["change_source"]
    assert (follow["client"], follow["socket"]) == (renderer.flavour.name,
                                                    "/run/mysqld/mysqld.sock")
    service = "mysql" if renderer.flavour.name == "mysql" else "mariadb"
    assert follow["require"] == [{"cmd": f"{service}-ready"}]
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


def test_proxy_settings_quote_the_password_and_ping_only_as_the_service_group(tmp_path):
    from services.config import ProxyConfig, load_config, read_env_file

    renderer = SaltRenderer(tmp_path, FLAVOURS["mariadb"], tmp_path / "venv")
    password = "it's a $pass#word \\ \"x\""
    proxy_pillar = tmp_path / "pillar" / "sqlgate" / "proxy.sls"
    proxy_pillar.write_text(yaml.safe_dump({"sqlgate": {
        "secrets": {"app_password": password},
        "proxy": {"settings": {"max_transactions": 4, "transaction_idle_timeout": 2.5}}}}))
    states = renderer.show_sls("proxy", "sqlgate.proxy.config")
    env_file = tmp_path / "proxy.env"
    env_file.write_text(state_args(states, "sqlgate-proxy-env")["contents"])
    assert read_env_file(env_file)["PROXY_DB_PASSWORD"] == password
    config = load_config(ProxyConfig, ["--env-file", str(env_file)], environ={})
    assert (config.max_transactions, config.transaction_idle_timeout) == (4, 2.5)
    ping = state_args(states, "sqlgate-proxy-ping-group")
    assert ping["name"] == "net.ipv4.ping_group_range"
    assert ping["value"].count("id -g sqlgate") == 2, ping["value"]


def test_database_settings_follow_the_flavour(renderer):
    settings = state_args(renderer.show_sls("replica1", ROLE_SLS["replica1"]),
                          "sqlgate-db-config")
    if renderer.flavour.name == "mysql":
        assert settings["context"]["options"]["gtid_mode"] == "ON"
        assert settings["context"]["replica_options"]["super_read_only"] == "ON"
    else:
        assert settings["context"]["options"]["gtid_strict_mode"] == "ON"
        assert settings["context"]["replica_options"] == {"read_only": "ON"}


def test_app_user_gets_schema_privileges_only(renderer):
    states = renderer.show_sls("primary", ROLE_SLS["primary"])
    grants = [state_args(states, sid) for sid in states
              if sid.startswith("sqlgate-db-grants-app-")
              and sid != "sqlgate-db-grants-app-monitor"]
    assert {g["database"] for g in grants} == {"sakila.*", "sqlgate.*"}
    assert all("ALL" not in g["grant"] and g["database"] != "*.*" for g in grants)
    assert all(g["user"] == "app" for g in grants)


def test_app_user_may_read_replica_status_with_the_flavours_privilege(renderer):
    """The Proxy's monitor runs SHOW REPLICA STATUS: SLAVE MONITOR on MariaDB 10.5+,
    REPLICATION CLIENT on MySQL; nothing else on *.*."""
    states = renderer.show_sls("primary", ROLE_SLS["primary"])
    grant = state_args(states, "sqlgate-db-grants-app-monitor")
    expected = {"mariadb": "SLAVE MONITOR", "mysql": "REPLICATION CLIENT"}[renderer.flavour.name]
    assert (grant["grant"], grant["database"], grant["user"]) == (expected, "*.*", "app")


def test_the_users_and_their_grants_stay_the_same(renderer):
    states = renderer.show_sls("primary", ROLE_SLS["primary"])
    users = {(state_args(states, sid)["name"], state_args(states, sid)["host"])
             for sid in states if state_function(states, sid) == "mysql_user.present"}
    assert users == {("repl", "%"), ("app", "%"), ("sb", "localhost")}
    repl = state_args(states, "sqlgate-db-grants-repl")
    assert (repl["grant"], repl["database"], repl["user"]) == ("REPLICATION SLAVE", "*.*", "repl")
    sb = state_args(states, "sqlgate-db-grants-sb")
    assert (sb["grant"], sb["database"], sb["host"]) == ("ALL PRIVILEGES", "sbtest.*", "localhost")
    schemas = {state_args(states, sid)["name"] for sid in states
               if state_function(states, sid) == "mysql_database.present"}
    assert schemas == {"sakila", "sqlgate", "sbtest"}


def test_the_heartbeat_table_is_created_once_from_the_shared_file(renderer):
    states = renderer.show_sls("primary", ROLE_SLS["primary"])
    table = state_args(states, "sqlgate-db-heartbeat-table")
    shared = (SALT_TREE / "sqlgate" / "files" / "heartbeat.sql").read_text()
    assert table["stdin"].strip() == shared.strip()  # the loopback stack runs the same file
    assert table["name"].endswith(" sqlgate")
    (guard,) = table["unless"]
    assert (guard["fun"], guard["schema"], guard["table"]) == \
        ("sqlgate_db.table_exists", "sqlgate", "heartbeat")


def test_sakila_is_loaded_once(renderer):
    states = renderer.show_sls("primary", ROLE_SLS["primary"])
    load = state_args(states, "sqlgate-db-sakila-loaded")
    (guard,) = load["unless"]
    assert (guard["fun"], guard["table"]) == ("sqlgate_db.has_rows", "sakila.store")
    archive = state_args(states, "sqlgate-db-sakila-archive")
    assert archive["source"] == SAKILA_URL
    assert archive["require_in"] == [{"cmd": "sqlgate-db-sakila-loaded"}]


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


def test_services_restart_when_their_settings_or_code_change(renderer):
    for minion_id, watched in (("proxy", {"sqlgate-proxy-env", "sqlgate-app-installed"}),
                               ("gatekeeper", {"sqlgate-gatekeeper-env", "sqlgate-gatekeeper-key",
                                               "sqlgate-app-installed"})):
        states = renderer.show_sls(minion_id, ROLE_SLS[minion_id])
        name = f"sqlgate-{minion_id}"
        if renderer.flavour.service_manager == "systemd":
            watch = state_args(states, f"{name}-running")["watch"]
            watched = watched | {f"{name}-unit"}
        else:
            watch = state_args(states, f"{name}-restart")["onchanges"]
        assert {next(iter(item.values())) for item in watch} == watched


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
    ]
    everyone = "primary,replica1,replica2,proxy,gatekeeper"
    sync = state_args(states, "sqlgate-orch-sync")
    assert (sync["name"], sync["tgt"], sync["tgt_type"]) == ("saltutil.sync_all", everyone,
                                                             "list")
    assert state_args(states, "sqlgate-orch-pillar")["require"] == [{"salt": "sqlgate-orch-sync"}]
    assert state_args(states, "sqlgate-orch-mine")["require"] == [{"salt": "sqlgate-orch-pillar"}]
    replicas = state_args(states, "sqlgate-orch-replica")
    assert replicas["tgt"] == "replica1,replica2" and replicas["highstate"] is True
    assert replicas["require"] == [{"salt": "sqlgate-orch-primary"}]
