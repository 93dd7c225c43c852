"""The cluster record: one typed shape for every provider, private on disk, and read back as
written (provider-only details included)."""

from __future__ import annotations

import json
import stat

from cluster.record import (
    ClusterRecord,
    HostRecord,
    ca_path,
    read_record,
    remove_record,
    write_ca,
    write_record,
)


def sample() -> ClusterRecord:
    return ClusterRecord(
        provider="local", cluster_name="c", gatekeeper_url="http://10.0.0.3:80", api_key="k",
        hosts=(HostRecord("replica1", "replica", "10.0.0.6", namespace="c-replica1"),
               HostRecord("proxy", "proxy", "10.0.0.4", namespace="c-proxy"),
               HostRecord("primary", "primary", "10.0.0.5", namespace="c-primary")),
        salt_command=("nsenter", "salt"), sb_password="sb",
        provider_data={"bridge": "sgabc123br"}, monitor_url="https://10.0.0.8:9090/")


def test_a_record_is_read_back_as_written_and_private(tmp_path):
    record = sample()
    path = write_record(record, tmp_path)
    assert path == tmp_path / "local.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_record("local", tmp_path) == record
    on_disk = json.loads(path.read_text())
    assert "port" not in on_disk["hosts"][0]  # unset host fields stay out of the file
    remove_record("local", tmp_path)
    assert read_record("local", tmp_path) is None


def test_database_hosts_come_primary_first():
    assert [h.name for h in sample().db_hosts] == ["primary", "replica1"]


def test_unknown_host_fields_of_a_newer_record_are_ignored():
    data = sample().to_json()
    data["hosts"][0]["zone"] = "eu-west-1a"
    assert ClusterRecord.from_json(data).hosts[0].name == "replica1"


def test_the_ca_copy_lives_next_to_the_record_and_goes_with_it(tmp_path):
    ca = write_ca("local", "-----BEGIN CERTIFICATE-----\n", tmp_path)
    assert ca == ca_path("local", tmp_path) == tmp_path / "local-ca.crt"
    assert stat.S_IMODE(ca.stat().st_mode) == 0o644  # public: the user runs curl with it
    record = ClusterRecord(provider="local", cluster_name="c",
                           gatekeeper_url="https://10.0.0.3", api_key="k", ca_file=str(ca))
    write_record(record, tmp_path)
    assert read_record("local", tmp_path).ca_file == str(ca)
    remove_record("local", tmp_path)
    assert not ca.exists()


def test_a_record_without_a_ca_file_reads_as_none():
    data = sample().to_json()
    del data["ca_file"]
    assert ClusterRecord.from_json(data).ca_file is None
