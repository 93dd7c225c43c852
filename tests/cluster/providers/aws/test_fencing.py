"""The EC2 fence of a former primary Salt could not fence (cluster/providers/aws/fencing.py),
against a moto server: the decision from the runner's answer, the quarantine security group
and the instance stop, their idempotence, ``rebuild``'s release, ``down``; and
``bootstrap.py failover|rebuild --provider aws`` with the runner's SSH call stood in for (the
SSH to the master itself is not exercised here)."""

from __future__ import annotations

import pytest

from cluster.providers.aws import commands as aws_provider
from cluster.providers.aws import fencing
from cluster.providers.aws import resources as res
from tests.aws_moto import REGION
from tests.aws_moto import bootstrap_up as up
from tests.aws_moto import run_bootstrap as run

CLUSTER_NAME = "sqlgate"
OLD, NEW = "primary", "replica1"

NOT_FENCED = {"server": "no answer", "port": "no answer"}
SERVER_DOWN = {"server": "not fenced: ERROR 2002 (HY000): Can't connect", "port": "no firewall"}
FENCED = {"server": {"read_only": True, "killed": 3}, "port": "no firewall"}


def shape(fence, *, kind="failover", result="promoted", fenced=(OLD,), epoch=2) -> dict:
    """What ``sqlgate_failover.status`` answers after a failover from OLD to NEW."""
    return {"primary": NEW, "epoch": epoch, "quarantined": [], "fenced": list(fenced),
            "last": {"kind": kind, "result": result, "old_primary": OLD, "new_primary": NEW,
                     "epoch": epoch, "fence": fence, "automatic": True, "detected": 1.0},
            "promotions": [], "rejoins": [], "alerts": []}


@pytest.fixture
def aws(aws_env, capsys):
    code, _, err = up(capsys)
    assert code == 0, err
    return aws_provider.connect(CLUSTER_NAME, REGION, None)


def instance(aws, host: str) -> dict:
    return res.find_instances(aws)[host]


def groups_of(inst: dict) -> set[str]:
    return {g["GroupId"] for eni in inst["NetworkInterfaces"] for g in eni["Groups"]}


def database_group(aws) -> str:
    return res.find_security_groups(aws)["database"]["GroupId"]


# --- the decision ------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "wanted"), [
    (shape(NOT_FENCED), (OLD, 2)),
    (shape(SERVER_DOWN), (OLD, 2)),
    (shape(None), (OLD, 2)),
    (shape(FENCED), None),
    (shape({"server": "no answer", "port": "closed"}), None),  # nftables (local) took it
    (shape(NOT_FENCED, kind="switchover"), None),
    (shape(NOT_FENCED, result="refused"), None),
    (shape(NOT_FENCED, fenced=()), None),  # rebuilt or rejoined since
    ({"primary": OLD, "last": None}, None),
])
def test_what_to_fence(status, wanted):
    assert fencing.to_fence(status) == wanted


# --- the fence ---------------------------------------------------------------------------

def test_not_fenced_by_salt_stops_and_quarantines_once(aws):
    before = instance(aws, OLD)
    assert before["State"]["Name"] in ("pending", "running")
    lines: list[str] = []
    done = fencing.fence_after(aws, shape(NOT_FENCED), lines.append, deadline_s=60)
    assert done and any("stopped" in line for line in done)

    after = instance(aws, OLD)
    assert after["State"]["Name"] in ("stopping", "stopped")
    quarantine = fencing.find_quarantine_group(aws)
    assert quarantine is not None
    assert quarantine["GroupName"] == f"{CLUSTER_NAME}-{fencing.QUARANTINE}"
    assert {t["Key"]: t["Value"] for t in quarantine["Tags"]}[res.CLUSTER_TAG] == CLUSTER_NAME
    assert quarantine["IpPermissions"] == [] and quarantine["IpPermissionsEgress"] == []
    assert groups_of(after) == {quarantine["GroupId"]}
    assert res.tag_value(after, fencing.FENCED_GROUPS_TAG) == database_group(aws)
    # Nobody else was touched.
    for host, other in res.find_instances(aws).items():
        if host != OLD:
            assert other["State"]["Name"] in ("pending", "running"), host
            assert quarantine["GroupId"] not in groups_of(other), host

    # Again: nothing changes, no second group.
    assert fencing.fence_after(aws, shape(NOT_FENCED), lines.append, deadline_s=60) == []
    again = instance(aws, OLD)
    assert again["State"]["Name"] == after["State"]["Name"]
    assert groups_of(again) == {quarantine["GroupId"]}
    assert [g for g in res.find_security_groups(aws) if g == fencing.QUARANTINE] == \
        [fencing.QUARANTINE]


def test_started_again_by_someone_is_stopped_again_and_still_isolated(aws):
    fencing.fence_after(aws, shape(SERVER_DOWN), deadline_s=60)
    aws.ec2.start_instances(InstanceIds=[instance(aws, OLD)["InstanceId"]])
    assert instance(aws, OLD)["State"]["Name"] in ("pending", "running")
    assert groups_of(instance(aws, OLD)) == {fencing.find_quarantine_group(aws)["GroupId"]}
    done = fencing.fence_after(aws, shape(SERVER_DOWN), deadline_s=60)
    assert any("stopped" in line for line in done)
    assert instance(aws, OLD)["State"]["Name"] in ("stopping", "stopped")


def test_fenced_by_salt_stops_nothing(aws):
    assert fencing.fence_after(aws, shape(FENCED), deadline_s=60) == []
    assert all(i["State"]["Name"] in ("pending", "running")
               for i in res.find_instances(aws).values())
    assert fencing.find_quarantine_group(aws) is None
    assert database_group(aws) in groups_of(instance(aws, OLD))


def test_release_for_rebuild_gives_the_groups_back_and_starts_it(aws):
    fencing.fence_after(aws, shape(NOT_FENCED), deadline_s=60)
    done = fencing.release(aws, OLD, deadline_s=60)
    assert "started" in done
    back = instance(aws, OLD)
    assert back["State"]["Name"] == "running"
    assert groups_of(back) == {database_group(aws)}
    assert res.tag_value(back, fencing.FENCED_GROUPS_TAG) == ""
    assert fencing.release(aws, OLD, deadline_s=60) == []
    # The same failover's status seen again (a rebuild not finished yet): not fenced again.
    assert fencing.fence_after(aws, shape(NOT_FENCED), deadline_s=60) == []
    assert instance(aws, OLD)["State"]["Name"] == "running"
    # A later failover from it is fenced as any.
    assert fencing.fence_after(aws, shape(NOT_FENCED, epoch=3), deadline_s=60)
    assert instance(aws, OLD)["State"]["Name"] in ("stopping", "stopped")


def test_down_deletes_the_quarantine_group(aws, capsys):
    fencing.fence_after(aws, shape(NOT_FENCED), deadline_s=60)
    assert fencing.find_quarantine_group(aws) is not None
    code, out, err = run(capsys, "down")
    assert code == 0, err
    assert f"deleted security group {CLUSTER_NAME}-{fencing.QUARANTINE}" in out
    assert res.find_security_groups(aws) == {}
    assert res.find_instances(aws) == {}  # the stopped one terminated too


# --- bootstrap.py failover / rebuild, the runner's SSH call stood in for -------------------

@pytest.fixture
def runner(monkeypatch):
    """``failover_runner`` answering as the master would; the calls it got."""
    calls: list[tuple[str, ...]] = []
    answers: dict[str, dict] = {}

    def fake(_recorded, _master, function, *args):
        calls.append((function, *args))
        return answers[function]

    monkeypatch.setattr(aws_provider, "failover_runner", fake)
    monkeypatch.setattr(aws_provider, "wait_for_minion", lambda *a: True)
    return calls, answers


def test_failover_command_fences_through_ec2(aws, capsys, runner):
    calls, answers = runner
    answers["failover"] = {"result": "promoted", "primary": NEW, "epoch": 2,
                           "old_primary": OLD, "repointed": ["replica2"]}
    answers["status"] = shape(NOT_FENCED)
    code, out, err = run(capsys, "failover")
    assert code == 0, err
    assert [c[0] for c in calls] == ["failover", "status"]
    assert f"{OLD} could not be fenced through Salt" in out
    assert instance(aws, OLD)["State"]["Name"] in ("stopping", "stopped")

    calls.clear()
    answers["rebuild"] = {"result": "rebuilt", "node": OLD, "follows": NEW}
    answers["status"] = shape(NOT_FENCED, fenced=())
    code, out, err = run(capsys, "rebuild", OLD)
    assert code == 0, err
    assert calls == [("rebuild", f"node={OLD}"), ("status",)]
    assert instance(aws, OLD)["State"]["Name"] == "running"
    assert groups_of(instance(aws, OLD)) == {database_group(aws)}


def test_failover_command_leaves_a_salt_fenced_primary_running(aws, capsys, runner):
    _, answers = runner
    answers["failover"] = {"result": "promoted", "primary": NEW, "epoch": 2, "old_primary": OLD}
    answers["status"] = shape(FENCED)
    code, out, err = run(capsys, "failover")
    assert code == 0, err
    assert "could not be fenced" not in out
    assert instance(aws, OLD)["State"]["Name"] in ("pending", "running")
    assert fencing.find_quarantine_group(aws) is None


def test_status_applies_the_fence_an_automatic_failover_could_not(aws, capsys, runner):
    """The reactor's failover runs on the master, which has no AWS credentials: ``status``
    (its part after the SSH checks) applies the EC2 fence."""
    _, answers = runner
    answers["status"] = shape(NOT_FENCED)
    recorded = aws_provider.read_record(aws_provider.PROVIDER)
    assert aws_provider.failover_status(aws, recorded, "192.0.2.1") == 0
    out = capsys.readouterr().out
    assert f"last failover (automatic): {OLD} -> {NEW}" in out
    assert instance(aws, OLD)["State"]["Name"] in ("stopping", "stopped")
    assert aws_provider.read_record(aws_provider.PROVIDER).provider_data["primary"] == NEW
