"""A MariaDB primary and GTID replicas on loopback ports, each in its own temporary directory.

The same server settings as the Salt states apply (ROW binlog, GTID strict mode, replica
updates logged, read-only replicas), so the services are tested against real replication.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pymysql

from cluster.loopback.processes import free_port, terminate
from cluster.waiting import GiveUp, wait_until

# The shared Sakila copy beside the checkout (../shared/datasets/sakila), unless told otherwise.
SAKILA_DIR = Path(os.environ.get("SQLGATE_SAKILA_DIR") or
                  Path(__file__).resolve().parents[3] / "shared" / "datasets" / "sakila")
APP_SCHEMAS = ("sakila", "sqlgate", "sqlgate_test")
HEARTBEAT_SQL = Path(__file__).resolve().parents[2] / "salt/sqlgate/files/heartbeat.sql"


def mariadb_binaries() -> tuple[str, str]:
    server = shutil.which("mariadbd") or shutil.which("mysqld") or "/usr/sbin/mariadbd"
    installer = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    if not Path(server).exists() or installer is None:
        raise RuntimeError("MariaDB is not installed: run `make system-packages` (as root)")
    return server, installer


@dataclass
class MariaDBNode:
    name: str
    server_id: int
    datadir: Path
    port: int = field(default_factory=free_port)
    read_only: bool = False
    process: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.datadir / "mysqld.sock"

    def start(self) -> None:
        server, _ = mariadb_binaries()
        args = [
            server, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
            f"--port={self.port}", "--bind-address=127.0.0.1", f"--server-id={self.server_id}",
            f"--pid-file={self.datadir}/mysqld.pid", f"--log-error={self.datadir}/error.log",
            f"--log-bin={self.datadir}/binlog", "--binlog-format=ROW", "--log-slave-updates=ON",
            "--gtid-strict-mode=ON", "--skip-name-resolve", "--innodb-buffer-pool-size=64M",
            "--max-connections=300", f"--read-only={'ON' if self.read_only else 'OFF'}",
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

    def connect(self, user: str = "root", password: str = "", **kwargs) -> pymysql.Connection:
        if user == "root":  # root authenticates by socket, as on a packaged server
            return pymysql.connect(unix_socket=str(self.socket), user="root", autocommit=True,
                                   **kwargs)
        return pymysql.connect(host="127.0.0.1", port=self.port, user=user, password=password,
                               autocommit=True, **kwargs)

    def sql(self, statement: str) -> list[dict]:
        """Run one statement as root and return its rows as dicts."""
        with self.connect(cursorclass=pymysql.cursors.DictCursor) as conn, \
                conn.cursor() as cursor:
            cursor.execute(statement)
            return list(cursor.fetchall())

    def source(self, path: Path) -> None:
        """Load an SQL file with the client, which understands DELIMITER."""
        with path.open("rb") as script:
            subprocess.run(["mariadb", f"--socket={self.socket}", "-uroot"], stdin=script,
                           check=True, capture_output=True)


class MariaDBCluster:
    """One primary and ``replicas`` replicas replicating with GTID, plus the app users."""

    def __init__(self, replicas: int = 2, app_password: str = "app-test-password") -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sqlgate-mariadb-"))
        self.app_user, self.app_password = "app", app_password
        self.repl_password = "repl-test-password"
        self.primary = MariaDBNode("manager", 1, self.root / "manager")
        self.replicas = [MariaDBNode(f"worker{i}", i + 1, self.root / f"worker{i}", read_only=True)
                         for i in range(1, replicas + 1)]

    @property
    def nodes(self) -> list[MariaDBNode]:
        return [self.primary, *self.replicas]

    def start(self) -> None:
        _, installer = mariadb_binaries()
        template = self.root / "template"
        template.mkdir()
        if os.geteuid() == 0:
            owner = pwd.getpwnam("mysql")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            os.chown(template, owner.pw_uid, owner.pw_gid)
        subprocess.run([installer, "--no-defaults", f"--datadir={template}", "--skip-test-db",
                        "--auth-root-authentication-method=socket",
                        *(["--user=mysql"] if os.geteuid() == 0 else [])],
                       check=True, capture_output=True)
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

    def _configure(self) -> None:
        primary = self.primary
        primary.sql(f"CREATE USER 'repl'@'%' IDENTIFIED BY '{self.repl_password}'")
        primary.sql("GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%'")
        for replica in self.replicas:
            replica.sql(
                f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary.port}, "
                f"MASTER_USER='repl', MASTER_PASSWORD='{self.repl_password}', "
                "MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos")
            replica.sql("START SLAVE")
        # Everything below is replicated: users, schemas and data reach the replicas by GTID.
        primary.sql(f"CREATE USER '{self.app_user}'@'%' IDENTIFIED BY '{self.app_password}'")
        for schema in APP_SCHEMAS:
            primary.sql(f"CREATE DATABASE IF NOT EXISTS {schema}")
            primary.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, "
                        f"CREATE TEMPORARY TABLES, LOCK TABLES, EXECUTE, SHOW VIEW "
                        f"ON {schema}.* TO '{self.app_user}'@'%'")
        primary.sql(f"GRANT SLAVE MONITOR ON *.* TO '{self.app_user}'@'%'")
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

    def destroy(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)
