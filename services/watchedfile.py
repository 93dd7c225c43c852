"""A settings file a running service looks at again and again (the Gatekeeper's keys file and
its Proxy list file): a deployment rewrites it, and the service takes the new text without a
restart.

Looking costs one ``stat``: the file is read only when its inode, size or modification time
changed (a deployment that renames a new file into place changes the inode). What the service
does with the text (parse it, apply it, keep what is in force when it is wrong) is its own; a
file that is gone or unreadable is logged here, once per change, and the service keeps what it
has.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileState:
    inode: int
    size: int
    mtime_ns: int


class WatchedFile:
    """``path``, named ``what`` in the log (e.g. "the keys file")."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._state: FileState | None = None
        self._text: str | None = None

    def read(self) -> str:
        """The text now (the first read: raises when the file is gone or unreadable)."""
        self._state = self._stat()
        self._text = self.path.read_text()
        return self._text

    def changed(self, in_force: str) -> str | None:
        """The text, when the file changed since the last look into a text not seen before;
        else None. ``in_force`` names what the service keeps meanwhile, for the log ("the 3
        proxies")."""
        try:
            state = self._stat()
        except OSError as error:
            if self._state is not None:
                log.error("%s is unreadable, keeping %s in force: %s", self.what, in_force,
                          error)
                self._state = None
            return None
        if state == self._state:
            return None
        seen, self._state = self._state, state
        try:
            text = self.path.read_text()
        except OSError as error:
            if seen is not None:  # not read, so not seen: the next look tries again
                log.error("%s changed but cannot be read, keeping %s in force: %s", self.what,
                          in_force, error)
            self._state = None
            return None
        if text == self._text:
            return None
        self._text = text  # the same text would fail again: wait for a change
        return text

    def _stat(self) -> FileState:
        info = os.stat(self.path)
        return FileState(info.st_ino, info.st_size, info.st_mtime_ns)
