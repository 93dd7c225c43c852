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

import logging
import re

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
