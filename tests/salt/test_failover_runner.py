"""The failover runner's decisions (salt/_runners/sqlgate_failover.py), loaded on its own with
a pillar tree in a temporary directory and the minions' answers faked: one run at a time, the
failure checked from every side, the anti-flap period, no promotion while a replica that may
hold the only copy of a write cannot be asked, the most advanced replica as the candidate. The
whole thing against real minions: tests/cluster/providers/local/test_failover_cluster.py."""

from __future__ import annotations

import time

import pytest
import yaml

from tests.salt.saltcall import SALT_TREE, load_salt_module

HOSTS = {"primary": {"role": "primary", "server_id": 1},
         "replica1": {"role": "replica", "server_id": 2},
         "replica2": {"role": "replica", "server_id": 3}, "proxy": {"role": "proxy"}}


def state(running=True, read_only=True, io=None, received="", current="", epoch=1):
    answer = {"flavour": "mariadb", "running": running}
    if running:
        answer.update(read_only=read_only, gtid_current_pos=current or received,
                      gtid_binlog_pos=current or received, server_id=1,
                      replica={"io_running": io, "received": received,
                               "source_host": "10.0.0.5"} if io else {},
                      epoch={"epoch": epoch, "primary_host": "primary"})
    return answer


@pytest.fixture
def runner(tmp_path):
    pillar = tmp_path / "pillar"
    (pillar / "sqlgate").mkdir(parents=True)
    (pillar / "sqlgate" / "common.sls").write_text(yaml.safe_dump({"sqlgate": {
        "hosts": HOSTS, "addresses": {"primary": "10.0.0.5", "replica1": "10.0.0.6",
                                      "replica2": "10.0.0.7", "proxy": "10.0.0.4"}}}))
    (pillar / "sqlgate" / "failover.sls").write_text("{}\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    events = []
    module = load_salt_module("runners", "sqlgate_failover", {
        "event.send": lambda tag, data: events.append((tag, data)) or True,
        "mine.get": lambda tgt, fun: {}},
        {"pillar_roots": {"base": [str(pillar)]}, "file_roots": {"base": [str(SALT_TREE)]},
         "cachedir": str(cache), "conf_file": "/dev/null", "user": "root"})
    module.events = events
    module.calls = []
    module.proxy_view = {}
    module.nodes = {}

    module.rounds = []
    module.sent = []

    def ask(targets, function, arg=(), kwarg=None, timeout=5, enough=None, grace=1.0):
        module.calls.append((tuple(targets), function, tuple(arg), kwarg or {}))
        if function == "sqlgate_db.node_state":
            return {node: module.nodes[node] for node in targets
                    if module.nodes.get(node) is not None}
        if function == "sqlgate_db.stop_io":
            return {node: module.nodes[node] for node in targets
                    if module.nodes.get(node) is not None}
        if function == "sqlgate_db.failover_check":  # a replica that lost its source stops
            answers = {}
            for node in targets:
                found = module.nodes.get(node)
                if found is None:
                    continue
                replica = found.get("replica") or {}
                lost = replica and (replica.get("io_running") != "Yes"
                                    or replica.get("lost_seconds") is not None)
                answers[node] = ({**found, "stopped": replica.get("io_running") != "No",
                                  "took": {"stop": 0.1}} if lost else found)
            return answers
        if function == "sqlgate_db.fence":
            return {node: {"read_only": True, "killed": 0, "gtid_binlog_pos": "0-1-42"}
                    for node in targets}
        if function == "sqlgate_db.follow":
            return {node: {"source": kwarg["source"]} for node in targets}
        if function == "sqlgate_db.fence_node":
            return {node: {"server": "not fenced", "port": "closed"} for node in targets}
        if function == "sqlgate_db.wait_applied":
            return dict.fromkeys(targets, True)
        if function == "sqlgate_db.promote":
            return {targets[0]: {"epoch": arg[0], "primary_host": arg[1],
                                 "fork_gtid_pos": "0-1-10"}}
        if function == "cmd.run":  # the Proxies' /health: module.proxy_view below
            return {}
        return {node: {"ok": True} for node in targets}

    def together(*calls):  # one round trip: recorded as such, asked in order
        module.rounds.append([call[1] for call in calls])
        return [ask(*call) for call in calls]

    module._ask = ask
    module._together = together
    module._send = lambda targets, function, arg=(), kwarg=None: module.sent.append(
        (tuple(targets), function))
    module._proxy_view = lambda answers: module.proxy_view
    return module


def test_one_run_at_a_time(runner):
    with runner._single_flight() as first:
        assert first is True
        with runner._single_flight() as second:
            assert second is False
        assert runner.failover(reason="event") == {"result": "already running"}
        assert runner.switchover() == {"result": "already running"}
        assert runner.rejoin(node="primary") == {"result": "already running"}
    assert runner.calls == []  # nothing was asked, nothing changed
    with runner._single_flight() as again:
        assert again is True


@pytest.mark.parametrize(("primary", "replicas", "proxy", "failed"), [
    # The primary's server answers and is writable: never failed over.
    (state(read_only=False), ("Connecting", "Connecting"), False, False),
    # A replica still receives from it: a blip elsewhere.
    (None, ("Yes", "Connecting"), None, False),
    # Only the replicas lost it while the Proxy still reaches it: an alert, no failover.
    (None, ("Connecting", "Connecting"), True, False),
    # Its minion says the server is gone.
    (state(running=False), ("Connecting", "No"), False, True),
    # Its minion does not answer, every replica lost it, the Proxy too.
    (None, ("Connecting", "Connecting"), False, True),
])
def test_the_failure_is_checked_from_every_side(runner, primary, replicas, proxy, failed):
    runner.nodes = {"primary": primary,
                    "replica1": state(io=replicas[0], received="0-1-10"),
                    "replica2": state(io=replicas[1], received="0-1-10")}
    runner.proxy_view = {"primary": proxy}
    view, _ = runner._assess(runner.Cluster(), 5)
    assert view["failed"] is failed, view


def lost_primary(runner, first="0-1-10", second="0-1-12"):
    runner.nodes = {"primary": state(running=False),
                    "replica1": state(io="Connecting", received=first),
                    "replica2": state(io="Connecting", received=second)}


def test_the_most_advanced_replica_is_promoted_and_the_other_follows_it(runner, tmp_path):
    lost_primary(runner)
    answer = runner.failover(reason="event")
    assert answer["result"] == "promoted" and answer["primary"] == "replica2", answer
    assert answer["epoch"] == 2 and answer["repointed"] == ["replica1"]
    # The replicas that lost the primary stopped (and applied their relay logs) in the check
    # itself; then the promotion and the other replica's repointing in one round trip (the
    # promotion waits for its acknowledgement before it opens writes), with the fence of the
    # old primary, whose server is down (it comes back read-only).
    assert runner.rounds[0] == ["sqlgate_db.failover_check", "cmd.run"]
    assert runner.rounds[1] == ["sqlgate_db.promote", "sqlgate_db.follow",
                                "sqlgate_db.fence_node"]
    checked = next(call for call in runner.calls if call[1] == "sqlgate_db.failover_check")
    assert checked[3] == {"stop_if_lost": 3, "apply_timeout": 30}
    assert [call[0] for call in runner.calls if call[1] == "sqlgate_db.stop_io"] == [()]
    follow = next(call for call in runner.calls if call[1] == "sqlgate_db.follow")
    assert follow[0] == ("replica1",) and follow[3]["source"] == "10.0.0.7"
    assert "password" not in follow[3]  # the minion reads it from its own pillar
    promote = next(call for call in runner.calls if call[1] == "sqlgate_db.promote")
    assert promote[3]["steps"]["open_writes"][-1] == "SET GLOBAL read_only = OFF"
    assert promote[3]["replica_wait"] == 5
    written = yaml.safe_load((tmp_path / "pillar" / "sqlgate" / "failover.sls").read_text())
    assert written["sqlgate"]["db"] == {"primary": "replica2", "epoch": 2,
                                        "fork_gtid_pos": "0-1-10"}
    status = runner.status()
    assert status["primary"] == "replica2" and status["epoch"] == 2
    assert status["last"]["writable"] >= status["last"]["detected"]
    # The same event again: the new primary's replicas are not lost; nothing happens.
    runner.nodes = {"primary": None, "replica1": state(io="Yes", received="0-3-20"),
                    "replica2": state(read_only=False)}
    assert runner.failover(reason="event")["result"] == "no failover"
    assert [p["epoch"] for p in runner.status()["promotions"]] == [2]


def test_a_replica_that_cannot_be_asked_stops_an_automatic_promotion(runner):
    lost_primary(runner)
    runner.nodes["replica2"] = None
    answer = runner.failover(reason="event")
    assert answer["result"] == "refused" and "replica2" in answer["why"]
    assert "sqlgate_db.promote" not in [call[1] for call in runner.calls]
    # The IO threads it stopped run again.
    assert any(call[2] == ("START REPLICA IO_THREAD",) for call in runner.calls)
    assert runner.status()["alerts"][-1]["missing"] == ["replica2"]
    # An operator may decide otherwise.
    answer = runner.failover(reason="operator", automatic=False, force=True)
    assert answer["result"] == "promoted" and answer["primary"] == "replica1"


def test_a_second_automatic_failover_within_the_block_waits_for_an_operator(runner):
    lost_primary(runner)
    assert runner.failover(reason="event")["result"] == "promoted"
    lost_primary(runner)  # the new primary (replica2) fails too, at once
    runner.nodes = {"primary": None, "replica1": state(io="Connecting", received="0-3-5"),
                    "replica2": state(running=False)}
    answer = runner.failover(reason="event")
    assert answer["result"] == "blocked", answer
    assert "waiting for an operator" in runner.status()["alerts"][-1]["alert"]
    answer = runner.failover(reason="operator", automatic=False)
    assert answer["result"] == "promoted" and answer["primary"] == "replica1"
    assert answer["epoch"] == 3


def test_an_operators_promotion_arms_automatic_failover_again(runner):
    """The operator acted after the automatic failover (here: a failover of their own), so
    the next failure is failed over automatically again, within the block period."""
    lost_primary(runner)
    assert runner.failover(reason="event")["result"] == "promoted"
    lost_primary(runner)
    runner.nodes = {"primary": None, "replica1": state(io="Connecting", received="0-3-5"),
                    "replica2": state(running=False)}
    assert runner.failover(reason="operator", automatic=False)["result"] == "promoted"
    assert runner._last_automatic(runner._history()) is None


def test_the_block_ends_after_block_seconds(runner, monkeypatch):
    lost_primary(runner)
    assert runner.failover(reason="event")["result"] == "promoted"
    runner.nodes = {"primary": None, "replica1": state(io="Connecting", received="0-3-5"),
                    "replica2": state(running=False)}
    later = time.time() + 3601
    monkeypatch.setattr(runner.time, "time", lambda: later)
    assert runner.failover(reason="event")["result"] == "promoted"


def test_the_furthest_position_of_several(runner):
    assert runner._furthest(["0-1-40,1-2-5", "0-1-42", ""], "mariadb") == "0-1-42,1-2-5"
    assert runner._furthest(["u:1-5", "", "u:1-7"], "mysql") == "u:1-5,u:1-7"


def test_mysql_positions_rank_by_their_size(runner):
    assert runner._size("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5,"
                        "d84f56fa-12eb-11f1-936e-08002719c604:1-2:4") == 8
    assert runner._size("0-1-100,1-2-5") == 105


def test_a_silent_primary_is_sent_its_fence_and_given_the_time_to_fence_itself(
        runner, monkeypatch):
    """Its host cut off: its minion answers nothing, so its fence is sent without waiting for
    it, and the candidate becomes writable only once the replicas have seen the primary lost
    for fence_seconds + watch_seconds + 1 (by then it made itself read-only)."""
    runner.nodes = {"primary": None,
                    "replica1": state(io="Yes", received="0-1-10"),
                    "replica2": state(io="Yes", received="0-1-12")}
    for node, lost in (("replica1", 1.5), ("replica2", 2.5)):
        runner.nodes[node]["replica"].update(io_running="Connecting", lost_seconds=lost)
    slept = []
    monkeypatch.setattr(runner.time, "sleep", slept.append)
    answer = runner.failover(reason="event")
    assert answer["result"] == "promoted" and answer["primary"] == "replica2", answer
    assert runner.sent == [(("primary",), "sqlgate_db.fence_node")]
    assert "sqlgate_db.fence_node" not in [call[1] for call in runner.calls]
    assert slept == [pytest.approx(2 + 1 + 1 - 2.5)]
    last = runner.status()["last"]
    assert last["fence"]["port"] == "sent, its minion silent"
    assert last["self_fence_wait_s"] == pytest.approx(1.5)


def test_a_replica_that_did_not_apply_its_relay_log_stops_the_promotion(runner):
    lost_primary(runner)
    runner.nodes["replica1"]["replica"]["relay_applied"] = False
    answer = runner.failover(reason="event")
    assert answer["result"] == "refused" and "replica1" in answer["why"], answer
    assert "sqlgate_db.promote" not in [call[1] for call in runner.calls]
    assert any(call[2] == ("START REPLICA IO_THREAD",) for call in runner.calls)


def test_a_switchover_repoints_first_then_stops_writes_then_promotes_at_their_position(runner):
    """Writes are held only for the last two round trips: the other replica is repointed to
    the candidate first (chained under it while writes go on), then the old primary is made
    read-only (answering where its writes stopped), then the candidate applies that much and
    is promoted; then the old primary follows it."""
    runner.nodes = {"primary": state(read_only=False),
                    "replica1": state(io="Yes", received="0-1-40"),
                    "replica2": state(io="Yes", received="0-1-41")}
    answer = runner.switchover(to="replica1")
    assert answer["result"] == "promoted" and answer["primary"] == "replica1", answer
    steps = [(call[0], call[1]) for call in runner.calls if call[1] != "sqlgate_db.node_state"]
    # The other replica stops where it is, the candidate catches up with it, it follows the
    # candidate: never from a position the candidate's binary log does not hold yet.
    assert steps[:5] == [(("replica2",), "sqlgate_db.stop_io"),
                         (("replica1",), "sqlgate_db.wait_applied"),
                         (("replica2",), "sqlgate_db.follow"),
                         (("primary",), "sqlgate_db.fence"),
                         (("replica1",), "sqlgate_db.promote")], steps
    waited = next(call for call in runner.calls if call[1] == "sqlgate_db.wait_applied")
    assert waited[3]["position"] == "0-1-41"  # replica2's, ahead of the candidate's 0-1-40
    promote = next(call for call in runner.calls if call[1] == "sqlgate_db.promote")
    assert promote[3]["position"] == "0-1-42" and promote[3]["apply_timeout"] == 30
    assert steps[-1] == (("primary",), "sqlgate_db.follow")
    last = runner.status()["last"]
    assert last["steps"]["replicas_repointed"] <= last["steps"]["writes_stopped"] \
        <= last["writable"]


def test_replicas_stopped_by_the_check_start_again_when_there_is_no_failover(runner):
    """The Proxy still reaches the primary (only the replicas lost it): an alert, no
    failover, and the IO threads the check stopped run again."""
    runner.nodes = {"primary": None,
                    "replica1": state(io="Connecting", received="0-1-10"),
                    "replica2": state(io="Connecting", received="0-1-10")}
    runner.proxy_view = {"primary": True}
    answer = runner.failover(reason="event")
    assert answer["result"] == "no failover", answer
    restarted = [call for call in runner.calls if call[2] == ("START REPLICA IO_THREAD",)]
    assert [sorted(call[0]) for call in restarted] == [["replica1", "replica2"]]
    assert "sqlgate_db.promote" not in [call[1] for call in runner.calls]


def test_a_primary_whose_server_still_runs_is_fenced_before_the_promotion(runner):
    """Its replicas lost it and it answers read-only (it restarted so): it could be made
    writable again, so it is fenced, and answers, before another node is promoted."""
    lost_primary(runner)
    runner.nodes["primary"] = state(read_only=True)
    answer = runner.failover(reason="event")
    assert answer["result"] == "promoted", answer
    fence = next(r for r in runner.rounds if "sqlgate_db.fence_node" in r)
    take_over = next(r for r in runner.rounds if "sqlgate_db.promote" in r)
    assert runner.rounds.index(fence) < runner.rounds.index(take_over)
    assert "sqlgate_db.fence_node" not in take_over
