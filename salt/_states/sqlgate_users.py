"""Database users of the sqlgate formula, with what saltext.mysql's ``mysql_user`` cannot say:
``REQUIRE SSL`` and resource limits (``WITH MAX_USER_CONNECTIONS n MAX_STATEMENT_TIME s``).

Both states read the account's ``mysql.user`` row (``sqlgate_db.account``) and change only what
differs, so a second run changes nothing; both honour ``test=True``. The password is given to
the server by its mysql_native_password hash (computed here), in a statement on the client's
stdin: neither the password nor the hash is ever on a command line, in a comment, a change or
a log line.

.. code-block:: yaml

    sqlgate-db-users-app-read:
      sqlgate_users.present:
        - name: app_read
        - host: '%'
        - password: secret
        - identified: IDENTIFIED BY PASSWORD '{hash}'   # the flavour's (flavours.yaml)
        - require_ssl: True
        - limits:
            max_user_connections: 60
            max_statement_time: 10                   # MariaDB only
        - client: mariadb                            # optional, as for sqlgate_db
        - socket: /run/mysqld/mysqld.sock

    sqlgate-db-users-app-retired:
      sqlgate_users.absent:
        - name: app
        - host: '%'

A limit is named as its ``mysql.user`` column; the statement's ``WITH`` option is the same name
in upper case.
"""

import hashlib
import re

from salt.exceptions import CommandExecutionError

__virtualname__ = "sqlgate_users"

HIDDEN = "********"
NATIVE_PLUGIN = "mysql_native_password"
# mysql.user's ssl_type: ANY for REQUIRE SSL, empty for REQUIRE NONE.
SSL_TYPE = {True: "ANY", False: ""}
_LIMIT = re.compile(r"[a-z_]+")


def __virtual__():
    if "sqlgate_db.account" in __salt__:  # noqa: F821 (a Salt dunder)
        return __virtualname__
    return (False, "the sqlgate_db execution module is not loaded (run saltutil.sync_all)")


def _db(function, *args, **kwargs):
    return __salt__[f"sqlgate_db.{function}"](*args, **kwargs)  # noqa: F821 (a Salt dunder)


def _testing():
    return bool(__opts__.get("test"))  # noqa: F821 (a Salt dunder)


def native_password_hash(password):
    """mysql_native_password's stored form: ``*`` and SHA1(SHA1(password)) in upper-case hex."""
    inner = hashlib.sha1(str(password).encode()).digest()
    return "*" + hashlib.sha1(inner).hexdigest().upper()


def _escaped(value):
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


def _literal(value):
    return "'" + _escaped(value) + "'"


def _hide(text, *secrets):
    text = str(text)
    for secret in secrets:
        if secret:
            for form in {str(secret), _escaped(secret)}:
                text = text.replace(form, HIDDEN)
    return text


def _number(value):
    """A limit's value as the statement writes it (no quotes, so only numbers pass)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"not a limit value: {value!r}")
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _same_number(current, wanted):
    try:
        return float(current) == float(wanted)
    except (TypeError, ValueError):
        return False


def present(name, password, identified, host="%", require_ssl=True, limits=None, client=None,
            socket=None):
    """The user ``name@host`` exists with this password, ``REQUIRE SSL`` (or ``NONE`` when
    ``require_ssl`` is False) and these ``limits`` (column -> number). ``identified`` is the
    flavour's ``IDENTIFIED ...`` clause, formatted with ``hash``."""
    account_name = f"{name}@{host}"
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    require_ssl = bool(require_ssl)
    limits = dict(limits or {})
    try:
        bad = [limit for limit in limits if not _LIMIT.fullmatch(str(limit))]
        if bad:
            raise ValueError(f"not limit names: {bad}")
        written = {limit: _number(value) for limit, value in limits.items()}
    except ValueError as error:
        ret["comment"] = f"Bad limits for {account_name}: {error}"
        return ret
    digest = native_password_hash(password)
    try:
        current = _db("account", name, host, fields=list(limits), client=client, socket=socket)
    except CommandExecutionError as error:
        ret["comment"] = f"Cannot read the account {account_name}: {_hide(error, password)}"
        return ret

    if current:
        changes = {}
        if (current.get("plugin"), current.get("authentication_string")) != \
                (NATIVE_PLUGIN, digest):
            changes["password"] = "changed"
        if current.get("ssl_type") != SSL_TYPE[require_ssl]:
            changes["require_ssl"] = {"old": current.get("ssl_type") not in ("", None),
                                      "new": require_ssl}
        for limit, value in limits.items():
            if not _same_number(current.get(limit), value):
                changes[limit] = {"old": current.get(limit), "new": value}
        if not changes:
            ret.update(result=True, comment=f"The user {account_name} is as wanted")
            return ret
        verb = "ALTER"
    else:
        changes = {"user": {"old": None, "new": account_name}}
        verb = "CREATE"

    if _testing():
        ret.update(result=None, changes=changes,
                   comment=f"The user {account_name} would be "
                           f"{'created' if verb == 'CREATE' else 'changed'}")
        return ret

    statement = (f"{verb} USER {_literal(name)}@{_literal(host)} "
                 f"{identified.format(hash=_escaped(digest))} "
                 f"REQUIRE {'SSL' if require_ssl else 'NONE'}")
    if written:
        statement += " WITH " + " ".join(f"{limit.upper()} {value}"
                                          for limit, value in written.items())
    try:
        _db("execute", statement + ";\n", client=client, socket=socket)
        after = _db("account", name, host, fields=list(limits), client=client, socket=socket)
    except CommandExecutionError as error:
        ret["comment"] = (f"Could not {verb.lower()} the user {account_name}: "
                          f"{_hide(error, password, digest)}")
        return ret
    wrong = [field for field, ok in (
        ("password", (after.get("plugin"), after.get("authentication_string"))
         == (NATIVE_PLUGIN, digest)),
        ("require_ssl", after.get("ssl_type") == SSL_TYPE[require_ssl]),
        *((limit, _same_number(after.get(limit), value)) for limit, value in limits.items()),
    ) if not ok]
    if wrong:
        ret["comment"] = (f"After {verb} USER the user {account_name} still differs in "
                          f"{', '.join(wrong)}")
        return ret
    done = "created" if verb == "CREATE" else "changed"
    ret.update(result=True, changes=changes, comment=f"The user {account_name} was {done}")
    return ret


def absent(name, host="%", client=None, socket=None):
    """No user ``name@host`` (``DROP USER IF EXISTS``, which also drops its privileges)."""
    account_name = f"{name}@{host}"
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    try:
        current = _db("account", name, host, client=client, socket=socket)
    except CommandExecutionError as error:
        ret["comment"] = f"Cannot read the account {account_name}: {error}"
        return ret
    if not current:
        ret.update(result=True, comment=f"There is no user {account_name}")
        return ret
    changes = {"user": {"old": account_name, "new": None}}
    if _testing():
        ret.update(result=None, changes=changes, comment=f"The user {account_name} would go")
        return ret
    try:
        _db("execute", f"DROP USER IF EXISTS {_literal(name)}@{_literal(host)};\n",
            client=client, socket=socket)
        after = _db("account", name, host, client=client, socket=socket)
    except CommandExecutionError as error:
        ret["comment"] = f"Could not drop the user {account_name}: {error}"
        return ret
    if after:
        ret["comment"] = f"The user {account_name} is still there after DROP USER"
        return ret
    ret.update(result=True, changes=changes, comment=f"The user {account_name} is gone")
    return ret
