"""Quiet errors: what the Proxy answers never names internal addresses, ports or database users.

Server and driver messages do (``Access denied for user 'app_read'@'10.1.2.3'``, ``Can't
connect to MySQL server on '10.0.0.5' ([Errno 111] Connect call failed ('10.0.0.5', 3306))``,
``User 'app_write' has exceeded the 'max_user_connections' resource``), and the Gatekeeper
relays answers to the Internet as they are. So every error answer is scrubbed on its way out,
keeping the server's code (``mysql_errno``) and the rest of the message, while the Proxy's log
keeps the full text beside the request id, for whoever runs it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any

from services.errors import ApiError

HIDDEN_ACCOUNT = "'(hidden)'@'(hidden)'"
HIDDEN_ADDRESS = "(internal address)"
HIDDEN_USER = "(hidden)"

# 'user'@'host', as the servers write an account.
_ACCOUNT = re.compile(r"""(['"`])[^'"`\n]{0,80}\1@(['"`])[^'"`\n]{0,255}\2""")
# Python's socket errors name the peer as a tuple: ('10.0.0.5', 3306).
_PEER_TUPLE = re.compile(r"""\(\s*['"][^'"\n]{1,255}['"]\s*,\s*\d{1,5}(?:\s*,\s*\d+){0,2}\s*\)""")
# "... server on 'host'" / "... server at 'host:port'": the client library's connect errors.
_SERVER_ON = re.compile(r"""((?:server|host)\s+(?:on|at)\s+)(['"`])[^'"`\n]{1,255}\2""", re.I)
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?(?![\d.])")
# Candidates only; each is checked with ipaddress, so times (10:30:00) stay as they are.
_IPV6 = re.compile(r"\[?(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f.]{0,15}(?![\w:])\]?"
                   r"(?::\d{1,5})?")


class Scrubber:
    """Removes what one Proxy knows to be internal (its nodes' hosts, its database users) and
    anything shaped like an address or an account."""

    def __init__(self, hosts: Iterable[str], users: Iterable[str]) -> None:
        # Host names with a dot only (addresses are found by shape, and a single word such as
        # "db" would be hidden wherever it appears), longest first, so that a name that
        # contains another is replaced whole.
        names = sorted({host for host in hosts if "." in host and not _is_ip(host)}, key=len,
                       reverse=True)
        self._hosts = (re.compile("|".join(rf"(?<![\w.-]){re.escape(name)}(?::\d{{1,5}})?"
                                           rf"(?![\w.-])" for name in names))
                       if names else None)
        quoted = sorted({user for user in users if user}, key=len, reverse=True)
        # A user named where the servers name one ("user 'app_write' has exceeded..."), not
        # every quoted word that happens to match (a duplicate entry's value, say).
        self._users = (re.compile(r"""(user\s+)(['"`])(?:""" + "|".join(map(re.escape, quoted))
                                  + r")\2", re.I) if quoted else None)

    def text(self, text: str) -> str:
        text = _ACCOUNT.sub(HIDDEN_ACCOUNT, text)
        text = _PEER_TUPLE.sub(f"({HIDDEN_ADDRESS})", text)
        text = _SERVER_ON.sub(lambda m: f"{m.group(1)}{m.group(2)}{HIDDEN_ADDRESS}{m.group(2)}",
                              text)
        if self._users is not None:
            text = self._users.sub(
                lambda m: f"{m.group(1)}{m.group(2)}{HIDDEN_USER}{m.group(2)}", text)
        if self._hosts is not None:
            text = self._hosts.sub(HIDDEN_ADDRESS, text)
        text = _IPV4.sub(HIDDEN_ADDRESS, text)
        return _IPV6.sub(lambda m: HIDDEN_ADDRESS if _is_ip(_bare(m.group(0))) else m.group(0),
                         text)

    def value(self, value: Any) -> Any:
        """Strings inside an error's details too (``failures``, ``replicas``...)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list | tuple):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        return value

    def error(self, error: ApiError) -> bool:
        """Scrub ``error`` in place; True when something was hidden."""
        message, details = self.text(error.message), self.value(error.details)
        changed = message != error.message or details != error.details
        error.message, error.details = message, details
        return changed


def _bare(text: str) -> str:
    """An IPv6 candidate without brackets or port."""
    if text.startswith("["):
        return text[1:].partition("]")[0]
    return text.rstrip("]")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
