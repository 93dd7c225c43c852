"""The Proxy list file (``GATEKEEPER_PROXIES_FILE``), re-read while the Gatekeeper runs.

Proxies are added and removed on a running cluster (``bootstrap.py scale``): a list in the env
file would restart every Gatekeeper at once to change it. So the list is a file of its own,
``{"proxies": [{"name": "proxy1", "url": "https://10.0.0.5:5000"}, ...]}``
(``services.config.parse_proxies_file``), that each worker process looks at every second as it
does the keys file (``services.watchedfile``): a change of inode, size or modification time
makes it read the file, and a new list that checks out is handed to ``Proxies.update``, which
applies it without dropping a request. A file that is gone, unreadable or wrong is logged once
and the list in force stays: a bad deployment must not empty the Gatekeeper.
"""

from __future__ import annotations

import logging
from pathlib import Path

from services.config import NamedProxy, parse_proxies_file
from services.watchedfile import WatchedFile

log = logging.getLogger(__name__)


class ProxyListFile:
    """The list in a file, as last read well: ``proxies``. ``allow_plain_http``: whether an
    ``http://`` Proxy may be listed (``GATEKEEPER_INSECURE_HTTP``, development only)."""

    def __init__(self, path: str, allow_plain_http: bool = False) -> None:
        """Read the file now: a bad one raises (the Gatekeeper refuses to start)."""
        self._path = Path(path)
        self._allow_plain_http = allow_plain_http
        self._file = WatchedFile(self._path, "the proxy list file")
        self.proxies: tuple[NamedProxy, ...] = self._parse(self._file.read())

    def _parse(self, text: str) -> tuple[NamedProxy, ...]:
        proxies = parse_proxies_file(text, str(self._path))
        plain = [proxy.name for proxy in proxies if proxy.url.startswith("http://")]
        if plain and not self._allow_plain_http:
            raise ValueError(f"{self._path}: plain http:// for {', '.join(plain)}: use https:// "
                             "(GATEKEEPER_INSECURE_HTTP=true allows it, for development only)")
        return proxies

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed; True when ``proxies`` is a new list. A file that is
        gone or wrong leaves the list in force, logged once per change."""
        text = self._file.changed(f"the {len(self.proxies)} proxies")
        if text is None:
            return False
        try:
            proxies = self._parse(text)
        except ValueError as error:
            log.error("the proxy list file changed but is not usable, keeping the %d proxies "
                      "in force: %s", len(self.proxies), error)
            return False
        if proxies == self.proxies:
            return False
        self.proxies = proxies
        log.info("reloaded the proxy list from %s: %s", self._path,
                 ", ".join(f"{proxy.name}={proxy.url}" for proxy in proxies))
        return True
