"""The sqlgate formula's database checks, through the flavour's own command-line client.

Salt syncs this module to the minions (``saltutil.sync_all``, the orchestration's first step).
It uses only the standard library and Salt's APIs, so it runs under any Salt Python (the AWS
onedir too). The client runs as root over the server's socket (``--socket``), with
``python_shell=False`` and the SQL on stdin: nothing of a statement is ever on a command line.

Every function takes ``client`` (default: ``mariadb`` when installed, else ``mysql``) and
``socket`` (default: ``/run/mysqld/mysqld.sock``, both flavours' socket in this formula).

``replica_status`` is the one reader of a replica's status::

    salt -L replica1,replica2 sqlgate_db.replica_status --out=json
    salt replica1 sqlgate_db.replica_status client=mysql socket=/run/mysqld/mysqld.sock

answers ``{}`` on a server that is not a replica, else every field of ``SHOW REPLICA STATUS``
under MySQL 8's names, values as the server prints them (strings; ``NULL`` stays ``"NULL"``).
MariaDB's older names are renamed word by word (``Slave`` -> ``Replica``, ``Master`` ->
``Source``), so ``Replica_IO_Running``, ``Replica_SQL_Running``, ``Seconds_Behind_Source``,
``Source_Host``, ``Source_Port`` and ``Source_User`` are there on both flavours. A server that
does not answer is an error (the minion's answer is the error text, not a dict).

``schema_state`` says whether a schema may be loaded into (``absent`` or ``empty``), must not
be (``not empty``), or could not be checked (``unknown``)::

    salt primary sqlgate_db.schema_state sakila
"""

import contextlib
import json
import logging
import os
import re
import socket as sockets  # the functions' `socket` parameters are the server's
import time

import salt.utils.path
from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "sqlgate_db"

DEFAULT_SOCKET = "/run/mysqld/mysqld.sock"
CLIENTS = ("mariadb", "mysql")

# MariaDB's (and MySQL 5.7's) words in SHOW REPLICA STATUS, and MySQL 8's for them.
RENAMED_WORDS = {"Slave": "Replica", "Master": "Source", "master": "source"}

# One field of vertical output: "<spaces>Name: value"; other lines continue the previous value.
_FIELD = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*):(?: (.*))?$")
_ROW = re.compile(r"^\*+ \d+\. row \*+$")
# A schema, table, user or column name these functions put in a statement unquoted.
_NAME = re.compile(r"[A-Za-z0-9_$]+")
_ADDRESS = re.compile(r"[0-9A-Fa-f.:/]+")
# What a schema is, for a load that must never overwrite data (schema_state).
SCHEMA_ABSENT, SCHEMA_EMPTY, SCHEMA_NOT_EMPTY, SCHEMA_UNKNOWN = (
    "absent", "empty", "not empty", "unknown")
# Escapes of the client's batch mode, undone in query results.
_BATCH_ESCAPES = {"\\t": "\t", "\\n": "\n", "\\\\": "\\", "\\0": "\0"}


def __virtual__():
    # Always loaded: on a host whose server is installed later in the same run, the client is
    # looked for when a function is called, not when the loader decides.
    return __virtualname__


def _client(client):
    if client:
        return client
    for name in CLIENTS:
        if salt.utils.path.which(name):
            return name
    raise CommandExecutionError(f"no database client found ({' or '.join(CLIENTS)})")


def _run(sql, client=None, socket=None, database=None, vertical=False):
    """Run ``sql`` (on stdin) with the client; its standard output, or an error."""
    argv = [_client(client), f"--socket={socket or DEFAULT_SOCKET}", "--batch"]
    argv.append("--vertical" if vertical else "--skip-column-names")
    if database:
        argv.append(database)
    # rstrip=False: an empty last cell of a row stays a cell.
    done = __salt__["cmd.run_all"](  # noqa: F821 (a Salt dunder)
        argv, stdin=sql, python_shell=False, ignore_retcode=True, output_loglevel="quiet",
        env={"LC_ALL": "C"}, rstrip=False)
    if done["retcode"] != 0:
        raise CommandExecutionError(
            f"{argv[0]} failed ({done['retcode']}): {(done.get('stderr') or '').strip()}")
    return done.get("stdout") or ""


def sql_literal(value):
    """``value`` as an SQL string literal (quotes and backslashes escaped)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _unescape(value):
    return re.sub(r"\\[tn0\\]", lambda match: _BATCH_ESCAPES[match.group(0)], value)


def query(sql, database=None, client=None, socket=None):
    """The rows of ``sql`` as lists of strings (``[]`` for statements without a result).

    CLI Example::

        salt primary sqlgate_db.query 'SELECT @@server_id'
    """
    out = _run(sql, client=client, socket=socket, database=database)
    return [[_unescape(cell) for cell in line.split("\t")] for line in out.splitlines()]


def execute(sql, database=None, client=None, socket=None):
    """Run ``sql`` (one or more statements); True, or an error.

    CLI Example::

        salt replica1 sqlgate_db.execute 'START REPLICA'
    """
    _run(sql, client=client, socket=socket, database=database)
    return True


def renamed_field(name):
    """A status field under MySQL 8's name (``Seconds_Behind_Master`` ->
    ``Seconds_Behind_Source``)."""
    return "_".join(RENAMED_WORDS.get(word, word) for word in name.split("_"))


def parse_vertical(text):
    """The first row of a client's vertical output (``\\G``), as ``name -> value``.

    Names keep the server's spelling. A line that is not ``Name: value`` continues the value
    before it (MySQL prints long GTID sets over several lines).
    """
    fields = {}
    last = None
    for line in text.splitlines():
        if _ROW.match(line.strip()):
            if fields:
                break
            continue
        match = _FIELD.match(line)
        if match:
            last = match.group(1)
            fields[last] = (match.group(2) or "").strip()
        elif last is not None and line.strip():
            fields[last] += line.strip()
    return fields


def parse_replica_status(text):
    """``SHOW REPLICA STATUS\\G`` output of either flavour, under MySQL 8's field names."""
    return {renamed_field(name): value for name, value in parse_vertical(text).items()}


def replica_status(client=None, socket=None):
    """This server's replication status under MySQL 8's names; ``{}`` if it is no replica.

    CLI Example::

        salt -L replica1,replica2 sqlgate_db.replica_status
    """
    return parse_replica_status(
        _run("SHOW REPLICA STATUS", client=client, socket=socket, vertical=True))


def table_exists(schema, table, client=None, socket=None):
    """Whether ``schema.table`` exists. False too when the server cannot tell (not
    answering): as an ``unless`` guard, the guarded state then runs and shows the error.

    CLI Example::

        salt primary sqlgate_db.table_exists sqlgate heartbeat
    """
    sql = ("SELECT COUNT(*) FROM information_schema.tables "
           f"WHERE table_schema = {sql_literal(schema)} AND table_name = {sql_literal(table)}")
    try:
        return query(sql, client=client, socket=socket) == [["1"]]
    except CommandExecutionError as error:
        log.info("sqlgate_db.table_exists(%s, %s): %s", schema, table, error)
        return False


def schema_tables(schema, client=None, socket=None):
    """How many tables and views ``schema`` has; None when there is no such schema. An error
    when the server does not answer or answers something else than the two counts.

    CLI Example::

        salt primary sqlgate_db.schema_tables sakila
    """
    literal = sql_literal(schema)
    rows = query("SELECT (SELECT COUNT(*) FROM information_schema.schemata"
                 f" WHERE schema_name = {literal}), (SELECT COUNT(*)"
                 f" FROM information_schema.tables WHERE table_schema = {literal})",
                 client=client, socket=socket)
    if len(rows) != 1 or len(rows[0]) != 2 or not all(cell.isdigit() for cell in rows[0]):
        raise CommandExecutionError(f"unexpected answer counting the tables of {schema}: {rows}")
    schemas, tables = (int(cell) for cell in rows[0])
    return tables if schemas else None


def schema_state(schema, client=None, socket=None):
    """``absent`` or ``empty`` only when the server said so; ``not empty`` when ``schema`` has
    a table or view; ``unknown`` when the check failed (server down, busy, any error), so that
    a guard loading data only into an absent or empty schema loads nothing then.

    CLI Example::

        salt primary sqlgate_db.schema_state sakila
    """
    try:
        tables = schema_tables(schema, client=client, socket=socket)
    except CommandExecutionError as error:
        log.warning("sqlgate_db.schema_state(%s): %s", schema, error)
        return SCHEMA_UNKNOWN
    if tables is None:
        return SCHEMA_ABSENT
    return SCHEMA_EMPTY if tables == 0 else SCHEMA_NOT_EMPTY


def account(user, host="%", fields=(), client=None, socket=None):
    """The ``mysql.user`` row of ``user@host``: ``plugin``, ``authentication_string``,
    ``ssl_type`` and the columns named in ``fields`` (resource limits such as
    ``max_user_connections``), as the server prints them; ``{}`` when there is no such user.

    CLI Example::

        salt primary sqlgate_db.account app_read % fields='[max_user_connections]'
    """
    columns = ["plugin", "authentication_string", "ssl_type", *fields]
    bad = [column for column in columns if not _NAME.fullmatch(str(column))]
    if bad:
        raise CommandExecutionError(f"not column names: {bad}")
    rows = query(f"SELECT {', '.join(columns)} FROM mysql.user "
                 f"WHERE User = {sql_literal(user)} AND Host = {sql_literal(host)}",
                 client=client, socket=socket)
    if not rows:
        return {}
    if len(rows) != 1 or len(rows[0]) != len(columns):
        raise CommandExecutionError(f"unexpected answer reading the account {user}@{host}")
    return dict(zip(columns, rows[0], strict=True))


# --- failover: a node's replication state, and the steps of a promotion (docs/failover.md) ---
#
# The runner on the master (salt/_runners/sqlgate_failover.py) decides; these functions only
# act on the node they run on, as root over its socket. The statements of a promotion and a
# fence are the flavour's in flavours.yaml (promote, open_writes, fence) and defaults.yaml
# (epoch_write): the runner and the states pass them as ``steps``. FLAVOUR_SQL holds the same
# as a fallback (a call from the command line) and the reads that only these functions make;
# the flavour is the client's (mariadb or mysql).

# The epoch row's table (files/epoch.sql, which the states and the loopback stack use too).
EPOCH_SCHEMA = "sqlgate"
EPOCH_WRITE = ("INSERT INTO sqlgate.epoch (id, epoch, primary_host, promoted) "
               "VALUES (1, {epoch}, '{host}', NOW(6)) ON DUPLICATE KEY UPDATE "
               "epoch = {epoch}, primary_host = '{host}', promoted = NOW(6)")
EPOCH_TABLE_SQL = (
    "CREATE TABLE IF NOT EXISTS sqlgate.epoch (id TINYINT UNSIGNED NOT NULL PRIMARY KEY, "
    "epoch BIGINT UNSIGNED NOT NULL, primary_host VARCHAR(64) NOT NULL, "
    "promoted DATETIME(6) NOT NULL) ENGINE=InnoDB")
FLAVOUR_SQL = {
    "mariadb": {
        # What the node itself holds, and where its replication stands.
        "positions": "SELECT @@read_only, @@server_id, @@gtid_current_pos, @@gtid_binlog_pos, "
                     "@@gtid_slave_pos",
        "semi_sync": ("Rpl_semi_sync_master_status", "Rpl_semi_sync_slave_status"),
        "semi_sync_enabled": ("rpl_semi_sync_master_enabled", "rpl_semi_sync_slave_enabled"),
        "semi_sync_clients": "Rpl_semi_sync_master_clients",
        "promote": ["STOP SLAVE", "RESET SLAVE ALL"],
        "open_writes": ["SET GLOBAL rpl_semi_sync_master_enabled = ON",
                        "SET GLOBAL read_only = OFF"],
        "fence": ["SET GLOBAL read_only = ON", "SET GLOBAL rpl_semi_sync_master_enabled = OFF"],
        "stop_writes": ["SET GLOBAL read_only = ON"],
        # Waits until the node has applied a GTID position: 0 done, -1 timed out.
        "wait": "SELECT MASTER_GTID_WAIT({pos}, {timeout})",
        # The IO thread's received position, under replica_status's names.
        "received": "Gtid_IO_Pos",
        # The IO thread's connection, killed before STOP (stop_io).
        "io_thread": "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND = 'Slave_IO'",
        # A node that was no replica (a former primary) starts from what its binary log has.
        "start_from_binlog": "SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos",
    },
    "mysql": {
        "positions": "SELECT @@read_only, @@server_id, @@gtid_executed, @@gtid_executed, "
                     "@@gtid_executed",
        "semi_sync": ("Rpl_semi_sync_source_status", "Rpl_semi_sync_replica_status"),
        "semi_sync_enabled": ("rpl_semi_sync_source_enabled", "rpl_semi_sync_replica_enabled"),
        "semi_sync_clients": "Rpl_semi_sync_source_clients",
        "promote": ["STOP REPLICA", "RESET REPLICA ALL", "SET GLOBAL super_read_only = OFF"],
        "open_writes": ["SET GLOBAL rpl_semi_sync_source_enabled = ON",
                        "SET GLOBAL read_only = OFF"],
        "fence": ["SET GLOBAL super_read_only = ON",
                  "SET GLOBAL rpl_semi_sync_source_enabled = OFF"],
        "stop_writes": ["SET GLOBAL super_read_only = ON"],
        "wait": "SELECT WAIT_FOR_EXECUTED_GTID_SET({pos}, {timeout})",
        "received": "Retrieved_Gtid_Set",
        "io_thread": "SELECT PROCESSLIST_ID FROM performance_schema.threads "
                     "WHERE NAME = 'thread/sql/replica_io'",
        "start_from_binlog": "",
    },
}
# Threads of the server itself, which fence() leaves alone.
SYSTEM_COMMANDS = ("Daemon", "Binlog Dump", "Binlog Dump GTID", "Slave_IO", "Slave_SQL",
                   "Slave_worker", "Connect")
SYSTEM_USERS = ("system user", "event_scheduler", "")


def _flavour(client):
    name = _client(client)
    return name, FLAVOUR_SQL["mysql" if name == "mysql" else "mariadb"]


def parse_gtid_pos(text):
    """A MariaDB GTID position (``0-1-100,1-2-7``) as ``{domain: (server_id, seqno)}``."""
    position = {}
    for item in (text or "").replace("\n", "").split(","):
        item = item.strip()
        if not item:
            continue
        domain, server_id, seqno = (int(part) for part in item.split("-"))
        position[domain] = (server_id, seqno)
    return position


def gtid_ahead(mine, theirs):
    """Whether MariaDB position ``mine`` holds a transaction ``theirs`` lacks: a domain they do
    not have, a higher sequence number, or the same one written by another server (the two
    histories diverged there)."""
    mine, theirs = parse_gtid_pos(mine), parse_gtid_pos(theirs)
    errant = []
    for domain, (server_id, seqno) in sorted(mine.items()):
        other = theirs.get(domain)
        if other is None or seqno > other[1] or (seqno == other[1] and server_id != other[0]):
            errant.append(f"{domain}-{server_id}-{seqno}")
    return errant


def gtid_sum(text):
    """How far a MariaDB position is, as one number (the sum of its domains' seqnos): the
    runner ranks candidates by it."""
    return sum(seqno for _, seqno in parse_gtid_pos(text).values())


def _status_variables(names, client=None, socket=None):
    literal = ", ".join(sql_literal(name) for name in names)
    rows = query("SELECT VARIABLE_NAME, VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
                 f"WHERE VARIABLE_NAME IN ({literal.upper()})", client=client, socket=socket)
    return {row[0].lower(): row[1] for row in rows if len(row) == 2}


def _epoch_row(client=None, socket=None, table_known=False):
    """The epoch row, or None when the table or the row is not there (``table_known``: the
    caller saw the table)."""
    if not table_known and not table_exists(EPOCH_SCHEMA, "epoch", client=client,
                                            socket=socket):
        return None
    rows = query("SELECT epoch, primary_host, promoted FROM sqlgate.epoch WHERE id = 1",
                 client=client, socket=socket)
    if not rows:
        return None
    epoch, host, promoted = rows[0]
    return {"epoch": int(epoch), "primary_host": host, "promoted": promoted}


def node_state(client=None, socket=None):
    """Everything the failover runner weighs about this node, as one answer.

    ``running`` is False (with ``error``) when the server does not answer on its socket: the
    minion answering while the server does not is how the runner learns that the database
    process is gone. Else: ``read_only``, ``server_id``, the GTID positions
    (``gtid_current_pos``, ``gtid_binlog_pos``, ``gtid_slave_pos``; MySQL: each is
    ``gtid_executed``), ``replica`` (``{}`` on a node that replicates from nobody, else its
    source, ``io_running``, ``sql_running``, ``received`` (Gtid_IO_Pos), ``relay_applied``,
    ``last_io_error``), ``semi_sync`` (the primary and replica sides, enabled and status) and
    ``epoch`` (the row, or None).

    CLI Example::

        salt -L primary,replica1,replica2 sqlgate_db.node_state
    """
    name, sql = _flavour(client)
    answer = {"flavour": "mysql" if name == "mysql" else "mariadb"}
    source, replica_side = sql["semi_sync"]
    # One client run for every one-row read (a failover asks this of every node, on hosts
    # that may be short of CPU): the positions, semi-sync's variables (NULL where a MySQL
    # plugin is not loaded) and status, and whether the epoch table is there.
    reads = [sql["positions"],
             "SELECT " + ", ".join(_global("VARIABLES", variable)
                                   for variable in sql["semi_sync_enabled"]),
             "SELECT " + ", ".join(_global("STATUS", variable)
                                   for variable in (source, replica_side)),
             "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = "
             f"{sql_literal(EPOCH_SCHEMA)} AND table_name = 'epoch'"]
    try:
        row, enabled, statuses, epoch_table = query(";\n".join(reads) + ";\n",
                                                    client=client, socket=socket)
    except (CommandExecutionError, ValueError) as error:
        answer.update(running=False, error=str(error)[:300])
        return answer
    read_only, server_id, current, binlog, slave = (row + [""] * 5)[:5]
    answer.update(running=True, read_only=read_only in ("1", "ON"), server_id=int(server_id),
                  gtid_current_pos=current, gtid_binlog_pos=binlog, gtid_slave_pos=slave)
    status = replica_status(client=client, socket=socket)
    replica = {}
    if status:
        received = status.get(sql["received"], "")
        replica = {
            "source_host": status.get("Source_Host", ""),
            "source_port": status.get("Source_Port", ""),
            "io_running": status.get("Replica_IO_Running", ""),
            "sql_running": status.get("Replica_SQL_Running", ""),
            "received": received,
            "last_io_error": status.get("Last_IO_Error", ""),
            "last_sql_error": status.get("Last_SQL_Error", ""),
            "relay_applied": _applied(received, current, answer["flavour"], client, socket),
            "lost_seconds": _lost_seconds(),
        }
    answer["replica"] = replica
    answer["semi_sync"] = {
        "primary_enabled": enabled[0] in ("1", "ON"),
        "primary_status": statuses[0] == "ON",
        "replica_enabled": enabled[1] in ("1", "ON"),
        "replica_status": statuses[1] == "ON",
    }
    answer["epoch"] = (_epoch_row(client=client, socket=socket, table_known=True)
                       if epoch_table == ["1"] else None)
    return answer


def _global(kind, name):
    """A subquery reading one global variable (``kind`` VARIABLES) or status variable
    (STATUS): NULL, not an error, when the server has no such variable."""
    return (f"(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_{kind} "
            f"WHERE VARIABLE_NAME = {sql_literal(name.upper())})")


def _lost_seconds():
    """How long this replica's watch job has seen its source lost (None: not lost), from the
    watch's file: the runner waits on it before it promotes while a lost primary's minion is
    silent, so that the primary had time to fence itself (watch)."""
    since = _watch_state(f"{__opts__['cachedir']}/{WATCH_FILE}").get("lost_since")  # noqa: F821
    return None if since is None else round(time.time() - float(since), 3)


def _applied(received, current, flavour, client, socket):
    """Whether the node has applied everything its IO thread received."""
    if not received:
        return True
    if flavour == "mariadb":
        return not gtid_ahead(received, current)
    rows = query(f"SELECT GTID_SUBSET({sql_literal(received)}, @@gtid_executed)",
                 client=client, socket=socket)
    return rows == [["1"]]


def stop_io(apply_timeout=None, client=None, socket=None):
    """Stop the IO thread: the node receives nothing more from its source (the old primary,
    which may still be writing somewhere), and what it holds can be compared. With
    ``apply_timeout``, then wait that long for it to apply its relay log, so that whichever
    replica is promoted, its binary log already holds what every other one applied (they
    can follow it at once). Answers the node's state after (``node_state``, whose
    ``replica.relay_applied`` says whether it did, and ``took``: the seconds each part
    took): one round trip for the runner.

    CLI Example::

        salt -L replica1,replica2 sqlgate_db.stop_io apply_timeout=30
    """
    began = time.monotonic()
    # STOP alone waits about 2 s for an IO thread blocked reading from a source whose link
    # is cut (the server's first wake-up does not reach it); a KILL of its connection shuts
    # the socket and it ends at once (0.2 s on the namespace cluster).
    _, sql = _flavour(client)
    for (ident,) in query(sql["io_thread"], client=client, socket=socket):
        with contextlib.suppress(CommandExecutionError):  # it ended by itself meanwhile
            execute(f"KILL {int(ident)}", client=client, socket=socket)
    execute("STOP REPLICA IO_THREAD", client=client, socket=socket)
    took = {"stop": time.monotonic() - began}
    if apply_timeout is not None:
        wait_applied(timeout=apply_timeout, client=client, socket=socket)
        took["apply"] = time.monotonic() - began - took["stop"]
    state = node_state(client=client, socket=socket)
    took["state"] = time.monotonic() - began - sum(took.values())
    # How long each part took (the runner's timeline keeps it).
    state["took"] = {part: round(seconds, 3) for part, seconds in took.items()}
    return state


def failover_check(stop_if_lost=3, apply_timeout=30, client=None, socket=None):
    """A node's part of the runner's failure check, as one answer (``node_state``). A replica
    that has lost its source (its IO thread not running, or its watch job's probe failing for
    ``stop_if_lost`` seconds) also does what the runner would ask of it next: its IO thread
    stopped and its relay log applied (``stop_io``), answering ``stopped: True`` when it was
    running (``False``: someone else had stopped it, and it stays stopped). On a host
    short of CPU that saves a Salt round trip between the check and the promotion; when the
    runner decides against a failover it starts the stopped IO threads again. A replica that
    still receives, and any other node, is left as it is.

    CLI Example::

        salt -L primary,replica1,replica2 sqlgate_db.failover_check stop_if_lost=3
    """
    state = node_state(client=client, socket=socket)
    replica = state.get("replica") or {}
    if not state.get("running") or not replica:
        return state
    io, lost = replica.get("io_running"), replica.get("lost_seconds")
    if io == "Yes" and (lost is None or lost < float(stop_if_lost)):
        return state
    state = stop_io(apply_timeout=apply_timeout, client=client, socket=socket)
    # An IO thread someone else had stopped (No) is none of the runner's to start again.
    state["stopped"] = io != "No"
    return state


def wait_applied(timeout=30, position=None, client=None, socket=None):
    """Wait until the node applied ``position`` (default: everything its IO thread received,
    its relay log); True when it did, False when ``timeout`` seconds passed or its SQL thread
    is not running (then it never would).

    CLI Example::

        salt replica1 sqlgate_db.wait_applied timeout=30
    """
    _, sql = _flavour(client)
    status = replica_status(client=client, socket=socket)
    if position is None:
        position = status.get(sql["received"], "") if status else ""
    if not position:
        return True
    if status and status.get("Replica_SQL_Running") != "Yes":
        log.warning("sqlgate_db.wait_applied: the SQL thread is not running: %s",
                    status.get("Last_SQL_Error", ""))
        return False
    rows = query(sql["wait"].format(pos=sql_literal(position), timeout=float(timeout)),
                 client=client, socket=socket)
    return rows == [["0"]]


def promote(epoch, host, steps=None, replica_wait=0, position=None, apply_timeout=None,
            client=None, socket=None):
    """Make this node the primary of ``epoch``, in docs/failover.md's order: replication
    stopped and forgotten (the flavour's ``promote``), the epoch row written (``epoch_write``,
    with ``epoch`` and ``host``), then ``open_writes``: the primary side of semi-sync and
    ``read_only`` OFF last, so that the node never takes a write before the row that says it
    may. ``steps``: ``{promote, epoch_write, open_writes}`` from flavours.yaml and
    defaults.yaml (the runner and the states pass them); by default FLAVOUR_SQL's.

    ``replica_wait`` (the runner's calls): after the primary side of semi-sync is on, wait up
    to that long for a semi-sync replica to connect before ``read_only`` goes OFF (the runner
    repoints the other replicas meanwhile, in the same round trip), so that the first writes
    are acknowledged by a replica instead of waiting out semi-sync's timeout and answering
    outcome unknown. ``position`` (a switchover: where the old primary's writes stopped):
    first wait up to ``apply_timeout`` seconds until the node applied it; refused, nothing
    changed, when it did not.

    Refused (an error, nothing changed) when the node's epoch row is already at ``epoch`` or
    beyond for another host: a late or repeated promotion never goes back in time. Answers
    the node's GTID position before its own first write (``fork_gtid_pos``) and the semi-sync
    replicas connected when writes opened.

    CLI Example::

        salt replica1 sqlgate_db.promote 3 replica1
    """
    epoch = int(epoch)
    if not _NAME.fullmatch(str(host)):
        raise CommandExecutionError(f"not a host name: {host!r}")
    _, sql = _flavour(client)
    steps = {"promote": sql["promote"], "epoch_write": EPOCH_WRITE,
             "open_writes": sql["open_writes"], **(steps or {})}
    apply_timeout = float(apply_timeout or 30)
    if position and not wait_applied(timeout=apply_timeout, position=position,
                                     client=client, socket=socket):
        raise CommandExecutionError(f"did not apply {position} within {apply_timeout:g}s: "
                                    "not promoted")
    row = _epoch_row(client=client, socket=socket)
    if row and (row["epoch"] > epoch or (row["epoch"] == epoch and row["primary_host"] != host)):
        raise CommandExecutionError(
            f"epoch {epoch} for {host} is stale: this node's row says epoch {row['epoch']}, "
            f"primary {row['primary_host']}")
    execute(";\n".join(steps["promote"]) + ";\n", client=client, socket=socket)
    # Where its history forks from the old primary's, before it writes anything of its own:
    # what a rejoining node is checked against (errant's fork_gtid_pos).
    fork = query(sql["positions"], client=client, socket=socket)[0][3]
    # open_writes ends with read_only OFF; a semi-sync replica is waited for before it.
    *before, last = steps["open_writes"]
    statements = [f"CREATE DATABASE IF NOT EXISTS {EPOCH_SCHEMA}", EPOCH_TABLE_SQL,
                  steps["epoch_write"].format(epoch=epoch, host=host), *before]
    execute(";\n".join(statements) + ";\n", client=client, socket=socket)
    clients = _wait_semi_sync_clients(sql["semi_sync_clients"], float(replica_wait or 0),
                                      client, socket)
    execute(last + ";\n", client=client, socket=socket)
    return {"epoch": epoch, "primary_host": host, "fork_gtid_pos": fork,
            "semi_sync_clients": clients}


def _wait_semi_sync_clients(name, seconds, client, socket):
    """How many semi-sync replicas are connected, waiting up to ``seconds`` for one."""
    deadline = time.monotonic() + seconds
    while True:
        found = _status_variables((name,), client=client, socket=socket).get(name.lower())
        count = int(found) if (found or "").isdigit() else 0
        if count or time.monotonic() >= deadline:
            return count
        time.sleep(0.05)


def fence(steps=None, client=None, socket=None, planned=False):
    """This node takes no write again: ``read_only`` ON, the primary side of semi-sync off,
    and every client connection killed (the server's own threads and the replicas' binlog
    readers stay). Connections are killed before and after ``read_only``: setting it waits
    for open transactions, and a writer that slipped in between is cut off after.

    ``planned`` (a switchover): only ``stop_writes``, and no connection killed unless an
    open transaction keeps ``read_only`` from being set within the lock wait. A statement in
    flight then finishes (its commit acknowledged by a replica, as semi-sync stays on) or is
    refused as read-only, which the Proxy sends on to the next primary: nothing is cut off
    with an unknown outcome.

    Answers how many connections were killed (planned: and ``gtid_binlog_pos``, the position
    its last write reached, which the candidate waits for); a server that does not answer is
    an error (the runner then closes its port instead). ``steps``: ``{fence, stop_writes}`` from
    flavours.yaml.

    CLI Example::

        salt primary sqlgate_db.fence
    """
    _, sql = _flavour(client)
    steps = steps or {}
    if planned:
        statements = steps.get("stop_writes") or sql["stop_writes"]
        script = ";\n".join(["SET SESSION lock_wait_timeout = 5", *statements]) + ";\n"
        killed = 0
        try:
            execute(script, client=client, socket=socket)
        except CommandExecutionError:  # an open transaction held it up: cut off, once more
            killed = _kill_clients(client, socket)
            execute(script, client=client, socket=socket)
        position = query(sql["positions"], client=client, socket=socket)[0][3]
        return {"read_only": True, "killed": killed, "gtid_binlog_pos": position}
    statements = steps.get("fence") or sql["fence"]
    killed = _kill_clients(client, socket)
    execute(";\n".join(["SET SESSION lock_wait_timeout = 5", *statements]) + ";\n",
            client=client, socket=socket)
    killed += _kill_clients(client, socket)
    return {"read_only": True, "killed": killed}


def fence_node(sources=(), port=3306, steps=None, client=None, socket=None):
    """Both fences of a former primary in one call: ``fence`` when its server answers (else
    its error), and ``close_port`` to ``sources`` whatever the server does. Answers
    ``{"server": ..., "port": ...}``.

    CLI Example::

        salt primary sqlgate_db.fence_node '[10.213.0.4]'
    """
    done = {}
    try:
        done["server"] = fence(steps=steps, client=client, socket=socket)
    except CommandExecutionError as error:
        done["server"] = f"not fenced: {str(error)[:200]}"
    try:
        done["port"] = close_port(list(sources or ()), port)
    except CommandExecutionError as error:
        done["port"] = f"not closed: {str(error)[:200]}"
    return done


def _kill_clients(client, socket):
    commands = ", ".join(sql_literal(c) for c in SYSTEM_COMMANDS)
    users = ", ".join(sql_literal(u) for u in SYSTEM_USERS)
    rows = query("SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() "
                 f"AND COMMAND NOT IN ({commands}) AND USER NOT IN ({users})",
                 client=client, socket=socket)
    killed = 0
    for (ident,) in rows:
        try:
            execute(f"KILL {int(ident)}", client=client, socket=socket)
            killed += 1
        except CommandExecutionError:
            pass  # it ended by itself meanwhile
    return killed


def _escaped(value):
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


def follow(source, change_source, port=3306, user="repl", password=None, ssl_ca="",
           change_source_ssl="", client=None, socket=None):
    """Replicate from ``source`` by GTID with the flavour's ``change_source`` statement (and
    ``change_source_ssl``), as the ``sqlgate_replication.following`` state does, and
    acknowledge as a semi-sync replica.

    ``password`` defaults to the pillar's ``sqlgate:secrets:repl_password``, so that the
    runner never sends it in a job (jobs are kept in the master's cache). A node that was no
    replica (a former primary) starts from its own binary log's position (MariaDB: the GTID
    slave position would be an old one). Answers the new source.

    CLI Example::

        salt replica2 sqlgate_db.follow 10.0.0.13 "$(change_source)"
    """
    if password is None:
        # From __pillar__ itself: Salt 3008's pillar.get answers secrets masked.
        secrets = (__pillar__.get("sqlgate") or {}).get("secrets") or {}  # noqa: F821
        password = secrets.get("repl_password", "")
    if not password:
        raise CommandExecutionError("no replication password (pillar sqlgate:secrets)")
    port = int(port)
    _, sql = _flavour(client)
    was_replica = bool(replica_status(client=client, socket=socket))
    statement = change_source.format(source=_escaped(source), port=port, user=_escaped(user),
                                     password=_escaped(password))
    if change_source_ssl:
        statement += ", " + change_source_ssl.format(ssl=1 if ssl_ca else 0,
                                                     ssl_ca=_escaped(ssl_ca or ""))
    steps = ["STOP REPLICA"]
    if not was_replica and sql["start_from_binlog"]:
        steps.append(sql["start_from_binlog"])
    steps += [f"SET GLOBAL {sql['semi_sync_enabled'][1]} = ON", statement, "START REPLICA"]
    try:
        execute(";\n".join(steps) + ";\n", client=client, socket=socket)
    except CommandExecutionError as error:
        text = str(error)
        for form in {str(password), _escaped(password)}:
            text = text.replace(form, "********")
        raise CommandExecutionError(f"could not follow {source}:{port}: {text}") from None
    return {"source": f"{source}:{port}"}


def errant(primary_gtid_pos, fork_gtid_pos="", primary_server_id=None, client=None,
           socket=None):
    """The transactions this node has that the primary lacks: ``[]`` when its history is
    contained in the primary's (it may follow it), else the GTIDs that prove it diverged.

    MariaDB compares per domain the node's ``gtid_binlog_pos`` with ``primary_gtid_pos``
    (the new primary's current position): a higher seqno, or the same one from another
    server, is errant. ``fork_gtid_pos`` (the new primary's position when it was promoted)
    catches the rest: a node past the fork point in a domain holds transactions of the old
    history unless they are the new primary's own (``primary_server_id``). MySQL:
    ``GTID_SUBTRACT(@@gtid_executed, primary_gtid_pos)``.

    CLI Example::

        salt primary sqlgate_db.errant 0-2-120 fork_gtid_pos=0-1-100 primary_server_id=2
    """
    name, _ = _flavour(client)
    if name == "mysql":
        rows = query(f"SELECT GTID_SUBTRACT(@@gtid_executed, {sql_literal(primary_gtid_pos)})",
                     client=client, socket=socket)
        left = rows[0][0] if rows else ""
        return [left] if left else []
    (row,) = query("SELECT @@gtid_binlog_pos", client=client, socket=socket)
    mine = row[0]
    found = gtid_ahead(mine, primary_gtid_pos)
    fork = parse_gtid_pos(fork_gtid_pos)
    for domain, (server_id, seqno) in sorted(parse_gtid_pos(mine).items()):
        item = f"{domain}-{server_id}-{seqno}"
        if item in found or domain not in fork:
            continue
        if seqno > fork[domain][1] and (primary_server_id is None
                                        or server_id != int(primary_server_id)):
            found.append(item)
    return found


# --- detection: a scheduled job on every database minion (db/watch.sls) --------------------

WATCH_FILE = "sqlgate-watch.json"
UNREACHABLE_TAG = "sqlgate/db/primary-unreachable"
REJOIN_TAG = "sqlgate/db/rejoin"
SELF_FENCED_TAG = "sqlgate/db/self-fenced"
# The replicas reading this node's binary log, by the address their connections come from.
REPLICA_READERS = ("SELECT DISTINCT SUBSTRING_INDEX(HOST, ':', 1) FROM "
                   "information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'")


def _watch_state(path, state=None):
    if state is None:
        try:
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return {}
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(state, handle)
    os.replace(temporary, path)
    return state


def current_primary(pillar=None):
    """The host the pillar names as the primary (``sqlgate:db:primary``, written by the
    failover runner), else the host of role ``primary``."""
    if pillar is None:  # __pillar__, not pillar.get: Salt 3008 masks what pillar.get answers
        pillar = __pillar__.get("sqlgate") or {}  # noqa: F821 (a Salt dunder)
    named = (pillar.get("db") or {}).get("primary")
    if named:
        return named
    hosts = pillar.get("hosts") or {}
    return next((name for name, host in sorted(hosts.items())
                 if host.get("role") == "primary"), None)


def _answers(address, port=3306, timeout=1.0):
    """Whether a database server greets a new connection at ``address:port`` within
    ``timeout`` seconds (the server speaks first in the MySQL protocol): its host is reachable
    and the server is not hung. Closed before the handshake, like ``_reachable``'s."""
    if not address:
        return False
    deadline = time.monotonic() + float(timeout)
    try:
        with sockets.create_connection((address, int(port)), timeout=float(timeout)) as conn:
            conn.settimeout(max(0.01, deadline - time.monotonic()))
            return bool(conn.recv(4))
    except OSError:
        return False


def _reachable(address, port=3306, timeout=0.5):
    """Whether a TCP connection to ``address:port`` opens (or is refused: the host answers).
    The connection is closed before the server's handshake: with ``skip_name_resolve`` (every
    server's option file) MariaDB counts it in Aborted_connects but never blocks the host."""
    if not address:
        return False
    try:
        with sockets.create_connection((address, int(port)), timeout=timeout):
            return True
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def isolated(client=None, socket=None, port=3306):
    """Whether this node (a primary) is cut off from every replica that reads its binary log:
    their connections are still there (a cut link leaves them hanging) and none of their
    hosts answers a TCP connection. Without any replica connection it is not isolated (its
    replicas stopped, or none came yet): semi-sync's fail-closed covers that case."""
    readers = [row[0] for row in query(REPLICA_READERS, client=client, socket=socket) or []
               if row and row[0]]
    return bool(readers) and not any(_reachable(address, port) for address in readers)


def _self_fence(state, now, fence_seconds, steps, client, socket):
    """The pillar's primary, writable, cut off from all its replicas for ``fence_seconds``
    (less than the replicas' detection time): it makes itself read-only before any replica
    can be promoted, so that two databases are never writable at once. The runner's rejoin
    makes it writable again, or a replica of the new primary."""
    if query("SELECT @@read_only", client=client, socket=socket) in ([["1"]], [["ON"]]) \
            or not isolated(client=client, socket=socket):
        state.pop("isolated_since", None)
        return None
    since = state.setdefault("isolated_since", now)
    if now - since < float(fence_seconds):
        return None
    fence(steps=steps, client=client, socket=socket)
    state.pop("isolated_since", None)
    with contextlib.suppress(Exception):  # the master is most likely out of reach too
        __salt__["event.send"](SELF_FENCED_TAG, {  # noqa: F821 (a Salt dunder)
            "node": __opts__["id"], "isolated_seconds": round(now - since, 3)})  # noqa: F821
    return SELF_FENCED_TAG


def watch(detect_seconds=3, refire_seconds=5, client=None, socket=None, now=None,
          fence_seconds=2, fence_steps=None, probe_seconds=0.5):
    """One look at this node's replication, every second (a scheduled job): the reason a
    failover starts, and the periodic reconcile that covers an event the master lost.

    - A replica whose IO thread has not been connected to its source for ``detect_seconds``,
      or whose source has not greeted a new connection within ``probe_seconds`` for as long
      (a cut link or a hung server, which the IO thread notices only after
      ``slave_net_timeout``), fires ``sqlgate/db/primary-unreachable`` (with its source, IO
      state and error), again every ``refire_seconds`` while that lasts. A blip shorter than
      ``detect_seconds`` fires nothing.
    - A node that is not the pillar's primary and replicates from nobody (a former primary
      started again, read-only) fires ``sqlgate/db/rejoin``: the runner decides whether it
      follows the new primary or is quarantined.
    - The pillar's primary, writable, cut off from every replica for ``fence_seconds`` fences
      itself (``_self_fence``; ``fence_steps``: ``{fence}`` from flavours.yaml).

    The time the IO thread was first seen lost is kept in the minion's cache directory
    (each run is a new process). Answers what it saw and whether it fired.
    """
    now = time.time() if now is None else float(now)
    me = __opts__["id"]  # noqa: F821 (a Salt dunder)
    path = f"{__opts__['cachedir']}/{WATCH_FILE}"  # noqa: F821
    state = _watch_state(path)
    seen = {"node": me, "fired": None}
    try:
        status = replica_status(client=client, socket=socket)
    except CommandExecutionError as error:
        seen["server"] = f"not answering: {str(error)[:200]}"
        return seen
    pillar = __pillar__.get("sqlgate") or {}  # noqa: F821 (a Salt dunder)
    if status:
        io = status.get("Replica_IO_Running", "")
        seen["io_running"] = io
        # A cut link or a hung server leaves the IO thread "Yes" until slave_net_timeout: a
        # source that does not greet a new connection within probe_seconds is lost too.
        seen["source_answers"] = io == "Yes" and _answers(
            status.get("Source_Host", ""), status.get("Source_Port") or 3306, probe_seconds)
        if seen["source_answers"]:
            state.pop("lost_since", None)
            _watch_state(path, state)
            return seen
        lost_since = state.setdefault("lost_since", now)
        seen["lost_seconds"] = round(now - lost_since, 3)
        if now - lost_since >= float(detect_seconds) and \
                now - state.get("fired_at", 0) >= float(refire_seconds):
            __salt__["event.send"](UNREACHABLE_TAG, {  # noqa: F821
                "node": me, "source_host": status.get("Source_Host", ""), "io_running": io,
                "last_io_error": status.get("Last_IO_Error", "")[:300],
                "lost_seconds": round(now - lost_since, 3)})
            state["fired_at"] = now
            seen["fired"] = UNREACHABLE_TAG
        _watch_state(path, state)
        return seen
    state.pop("lost_since", None)
    primary = current_primary(pillar)
    if primary == me:
        fenced = _self_fence(state, now, fence_seconds, fence_steps, client, socket)
        if fenced:
            seen["fired"] = fenced
            _watch_state(path, state)
            return seen
        # The primary restarted read-only (every server starts so): the runner decides
        # whether it may take writes again.
        if query("SELECT @@read_only", client=client, socket=socket) in ([["1"]], [["ON"]]) \
                and now - state.get("rejoin_at", 0) >= float(refire_seconds):
            __salt__["event.send"](REJOIN_TAG, {"node": me, "primary": primary})  # noqa: F821
            state["rejoin_at"] = now
            seen["fired"] = REJOIN_TAG
        _watch_state(path, state)
        return seen
    quarantined = me in ((pillar.get("failover") or {}).get("quarantined") or [])
    if primary and primary != me and not quarantined and \
            now - state.get("rejoin_at", 0) >= float(refire_seconds):
        __salt__["event.send"](REJOIN_TAG, {"node": me, "primary": primary})  # noqa: F821
        state["rejoin_at"] = now
        seen["fired"] = REJOIN_TAG
    _watch_state(path, state)
    return seen


# --- fencing by the firewall (the local cluster's nftables; AWS stops the instance) ---------

FENCE_COMMENT = "sqlgate-fenced"
NFT_TABLE = ("inet", "sqlgate")


def _nft(*args, stdin=None):
    done = __salt__["cmd.run_all"](  # noqa: F821 (a Salt dunder)
        ["nft", *args], stdin=stdin, python_shell=False, ignore_retcode=True,
        output_loglevel="quiet")
    return done["retcode"], done.get("stdout") or "", done.get("stderr") or ""


def _fence_handles():
    code, out, _ = _nft("-a", "list", "chain", *NFT_TABLE, "input")
    if code != 0:
        return None
    return [line.rsplit("# handle ", 1)[1].strip() for line in out.splitlines()
            if FENCE_COMMENT in line and "# handle " in line]


def close_port(sources, port=3306):
    """Drop the database port to ``sources`` (the Proxies' addresses) before every rule of
    the host's firewall (the nftables table ``inet sqlgate`` the local cluster loads in each
    host): a fenced primary whose server cannot be told to stop taking writes is cut off from
    them. Answers ``closed``, ``already closed``, or ``no firewall`` (no such table: on AWS
    the security group is the group's, and the runner's caller stops the instance).

    CLI Example::

        salt primary sqlgate_db.close_port '[10.213.0.4]'
    """
    if isinstance(sources, str):
        sources = [sources]
    handles = _fence_handles()
    if handles is None:
        return "no firewall"
    if handles:
        return "already closed"
    wanted = ", ".join(str(source) for source in sources if _ADDRESS.fullmatch(str(source)))
    match = f"ip saddr {{ {wanted} }} " if wanted else ""
    code, _, err = _nft("insert", "rule", *NFT_TABLE, "input",
                        *f"{match}tcp dport {int(port)} drop".split(),
                        "comment", f'"{FENCE_COMMENT}"')
    if code != 0:
        raise CommandExecutionError(f"nft could not close the port: {err.strip()}")
    return "closed"


def open_port():
    """Remove what ``close_port`` added (a node that rejoins as a replica serves reads).

    CLI Example::

        salt primary sqlgate_db.open_port
    """
    handles = _fence_handles()
    if not handles:
        return "open"
    for handle in handles:
        _nft("delete", "rule", *NFT_TABLE, "input", "handle", handle)
    return "opened"


# --- rebuild: a quarantined node made a fresh replica ---------------------------------------

KEPT_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")
KEPT_USERS = ("root", "mariadb.sys", "mysql", "mysql.sys", "mysql.session",
              "mysql.infoschema", "debian-sys-maint", "")


def wipe(confirm=None, client=None, socket=None):
    """Forget this node's diverged history so that it can replicate the primary's from its
    first transaction: read-only, replication reset, every schema and user that replication
    brings dropped (not binary-logged), its binary log and GTID positions emptied. Only with
    ``confirm`` equal to this minion's id, and never on a writable node.

    CLI Example::

        salt replica2 sqlgate_db.wipe confirm=replica2
    """
    if confirm != __opts__["id"]:  # noqa: F821 (a Salt dunder)
        raise CommandExecutionError("wipe needs confirm=<this minion's id>")
    state = node_state(client=client, socket=socket)
    if not state.get("running"):
        raise CommandExecutionError(f"the server does not answer: {state.get('error')}")
    if not state.get("read_only"):
        raise CommandExecutionError("the node is writable: never wiped (fence it first)")
    kept = ", ".join(sql_literal(name) for name in KEPT_SCHEMAS)
    schemas = [row[0] for row in query(
        f"SELECT schema_name FROM information_schema.schemata WHERE schema_name NOT IN ({kept})",
        client=client, socket=socket)]
    kept_users = ", ".join(sql_literal(name) for name in KEPT_USERS)
    users = query(f"SELECT User, Host FROM mysql.user WHERE User NOT IN ({kept_users})",
                  client=client, socket=socket)
    steps = ["SET SESSION sql_log_bin = 0", "STOP REPLICA", "RESET REPLICA ALL"]
    steps += [f"DROP DATABASE `{name}`" for name in schemas if _NAME.fullmatch(name)]
    steps += [f"DROP USER {sql_literal(user)}@{sql_literal(host)}" for user, host in users]
    steps += ["RESET MASTER"]
    if _flavour(client)[0] != "mysql":
        steps.append("SET GLOBAL gtid_slave_pos = ''")
    execute(";\n".join(steps) + ";\n", client=client, socket=socket)
    return {"dropped_schemas": schemas, "dropped_users": len(users)}


def history_complete(client=None, socket=None):
    """Whether this server's binary logs still begin with its first transaction (MariaDB: the
    first log's starting GTID position is empty), so that a wiped node can replay them all.

    CLI Example::

        salt replica1 sqlgate_db.history_complete
    """
    if _flavour(client)[0] == "mysql":
        rows = query("SELECT @@gtid_purged", client=client, socket=socket)
        return rows == [[""]]
    logs = query("SHOW BINARY LOGS", client=client, socket=socket)
    if not logs:
        return False
    rows = query(f"SELECT BINLOG_GTID_POS({sql_literal(logs[0][0])}, 4)",
                 client=client, socket=socket)
    return rows in ([[""]], [["NULL"]])
