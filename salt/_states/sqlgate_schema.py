"""A schema of the sqlgate formula loaded from SQL files once, and never on top of data.

The files (Sakila's schema file begins with ``DROP SCHEMA``) run only when
``sqlgate_db.schema_state`` positively saw the schema absent or without a table; when the check
fails (server down or busy, any error) nothing runs and the state fails, saying why. The first
file also runs behind a guard statement, in the same client session, that fails when the schema
has a table by then, so that its ``DROP SCHEMA`` cannot reach data that appeared after the check.

.. code-block:: yaml

    sqlgate-db-sakila-loaded:
      sqlgate_schema.loaded:
        - name: sakila
        - files:
          - /srv/sakila/sakila-schema.sql
          - /srv/sakila/sakila-data.sql
        - client: mariadb              # optional, as for the sqlgate_db functions
        - socket: /run/mysqld/mysqld.sock
"""

from salt.exceptions import CommandExecutionError

__virtualname__ = "sqlgate_schema"

LOADABLE = ("absent", "empty")


def __virtual__():
    if "sqlgate_db.schema_state" in __salt__:  # noqa: F821 (a Salt dunder)
        return __virtualname__
    return (False, "the sqlgate_db execution module is not loaded (run saltutil.sync_all)")


def _db(function, *args, **kwargs):
    return __salt__[f"sqlgate_db.{function}"](*args, **kwargs)  # noqa: F821 (a Salt dunder)


def _testing():
    return bool(__opts__.get("test"))  # noqa: F821 (a Salt dunder)


def empty_schema_guard(schema):
    """A statement that fails ("Subquery returns more than 1 row") when ``schema`` has a table
    or view, and passes (selecting NULL) when it has none or does not exist."""
    literal = _db("sql_literal", schema)
    tables = f"SELECT 1 FROM information_schema.tables WHERE table_schema = {literal}"
    return f"SELECT ({tables} UNION ALL {tables}) AS sqlgate_empty_schema_guard;\n"


def loaded(name, files, client=None, socket=None):
    """Schema ``name`` is loaded from ``files`` (SQL run in order by the client) when it is
    absent or has no table; left alone when it has one; failed when that cannot be told."""
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    files = [files] if isinstance(files, str) else list(files or [])
    if not files:
        ret["comment"] = "No SQL files to load"
        return ret
    state = _db("schema_state", name, client=client, socket=socket)
    if state == "not empty":
        ret.update(result=True, comment=f"Schema {name} has tables: nothing loaded")
        return ret
    if state not in LOADABLE:
        ret["comment"] = (f"Could not tell whether schema {name} is empty ({state}; the "
                          "minion's log says why): nothing loaded")
        return ret
    changes = {"loaded": files}
    if _testing():
        ret.update(result=None, changes=changes,
                   comment=f"Schema {name} is {state}: {', '.join(files)} would be loaded")
        return ret

    for number, path in enumerate(files):
        try:
            with open(path, encoding="utf-8") as stream:
                sql = stream.read()
        except OSError as error:
            ret["comment"] = f"Cannot read {path}: {error}"
            return ret
        if number == 0:
            sql = empty_schema_guard(name) + sql
        try:
            _db("execute", sql, client=client, socket=socket)
        except CommandExecutionError as error:
            if number == 0 and "ERROR 1242" in str(error):
                error = "the guard found a table there by now"
            ret["comment"] = f"Loading {path} into schema {name} failed: {error}"
            if number:
                ret["changes"] = {"loaded": files[:number]}
            return ret
    after = _db("schema_state", name, client=client, socket=socket)
    if after != "not empty":
        ret.update(changes=changes,
                   comment=f"After loading {', '.join(files)} schema {name} is {after}")
        return ret
    ret.update(result=True, changes=changes,
               comment=f"Schema {name} was {state}: loaded {', '.join(files)}")
    return ret
