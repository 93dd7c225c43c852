"""What ``bootstrap.py scale`` decides before the orchestration (``cluster.scaling``): the
numbers it aims at, the hosts it adds and removes, the primary it refuses to remove, and what
it makes of the orchestration's output."""

from __future__ import annotations

import argparse

import pytest

from cluster import scaling
from cluster.errors import ClusterError
from cluster.record import ClusterRecord, HostRecord
from cluster.salt_setup import OrchestrationResult, orchestration_steps, summarize_orchestration

HOSTS = [("balancer", "balancer"), ("gatekeeper", "gatekeeper"), ("gatekeeper2", "gatekeeper"),
         ("proxy", "proxy"), ("proxy2", "proxy"), ("primary", "primary"),
         ("replica1", "replica"), ("replica2", "replica"), ("monitor", "monitor")]


def record(hosts=HOSTS) -> ClusterRecord:
    return ClusterRecord(provider="local", cluster_name="c", gatekeeper_url="https://x",
                         api_key="k", hosts=tuple(HostRecord(n, r, "10.0.0.1")
                                                  for n, r in hosts))


def test_a_role_not_named_keeps_its_number():
    args = argparse.Namespace(gatekeepers=3, proxies=None, replicas=None, cluster_name="c")
    wanted = scaling.wanted(args, record())
    assert (wanted.gatekeepers, wanted.proxies, wanted.replicas) == (3, 2, 2)
    assert wanted.cluster_name == "c"


def test_the_change_adds_and_removes_by_name():
    grown = [*HOSTS, ("gatekeeper3", "gatekeeper"), ("replica3", "replica")]
    up = scaling.Change.between(HOSTS, grown)
    assert up.added == ("gatekeeper3", "replica3") and up.removed == {}
    assert up.pillar() == {"sqlgate_scale": {"added": ["gatekeeper3", "replica3"],
                                             "removed": {}}}
    down = scaling.Change.between(grown, HOSTS)
    assert down.added == () and down.removed == {"gatekeeper3": "gatekeeper",
                                                 "replica3": "replica"}
    assert scaling.Change.between(HOSTS, HOSTS).empty
    assert scaling.describe(down) == "scale: removing gatekeeper3, replica3"


def test_the_primary_is_never_removed():
    change = scaling.Change((), {"replica3": "replica"})
    with pytest.raises(ClusterError, match=r"replica3 is the primary now: .*switchover"):
        scaling.refuse_removing_the_primary(change, "replica3")
    scaling.refuse_removing_the_primary(change, "primary")  # another host: fine


def state_step(sid: str, run: int, result: bool, ret: dict) -> tuple:
    return (f"salt_|-{sid}_|-{sid}_|-state",
            {"__run_num__": run, "result": result, "comment": "", "changes": {"ret": ret}})


def test_the_report_names_what_changed_or_says_nothing_did():
    unchanged = {"proxy": {"file_|-sqlgate-proxy-env_|-x_|-managed": {"result": True,
                                                                     "changes": {}}}}
    changed = {"proxy": {"file_|-sqlgate-proxy-env_|-x_|-managed": {
        "result": True, "changes": {"diff": "..."}}}}
    for ret, expected in ((unchanged, "  no changes: every host was already in its "
                                      "configured state"),
                          (changed, "  proxy: 1 state(s) changed")):
        output = {"data": {"m_master": dict([
            state_step("sqlgate-scale-sync", 0, True, {"proxy": {"modules": []}}),
            state_step("sqlgate-scale-proxy", 1, True, ret)])}}
        said: list[str] = []
        assert scaling.report(orchestration_steps(output), summarize_orchestration(output),
                              said.append) == 0
        assert said[-1] == expected


def test_a_failed_step_stops_the_report_with_the_hosts_left_running():
    output = {"data": {"m_master": dict([
        state_step("sqlgate-scale-databases", 0, False, {"replica3": {
            "sqlgate_replication_|-clone_|-c_|-cloned": {"result": False, "changes": {},
                                                          "comment": "no donor answered"}}})])}}
    said: list[str] = []
    result = summarize_orchestration(output)
    assert isinstance(result, OrchestrationResult) and not result.ok
    assert scaling.report(orchestration_steps(output), result, said.append) == 1
    assert any("no donor answered" in line for line in said)
    assert said[-1].startswith("scale stopped at sqlgate-scale-databases")
