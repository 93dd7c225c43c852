"""The failover steps of ``sqlgate_db`` (salt/_modules/sqlgate_db.py) through ``salt-call``
against a loopback MariaDB trio of this module's own (it is promoted, fenced and rejoined, so
the session's shared trio stays untouched): node state, stopping IO threads, the relay log,
promotion with the epoch row, fencing, repointing, and errant transactions of a former
primary. And the detection job (``sqlgate_db.watch``) with recorded replica statuses."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest
import yaml

from cluster.loopback.mariadb import MariaDBCluster
from tests.salt.fakedb import FakeClient, recorded
from tests.salt.saltcall import (
    FLAVOURS,
    SALT_CALL,
    SALT_TREE,
    SaltCall,
    load_salt_module,
    write_pillar,
)

MINION = "fo"
FLAVOUR = yaml.safe_load((SALT_TREE / "sqlgate" / "flavours.yaml").read_text())["mariadb"]


@pytest.fixture(scope="module")
def trio():
    cluster = MariaDBCluster(replicas=2)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def call(tmp_path_factory, trio):
    """salt-call as a minion whose pillar holds the replication password (follow reads it
    there: the runner never sends it)."""
    salt = SaltCall(tmp_path_factory.mktemp("salt-call-fo"), FLAVOURS["mariadb"])
    write_pillar(salt.pillar_dir, {"sqlgate": {"secrets": {"repl_password":
                                                           trio.repl_password}}})
    synced = salt.run(MINION, "saltutil.sync_all", "saltenv=base")
    assert "modules.sqlgate_db" in synced["modules"], synced

    def run(function, node, *args, failing=False):
        argv = [f"sqlgate_db.{function}", *args, f"socket={node.socket}", "client=mariadb"]
        if not failing:
            return salt.run(MINION, *argv)
        done = subprocess.run([str(SALT_CALL), "--local", "-c", str(salt.config_dir(MINION)),
                               *argv], capture_output=True, text=True, timeout=120)
        assert done.returncode != 0, done.stdout
        return done.stdout + done.stderr

    return run


def follow_args(trio, source):
    return ["source=127.0.0.1", f"port={source.port}",
            f"change_source={FLAVOUR['change_source']}",
            f"change_source_ssl={FLAVOUR['change_source_ssl']}", f"ssl_ca={trio.ca_file}"]


def test_a_promotion_a_fence_and_a_rejoin_on_real_mariadb(trio, call):
    primary, first, second = trio.primary, *trio.replicas
    state = call("node_state", primary)
    assert state["running"] is True and state["replica"] == {}
    assert state["read_only"] is False  # the loopback stack promoted it (epoch 1)
    assert (state["epoch"]["epoch"], state["epoch"]["primary_host"]) == (1, "primary")
    state = call("node_state", first)
    assert state["read_only"] is True and state["replica"]["io_running"] == "Yes"
    assert state["replica"]["relay_applied"] is True
    assert state["gtid_slave_pos"] == state["replica"]["received"]

    # The second replica falls behind: its IO thread stops while the primary writes on.
    second.sql("STOP REPLICA IO_THREAD")
    primary.sql("CREATE TABLE sakila.fo_ledger (id INT PRIMARY KEY, v VARCHAR(16))")
    primary.sql("INSERT INTO sakila.fo_ledger VALUES (1, 'acked')")
    written = primary.sql("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    assert call("wait_applied", first, "timeout=20", f"position={written}") is True
    assert call("node_state", first)["replica"]["received"] == written

    # A client of the primary is cut off by the fence, which leaves it read-only.
    app = trio.app_users["write"]
    held = primary.connect(app.name, app.password)
    fenced = call("fence_node", primary)  # no nftables table here: the port stays
    assert fenced["port"] == "no firewall"
    fenced = fenced["server"]
    assert fenced["read_only"] is True and fenced["killed"] >= 1
    with pytest.raises(Exception):  # noqa: B017 (any error: the connection is gone)
        held.cursor().execute("SELECT 1")
    assert call("node_state", primary)["read_only"] is True
    # A switchover's fence answers where the writes stopped: what the replicas wait for.
    planned = call("fence", primary, "planned=True")
    assert planned == {"read_only": True, "killed": 0, "gtid_binlog_pos": written}

    # The failover's check: a replica still receiving is left alone; one that lost its
    # source (its IO thread stopped) stops and applies its relay log in the same call.
    untouched = call("failover_check", first, "stop_if_lost=3", "apply_timeout=10")
    assert "stopped" not in untouched and untouched["replica"]["io_running"] == "Yes"
    behind = call("failover_check", second, "stop_if_lost=3", "apply_timeout=10")
    assert behind["replica"]["relay_applied"] is True
    assert behind["stopped"] is False  # stopped by someone else (the test): left to them
    assert call("failover_check", primary)["replica"] == {}  # no replica: nothing to stop

    for replica in (first, second):
        stopped = call("stop_io", replica, "apply_timeout=10")
        assert stopped["replica"]["io_running"] == "No" and stopped["running"] is True
        assert stopped["replica"]["relay_applied"] is True
    assert call("wait_applied", first, "timeout=10") is True
    ahead, behind = (call("node_state", node)["replica"]["received"] for node in (first,
                                                                                  second))
    from_module = load_salt_module("modules", "sqlgate_db", {})
    assert from_module.gtid_sum(ahead) > from_module.gtid_sum(behind)

    # The other replica follows the candidate first (its acknowledgement lets the epoch row
    # commit at once), then the candidate is promoted.
    assert call("follow", second, *follow_args(trio, first)) == \
        {"source": f"127.0.0.1:{first.port}"}
    promoted = call("promote", first, "2", "replica1", "replica_wait=10")
    assert promoted["epoch"] == 2 and promoted["fork_gtid_pos"]
    # Writes opened once the follower was there to acknowledge them.
    assert promoted["semi_sync_clients"] == 1
    state = call("node_state", first)
    assert state["read_only"] is False and state["replica"] == {}
    assert state["epoch"]["epoch"] == 2 and state["epoch"]["primary_host"] == "replica1"
    assert state["semi_sync"]["primary_enabled"] is True
    # A stale promotion (an older epoch) changes nothing.
    failed = call("promote", first, "1", "primary", failing=True)
    assert "stale" in str(failed)
    first.sql("INSERT INTO sakila.fo_ledger VALUES (2, 'after')")
    position = first.sql("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    assert call("wait_applied", second, "timeout=20", f"position={position}") is True, \
        json.dumps(call("node_state", second))
    assert second.sql("SELECT COUNT(*) AS n FROM sakila.fo_ledger")[0]["n"] == 2
    assert call("node_state", second)["epoch"]["primary_host"] == "replica1"

    # The old primary holds nothing the new one lacks: it follows it, read-only.
    new_pos = first.sql("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    fork = promoted["fork_gtid_pos"]
    assert call("errant", primary, new_pos, f"fork_gtid_pos={fork}",
                "primary_server_id=2") == []
    call("follow", primary, *follow_args(trio, first))
    first.sql("INSERT INTO sakila.fo_ledger VALUES (3, 'rejoined')")
    position = first.sql("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    assert call("wait_applied", primary, "timeout=20", f"position={position}") is True
    state = call("node_state", primary)
    assert state["read_only"] is True and state["replica"]["io_running"] == "Yes"

    # A transaction of its own (root ignores read_only) makes it errant.
    primary.sql("STOP REPLICA")
    primary.sql("INSERT INTO sakila.fo_ledger VALUES (99, 'errant')")
    new_pos = first.sql("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    found = call("errant", primary, new_pos, f"fork_gtid_pos={fork}", "primary_server_id=2")
    assert len(found) == 1 and found[0].startswith("0-1-"), found


def test_a_former_primary_written_after_the_fork_is_errant():
    module = load_salt_module("modules", "sqlgate_db", {})
    # Same seqno from another server, a higher one, a domain the primary lacks.
    assert module.gtid_ahead("0-1-10", "0-2-10") == ["0-1-10"]
    assert module.gtid_ahead("0-1-11", "0-2-10") == ["0-1-11"]
    assert module.gtid_ahead("0-1-5,1-1-3", "0-2-10") == ["1-1-3"]
    assert module.gtid_ahead("0-1-9", "0-2-10") == []


# --- the detection job --------------------------------------------------------------------

def watcher(tmp_path, status, pillar=None):
    client = FakeClient(status=status)
    sent = []
    pillar = pillar or {"hosts": {"primary": {"role": "primary"}, "replica1":
                                  {"role": "replica"}}}
    module = load_salt_module("modules", "sqlgate_db", {
        "cmd.run_all": client.run_all,
        "event.send": lambda tag, data: sent.append((tag, data)) or True})
    module.__opts__ = {"id": "replica1", "cachedir": str(tmp_path)}
    module.__pillar__ = {"sqlgate": pillar}
    module._answers = lambda address, port=3306, timeout=1.0: True
    return module, client, sent


def test_a_blip_shorter_than_the_detection_time_fires_nothing(tmp_path):
    connecting = recorded("mariadb-10.11-connecting")
    module, client, sent = watcher(tmp_path, connecting)
    assert module.watch(detect_seconds=3, now=100)["fired"] is None
    assert module.watch(detect_seconds=3, now=102)["fired"] is None
    client.status = recorded("mariadb-10.11-running")
    assert module.watch(detect_seconds=3, now=102.5)["io_running"] == "Yes"
    client.status = connecting
    assert module.watch(detect_seconds=3, now=104)["fired"] is None  # counted again from 104
    assert sent == []


def test_a_lost_primary_fires_after_the_detection_time_and_again_while_it_lasts(tmp_path):
    module, _, sent = watcher(tmp_path, recorded("mariadb-10.11-connecting"))
    module.watch(detect_seconds=3, refire_seconds=5, now=100)
    seen = module.watch(detect_seconds=3, refire_seconds=5, now=103)
    assert seen["fired"] == "sqlgate/db/primary-unreachable" and seen["lost_seconds"] == 3
    assert module.watch(detect_seconds=3, refire_seconds=5, now=104)["fired"] is None
    assert module.watch(detect_seconds=3, refire_seconds=5, now=108)["fired"] is not None
    (tag, data), _ = sent
    assert tag == "sqlgate/db/primary-unreachable"
    assert data["node"] == "replica1" and data["source_host"] == "127.0.0.1"
    assert json.loads((tmp_path / "sqlgate-watch.json").read_text())["fired_at"] == 108


def test_a_source_whose_port_does_not_answer_is_lost_while_the_io_thread_says_yes(tmp_path):
    """A cut link: the IO thread says Yes until slave_net_timeout, but the source does not
    greet a new connection: lost from the first probe, fired after the detection time, and
    node_state says for how long (what the runner waits on before it promotes)."""
    module, _, sent = watcher(tmp_path, recorded("mariadb-10.11-running"))
    probes = []
    module._answers = lambda address, port=3306, timeout=1.0: probes.append(
        (address, str(port), timeout)) or False
    seen = module.watch(detect_seconds=3, now=100, probe_seconds=0.25)
    assert seen["io_running"] == "Yes" and seen["source_answers"] is False
    assert probes == [("127.0.0.1", module.replica_status()["Source_Port"], 0.25)]
    assert module.watch(detect_seconds=3, now=103)["fired"] == "sqlgate/db/primary-unreachable"
    assert sent[0][1]["io_running"] == "Yes"
    module.time = type("Clock", (), {"time": staticmethod(lambda: 104.5)})
    assert module._lost_seconds() == 4.5
    module._answers = lambda address, port=3306, timeout=1.0: True
    assert module.watch(detect_seconds=3, now=105)["fired"] is None
    assert module._lost_seconds() is None


def test_the_probe_needs_the_servers_greeting(trio):
    """A real server greets at once; a port that accepts and says nothing (a hung server, or
    a listener that is not one) and a closed port do not answer."""
    module = load_salt_module("modules", "sqlgate_db", {})
    assert module._answers("127.0.0.1", trio.primary.port, 1.0) is True
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(1)
        port = mute.getsockname()[1]
        assert module._answers("127.0.0.1", port, 0.3) is False
    assert module._answers("127.0.0.1", port, 0.3) is False  # closed now: refused
    assert module._answers("", 3306) is False


def test_a_node_that_follows_nobody_and_is_not_the_primary_asks_to_rejoin(tmp_path):
    module, _, sent = watcher(tmp_path, "", {"db": {"primary": "replica2"},
                                              "hosts": {"replica1": {"role": "primary"}}})
    assert module.watch(now=100)["fired"] == "sqlgate/db/rejoin"
    assert sent == [("sqlgate/db/rejoin", {"node": "replica1", "primary": "replica2"})]
    # The pillar's primary itself, or a quarantined node, asks nothing.
    module, _, sent = watcher(tmp_path / "q", "", {"db": {"primary": "replica1"}})
    (tmp_path / "q").mkdir()
    assert module.watch(now=100)["fired"] is None
    module, _, sent = watcher(tmp_path, "", {"db": {"primary": "replica2"},
                                             "failover": {"quarantined": ["replica1"]}})
    assert module.watch(now=200)["fired"] is None and sent == []


def isolated_primary(tmp_path, reachable: bool, readers: list[str], read_only: str = "0"):
    """The watch job on the pillar's primary, its server answered by stand-ins: its
    read_only, and the replicas reading its binary log (each reachable or not)."""
    module, _, sent = watcher(tmp_path, "", {"db": {"primary": "replica1"}})
    fenced = []

    def query(sql, **_):
        if sql == module.REPLICA_READERS:
            return [[address] for address in readers]
        return [[read_only]] if "read_only" in sql else []

    module.query = query
    module._reachable = lambda address, port=3306, timeout=0.5: reachable
    module.fence = lambda steps=None, client=None, socket=None: fenced.append(steps)
    return module, sent, fenced


def test_a_primary_cut_off_from_every_replica_fences_itself(tmp_path):
    """Cut off for fence_seconds (its replicas' connections hang, none of their hosts
    answers): read-only, before the replicas' detection time could promote one of them."""
    module, sent, fenced = isolated_primary(tmp_path, False, ["10.0.0.6", "10.0.0.7"])
    steps = {"fence": ["SET GLOBAL read_only = ON"]}
    assert module.watch(now=100, fence_seconds=2, fence_steps=steps)["fired"] is None
    assert module.watch(now=101, fence_seconds=2, fence_steps=steps)["fired"] is None
    seen = module.watch(now=102, fence_seconds=2, fence_steps=steps)
    assert seen["fired"] == "sqlgate/db/self-fenced" and fenced == [steps]
    assert sent == [("sqlgate/db/self-fenced", {"node": "replica1", "isolated_seconds": 2.0})]


def test_a_primary_that_reaches_a_replica_or_has_none_stays_writable(tmp_path):
    """One replica reachable, or no replica connected at all (stopped, or not there yet:
    semi-sync's fail-closed covers that), or already read-only: no fence."""
    cases = ((True, ["10.0.0.6"], "0"), (False, [], "0"), (False, ["10.0.0.6"], "1"))
    for number, (reachable, readers, read_only) in enumerate(cases):
        directory = tmp_path / str(number)
        directory.mkdir()
        module, _, fenced = isolated_primary(directory, reachable, readers, read_only)
        for now in (100, 103, 106):
            assert module.watch(now=now, fence_seconds=2)["fired"] != "sqlgate/db/self-fenced"
        assert fenced == []
