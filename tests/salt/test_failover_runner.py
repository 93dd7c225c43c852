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

    def ask(targets, function, arg=(), kwarg=None, timeout=5):
        module.calls.append((tuple(targets), function, tuple(arg), kwarg or {}))
        if function == "sqlgate_db.node_state":
            return {node: module.nodes[node] for node in targets
                    if module.nodes.get(node) is not None}
        if function == "sqlgate_db.stop_io":
            return {node: module.nodes[node] for node in targets
                    if module.nodes.get(node) is not None}
        if function == "sqlgate_db.fence_node":
            return {node: {"server": "not fenced", "port": "closed"} for node in targets}
        if function == "sqlgate_db.wait_applied":
            return dict.fromkeys(targets, True)
        if function == "sqlgate_db.promote":
            return {targets[0]: {"epoch": arg[0], "primary_host": arg[1],
                                 "fork_gtid_pos": "0-1-10"}}
        return {node: {"ok": True} for node in targets}

    module._ask = ask
    module._proxy_view = lambda cluster, timeout: module.proxy_view
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
    functions = [call[1] for call in runner.calls]
    # Fenced before the promotion; the other replica repointed before it (its acknowledgement).
    assert functions.index("sqlgate_db.fence_node") < functions.index("sqlgate_db.promote")
    assert functions.index("sqlgate_db.follow") < functions.index("sqlgate_db.promote")
    follow = next(call for call in runner.calls if call[1] == "sqlgate_db.follow")
    assert follow[0] == ("replica1",) and follow[3]["source"] == "10.0.0.7"
    assert "password" not in follow[3]  # the minion reads it from its own pillar
    promote = next(call for call in runner.calls if call[1] == "sqlgate_db.promote")
    assert promote[3]["steps"]["open_writes"][-1] == "SET GLOBAL read_only = OFF"
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


def test_mysql_positions_rank_by_their_size(runner):
    assert runner._size("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5,"
                        "d84f56fa-12eb-11f1-936e-08002719c604:1-2:4") == 8
    assert runner._size("0-1-100,1-2-5") == 105
