"""A new replica cloned from a running one (``sqlgate_db.clone``, ``sqlgate_db.donor``, the
``sqlgate_replication.cloned`` state): against a loopback MariaDB cluster of this module's own
(a primary, a replica, and empty servers added to it as a scale-out adds hosts), under writes;
MySQL's side through the commands and SQL it emits (no MySQL server runs here)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pymysql
import pytest
import yaml

from cluster.loopback.mariadb import MariaDBCluster, MariaDBNode
from cluster.loopback.processes import free_port
from cluster.waiting import wait_until
from tests.salt.fakedb import FakeClient
from tests.salt.saltcall import (
    FLAVOURS,
    SALT_CALL,
    SALT_TREE,
    SaltCall,
    load_salt_module,
    write_pillar,
)

MINION = "clone"
FLAVOUR_FILE = yaml.safe_load((SALT_TREE / "sqlgate" / "flavours.yaml").read_text())
FLAVOUR = FLAVOUR_FILE["mariadb"]
LEDGER = "sqlgate_test.clone_ledger"


@pytest.fixture(scope="module")
def cluster() -> Iterator[MariaDBCluster]:
    db = MariaDBCluster(replicas=1)
    db.start()
    try:
        db.primary.sql(f"CREATE TABLE {LEDGER} (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
                       "v VARCHAR(64) NOT NULL, at DATETIME(6) NOT NULL DEFAULT NOW(6))")
        yield db
    finally:
        db.destroy()


@pytest.fixture(scope="module")
def call(tmp_path_factory, cluster):
    """salt-call as a minion whose pillar holds the clone password: the module reads it there,
    so that it is on no command line, not even salt-call's."""
    salt = SaltCall(tmp_path_factory.mktemp("salt-call-clone"), FLAVOURS["mariadb"])
    write_pillar(salt.pillar_dir, {"sqlgate": {"secrets": {
        "clone_password": cluster.clone.password, "repl_password": cluster.repl_password}}})
    synced = salt.run(MINION, "saltutil.sync_all", "saltenv=base")
    assert "modules.sqlgate_db" in synced["modules"], synced
    return salt


def at(node: MariaDBNode) -> str:
    return f"127.0.0.1:{node.port}"


def clone_args(cluster, node: MariaDBNode, donors: list[str], **extra) -> list[str]:
    return ["name=sqlgate-db-replication-clone", f"donors={json.dumps(donors)}", "user=clone",
            f"ssl_ca={cluster.ca_file}", f"steps={json.dumps(FLAVOUR['clone'])}",
            f"socket={node.socket}", "client=mariadb",
            *(f"{key}={value}" for key, value in extra.items())]


def follow_args(cluster, node: MariaDBNode) -> list[str]:
    return ["name=sqlgate-db-replication-source", "source=127.0.0.1",
            f"port={cluster.primary.port}", "user=repl", f"password={cluster.repl_password}",
            f"change_source={FLAVOUR['change_source']}", f"ssl_ca={cluster.ca_file}",
            f"change_source_ssl={FLAVOUR['change_source_ssl']}", "fresh_only=True",
            f"socket={node.socket}", "client=mariadb"]


def single(salt: SaltCall, function: str, *args: str, test: bool = False,
           failing: bool = False) -> dict:
    answer = salt.run(MINION, "state.single", function, *args, *(["test=True"] if test else []),
                      failing=failing)
    (ret,) = answer.values()
    return ret


def ledger(node: MariaDBNode) -> dict:
    return node.sql(f"SELECT COUNT(*) AS n, MAX(id) AS top, "
                    f"BIT_XOR(CRC32(CONCAT_WS('|', id, v, at))) AS crc FROM {LEDGER}")[0]


def server_ids(position: str) -> set[int]:
    return {int(item.split("-")[1]) for item in position.split(",") if item}


class Load:
    """Writes on the primary (one ledger row per commit) and reads on the donor, each in a
    thread, while a clone runs; and what the donor's replication threads said meanwhile."""

    def __init__(self, cluster: MariaDBCluster, donor: MariaDBNode) -> None:
        self.cluster, self.donor = cluster, donor
        self.stop = threading.Event()
        self.written = self.reads = 0
        self.errors: list[str] = []
        self.donor_threads: set[tuple[str, str]] = set()
        self.threads = [threading.Thread(target=self.write, daemon=True),
                        threading.Thread(target=self.read, daemon=True)]

    def write(self) -> None:
        with contextlib.closing(self.cluster.primary.connect()) as conn, conn.cursor() as cur:
            while not self.stop.is_set():
                try:
                    cur.execute(f"INSERT INTO {LEDGER} (v) VALUES (%s)", (f"w{self.written}",))
                    self.written += 1
                except pymysql.MySQLError as error:
                    self.errors.append(f"write: {error}")
                    return

    def read(self) -> None:
        with contextlib.closing(self.donor.connect(cursorclass=pymysql.cursors.DictCursor)) \
                as conn, conn.cursor() as cur:
            while not self.stop.is_set():
                try:
                    cur.execute(f"SELECT COUNT(*) AS n FROM {LEDGER}")
                    cur.fetchall()
                    cur.execute("SHOW SLAVE STATUS")
                    status = cur.fetchone()
                    self.donor_threads.add((status["Slave_IO_Running"],
                                            status["Slave_SQL_Running"]))
                    self.reads += 1
                except pymysql.MySQLError as error:
                    self.errors.append(f"read: {error}")
                    return
                time.sleep(0.01)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


class ArgvWatch:
    """Every process's argv (/proc/*/cmdline), read every few milliseconds in a thread: which
    ones held the password, and the dump's own (with its option file's mode while it ran)."""

    def __init__(self, password: str) -> None:
        self.password = password.encode()
        self.stop = threading.Event()
        self.leaks: list[str] = []
        self.dumps: list[list[str]] = []
        self.option_file_modes: set[int] = set()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    raw = Path(entry.path, "cmdline").read_bytes()
                except OSError:
                    continue
                argv = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
                if self.password in raw:
                    self.leaks.append(" ".join(argv))
                if argv and os.path.basename(argv[0]) == FLAVOUR["clone"]["dump"] \
                        and argv not in self.dumps:
                    self.dumps.append(argv)
                    option = argv[1].removeprefix("--defaults-extra-file=")
                    with contextlib.suppress(OSError):
                        self.option_file_modes.add(os.stat(option).st_mode & 0o777)
            time.sleep(0.005)

    def __enter__(self) -> ArgvWatch:
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        self.thread.join(10)


# --- the real thing ------------------------------------------------------------------------

def test_a_new_node_is_cloned_from_a_running_replica_under_writes(cluster, call):
    primary, donor = cluster.primary, cluster.replicas[0]
    primary.sql(f"INSERT INTO {LEDGER} (v) SELECT CONCAT('seed', seq) "
                "FROM sqlgate_test.seq_1_to_20000")
    node = cluster.add_node("replica2")
    assert node.sql("SELECT @@read_only AS r")[0]["r"] == 1  # as every server starts
    dead = f"127.0.0.1:{free_port()}"
    donors = [dead, at(donor), at(primary)]

    with Load(cluster, donor) as load, ArgvWatch(cluster.clone.password) as argv:
        time.sleep(0.5)  # writes under way before the dump starts
        written_before = load.written
        ret = single(call, "sqlgate_replication.cloned", *clone_args(cluster, node, donors))
        written_during = load.written - written_before
        assert ret["result"] is True, ret
        done = ret["changes"]["clone"]["new"]
        follow = single(call, "sqlgate_replication.following", *follow_args(cluster, node))
        assert follow["result"] is True, follow
        running = single(call, "sqlgate_replication.running", "name=threads", "fresh_only=True",
                         f"socket={node.socket}", "client=mariadb")
        assert running["result"] is True, running
        time.sleep(0.5)  # the new replica catches up while writes go on
    assert load.errors == [], load.errors
    assert written_during > 0 and load.reads > 0

    # The dead donor skipped, the running replica copied, up to where its snapshot was.
    assert done["cloned_from"] == at(donor)
    assert done["skipped"] == [{"donor": dead, "why": "does not answer"}]
    assert done["bytes"] > 1_000_000 and done["seconds"] > 0 and done["wiped"] is None
    assert server_ids(done["gtid"]) == {primary.server_id}
    assert follow["changes"]["source"]["old"] is None  # no replica before: made one

    # Every row the primary has, and nothing else.
    position = primary.sql("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    assert node.sql(f"SELECT MASTER_GTID_WAIT('{position}', 60) AS r")[0]["r"] == 0
    assert ledger(node) == ledger(primary)
    assert ledger(node)["n"] >= 20000 + load.written
    for table in ("sakila.payment", "sakila.rental", "sqlgate.epoch"):
        assert node.sql(f"CHECKSUM TABLE {table}")[0]["Checksum"] == \
            primary.sql(f"CHECKSUM TABLE {table}")[0]["Checksum"], table
    # Nothing of its own in its binary log (the load was not logged), the users it got came
    # as accounts (the clone can log in as the Proxy would), and its own root stayed.
    own = node.sql("SELECT @@gtid_binlog_state AS s, @@gtid_binlog_pos AS p")[0]
    assert node.server_id not in server_ids(own["s"]) | server_ids(own["p"]), own
    assert server_ids(own["s"]) <= {primary.server_id}
    app = cluster.app_users["read"]
    with contextlib.closing(node.connect(app.name, app.password)) as conn, \
            conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM sakila.actor")
        assert cur.fetchone()[0] > 0
    assert node.sql("SELECT COUNT(*) AS n FROM mysql.global_priv WHERE User = 'root'")[0]["n"] == 1
    # The donor's replication ran throughout and still does: reads went on.
    assert load.donor_threads == {("Yes", "Yes")}, load.donor_threads
    assert donor.sql(f"SELECT MASTER_GTID_WAIT('{position}', 60) AS r")[0]["r"] == 0

    # The password was on no command line, the dump's was what the function built, and its
    # option file (0600 while it ran) is gone.
    assert argv.leaks == [], argv.leaks
    assert argv.dumps, "the dump was never seen running"
    dump = argv.dumps[0]
    option_file = dump[1].removeprefix("--defaults-extra-file=")
    assert dump[1:] == [
        f"--defaults-extra-file={option_file}", "--host=127.0.0.1", f"--port={donor.port}",
        "--user=clone", "--ssl", f"--ssl-ca={cluster.ca_file}", "--ssl-verify-server-cert",
        *FLAVOUR["clone"]["dump_options"]]
    assert argv.option_file_modes <= {0o600} and not Path(option_file).exists()

    # A second run changes nothing.
    again = single(call, "sqlgate_replication.cloned", *clone_args(cluster, node, donors))
    assert (again["result"], again["changes"]) == (True, {}), again
    assert "Already a replica" in again["comment"]
    again = single(call, "sqlgate_replication.following", *follow_args(cluster, node))
    assert (again["result"], again["changes"]) == (True, {}), again


def test_donors_that_do_not_answer_or_do_not_replicate_are_skipped(cluster, call):
    primary, replica = cluster.primary, cluster.replicas[0]
    node = cluster.add_node("replica3")
    dead = f"127.0.0.1:{free_port()}"
    ret = single(call, "sqlgate_replication.cloned",
                 *clone_args(cluster, node, [dead, at(replica), at(primary)]), test=True)
    assert ret["result"] is None and ret["changes"]["clone"] == {"old": "fresh",
                                                                 "new": at(replica)}
    assert f"skipping {dead}: does not answer" in ret["comment"]
    # A replica whose SQL thread stopped is no donor: the primary (last) is.
    replica.sql("STOP SLAVE SQL_THREAD")
    try:
        picked = call.run(MINION, "sqlgate_db.donor", json.dumps([at(replica), at(primary)]),
                          f"ssl_ca={cluster.ca_file}", "client=mariadb")
    finally:
        replica.sql("START SLAVE SQL_THREAD")
    assert picked == {"donor": at(primary),
                      "skipped": [{"donor": at(replica), "why": "replication not running"}]}
    # A wrong password: the donor cannot be asked, and the error does not show it.
    picked = call.run(MINION, "sqlgate_db.donor", json.dumps([at(replica), at(primary)]),
                      "password=not-the-password", f"ssl_ca={cluster.ca_file}",
                      "client=mariadb")
    assert picked["skipped"][0]["why"].startswith("cannot be asked: ERROR 1045"), picked
    assert "not-the-password" not in json.dumps(picked)

    # No donor at all: a failed state with the reason, not an exception; nothing changed.
    gone = f"127.0.0.1:{free_port()}"
    ret = single(call, "sqlgate_replication.cloned", *clone_args(cluster, node, [dead, gone]),
                 failing=True)
    assert ret["result"] is False and ret["changes"] == {}, ret
    assert ret["comment"] == (f"clone failed: no donor to clone from ({dead} does not answer; "
                              f"{gone} does not answer)")
    state = call.run(MINION, "sqlgate_db.clone_state", f"socket={node.socket}",
                     "client=mariadb")
    assert (state["replica"], state["history"], state["position"], state["schemas"],
            state["clone"]) == (False, "", "", [], None)
    ret = single(call, "sqlgate_replication.cloned", *clone_args(cluster, node, []),
                 failing=True)
    assert ret["result"] is False and "No donor" in ret["comment"]


def children(pid: int, name: str) -> list[int]:
    """The processes called ``name`` whose parent is ``pid``."""
    found = []
    for entry in os.scandir("/proc"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(entry.path, "stat").read_text()
            comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:]
            if comm == name[:15] and int(rest.split()[1]) == pid:
                found.append(int(entry.name))
    return found


def clone_killed_half_way(call: SaltCall, args: list[str], node: MariaDBNode) -> dict:
    """The state, whose dump is killed (its donor gone, as far as the node can tell) once
    some of the data reached the node."""
    salt = subprocess.Popen([str(SALT_CALL), "--local", "-c", str(call.config_dir(MINION)),
                             "state.single", "sqlgate_replication.cloned", *args, "--out=json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: node.sql("SELECT COUNT(*) AS n FROM information_schema.tables "
                                    "WHERE table_schema = 'sakila'")[0]["n"] > 0,
                   60, "the first tables of the clone")
        (dump,) = wait_until(lambda: children(salt.pid, FLAVOUR["clone"]["dump"]), 10,
                             "the clone's dump")
        os.kill(dump, signal.SIGKILL)
        out, errors = salt.communicate(timeout=120)
        assert out, errors
    finally:
        if salt.poll() is None:
            salt.kill()
            salt.wait()
    (ret,) = json.loads(out)["local"].values()
    return ret


def test_an_interrupted_clone_leaves_no_replica_and_the_next_run_wipes_and_redoes_it(cluster,
                                                                                      call):
    primary, replica = cluster.primary, cluster.replicas[0]
    node = cluster.add_node("replica4")
    donors = [at(replica), at(primary)]
    ret = clone_killed_half_way(call, clone_args(cluster, node, donors), node)
    assert ret["result"] is False, ret
    assert ret["comment"].startswith(f"clone failed: {FLAVOUR['clone']['dump']} failed (-9)")
    assert ret["comment"].endswith("the next run wipes what it loaded and clones again"), ret
    # Clearly no replica: no source, no position, nothing in its own binary log; marked. What
    # it loaded stays until then.
    state = call.run(MINION, "sqlgate_db.clone_state", f"socket={node.socket}",
                     "client=mariadb")
    assert (state["replica"], state["history"], state["position"]) == (False, "", "")
    assert state["clone"]["state"] == "loading" and "sakila" in state["schemas"]
    assert node.sql("SELECT @@gtid_slave_pos AS p")[0]["p"] == ""
    # Its watch job asks no rejoin meanwhile (one would replay the primary over the copy).
    seen = call.run(MINION, "sqlgate_db.watch", f"socket={node.socket}", "client=mariadb")
    assert seen.get("cloning") is True and seen["fired"] is None, seen
    # A node holding data that no clone left (loaded without binary logging) is refused, not
    # wiped.
    other = cluster.add_node("replica5")
    with contextlib.closing(other.connect()) as conn, conn.cursor() as cur:
        cur.execute("SET SESSION sql_log_bin = 0")
        cur.execute("CREATE DATABASE by_hand")
    ret = single(call, "sqlgate_replication.cloned", *clone_args(cluster, other, donors),
                 failing=True)
    assert ret["result"] is False and "that no clone left" in ret["comment"], ret
    assert other.sql("SHOW DATABASES LIKE 'by_hand'")

    # A clone that takes too long is stopped the same way (after the wipe of the first one).
    ret = single(call, "sqlgate_replication.cloned",
                 *clone_args(cluster, node, donors, timeout="0.2"), failing=True)
    assert ret["comment"].startswith("clone failed: the clone took longer than 0.2 s"), ret
    assert node.sql("SELECT @@gtid_slave_pos AS p")[0]["p"] == ""
    # The next run wipes whatever was loaded and clones again.
    ret = single(call, "sqlgate_replication.cloned", *clone_args(cluster, node, donors))
    assert ret["result"] is True, ret
    done = ret["changes"]["clone"]
    assert done["old"].startswith(f"an interrupted clone from {at(replica)}")
    assert done["new"]["cloned_from"] == at(replica)
    assert "mysql" not in done["new"]["wiped"]["dropped_schemas"]
    # The failover runner's way to make it follow (sqlgate_db.follow, as a rejoin does) keeps
    # the clone's position: it does not replay the primary's history over it.
    call.run(MINION, "sqlgate_db.follow", "source=127.0.0.1", f"port={primary.port}",
             f"change_source={FLAVOUR['change_source']}",
             f"change_source_ssl={FLAVOUR['change_source_ssl']}", f"ssl_ca={cluster.ca_file}",
             f"socket={node.socket}", "client=mariadb")
    primary.sql(f"INSERT INTO {LEDGER} (v) VALUES ('after the clone')")
    position = primary.sql("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    assert node.sql(f"SELECT MASTER_GTID_WAIT('{position}', 60) AS r")[0]["r"] == 0, \
        node.sql("SHOW SLAVE STATUS")
    assert ledger(node) == ledger(primary)
    status = node.sql("SHOW SLAVE STATUS")[0]
    assert (status["Slave_IO_Running"], status["Slave_SQL_Running"]) == ("Yes", "Yes")


# --- the module and the state on their own -------------------------------------------------

def test_the_modules_fallback_steps_are_the_flavours_file():
    module = load_salt_module("modules", "sqlgate_db", {})
    for flavour in ("mariadb", "mysql"):
        assert module.CLONE_STEPS[flavour] == FLAVOUR_FILE[flavour]["clone"], flavour


def test_donor_addresses():
    module = load_salt_module("modules", "sqlgate_db", {})
    assert module._donor_address("10.0.0.12", 3306) == ("10.0.0.12", 3306)
    assert module._donor_address("10.0.0.12:3307", 3306) == ("10.0.0.12", 3307)
    assert module._donor_address("[fd00::5]:3307", 3306) == ("fd00::5", 3307)
    assert module._donor_address("fd00::5", 3306) == ("fd00::5", 3306)
    assert module._donor_address("replica2", "3306") == ("replica2", 3306)
    for bad in ("", "-h1", "a b", "10.0.0.1:x", "[fd00::5]:"):
        with pytest.raises(Exception, match="not a donor address"):
            module._donor_address(bad, 3306)


# The shape of MySQL 8.0's mysqldump with --source-data=2 --set-gtid-purged=ON (a long GTID
# set goes over several lines); not a recording.
MYSQL_DUMP = b"""\
-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)
/*!40101 SET NAMES utf8mb4 */;
SET @MYSQLDUMP_TEMP_LOG_BIN = @@SESSION.SQL_LOG_BIN;
SET @@SESSION.SQL_LOG_BIN= 0;

--
-- GTID state at the beginning of the backup
--

SET @@GLOBAL.GTID_PURGED=/*!80000 '+'*/ '7664fad8-49fd-11e8-a546-4201c0a8010a:1-766741,
90e79fc1-49fd-11e8-a6dd-4201c0a8010b:1-20227';

--
-- Position to start replication or point-in-time recovery from
--

-- CHANGE REPLICATION SOURCE TO SOURCE_LOG_FILE='binlog.000233', SOURCE_LOG_POS=314582450;

CREATE DATABASE /*!32312 IF NOT EXISTS*/ `sakila`;
INSERT INTO `actor` VALUES (1,'PENELOPE','GUINESS','2006-02-15 04:34:33');
SET @@SESSION.SQL_LOG_BIN = @MYSQLDUMP_TEMP_LOG_BIN;
-- Dump completed on 2026-01-01 10:00:00
"""


class FakeProcess:
    def __init__(self, argv: list[str], stdout: bytes = b"") -> None:
        self.argv = argv
        self.stdout = io.BytesIO(stdout)
        self.stdin = io.BytesIO()
        self.stdin.close = lambda: None  # keep what was written readable
        self.killed = False

    def wait(self) -> int:
        return 0

    def kill(self) -> None:
        self.killed = True


def fake_subprocess(popen) -> SimpleNamespace:
    """The module's ``subprocess``, its processes started by ``popen``."""
    return SimpleNamespace(Popen=popen, PIPE=subprocess.PIPE, DEVNULL=subprocess.DEVNULL)


def test_mysqls_clone_through_the_commands_and_sql_it_emits(tmp_path):
    """MySQL: mysqldump over TLS with its options (no password on the command line), RESET
    MASTER before the load, the dump's GTID_PURGED kept out of what is loaded and set once all
    of it is in, and the grant tables flushed."""
    client = FakeClient()
    asked: list[tuple[list[str], str]] = []

    def run_all(cmd, stdin=None, **kwargs):
        asked.append((list(cmd), stdin or ""))
        if "--host=10.0.0.13" in cmd:  # the donor check, over the network
            return {"retcode": 0, "stdout": "ON\n", "stderr": ""}
        if (stdin or "").startswith("SELECT @@gtid_executed"):
            return {"retcode": 0, "stdout": "\t\n", "stderr": ""}
        return client.run_all(cmd, stdin=stdin, **kwargs)

    module = load_salt_module("modules", "sqlgate_db", {"cmd.run_all": run_all})
    module.__opts__ = {"id": "replica3", "cachedir": str(tmp_path), "test": False}
    module._answers = lambda address, port=3306, timeout=1.0: True
    started: list[FakeProcess] = []
    option_files: list[str] = []

    def popen(argv, **kwargs):
        process = FakeProcess(argv, MYSQL_DUMP if argv[0] == "mysqldump" else b"")
        if argv[0] == "mysqldump":
            option = argv[1].removeprefix("--defaults-extra-file=")
            option_files.append(Path(option).read_text())
            assert os.stat(option).st_mode & 0o777 == 0o600
        started.append(process)
        return process

    module.subprocess = fake_subprocess(popen)
    steps = FLAVOUR_FILE["mysql"]["clone"]
    done = module.clone(["10.0.0.13", "10.0.0.12"], password='p"w#1', ssl_ca="/tls/ca.crt",
                        steps=steps, client="mysql", socket="/run/mysqld/mysqld.sock")
    assert done["cloned_from"] == "10.0.0.13:3306"
    assert done["gtid"] == ("7664fad8-49fd-11e8-a546-4201c0a8010a:1-766741,"
                            "90e79fc1-49fd-11e8-a6dd-4201c0a8010b:1-20227")
    assert done["bytes"] == len(MYSQL_DUMP)

    load, dump = started
    assert load.argv == ["mysql", "--socket=/run/mysqld/mysqld.sock"]
    assert dump.argv[0] == "mysqldump" and dump.argv[1].startswith("--defaults-extra-file=")
    assert dump.argv[2:] == ["--host=10.0.0.13", "--port=3306", "--user=clone",
                             "--ssl-mode=VERIFY_CA", "--ssl-ca=/tls/ca.crt",
                             "--ssl-mode=VERIFY_IDENTITY", *steps["dump_options"]]
    assert option_files == ["[client]\npassword='p\"w#1'\n"]
    assert not any('p"w#1' in " ".join(argv) for argv, _ in asked)
    assert not any('p"w#1' in " ".join(process.argv) for process in started)
    loaded = load.stdin.getvalue().decode()
    assert loaded.startswith("SET SESSION sql_log_bin = 0;\n")
    assert "GTID_PURGED" not in loaded and "90e79fc1" not in loaded
    assert "INSERT INTO `actor`" in loaded and loaded.rstrip().endswith("completed on "
                                                                         "2026-01-01 10:00:00")
    local = [stdin for argv, stdin in asked if "--socket=/run/mysqld/mysqld.sock" in argv]
    assert "RESET MASTER;\n" in local
    assert local[-1] == (f"SET GLOBAL gtid_purged = '{done['gtid']}';\nFLUSH PRIVILEGES;\n")
    assert local.index("RESET MASTER;\n") < len(local) - 1
    # Its own history is not the one a clone set: following makes it a replica.
    mark = json.loads((tmp_path / "sqlgate-clone.json").read_text())
    assert mark["/run/mysqld/mysqld.sock"]["state"] == "cloned"


def test_a_failing_load_is_an_error_with_its_message_and_no_position(tmp_path):
    client = FakeClient(answer="")

    def run_all(cmd, stdin=None, **kwargs):
        if (stdin or "").startswith("SELECT @@gtid_binlog_pos"):
            return {"retcode": 0, "stdout": "\t\n", "stderr": ""}
        return client.run_all(cmd, stdin=stdin, **kwargs)

    module = load_salt_module("modules", "sqlgate_db", {"cmd.run_all": run_all})
    module.__opts__ = {"id": "replica3", "cachedir": str(tmp_path), "test": False}
    module._answers = lambda address, port=3306, timeout=1.0: True

    class Failing(FakeProcess):
        def wait(self) -> int:
            return 1 if self.argv[0] == "mariadb" else 0

    def popen(argv, stderr=None, **kwargs):
        if argv[0] == "mariadb":
            stderr.write(b"ERROR 1062 (23000) at line 9: Duplicate entry '1' for key 'PRIMARY'")
        return Failing(argv, b"-- SET GLOBAL gtid_slave_pos='0-1-5';\n"
                       if argv[0] == "mariadb-dump" else b"")

    module.subprocess = fake_subprocess(popen)
    with pytest.raises(Exception, match="clone failed: mariadb failed \\(1\\): ERROR 1062"):
        module.clone(["10.0.0.12"], password="pw", ssl_ca="/ca.crt", client="mariadb")
    assert not any("gtid_slave_pos" in sql for sql in client.statements)
    mark = json.loads((tmp_path / "sqlgate-clone.json").read_text())
    assert mark["/run/mysqld/mysqld.sock"]["state"] == "loading"


def states(answers: dict, test: bool = False):
    """The state module over stand-ins of the sqlgate_db functions it calls."""
    calls: list[tuple[str, tuple, dict]] = []

    def stand_in(name):
        def function(*args, **kwargs):
            calls.append((name, args, kwargs))
            answer = answers[name]
            if isinstance(answer, Exception):
                raise answer
            return answer
        return function

    salt = {f"sqlgate_db.{name}": stand_in(name) for name in
            ("clone_state", "clone", "donor", "replica_status", "execute")}
    return load_salt_module("states", "sqlgate_replication", salt, {"test": test}), calls


FRESH = {"running": True, "replica": False, "source": "", "history": "", "position": "",
         "schemas": [], "clone": None}


def test_the_state_clones_only_a_fresh_node():
    from salt.exceptions import CommandExecutionError

    for state, expected in (
            ({"replica": True, "source": "10.0.0.12"}, "Already a replica (of 10.0.0.12)"),
            ({"history": "0-1-40"}, "a history of its own"),
            ({"position": "0-1-40"}, "Already holds a copy up to 0-1-40")):
        module, calls = states({"clone_state": {**FRESH, **state}})
        ret = module.cloned("c", ["10.0.0.13"], "pw")
        assert (ret["result"], ret["changes"]) == (True, {}) and expected in ret["comment"]
        assert [name for name, _, _ in calls] == ["clone_state"]
    module, _ = states({"clone_state": {**FRESH, "schemas": ["sakila"]}})
    ret = module.cloned("c", ["10.0.0.13"], "pw")
    assert ret["result"] is False and "Holds data (sakila) that no clone left" in ret["comment"]
    module, _ = states({"clone_state": {**FRESH, "running": False, "error": "ERROR 2002"}})
    assert "does not answer: ERROR 2002" in module.cloned("c", ["10.0.0.13"])["comment"]

    # A half-done clone is done again; test mode only says from where.
    partial = {**FRESH, "schemas": ["sakila"], "clone": {"state": "loading",
                                                        "donor": "10.0.0.13:3306"}}
    module, calls = states({"clone_state": partial, "donor": {
        "donor": "10.0.0.12:3306", "skipped": [{"donor": "10.0.0.13:3306",
                                                 "why": "does not answer"}]}}, test=True)
    ret = module.cloned("c", ["10.0.0.13", "10.0.0.12"], "pw")
    assert ret["result"] is None
    assert ret["changes"] == {"clone": {
        "old": "an interrupted clone from 10.0.0.13:3306, wiped first", "new": "10.0.0.12:3306"}}
    assert "skipping 10.0.0.13:3306: does not answer" in ret["comment"]
    assert [name for name, _, _ in calls] == ["clone_state", "donor"]

    done = {"cloned_from": "10.0.0.12:3306", "gtid": "0-1-9", "bytes": 10, "seconds": 1.5,
            "skipped": [], "wiped": None}
    module, calls = states({"clone_state": FRESH, "clone": done})
    ret = module.cloned("c", "10.0.0.12", "pw", port=3307, ssl_ca="/ca.crt", timeout=60,
                        verify_name=False, steps={"dump": "x"}, client="mariadb", socket="/s")
    assert ret["result"] is True and ret["changes"]["clone"]["new"] == done
    assert "Cloned from 10.0.0.12:3306 up to 0-1-9" in ret["comment"]
    assert calls[-1] == ("clone", (["10.0.0.12"],), {
        "port": 3307, "user": "clone", "password": "pw", "ssl_ca": "/ca.crt",
        "verify_name": False, "steps": {"dump": "x"}, "client": "mariadb", "timeout": 60,
        "socket": "/s"})

    module, _ = states({"clone_state": FRESH, "clone": CommandExecutionError(
        "clone failed: mariadb-dump failed (2): Access denied using password s3cret")})
    ret = module.cloned("c", ["10.0.0.12"], "s3cret")
    assert ret["result"] is False and "s3cret" not in ret["comment"]
    assert "mariadb-dump failed (2)" in ret["comment"]


def test_a_node_being_cloned_asks_for_no_rejoin(tmp_path):
    sent = []
    client = FakeClient(status="")
    module = load_salt_module("modules", "sqlgate_db", {
        "cmd.run_all": client.run_all, "event.send": lambda tag, data: sent.append(tag)})
    module.__opts__ = {"id": "replica3", "cachedir": str(tmp_path)}
    module.__pillar__ = {"sqlgate": {"hosts": {"primary": {"role": "primary"}}}}
    module._clone_marks(None, {"state": "loading", "donor": "10.0.0.13:3306"})
    assert module.watch(now=100) == {"node": "replica3", "fired": None, "cloning": True}
    module._clone_marks(None, {"state": "cloned", "gtid": "0-1-9"})
    assert module.watch(now=200)["fired"] == "sqlgate/db/rejoin"
    assert sent == ["sqlgate/db/rejoin"]


def test_follow_keeps_a_clones_position():
    """A node that was no replica starts from its own binary log's position, unless that is
    empty (a clone: its replica position is the one it was given)."""
    module = load_salt_module("modules", "sqlgate_db", {})
    statement = module.FLAVOUR_SQL["mariadb"]["start_from_binlog"]
    assert statement == ("SET GLOBAL gtid_slave_pos = IF(@@gtid_binlog_pos = '', "
                         "@@gtid_slave_pos, @@gtid_binlog_pos)")
