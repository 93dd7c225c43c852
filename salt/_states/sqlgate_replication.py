"""A replica of the sqlgate formula: it follows its source by GTID, and its threads run.

Both states read the replica's own status (``sqlgate_db.replica_status``, MySQL 8's field names
on both flavours), so a second run changes nothing; both honour ``test=True``. The password goes
to the client on stdin, and never into a comment, a change or a log line.

.. code-block:: yaml

    sqlgate-db-replication-source:
      sqlgate_replication.following:
        - source: 10.0.0.12          # the primary's private address
        - port: 3306
        - user: repl
        - password: secret
        - change_source: >-          # the flavour's statement (flavours.yaml), str.format'ed
            CHANGE MASTER TO MASTER_HOST='{source}', MASTER_PORT={port},
            MASTER_USER='{user}', MASTER_PASSWORD='{password}', MASTER_USE_GTID=slave_pos
        - ssl_ca: /etc/sqlgate/tls/ca.crt  # TLS, checking the source's certificate with it
        - change_source_ssl: MASTER_SSL={ssl}, MASTER_SSL_CA='{ssl_ca}'
        - client: mariadb            # optional, as for the sqlgate_db functions
        - socket: /run/mysqld/mysqld.sock

    sqlgate-db-replication-running:
      sqlgate_replication.running:
        - require:
          - sqlgate_replication: sqlgate-db-replication-source
"""

from salt.exceptions import CommandExecutionError

__virtualname__ = "sqlgate_replication"

HIDDEN = "********"
# The status fields that say which source a replica follows, and as whom.
SOURCE_FIELDS = ("Source_Host", "Source_Port", "Source_User")
# And how: over TLS or not, and with which CA file.
SSL_FIELDS = ("Source_SSL_Allowed", "Source_SSL_CA_File")
# An IO thread still connecting (the primary restarting, a network blip) retries by itself:
# START REPLICA would change nothing.
IO_RUNNING = ("Yes", "Connecting")


def __virtual__():
    if "sqlgate_db.replica_status" in __salt__:  # noqa: F821 (a Salt dunder)
        return __virtualname__
    return (False, "the sqlgate_db execution module is not loaded (run saltutil.sync_all)")


def _db(function, *args, **kwargs):
    return __salt__[f"sqlgate_db.{function}"](*args, **kwargs)  # noqa: F821 (a Salt dunder)


def _testing():
    return bool(__opts__.get("test"))  # noqa: F821 (a Salt dunder)


def _escaped(value):
    """``value`` for the inside of an SQL string literal."""
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


def _hide(text, password):
    """``text`` without the password (a client's error may quote the statement)."""
    text = str(text)
    if password:
        for form in {str(password), _escaped(password)}:
            text = text.replace(form, HIDDEN)
    return text


def _where(fields):
    """``user@host:port`` of a status's source fields, and `` over TLS (CA file)`` when its
    TLS fields are there and say so."""
    where = "{}@{}:{}".format(*(fields.get(name) or "?" for name in
                                ("Source_User", "Source_Host", "Source_Port")))
    if fields.get("Source_SSL_Allowed") == "Yes":
        where += f" over TLS ({fields.get('Source_SSL_CA_File') or 'no CA file'})"
    return where


def _has_history(client, socket):
    """Whether a server that replicates from nobody has transactions in its binary log: a
    former primary, not a fresh server. Which of its transactions the primary lacks is the
    failover runner's question (sqlgate_failover.rejoin), not this state's."""
    state = _db("node_state", client=client, socket=socket)
    return bool(state.get("gtid_binlog_pos"))


def following(name, source, password, change_source, port=3306, user="repl", ssl_ca="",
              change_source_ssl="", client=None, socket=None, fresh_only=False):
    """The replica follows ``source``:``port`` as ``user`` by GTID, over TLS checked with the
    CA file ``ssl_ca`` when ``change_source_ssl`` is given (without TLS when ``ssl_ca`` is
    empty).

    When its status names another source, port or user, another TLS setting or CA file (or no
    source: not a replica yet), it runs ``STOP REPLICA``, ``change_source`` formatted with
    ``source``, ``port``, ``user`` and ``password`` (each escaped for an SQL string literal)
    followed by ``change_source_ssl`` formatted with ``ssl`` (1 or 0) and ``ssl_ca``, and
    ``START REPLICA``.

    With ``fresh_only``, a server that replicates from nobody is made a replica only when its
    binary log is empty: one with a history (a former primary) is left alone, successfully,
    for the failover runner to check for errant transactions first.
    """
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    try:
        port = int(port)
    except (TypeError, ValueError):
        ret["comment"] = f"port must be a number, not {port!r}"
        return ret
    wanted = {"Source_Host": str(source), "Source_Port": str(port), "Source_User": str(user)}
    fields = SOURCE_FIELDS
    if change_source_ssl:
        wanted.update({"Source_SSL_Allowed": "Yes" if ssl_ca else "No",
                       "Source_SSL_CA_File": str(ssl_ca or "")})
        fields = SOURCE_FIELDS + SSL_FIELDS
    try:
        status = _db("replica_status", client=client, socket=socket)
    except CommandExecutionError as error:
        ret["comment"] = f"Cannot read the replica's status: {_hide(error, password)}"
        return ret
    if not status and fresh_only:
        try:
            history = _has_history(client, socket)
        except CommandExecutionError as error:
            ret["comment"] = f"Cannot read the server's state: {error}"
            return ret
        if history:
            ret.update(result=True, comment="Not a replica and has a history of its own (a "
                       "former primary): left to the failover runner (sqlgate_failover.rejoin)")
            return ret
    current = {field: status.get(field) for field in fields}
    if current == wanted:
        ret.update(result=True, comment=f"The replica already follows {_where(wanted)}")
        return ret

    old = _where(current) if status else None
    changes = {"source": {"old": old, "new": _where(wanted)}}
    if _testing():
        ret.update(result=None, changes=changes,
                   comment=f"The replica would follow {_where(wanted)} "
                           f"(now: {old or 'not a replica'})")
        return ret

    statement = change_source.format(source=_escaped(source), port=port, user=_escaped(user),
                                     password=_escaped(password))
    if change_source_ssl:
        statement += ", " + change_source_ssl.format(ssl=1 if ssl_ca else 0,
                                                     ssl_ca=_escaped(ssl_ca or ""))
    try:
        _db("execute", f"STOP REPLICA;\n{statement};\nSTART REPLICA;\n", client=client,
            socket=socket)
        status = _db("replica_status", client=client, socket=socket)
    except CommandExecutionError as error:
        ret["comment"] = (f"Could not make the replica follow {_where(wanted)}: "
                          f"{_hide(error, password)}")
        return ret
    now = {field: status.get(field) for field in fields}
    if now != wanted:
        ret["comment"] = (f"After the change the replica follows {_where(now)}, "
                          f"not {_where(wanted)}")
        return ret
    ret.update(result=True, changes=changes,
               comment=f"The replica follows {_where(wanted)}")
    return ret


def running(name, client=None, socket=None, fresh_only=False):
    """The replica's IO and SQL threads run (an IO thread ``Connecting`` counts as running):
    ``START REPLICA`` when one of them does not. With ``fresh_only``, a server that is no
    replica and has a history of its own is left to the failover runner (as ``following``)."""
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    try:
        status = _db("replica_status", client=client, socket=socket)
    except CommandExecutionError as error:
        ret["comment"] = f"Cannot read the replica's status: {error}"
        return ret
    if not status:
        if fresh_only and _has_history(client, socket):
            ret.update(result=True, comment="Not a replica (a former primary): left to the "
                       "failover runner")
            return ret
        ret["comment"] = "Not a replica: no source to start replicating from"
        return ret
    io, sql = status.get("Replica_IO_Running"), status.get("Replica_SQL_Running")
    if io in IO_RUNNING and sql == "Yes":
        ret.update(result=True,
                   comment=f"The replication threads are running (IO: {io}, SQL: {sql})")
        return ret

    stopped = {field: value for field, value in
               (("Replica_IO_Running", io), ("Replica_SQL_Running", sql))
               if value not in (IO_RUNNING if field == "Replica_IO_Running" else ("Yes",))}
    if _testing():
        ret.update(result=None, comment="START REPLICA would run",
                   changes={field: {"old": value, "new": "Yes"}
                            for field, value in stopped.items()})
        return ret
    try:
        _db("execute", "START REPLICA", client=client, socket=socket)
        status = _db("replica_status", client=client, socket=socket)
    except CommandExecutionError as error:
        ret["comment"] = f"START REPLICA failed: {error}"
        return ret
    ret["changes"] = {field: {"old": value, "new": status.get(field)}
                      for field, value in stopped.items()}
    io, sql = status.get("Replica_IO_Running"), status.get("Replica_SQL_Running")
    if io in IO_RUNNING and sql == "Yes":
        ret.update(result=True, comment=f"Started the replication threads (IO: {io}, SQL: {sql})")
    else:
        errors = "; ".join(status[field] for field in ("Last_IO_Error", "Last_SQL_Error")
                           if status.get(field))
        ret["comment"] = (f"After START REPLICA the threads are IO: {io}, SQL: {sql}"
                          + (f" ({errors})" if errors else ""))
    return ret


def writable(name, epoch, host, steps=None, client=None, socket=None):
    """The current primary ``host`` of ``epoch`` takes writes (``sqlgate_db.promote``:
    replication reset, semi-sync primary side on, the epoch row, read-only OFF last).

    - No epoch row yet (first setup): promoted.
    - The row is ``(epoch, host)``: nothing to do when writable; promoted again when it came
      back read-only (every server starts so).
    - ``steps``: the flavour's statements (flavours.yaml ``promote``, ``open_writes``;
      defaults.yaml ``epoch_write``).
    - Any other row, or a node whose IO thread still receives from a source: it stays
      read-only and the state fails. A failover in progress or a stale pillar is the
      runner's business (sqlgate_failover), never a highstate's.
    """
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    epoch = int(epoch)
    try:
        state = _db("node_state", client=client, socket=socket)
    except CommandExecutionError as error:
        ret["comment"] = f"Cannot read the server's state: {error}"
        return ret
    if not state.get("running"):
        ret["comment"] = f"The server does not answer: {state.get('error', '')}"
        return ret
    row = state.get("epoch")
    replica = state.get("replica") or {}
    if row and (row["epoch"], row["primary_host"]) != (epoch, host):
        ret["comment"] = (f"The epoch row says epoch {row['epoch']}, primary "
                          f"{row['primary_host']}; the pillar says epoch {epoch}, primary "
                          f"{host}: left read-only (the failover runner decides)")
        return ret
    if replica.get("io_running") in IO_RUNNING:
        ret["comment"] = (f"Still replicating from {replica.get('source_host')}: not made "
                          "writable (the failover runner promotes)")
        return ret
    if row and not state.get("read_only"):
        ret.update(result=True, comment=f"The primary of epoch {epoch} takes writes")
        return ret
    changes = {"read_only": {"old": state.get("read_only"), "new": False},
               "epoch": {"old": row and row["epoch"], "new": epoch}}
    if _testing():
        ret.update(result=None, changes=changes,
                   comment=f"{host} would be promoted (epoch {epoch})")
        return ret
    try:
        _db("promote", epoch, host, steps=steps, client=client, socket=socket)
    except CommandExecutionError as error:
        ret["comment"] = f"Promotion failed: {error}"
        return ret
    ret.update(result=True, changes=changes, comment=f"{host} promoted (epoch {epoch})")
    return ret
