"""Every SLS of the Salt tree renders, for both database flavours and every role.

Rendering goes through Salt itself (``salt-call --local state.show_sls``) with the OS grains
overridden: Ubuntu booted by systemd (MySQL 8.0, systemd units) and Debian without systemd
(MariaDB 10.11, supervisor). The pillar is the one ``cluster.pillar`` writes, plus fixed
addresses standing in for the Salt mine (no master here).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jinja2
import pytest
import yaml

from cluster.pillar import build_pillar, write_pillar_tree
from cluster.secrets import ClusterSecrets
from cluster.state import PROJECT_ROOT
from cluster.topology import plan_hosts

SALT_TREE = PROJECT_ROOT / "salt"
SALT_CALL = Path(sys.executable).parent / "salt-call"
SAKILA_URL = "https://downloads.mysql.com/docs/sakila-db.tar.gz"


@dataclass(frozen=True)
class Flavour:
    name: str
    grains: dict
    service_manager: str
    change_source: str


FLAVOURS = {
    "mysql": Flavour("mysql", {"os": "Ubuntu", "os_family": "Debian", "init": "systemd"},
                     "systemd", "CHANGE REPLICATION SOURCE TO"),
    "mariadb": Flavour("mariadb", {"os": "Debian", "os_family": "Debian", "init": "unknown"},
                       "supervisor", "CHANGE MASTER TO"),
}

# Which minion each SLS is rendered as: the role that applies it.
HOST_OF_SLS = {
    "sqlgate.db": "manager",
    "sqlgate.db.package": "manager",
    "sqlgate.db.config": "manager",
    "sqlgate.db.service": "manager",
    "sqlgate.db.users": "manager",
    "sqlgate.db.sakila": "manager",
    "sqlgate.db.heartbeat": "manager",
    "sqlgate.db.primary": "manager",
    "sqlgate.db.replica": "worker1",
    "sqlgate.db.replication": "worker1",
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
ROLE_SLS = {"manager": "sqlgate.db.primary", "worker1": "sqlgate.db.replica",
            "proxy": "sqlgate.proxy", "gatekeeper": "sqlgate.gatekeeper"}


def sls_names() -> list[str]:
    """Every SLS under salt/sqlgate, by its dotted name."""
    names = []
    for path in sorted((SALT_TREE / "sqlgate").rglob("*.sls")):
        parts = list(path.relative_to(SALT_TREE).with_suffix("").parts)
        if parts[-1] == "init":
            parts.pop()
        names.append(".".join(parts))
    return names


class SaltRenderer:
    """A masterless minion configuration per (flavour, minion id) in a temporary directory."""

    def __init__(self, root: Path, flavour: Flavour, service_venv: Path) -> None:
        self.root, self.flavour = root, flavour
        hosts = plan_hosts(2)
        pillar = build_pillar("render", hosts, ClusterSecrets.generate(), provider="aws",
                              sakila_source=SAKILA_URL)
        pillar["sqlgate"]["addresses"] = {h.name: f"10.0.0.{10 + i}"
                                          for i, h in enumerate(hosts)}
        # A virtualenv path that exists, so that systemd-analyze can check the units' ExecStart.
        pillar["sqlgate"]["lookup"] = {"app": {"venv": str(service_venv)}}
        write_pillar_tree(pillar, hosts, root / "pillar")

    def show_sls(self, minion_id: str, sls: str) -> dict:
        config_dir = self.root / minion_id
        config_dir.mkdir(exist_ok=True)
        (config_dir / "minion").write_text(yaml.safe_dump({
            "id": minion_id,
            "file_client": "local",
            "root_dir": str(config_dir / "root"),
            "file_roots": {"base": [str(SALT_TREE)]},
            "pillar_roots": {"base": [str(self.root / "pillar")]},
            "grains": self.flavour.grains,
            "log_level": "quiet",
        }))
        result = subprocess.run([str(SALT_CALL), "--local", "-c", str(config_dir),
                                 "state.show_sls", sls, "--out=json"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        states = json.loads(result.stdout)["local"]
        assert isinstance(states, dict), f"{sls} as {minion_id} did not render: {states}"
        return states


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


def test_every_sls_has_a_host_to_render_it_as():
    assert set(sls_names()) == set(HOST_OF_SLS)


@pytest.mark.parametrize("sls", sorted(HOST_OF_SLS))
def test_sls_renders(renderer, sls):
    states = renderer.show_sls(HOST_OF_SLS[sls], sls)
    assert states, f"{sls} rendered no state"


def state_args(states: dict, state_id: str) -> dict:
    """The arguments of one state of ``show_sls`` output, as one dict."""
    body = states[state_id]
    module = next(key for key in body if not key.startswith("__"))
    return {k: v for item in body[module] if isinstance(item, dict) for k, v in item.items()}


def test_replica_uses_its_flavours_replication_sql(renderer):
    states = renderer.show_sls("worker1", ROLE_SLS["worker1"])
    change = state_args(states, "replica follows the primary manager")
    assert renderer.flavour.change_source in change["stdin"]
    assert "10.0.0.12" in change["stdin"]  # the primary's address (from the stand-in mine)
    assert change["stdin"] not in change["name"], "the password must not be on a command line"
    if renderer.flavour.name == "mysql":
        # caching_sha2_password over a channel without TLS needs the source's RSA key.
        assert "GET_SOURCE_PUBLIC_KEY=1" in change["stdin"]


def run_unless(unless: str, client: str, status: str, tmp_path: Path) -> bool:
    """Whether a state's ``unless`` passes (skips the state) against a stub client that
    prints ``status`` as SHOW REPLICA STATUS\\G."""
    stub = tmp_path / "bin" / client
    stub.parent.mkdir(exist_ok=True)
    (tmp_path / "status").write_text(status)
    stub.write_text(f"#!/bin/sh\ncat {tmp_path / 'status'}\n")
    stub.chmod(0o755)
    done = subprocess.run(["sh", "-c", unless], env={"PATH": f"{stub.parent}:/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=30)
    return done.returncode == 0


def replica_status(flavour: str, **values: str) -> str:
    """SHOW REPLICA STATUS\\G lines (right-aligned names) for the flavour's field names."""
    fields = yaml.safe_load((SALT_TREE / "sqlgate" / "flavours.yaml").read_text())[flavour][
        "status_fields"]
    lines = ["*************************** 1. row ***************************"]
    lines += [f"{fields[key]:>30}: {value}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def test_replication_is_reapplied_when_the_source_changes(renderer, tmp_path):
    states = renderer.show_sls("worker1", ROLE_SLS["worker1"])
    unless = state_args(states, "replica follows the primary manager")["unless"]
    client = unless.split('"$(', 1)[1].split()[0]
    name = renderer.flavour.name
    follows = {"source_host": "10.0.0.12", "source_port": "3306", "source_user": "repl"}
    assert run_unless(unless, client, replica_status(name, **follows), tmp_path)
    for key, other in (("source_host", "10.0.0.120"), ("source_port", "3307"),
                       ("source_user", "replx")):
        changed = replica_status(name, **{**follows, key: other})
        assert not run_unless(unless, client, changed, tmp_path), key
    assert not run_unless(unless, client, "", tmp_path)  # not a replica yet


def test_replica_threads_are_left_alone_while_connecting(renderer, tmp_path):
    states = renderer.show_sls("worker1", ROLE_SLS["worker1"])
    unless = state_args(states, "replica threads are running")["unless"]
    client = unless.split('"$(', 1)[1].split()[0]
    name = renderer.flavour.name
    for io, sql, running in (("Yes", "Yes", True), ("Connecting", "Yes", True),
                             ("No", "Yes", False), ("Yes", "No", False)):
        status = replica_status(name, io_running=io, sql_running=sql)
        assert run_unless(unless, client, status, tmp_path) is running, (io, sql)


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
    env_file.write_text(state_args(states, "proxy settings are written")["contents"])
    assert read_env_file(env_file)["PROXY_DB_PASSWORD"] == password
    config = load_config(ProxyConfig, ["--env-file", str(env_file)], environ={})
    assert (config.max_transactions, config.transaction_idle_timeout) == (4, 2.5)
    ping = state_args(states, "the service's group may ping")
    assert ping["name"] == "net.ipv4.ping_group_range"
    assert ping["value"].count("id -g sqlgate") == 2, ping["value"]


def test_database_settings_follow_the_flavour(renderer):
    settings = state_args(renderer.show_sls("worker1", ROLE_SLS["worker1"]),
                          "database server is configured for GTID replication")
    if renderer.flavour.name == "mysql":
        assert settings["context"]["options"]["gtid_mode"] == "ON"
        assert settings["context"]["replica_options"]["super_read_only"] == "ON"
    else:
        assert settings["context"]["options"]["gtid_strict_mode"] == "ON"
        assert settings["context"]["replica_options"] == {"read_only": "ON"}


def test_app_user_gets_schema_privileges_only(renderer):
    states = renderer.show_sls("manager", ROLE_SLS["manager"])
    grants = [state_args(states, sid) for sid in states
              if sid.startswith("application user app works in")]
    assert {g["database"] for g in grants} == {"sakila.*", "sqlgate.*"}
    assert all("ALL" not in g["grant"] and g["database"] != "*.*" for g in grants)


def test_app_user_may_read_replica_status_with_the_flavours_privilege(renderer):
    """The Proxy's monitor runs SHOW REPLICA STATUS: SLAVE MONITOR on MariaDB 10.5+,
    REPLICATION CLIENT on MySQL; nothing else on *.*."""
    states = renderer.show_sls("manager", ROLE_SLS["manager"])
    grant = state_args(states, "application user app may watch replication")
    expected = {"mariadb": "SLAVE MONITOR", "mysql": "REPLICATION CLIENT"}[renderer.flavour.name]
    assert (grant["grant"], grant["database"]) == (expected, "*.*")


def test_the_heartbeat_table_is_created_once_from_the_shared_file(renderer):
    states = renderer.show_sls("manager", ROLE_SLS["manager"])
    table = state_args(states, "heartbeat table exists")
    shared = (SALT_TREE / "sqlgate" / "files" / "heartbeat.sql").read_text()
    assert table["stdin"].strip() == shared.strip()  # the loopback stack runs the same file
    assert table["name"].endswith(" sqlgate") and "information_schema.tables" in table["unless"]


def test_services_use_the_hosts_service_manager(renderer):
    states = renderer.show_sls("proxy", ROLE_SLS["proxy"])
    if renderer.flavour.service_manager == "systemd":
        assert "sqlgate-proxy has a systemd unit" in states
        assert "supervisord is running" not in states
    else:
        assert "sqlgate-proxy has a supervisor program" in states
        assert "sqlgate-proxy has a systemd unit" not in states


@pytest.mark.parametrize("minion_id", ["proxy", "gatekeeper"])
def test_systemd_units_pass_systemd_analyze_verify(minion_id, tmp_path):
    renderer = SaltRenderer(tmp_path, FLAVOURS["mysql"], service_venv(tmp_path))
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    states = renderer.show_sls(minion_id, ROLE_SLS[minion_id])
    name = f"sqlgate-{minion_id}"
    unit = state_args(states, f"{name} has a systemd unit")
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
        "every minion has fresh pillar data",
        "every minion publishes its private address to the mine",
        "the primary is configured",
        "the replicas follow the primary",
        "the proxy is serving",
        "the gatekeeper is serving",
    ]
    assert state_args(states, "the replicas follow the primary")["tgt"] == "worker1,worker2"
