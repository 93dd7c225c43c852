"""A MariaDB primary and GTID replicas on loopback ports, each in its own temporary directory.

The database set-up is the Salt formula's, read through ``cluster.formula``: each server's
option file is rendered from the formula's ``server.cnf.jinja`` with its server options (and its
replica options on replicas), replicas follow the primary with the flavour's ``change_source``
statement, and the primary gets the users, grants and schemas of ``db/users.sls`` and the
heartbeat table of ``files/heartbeat.sql``. So the services are tested against the replication
and the privileges they get when deployed. What only makes sense on one machine (ports, sockets,
memory, the connect retry) is set here, in ``LOOPBACK_SERVER_FLAGS`` and beside it.

TLS too is the deployed one: each server has a certificate from the cluster's throw-away CA
(``cluster.loopback.tls``) naming its loopback address, every user but root (by socket) and
``sb@localhost`` must use TLS, and the replicas reach the primary over TLS, checking its
certificate.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import pymysql

from cluster.formula import FORMULA_FILES, db_settings
from cluster.loopback.processes import free_port, terminate
from cluster.loopback.tls import CertFiles, LoopbackPki
from cluster.waiting import GiveUp, wait_until

FLAVOUR = "mariadb"
# The shared Sakila copy beside the checkout (../shared/datasets/sakila), unless told otherwise.
SAKILA_DIR = Path(os.environ.get("SQLGATE_SAKILA_DIR") or
                  Path(__file__).resolve().parents[3] / "shared" / "datasets" / "sakila")
HEARTBEAT_SQL = FORMULA_FILES / "heartbeat.sql"
EPOCH_SQL = FORMULA_FILES / "epoch.sql"
SERVER_CNF_TEMPLATE = "server.cnf.jinja"

# Loopback-only: the tests' own scratch schema (tests/conftest.py), beside the formula's
# application schemas and with the same grants for each scope's user.
TEST_SCHEMAS = ("sqlgate_test",)
# Loopback-only server flags, given after the option file so they win over it: listen on
# loopback only (the template binds every address, for the VPC), and stay small, since a test
# run starts several trios on one machine; max_connections covers the Proxy's pools and the
# load tests' clients.
LOOPBACK_SERVER_FLAGS = ("--bind-address=127.0.0.1", "--innodb-buffer-pool-size=64M",
                         "--max-connections=300")
# The fault tests stop, kill and restart the primary and wait for the replicas to come back
# into rotation; the formula's retry interval (5 s, fine for a real network) would add up to
# 5 s to each of those waits, so the replicas here retry every second.
CONNECT_RETRY_SECONDS = 1


def mariadb_binaries() -> tuple[str, str]:
    db = db_settings(FLAVOUR)
    server = (shutil.which(Path(db["server_binary"]).name) or shutil.which("mysqld")
              or db["server_binary"])
    installer = shutil.which(shlex.split(db["initialise"])[0]) or shutil.which("mysql_install_db")
    if not Path(server).exists() or installer is None:
        raise RuntimeError("MariaDB is not installed: run `make system-packages` (as root)")
    return server, installer


def install_command(installer: str, datadir: Path) -> list[str]:
    """The formula's ``initialise`` command for ``datadir``, with this machine's installer, no
    option files read (``--no-defaults`` must come first), and ``--user`` only when root."""
    args = shlex.split(db_settings(FLAVOUR)["initialise"].format(datadir=datadir))
    if os.geteuid() != 0:
        args = [arg for arg in args if not arg.startswith("--user=")]
    return [installer, "--no-defaults", *args[1:]]


def change_source_sql(source: str, port: int, user: str, password: str, ca: str) -> str:
    """The flavour's ``change_source`` statement (over TLS, checking the source's certificate
    against ``ca``), with the loopback's connect retry."""
    db = db_settings(FLAVOUR)
    statement = (db["change_source"].format(source=source, port=port, user=user,
                                            password=password)
                 + ", " + db["change_source_ssl"].format(ssl=1, ssl_ca=ca))
    statement, count = re.subn(r"\b((?:MASTER|SOURCE)_CONNECT_RETRY)\s*=\s*\d+",
                               rf"\g<1>={CONNECT_RETRY_SECONDS}", statement)
    if count != 1:
        raise ValueError(f"no single connect retry to override in {statement!r}")
    return statement


def server_option_file(*, server_id: int, port: int, socket: Path, datadir: Path,
                       tls: CertFiles) -> str:
    """The formula's option file (``files/server.cnf.jinja``) for one loopback server, rendered
    with the context db/config.sls gives it."""
    db = db_settings(FLAVOUR)
    options = dict(db["server_options"])
    if db["statement_limit_server"]:  # a flavour without a per-user statement time limit
        options[db["statement_limit_server"]] = int(db["statement_seconds"] * 1000)
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(FORMULA_FILES),
                                     undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                     autoescape=False)
    return environment.get_template(SERVER_CNF_TEMPLATE).render(
        server_id=server_id, port=port, socket=socket, datadir=datadir,
        binlog_expire_seconds=db["binlog_expire_seconds"], options=options,
        tls={"ca": tls.ca, "cert": tls.cert, "key": tls.key}) + "\n"


def _seqno(position: str) -> int:
    """The highest sequence number of a MariaDB GTID position (one domain here)."""
    return max((int(item.rsplit("-", 1)[1]) for item in position.split(",") if item), default=0)


def quoted(value: str) -> str:
    """An SQL string literal's body."""
    return value.replace("\\", "\\\\").replace("'", "''")


@dataclass
class MariaDBNode:
    name: str
    server_id: int
    datadir: Path
    port: int = field(default_factory=free_port)
    # The server's certificate, key and CA (``LoopbackPki.issue``).
    tls: CertFiles | None = None
    process: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.datadir / "mysqld.sock"

    @property
    def option_file(self) -> Path:
        """The rendered server.cnf, beside the data directory so that this stays the server's
        own; rewritten at each start."""
        return self.datadir.with_name(f"{self.datadir.name}.cnf")

    def start(self) -> None:
        server, _ = mariadb_binaries()
        assert self.tls is not None, "a server needs its certificate (MariaDBCluster issues it)"
        self.option_file.write_text(server_option_file(
            server_id=self.server_id, port=self.port, socket=self.socket, datadir=self.datadir,
            tls=self.tls))
        self.option_file.chmod(0o644)  # the server ignores world-writable option files
        args = [
            server, f"--defaults-file={self.option_file}",  # must come first
            f"--pid-file={self.datadir}/mysqld.pid", f"--log-error={self.datadir}/error.log",
            *LOOPBACK_SERVER_FLAGS,
        ]
        if os.geteuid() == 0:
            args.append("--user=mysql")
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        try:
            wait_until(self._ready, 30, f"MariaDB {self.name} on port {self.port}")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            log = (self.datadir / "error.log").read_text(errors="replace")[-2000:]
            raise GiveUp(f"MariaDB {self.name} exited: {log}")
        self.sql("SELECT 1")
        return True

    def stop(self) -> None:
        terminate(self.process, grace=30)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown (InnoDB recovers at the next start)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def connect(self, user: str = "root", password: str = "", *, tls: bool = True,
                **kwargs) -> pymysql.Connection:
        """Root by socket, as on a packaged server; any other user over TCP with TLS, checking
        the server's certificate against the cluster's CA (``tls=False``: plain, which the
        servers refuse: for the tests that show it)."""
        if user == "root":
            return pymysql.connect(unix_socket=str(self.socket), user="root", autocommit=True,
                                   **kwargs)
        if tls:
            assert self.tls is not None
            kwargs["ssl"] = ssl.create_default_context(cafile=str(self.tls.ca))
        else:
            kwargs["ssl_disabled"] = True  # PyMySQL would otherwise try TLS unverified
        return pymysql.connect(host="127.0.0.1", port=self.port, user=user, password=password,
                               autocommit=True, **kwargs)

    def sql(self, statement: str) -> list[dict]:
        """Run one statement as root and return its rows as dicts."""
        with self.connect(cursorclass=pymysql.cursors.DictCursor) as conn, \
                conn.cursor() as cursor:
            cursor.execute(statement)
            return list(cursor.fetchall())

    def promote(self, epoch: int) -> None:
        """The flavour's promotion (docs/failover.md): replication gone, the epoch row
        written, the primary side of semi-sync on and writes allowed last. Every server starts
        read-only; this is what makes one the primary."""
        db = db_settings(FLAVOUR)
        for statement in db["promote"]:
            self.sql(statement)
        self.sql(db["epoch_write"].format(epoch=int(epoch), host=quoted(self.name)))
        for statement in db["open_writes"]:
            self.sql(statement)

    def fence(self, planned: bool = False) -> None:
        """Read-only again, and no semi-sync primary side: what a failover does to the old
        primary where it can reach it. ``planned`` (a switchover's first step): writes stop,
        semi-sync stays on for the commits in flight."""
        for statement in db_settings(FLAVOUR)["stop_writes" if planned else "fence"]:
            self.sql(statement)

    def source(self, path: Path) -> None:
        """Load an SQL file with the client, which understands DELIMITER."""
        with path.open("rb") as script:
            subprocess.run([db_settings(FLAVOUR)["client"], f"--socket={self.socket}", "-uroot"],
                           stdin=script, check=True, capture_output=True)


@dataclass(frozen=True)
class DbUser:
    name: str
    password: str


class MariaDBCluster:
    """One primary and ``replicas`` replicas replicating with GTID over TLS, with the formula's
    users: the Proxy's one per scope (``app_users``), its health monitor's, ``repl``, and
    sysbench's ``sb@localhost``.

    The CA and every certificate live in the cluster's directory (``pki``), so the services
    of a loopback stack take theirs from the same CA."""

    def __init__(self, replicas: int = 2, sb_password: str = "sysbench-loopback") -> None:
        self.settings: dict[str, Any] = db_settings(FLAVOUR)
        self.root = Path(tempfile.mkdtemp(prefix="sqlgate-mariadb-"))
        if os.geteuid() == 0:  # the servers run as mysql and read their files here
            shutil.chown(self.root, "mysql", "mysql")
        self.pki = LoopbackPki(self.root / "tls")
        db = self.settings
        # Loopback passwords: the servers listen on 127.0.0.1 only and live as long as a run.
        self.app_users = {scope: DbUser(spec["user"], f"{spec['user']}-loopback-password")
                          for scope, spec in db["app_users"].items()}
        self.monitor = DbUser(db["monitor"]["user"], "monitor-loopback-password")
        self.repl_user, self.repl_password = db["repl_user"], "repl-test-password"
        self.sb_user, self.sb_password = "sb", sb_password
        self.epoch = 0  # the last promotion's
        self.primary = self._node("primary", 1)
        self.replicas = [self._node(f"replica{i}", i + 1) for i in range(1, replicas + 1)]

    def _node(self, name: str, server_id: int) -> MariaDBNode:
        return MariaDBNode(name, server_id, self.root / name,
                           tls=self.pki.issue(name, owner="mysql"))

    @property
    def ca_file(self) -> Path:
        """The CA the servers' certificates chain to: what every client verifies them with."""
        return self.pki.ca_file

    @property
    def app_schemas(self) -> tuple[str, ...]:
        """The formula's application schemas, then the tests' own."""
        return (*self.settings["app_schemas"], *TEST_SCHEMAS)

    def start(self) -> None:
        _, installer = mariadb_binaries()
        template = self.root / "template"
        template.mkdir()
        if os.geteuid() == 0:
            shutil.chown(template, "mysql", "mysql")
        subprocess.run(install_command(installer, template), check=True, capture_output=True)
        for node in self.nodes:  # a copied data directory starts faster than a fresh install
            shutil.copytree(template, node.datadir, symlinks=True)
            if os.geteuid() == 0:
                shutil.chown(node.datadir, "mysql", "mysql")
                for path in node.datadir.rglob("*"):
                    shutil.chown(path, "mysql", "mysql")
        try:
            for node in self.nodes:
                node.start()
            self._configure()
        except BaseException:
            self.destroy()
            raise

    def _user_sql(self, user: DbUser, *, app: bool = False) -> str:
        """db/users.sls's account: TLS required; an application user bounded in connections
        and statement time."""
        db = self.settings
        limits = ""
        if app:
            limits = f" WITH MAX_USER_CONNECTIONS {db['max_user_connections']}"
            if db["statement_limit_user"]:  # else the server option bounds statements
                limits += f" {db['statement_limit_user'].upper()} {db['statement_seconds']}"
        return (f"CREATE USER '{user.name}'@'%' IDENTIFIED BY '{quoted(user.password)}' "
                f"REQUIRE SSL{limits}")

    def _configure(self) -> None:
        """The first promotion, then db/users.sls, db/replication.sls and db/heartbeat.sls, in
        SQL."""
        primary, db = self.primary, self.settings
        primary.sql(f"CREATE DATABASE IF NOT EXISTS {db['monitor']['schema']}")
        primary.source(EPOCH_SQL)
        self.epoch = 1
        primary.promote(self.epoch)
        primary.sql(self._user_sql(DbUser(self.repl_user, self.repl_password)))
        primary.sql(f"GRANT REPLICATION SLAVE ON *.* TO '{self.repl_user}'@'%'")
        for replica in self.replicas:
            replica.sql(change_source_sql("127.0.0.1", primary.port, self.repl_user,
                                          quoted(self.repl_password), str(self.ca_file)))
            replica.sql("START SLAVE")
        # Everything below is replicated: users, schemas and data reach the replicas by GTID.
        monitor_schema = db["monitor"]["schema"]
        for schema in dict.fromkeys((*self.app_schemas, monitor_schema, db["bench_schema"])):
            primary.sql(f"CREATE DATABASE IF NOT EXISTS {schema}")
        for scope, user in self.app_users.items():
            primary.sql(self._user_sql(user, app=True))
            for schema in self.app_schemas:
                primary.sql(f"GRANT {db['app_users'][scope]['privileges']} ON {schema}.* "
                            f"TO '{user.name}'@'%'")
        primary.sql(self._user_sql(self.monitor))
        primary.sql(f"GRANT {db['monitor_privilege']} ON *.* TO '{self.monitor.name}'@'%'")
        primary.sql(f"GRANT {db['monitor']['privileges']} ON {monitor_schema}.* "
                    f"TO '{self.monitor.name}'@'%'")
        primary.sql(f"CREATE USER '{self.sb_user}'@'localhost' "
                    f"IDENTIFIED BY '{quoted(self.sb_password)}'")
        primary.sql(f"GRANT ALL PRIVILEGES ON {db['bench_schema']}.* "
                    f"TO '{self.sb_user}'@'localhost'")
        primary.source(HEARTBEAT_SQL)
        self._load_sample_data()
        self.wait_for_replicas()

    def _load_sample_data(self) -> None:
        schema, data = SAKILA_DIR / "sakila-schema.sql", SAKILA_DIR / "sakila-data.sql"
        if schema.exists() and data.exists():
            self.primary.source(schema)
            self.primary.source(data)
            return
        # Without the shared dataset: a small stand-in with the table the tests read.
        self.primary.sql("CREATE TABLE sakila.actor (actor_id SMALLINT UNSIGNED AUTO_INCREMENT "
                         "PRIMARY KEY, first_name VARCHAR(45) NOT NULL, last_name VARCHAR(45) "
                         "NOT NULL, last_update TIMESTAMP DEFAULT CURRENT_TIMESTAMP)")
        values = ", ".join(f"('FIRST{i}', 'LAST{i}')" for i in range(1, 201))
        self.primary.sql(f"INSERT INTO sakila.actor (first_name, last_name) VALUES {values}")

    def wait_for_replicas(self, timeout: float = 60) -> None:
        """Block until every running replica has applied everything the primary has logged."""
        position = self.primary.sql("SELECT @@gtid_binlog_pos AS pos")[0]["pos"]
        for replica in self.replicas:
            if replica.running:
                waited = replica.sql(f"SELECT MASTER_GTID_WAIT('{position}', {timeout}) AS r")
                if waited[0]["r"] != 0:
                    raise TimeoutError(f"{replica.name} did not reach {position}")

    # --- failover, as the Salt runner does it (salt/_runners), for the Proxy's tests ---------

    def follow(self, node: MariaDBNode, source: MariaDBNode) -> None:
        """Point ``node`` at ``source`` by GTID (an old primary's own transactions become its
        replica position first, as MaxScale's rejoin does)."""
        node.sql("STOP SLAVE")
        if node.sql("SHOW SLAVE STATUS") == []:  # never a replica, or reset by a promotion
            node.sql("SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_binlog_pos")
        node.sql(change_source_sql("127.0.0.1", source.port, self.repl_user,
                                   quoted(self.repl_password), str(self.ca_file)))
        node.sql("START SLAVE")

    def _take_over(self, new: MariaDBNode) -> None:
        """Promote ``new`` at the next epoch, and make every other running node follow it."""
        self.epoch = max(self.epoch, int(new.sql("SELECT epoch FROM sqlgate.epoch")[0]["epoch"]))
        self.epoch += 1
        new.promote(self.epoch)
        everyone = self.nodes
        self.primary = new
        self.replicas = [node for node in everyone if node is not new]
        for node in self.replicas:
            if node.running:
                self.follow(node, new)

    def restart(self, node: MariaDBNode) -> None:
        """Start a stopped server, which comes back read-only. The primary is promoted again
        only if no replica received more than it kept (a crashed primary truncates what no
        replica acknowledged, yet a replica may have received it); otherwise the most
        advanced replica takes over and the old primary follows it. A replica follows the
        primary again."""
        node.start()
        if node is not self.primary:
            return
        mine = _seqno(node.sql("SELECT @@GLOBAL.gtid_binlog_pos AS pos")[0]["pos"])
        received = [_seqno(replica.sql("SHOW SLAVE STATUS")[0]["Gtid_IO_Pos"])
                    for replica in self.replicas if replica.running]
        if all(position <= mine for position in received):
            self._take_over(node)
        else:
            self.failover()

    @property
    def nodes(self) -> list[MariaDBNode]:
        return sorted([self.primary, *self.replicas], key=lambda node: node.server_id)

    def switchover(self, to: MariaDBNode, timeout: float = 30) -> None:
        """Planned: the primary fenced (read-only), ``to`` waits until it has every one of its
        transactions, then takes over; the old primary follows it."""
        old = self.primary
        old.fence(planned=True)
        position = old.sql("SELECT @@GLOBAL.gtid_binlog_pos AS pos")[0]["pos"]
        if to.sql(f"SELECT MASTER_GTID_WAIT('{position}', {timeout}) AS r")[0]["r"] != 0:
            raise TimeoutError(f"{to.name} did not reach {position}")
        old.fence()  # its writes are over: semi-sync's primary side off too, before it follows
        self._take_over(to)

    def failover(self, timeout: float = 30) -> MariaDBNode:
        """Unplanned, the primary gone: every replica's IO thread stopped, the one that
        received the most of the old primary's transactions applies its relay log and takes
        over. Returns it."""
        running = [node for node in self.replicas if node.running]
        received = {}
        for node in running:
            node.sql("STOP SLAVE IO_THREAD")
            status = node.sql("SHOW SLAVE STATUS")[0]
            received[node.name] = status["Gtid_IO_Pos"]
        best = max(running, key=lambda node: _seqno(received[node.name]))
        position = received[best.name]
        best.sql("START SLAVE SQL_THREAD")  # applies what it received (a no-op if running)
        if position and best.sql(
                f"SELECT MASTER_GTID_WAIT('{position}', {timeout}) AS r")[0]["r"] != 0:
            raise TimeoutError(f"{best.name} did not apply its relay log up to {position}")
        self._take_over(best)
        return best

    def destroy(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)
