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
from cluster.pillar import SECRETS_OF_ROLE, build_pillar, checked_api_keys, write_pillar_tree
from cluster.providers.local.cluster import LocalCluster
from cluster.providers.local.firewall import ruleset
from cluster.secrets import ClusterSecrets, load_or_create
from cluster.state import PROJECT_ROOT, write_private
from cluster.topology import plan_hosts
from tests.salt.pillars import api_keys, cluster_tls


def test_pillar_gives_each_host_only_its_roles_secrets_and_its_own_key(tmp_path):
    hosts = plan_hosts(2)
    secrets = ClusterSecrets.generate()
    tls = cluster_tls(hosts, public=True)
    pillar = build_pillar("c", hosts, secrets, provider="local", sakila_source="/data/sakila",
                          tls=tls, api_keys=api_keys())
    write_pillar_tree(pillar, hosts, tmp_path)

    def read(name: str) -> dict:
        return yaml.safe_load((tmp_path / "sqlgate" / f"{name}.sls").read_text())

    top = yaml.safe_load((tmp_path / "top.sls").read_text())["base"]
    assert top["*"] == ["sqlgate.common", "sqlgate.failover"]
    assert read("failover") == {}  # made empty once; the failover runner writes it
    assert top["replica2"] == ["sqlgate.replica", "sqlgate.host-replica2"]
    assert top["gatekeeper"] == ["sqlgate.gatekeeper", "sqlgate.host-gatekeeper"]
    common = read("common")
    assert common["sqlgate"]["tls"] == {"ca": tls.ca}  # the CA's certificate, public
    assert "secrets" not in common["sqlgate"] and "api_keys" not in common["sqlgate"]
    # The Gatekeeper holds the keys' hashes, the public certificate, and no database password:
    # only the rate store's.
    assert read("gatekeeper") == {"sqlgate": {
        "api_keys": api_keys(),
        "secrets": {"ratestore_password": secrets.ratestore_password},
        "tls": {"gatekeeper_public": {"cert": tls.public.cert, "key": tls.public.key}}}}
    for role, names in SECRETS_OF_ROLE.items():
        assert set(read(role)["sqlgate"].get("secrets", {})) == set(names)
    assert set(SECRETS_OF_ROLE["proxy"]) == {"app_read_password", "app_write_password",
                                             "app_admin_password", "monitor_password"}
    assert set(SECRETS_OF_ROLE["primary"]) == set(SECRETS_OF_ROLE["proxy"]) | {
        "repl_password", "sb_password", "exporter_password"}
    # Any database host may become the primary: they all hold the primary's secrets.
    assert SECRETS_OF_ROLE["replica"] == SECRETS_OF_ROLE["primary"]
    assert SECRETS_OF_ROLE["monitor"] == SECRETS_OF_ROLE["gatekeeper"] == ("ratestore_password",)
    # Each private key is in its own host's file, and in no other file.
    texts = {path.name: path.read_text() for path in tmp_path.rglob("*.sls")}
    for host in hosts:
        assert read(f"host-{host.name}") == {"sqlgate": {"tls": {
            "cert": tls.hosts[host.name].cert, "key": tls.hosts[host.name].key}}}
        key_line = tls.hosts[host.name].key.splitlines()[1]
        assert [name for name, text in texts.items() if key_line in text] == \
            [f"host-{host.name}.sls"]
    # The admin key's secret is in no pillar file; only hashes are.
    assert not any(secrets.api_key in text for text in texts.values())
    # A second write keeps what the failover runner wrote.
    (tmp_path / "sqlgate" / "failover.sls").write_text("sqlgate: {db: {primary: replica1}}\n")
    write_pillar_tree(pillar, hosts, tmp_path)
    assert read("failover") == {"sqlgate": {"db": {"primary": "replica1"}}}
    for path in tmp_path.rglob("*.sls"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    # A host that leaves the plan leaves no private key behind.
    fewer = plan_hosts(1)
    write_pillar_tree(build_pillar("c", fewer, secrets, provider="local",
                                   sakila_source="/data/sakila", tls=tls, api_keys=[]),
                      fewer, tmp_path)
    assert not (tmp_path / "sqlgate" / "host-replica2.sls").exists()
    assert (tmp_path / "sqlgate" / "host-replica1.sls").exists()


def test_a_minion_sees_its_files_merged():
    hosts = plan_hosts(1)
    tls = cluster_tls(hosts)
    secrets = ClusterSecrets.generate()
    pillar = build_pillar("c", hosts, secrets, provider="local",
                          sakila_source="/data/sakila", tls=tls, api_keys=api_keys())
    seen = pillar.of("gatekeeper")["sqlgate"]
    assert seen["tls"] == {"ca": tls.ca, "cert": tls.hosts["gatekeeper"].cert,
                           "key": tls.hosts["gatekeeper"].key}
    assert seen["api_keys"] == api_keys()
    assert seen["secrets"] == {"ratestore_password": secrets.ratestore_password}
    proxy = pillar.of("proxy")["sqlgate"]
    assert "api_keys" not in proxy and proxy["tls"]["key"] == tls.hosts["proxy"].key


def test_pillar_needs_every_minions_certificate():
    hosts = plan_hosts(1)
    tls = cluster_tls([host for host in hosts if host.name != "proxy"])
    with pytest.raises(ValueError, match="no TLS certificate for proxy"):
        build_pillar("c", hosts, ClusterSecrets.generate(), provider="local",
                     sakila_source="/data/sakila", tls=tls, api_keys=[])


@pytest.mark.parametrize(("change", "message"), [
    ({"secret": "s3cret"}, "fields must be exactly"),
    ({"scope": "root"}, "scope must be one of read, write, admin"),
    ({"sha256": "s3cret"}, "64 lower-case hex"),
    ({"rate": -1.0}, "cannot be negative"),
    ({"name": ""}, "empty or given twice"),
])
def test_the_key_set_is_refused_unless_it_holds_hashes_only(change, message):
    hosts = plan_hosts(1)
    entry = {**api_keys()[1], **change}
    with pytest.raises(ValueError, match=message):
        build_pillar("c", hosts, ClusterSecrets.generate(), provider="local",
                     sakila_source="/data/sakila", tls=cluster_tls(hosts), api_keys=[entry])
    with pytest.raises(ValueError, match="given twice"):
        checked_api_keys([api_keys()[0], api_keys()[0]])


def test_pillar_numbers_database_servers_and_names_no_address():
    hosts = plan_hosts(3)
    pillar = build_pillar("c", hosts, ClusterSecrets.generate(), provider="aws",
                          sakila_source="https://example.invalid/sakila.tgz",
                          tls=cluster_tls(hosts), api_keys=[]).common
    hosts = pillar["sqlgate"]["hosts"]
    assert [hosts[n].get("server_id") for n in ("primary", "replica1", "replica2", "replica3")] \
        == [1, 2, 3, 4]
    assert "server_id" not in hosts["proxy"]
    assert pillar["sqlgate"]["app"]["wheelhouse"] == ""
    assert "addresses" not in pillar["sqlgate"]


ADDRESSES = {"saltmaster": ["10.9.0.2"], "gatekeeper": ["10.9.0.3"], "proxy": ["10.9.0.4"],
             "database": ["10.9.0.5", "10.9.0.6"], "balancer": ["10.9.0.7"]}


def test_database_firewall_accepts_mysql_from_proxy_and_databases_only():
    rules = ruleset("database", ADDRESSES, "10.9.0.1")
    assert "policy drop" in rules
    mysql = [line for line in rules.splitlines() if "dport 3306" in line]
    assert {line.split("}")[0].split("{")[1].strip() for line in mysql} \
        == {"10.9.0.4", "10.9.0.5, 10.9.0.6"}
    assert "10.9.0.3" not in rules  # the Gatekeeper reaches no database


def test_only_the_balancer_accepts_from_anywhere_and_the_gatekeepers_from_it():
    balancer = ruleset("balancer", ADDRESSES, "10.9.0.1")
    assert "\n        tcp dport 443 accept" in balancer  # HTTPS
    assert "\n        tcp dport 80 accept" in balancer  # the redirect to it
    gatekeeper = ruleset("gatekeeper", ADDRESSES, "10.9.0.1")
    assert "ip saddr { 10.9.0.7 } tcp dport 443 accept" in gatekeeper
    assert "ip saddr { 10.9.0.7 } tcp dport 80 accept" in gatekeeper
    for group in ("gatekeeper", "proxy", "database", "saltmaster"):
        assert "\n        tcp dport" not in ruleset(group, ADDRESSES, "10.9.0.1"), group
    proxy = ruleset("proxy", ADDRESSES, "10.9.0.1")
    assert "ip saddr { 10.9.0.3 } tcp dport 5000 accept" in proxy
    assert [line for line in proxy.splitlines() if "dport 5000" in line] == [
        line for line in proxy.splitlines() if "ip saddr { 10.9.0.3 } tcp dport 5000" in line]
    salt = ruleset("saltmaster", ADDRESSES, "10.9.0.1")
    assert "tcp dport 4505-4506" in salt and "10.9.0.1, " not in salt


MONITORED = {**ADDRESSES, "monitor": ["10.9.0.7"]}


def test_only_the_monitor_scrapes_and_only_the_operator_reaches_prometheus():
    for group, ports in (("gatekeeper", (9180, 9100)), ("proxy", (9181, 9100)),
                         ("database", (9104, 9100)), ("monitor", (9100,))):
        rules = ruleset(group, MONITORED, "10.9.0.1")
        for port in ports:
            lines = [line for line in rules.splitlines() if f"dport {port} " in line]
            assert lines and all("ip saddr { 10.9.0.7 }" in line for line in lines), (group, port)
    monitor = ruleset("monitor", MONITORED, "10.9.0.1")
    assert "ip saddr { 10.9.0.1 } tcp dport 9090 accept" in monitor
    assert [line for line in monitor.splitlines() if "dport 9090" in line] == [
        line for line in monitor.splitlines() if "ip saddr { 10.9.0.1 } tcp dport 9090" in line]
    # The Salt master takes the monitor's minion too.
    assert "10.9.0.7" in next(line for line in ruleset("saltmaster", MONITORED, "10.9.0.1")
                               .splitlines() if "4505-4506" in line)


def test_without_a_monitor_host_no_rule_opens_a_monitoring_port():
    for group in ("gatekeeper", "proxy", "database", "saltmaster"):
        rules = ruleset(group, ADDRESSES, "10.9.0.1")
        assert not any(f"dport {port} " in rules for port in (9090, 9100, 9104, 9180, 9181))


def test_ingress_rules_among_the_groups_of_a_plan():
    from cluster.topology import groups_of, ingress_rules

    bare = groups_of(plan_hosts(2, monitor=False))
    assert "monitor" not in bare and "saltmaster" in bare
    rules = ingress_rules(bare)
    assert all(rule.group != "monitor" and rule.source != "monitor" for rule in rules)
    assert {rule.ports for rule in ingress_rules(groups_of(plan_hosts(2)))} - \
        {rule.ports for rule in rules} == {(9180, 9180), (9181, 9181), (9100, 9100),
                                           (9104, 9104), (9090, 9090), (6379, 6379)}


def test_only_the_gatekeepers_reach_the_rate_store_on_the_monitor():
    lines = [line for line in ruleset("monitor", MONITORED, "10.9.0.1").splitlines()
             if "dport 6379 " in line]
    gatekeeper = MONITORED["gatekeeper"]
    assert lines and all(f"ip saddr {{ {gatekeeper[0]} }}" in line for line in lines), lines


def _args(**overrides) -> argparse.Namespace:
    values = {"cluster_name": "sqlgate", "replicas": 2, "subnet": "10.213.0.0/24", **overrides}
    return argparse.Namespace(**values)


def test_cluster_plan_addresses_and_interface_names():
    cluster = LocalCluster.plan(_args(cluster_name="a-rather-long-cluster-name", replicas=3))
    assert [h.name for h in cluster.hosts] == ["saltmaster", "balancer", "gatekeeper", "proxy",
                                               "primary", "replica1", "replica2", "replica3",
                                               "monitor"]
    assert cluster.monitor_url == "https://10.213.0.10:9090/"
    bare = LocalCluster.plan(_args(no_monitor=True))
    assert bare.monitor is None and bare.monitor_url is None
    assert "monitor" not in [h.name for h in bare.hosts]
    assert cluster.machine_address == "10.213.0.1"
    assert cluster.host("gatekeeper").address == "10.213.0.4"
    assert cluster.gatekeeper_address == cluster.host("balancer").address == "10.213.0.3"
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


def test_a_secrets_file_of_an_older_version_keeps_its_secrets_and_gains_the_new_ones(tmp_path):
    path = tmp_path / "secrets.json"
    old = {"api_key": "old-key", "repl_password": "old-repl", "app_password": "old-app",
           "sb_password": "old-sb"}
    write_private(path, json.dumps(old))
    loaded = load_or_create(path)
    assert (loaded.api_key, loaded.repl_password, loaded.sb_password) == \
        ("old-key", "old-repl", "old-sb")
    new = {loaded.app_read_password, loaded.app_write_password, loaded.app_admin_password,
           loaded.monitor_password}
    assert len(new) == 4 and all(len(secret) >= 32 for secret in new)
    assert load_or_create(path) == loaded  # written back: the next `up` gets the same ones
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


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
    hosts = plan_hosts(2)
    pillar = build_pillar("c", hosts, ClusterSecrets.generate(), provider="local",
                          sakila_source="/data/sakila", tls=cluster_tls(hosts),
                          api_keys=[]).common["sqlgate"]
    assert pillar["role_order"] == ["primary", "replica", "proxy", "gatekeeper", "balancer",
                                    "monitor"]
    for role in MINION_ROLES:
        assert pillar["roles"][role] == {"states": ROLES[role].states}
        assert ROLES[role].service
        # Every role but the balancer (TLS passes through it) has passwords: the Gatekeeper
        # and the monitor only the rate store's.
        assert bool(ROLES[role].secrets) is (role != "balancer"), role
    assert set(SECRETS_OF_ROLE) == set(MINION_ROLES)
    opened = {(rule.group, rule.ports[0]) for rule in INGRESS_RULES if rule.ports}
    ports = pillar["ports"]
    assert ports["gatekeeper"] == 443 and ports["redirect"] == 80
    assert {("gatekeeper", ports["gatekeeper"]), ("gatekeeper", ports["redirect"]),
            ("balancer", ports["gatekeeper"]), ("balancer", ports["redirect"]),
            ("proxy", ports["proxy"]), ("database", ports["mysql"]),
            ("gatekeeper", ports["gatekeeper_metrics"]), ("proxy", ports["proxy_metrics"]),
            ("database", ports["mysqld_exporter"]), ("monitor", ports["prometheus"])} <= opened
    assert {group for group, port in opened if port == ports["node_exporter"]} == \
        {"gatekeeper", "proxy", "database", "balancer", "monitor"}
    defaults = yaml.safe_load((PROJECT_ROOT / "salt/sqlgate/defaults.yaml").read_text())
    assert defaults["sqlgate"]["ports"] == pillar["ports"]


def test_a_cluster_without_its_record_is_planned_with_the_hosts_it_has():
    """``down`` after an ``up`` that failed before writing its record: the hosts that have a
    namespace say how many Gatekeepers and Proxies there are, so none is left behind."""
    from cluster.providers.local.commands import with_counts
    names = ["saltmaster", "balancer", "gatekeeper", "gatekeeper2", "gatekeeper3", "proxy",
             "proxy2", "primary", "replica1"]
    counted = with_counts(_args(), names)
    assert (counted.gatekeepers, counted.proxies) == (3, 2)
    assert with_counts(_args(gatekeepers=4), names).gatekeepers == 4  # the command line wins
    assert (with_counts(_args(), []).gatekeepers, with_counts(_args(), []).proxies) == (1, 1)
    planned = [h.name for h in LocalCluster.plan(counted).hosts]
    assert {"gatekeeper3", "proxy2"} <= set(planned)
