"""The local provider's pure parts: pillar split, firewall rules, names, status fields."""

from __future__ import annotations

import argparse
import json
import stat
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

import bootstrap
from cluster.access import replica_fields
from cluster.errors import ClusterError
from cluster.pillar import SECRETS_OF_ROLE, build_pillar, write_pillar_tree
from cluster.providers.local.cluster import LocalCluster
from cluster.providers.local.firewall import ruleset
from cluster.secrets import ClusterSecrets, load_or_create
from cluster.state import PROJECT_ROOT, write_private
from cluster.topology import plan_hosts


def test_pillar_gives_each_host_only_its_roles_secrets(tmp_path):
    hosts = plan_hosts(2)
    secrets = ClusterSecrets.generate()
    pillar = build_pillar("c", hosts, secrets, provider="local", sakila_source="/data/sakila")
    write_pillar_tree(pillar, hosts, tmp_path)

    top = yaml.safe_load((tmp_path / "top.sls").read_text())["base"]
    assert top["*"] == ["sqlgate.common"]
    assert top["replica2"] == ["sqlgate.replica"] and top["gatekeeper"] == ["sqlgate.gatekeeper"]
    common = (tmp_path / "sqlgate" / "common.sls").read_text()
    for value in (secrets.api_key, secrets.app_password, secrets.repl_password):
        assert value not in common
    gatekeeper = yaml.safe_load((tmp_path / "sqlgate" / "gatekeeper.sls").read_text())
    assert gatekeeper == {"sqlgate": {"secrets": {"api_key": secrets.api_key}}}
    for role, names in SECRETS_OF_ROLE.items():
        granted = yaml.safe_load((tmp_path / "sqlgate" / f"{role}.sls").read_text())
        assert set(granted["sqlgate"]["secrets"]) == set(names)
    for path in tmp_path.rglob("*.sls"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_pillar_numbers_database_servers_and_names_no_address():
    pillar = build_pillar("c", plan_hosts(3), ClusterSecrets.generate(), provider="aws",
                          sakila_source="https://example.invalid/sakila.tgz")
    hosts = pillar["sqlgate"]["hosts"]
    assert [hosts[n].get("server_id") for n in ("primary", "replica1", "replica2", "replica3")] \
        == [1, 2, 3, 4]
    assert "server_id" not in hosts["proxy"]
    assert pillar["sqlgate"]["app"]["wheelhouse"] == ""
    assert "addresses" not in pillar["sqlgate"]


ADDRESSES = {"saltmaster": ["10.9.0.2"], "gatekeeper": ["10.9.0.3"], "proxy": ["10.9.0.4"],
             "database": ["10.9.0.5", "10.9.0.6"]}


def test_database_firewall_accepts_mysql_from_proxy_and_databases_only():
    rules = ruleset("database", ADDRESSES, "10.9.0.1")
    assert "policy drop" in rules
    mysql = [line for line in rules.splitlines() if "dport 3306" in line]
    assert {line.split("}")[0].split("{")[1].strip() for line in mysql} \
        == {"10.9.0.4", "10.9.0.5, 10.9.0.6"}
    assert "10.9.0.3" not in rules  # the Gatekeeper reaches no database


def test_only_the_gatekeeper_accepts_from_anywhere():
    assert "\n        tcp dport 80 accept" in ruleset("gatekeeper", ADDRESSES, "10.9.0.1")
    proxy = ruleset("proxy", ADDRESSES, "10.9.0.1")
    assert "ip saddr { 10.9.0.3 } tcp dport 5000 accept" in proxy
    salt = ruleset("saltmaster", ADDRESSES, "10.9.0.1")
    assert "tcp dport 4505-4506" in salt and "10.9.0.1, " not in salt


def _args(**overrides) -> argparse.Namespace:
    values = {"cluster_name": "sqlgate", "replicas": 2, "subnet": "10.213.0.0/24", **overrides}
    return argparse.Namespace(**values)


def test_cluster_plan_addresses_and_interface_names():
    cluster = LocalCluster.plan(_args(cluster_name="a-rather-long-cluster-name", replicas=3))
    assert [h.name for h in cluster.hosts] == ["saltmaster", "gatekeeper", "proxy", "primary",
                                               "replica1", "replica2", "replica3"]
    assert cluster.machine_address == "10.213.0.1"
    assert cluster.host("gatekeeper").address == "10.213.0.3"
    assert all(len(name) <= 15 for name in [cluster.bridge, *(h.veth for h in cluster.hosts)])
    assert cluster.host("primary").namespace == "a-rather-long-cluster-name-primary"


def test_cluster_plan_refuses_a_bad_subnet():
    with pytest.raises(ClusterError):
        LocalCluster.plan(_args(subnet="10.213.0.0/30"))
    with pytest.raises(ClusterError):
        LocalCluster.plan(_args(subnet="not-a-subnet"))


def test_cluster_plan_refuses_zero_replicas_in_one_line(monkeypatch, capsys):
    import cluster.providers.local.cluster as local

    with pytest.raises(ClusterError, match="--replicas 0"):
        LocalCluster.plan(_args(replicas=0))
    monkeypatch.setattr(local.os, "geteuid", lambda: 0)
    monkeypatch.setattr(local.shutil, "which", lambda *a, **k: "/usr/bin/found")
    assert bootstrap.main(["up", "--provider", "local", "--replicas", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "at least one replica" in captured.err


def test_private_files_are_0600_and_replaced_whole(tmp_path):
    path = tmp_path / "private" / "secret"
    write_private(path, "one")
    write_private(path, "two")
    assert path.read_text() == "two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["secret"]  # no temporary file left


def test_secrets_files_with_retired_keys_still_load(tmp_path):
    path = tmp_path / "secrets.json"
    created = load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text(json.dumps({**asdict(created), "root_password": "retired"}))
    assert load_or_create(path) == created


def test_replica_fields_use_mysql_8_names_for_both_flavours():
    mariadb = {"Slave_IO_Running": "Yes", "Slave_SQL_Running": "No", "Seconds_Behind_Master": 0}
    assert replica_fields(mariadb) == {"Replica_IO_Running": "Yes", "Replica_SQL_Running": "No",
                                       "Seconds_Behind_Source": "0"}
    assert replica_fields({})["Replica_IO_Running"] == "?"


@pytest.mark.parametrize("command", ["up", "status", "down"])
def test_without_root_each_command_is_a_one_line_error(command, monkeypatch, capsys):
    import cluster.providers.local.cluster as local

    monkeypatch.setattr(local.os, "geteuid", lambda: 1000)
    assert bootstrap.main([command, "--provider", "local"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "needs root" in captured.err


def test_cluster_directory_hidden_inside_the_hosts_is_refused(monkeypatch):
    monkeypatch.setenv("SQLGATE_CLUSTER_DIR", "/var/log/somewhere")
    with pytest.raises(ClusterError, match="under /var/log"):
        LocalCluster.plan(_args())


def test_cluster_directory_under_tmp_is_fine(monkeypatch):
    """Each host has its own /tmp but keeps seeing the machine's paths it reads there."""
    monkeypatch.setenv("SQLGATE_CLUSTER_DIR", "/tmp/somewhere")
    assert LocalCluster.plan(_args()).state_dir == Path("/tmp/somewhere/local/sqlgate")


def test_the_pillar_carries_the_role_table_and_the_ports_of_the_firewall():
    """top.sls, the orchestration and the services read roles and ports from the pillar, made
    from cluster/topology.py like the firewall rules, so no role can lack its states or
    secrets, and no service can listen where the firewall does not let traffic in."""
    from cluster.topology import INGRESS_RULES, MINION_ROLES, ROLES
    pillar = build_pillar("c", plan_hosts(2), ClusterSecrets.generate(), provider="local",
                          sakila_source="/data/sakila")["sqlgate"]
    assert pillar["role_order"] == ["primary", "replica", "proxy", "gatekeeper"]
    for role in MINION_ROLES:
        assert pillar["roles"][role] == {"states": ROLES[role].states}
        assert ROLES[role].secrets and ROLES[role].service
    assert set(SECRETS_OF_ROLE) == set(MINION_ROLES)
    opened = {(rule.group, rule.ports[0]) for rule in INGRESS_RULES if rule.ports}
    assert {("gatekeeper", pillar["ports"]["gatekeeper"]), ("proxy", pillar["ports"]["proxy"]),
            ("database", pillar["ports"]["mysql"])} <= opened
    defaults = yaml.safe_load((PROJECT_ROOT / "salt/sqlgate/defaults.yaml").read_text())
    assert defaults["sqlgate"]["ports"] == pillar["ports"]
