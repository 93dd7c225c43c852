"""Reaching a cluster once it is up, the same way for every provider: waiting for the
Gatekeeper's health over HTTPS, the request to try, and what ``status`` asks Salt about
replication (the replica's own threads and delay, and whether the Proxy keeps it in rotation)
under one set of names."""

from __future__ import annotations

import http.client
import json
import shlex
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping

from cluster.topology import PROXY_PORT

# Where the formula puts each host's certificate and key (named after the minion id) and the CA.
HOST_TLS_DIR = "/etc/sqlgate/tls"


def proxy_health_command(host: str = "{{ grains.id }}") -> str:
    """Run on a Proxy's host (through Salt, rendered with ``template=jinja``): its own /health,
    with every replica's rotation. The Proxy only talks to holders of a cluster certificate:
    the host's own opens the door, and the Proxy's is checked for the host's name."""
    return " ".join([
        "curl -s --max-time 5", f"--cacert {HOST_TLS_DIR}/ca.crt",
        f"--cert {HOST_TLS_DIR}/{host}.crt --key {HOST_TLS_DIR}/{host}.key",
        f"--resolve {host}:{PROXY_PORT}:127.0.0.1 https://{host}:{PROXY_PORT}/health"])


PROXY_HEALTH_CALL = ("cmd.run", proxy_health_command(), "template=jinja")

# The replication check, under MySQL 8's names; MariaDB still says Slave/Master.
REPLICA_FIELDS = ("Replica_IO_Running", "Replica_SQL_Running", "Seconds_Behind_Source")
OLD_REPLICA_NAMES = {"Slave_IO_Running": "Replica_IO_Running",
                     "Slave_SQL_Running": "Replica_SQL_Running",
                     "Seconds_Behind_Master": "Seconds_Behind_Source"}


# The request every provider suggests trying once the cluster is up.
TRY_BODY = '{"sql": "SELECT COUNT(*) FROM sakila.actor", "mode": "random"}'


def key_from_json(path: object) -> str:
    """A shell expression printing the ``api_key`` of a cluster file (the key stays off the
    screen and out of the shell history)."""
    return f"$(python3 -c 'import json; print(json.load(open(\"{path}\"))[\"api_key\"])')"


def curl_line(url: str, key_expression: str, ca_file: str | None = None) -> str:
    """A working curl of ``POST /query``; ``key_expression`` is shell that prints the key;
    ``ca_file`` the CA the Gatekeeper's certificate is checked with (None: the system's)."""
    trust = f"--cacert {shlex.quote(ca_file)} " if ca_file else ""
    return (f"curl -s {trust}-X POST {url}/query -H 'Content-Type: application/json' "
            f"-H \"X-API-Key: {key_expression}\" -d '{TRY_BODY}'")


def access_lines(url: str, key_where: str, key_expression: str,
                 ca_file: str | None = None) -> list[str]:
    """What ``up`` prints last on every provider: the endpoint, its CA, where the key is, a
    curl."""
    lines = [f"Gatekeeper: {url}"]
    if ca_file:
        lines.append(f"CA:         {ca_file} (the cluster's own; curl --cacert)")
    return [*lines, f"API key:    {key_where}",
            f"Try:\n  {curl_line(url, key_expression, ca_file)}"]


def monitor_lines(url: str | None, ca_file: str | None = None,
                  server_name: str | None = None) -> list[str]:
    """What ``up`` prints about Prometheus (nothing without a monitor): its UI and API, the
    console page, and how to check its certificate (``server_name``: the name it carries when
    the URL's host is an address the certificate does not name)."""
    if not url:
        return []
    lines = [f"Prometheus: {url} (operator only; console {url}consoles/sqlgate.html)"]
    if ca_file:
        parts = urllib.parse.urlsplit(url)
        resolve = (f" --resolve {server_name}:{parts.port}:{parts.hostname} "
                   f"https://{server_name}:{parts.port}/" if server_name else f" {url}")
        lines.append(f"  curl --cacert {shlex.quote(ca_file)}{resolve}api/v1/targets")
    return lines


def prometheus_ready(url: str, timeout_s: float = 5, **trust) -> bool:
    """Prometheus at ``url`` answers ``/-/ready`` (``trust`` as for ``get_status``)."""
    try:
        return get_status(f"{url.rstrip('/')}/-/ready", timeout_s=timeout_s, **trust) == 200
    except (OSError, http.client.HTTPException):
        return False


def tls_context(ca_file: str | None = None, also_trust: str | None = None) -> ssl.SSLContext:
    """Verifies the Gatekeeper: against ``ca_file`` alone (the cluster CA), else the system's
    CAs plus ``also_trust`` (a certificate the user brought, trusted as it is)."""
    context = ssl.create_default_context(cafile=ca_file)
    if also_trust and not ca_file:
        context.load_verify_locations(cafile=also_trust)
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


class _HttpsTo(http.client.HTTPSConnection):
    """HTTPS to ``address`` while checking the certificate for the URL's host: the user's
    certificate names a DNS name that may not point at the cluster yet."""

    def __init__(self, host: str, port: int, address: str, **kwargs) -> None:
        super().__init__(host, port, **kwargs)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def get_status(url: str, *, ca_file: str | None = None, also_trust: str | None = None,
               address: str | None = None, timeout_s: float = 5) -> int:
    """The HTTP status of ``GET url`` (https verified as ``tls_context`` says; ``address``:
    where to connect instead of the URL's host)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https":
        connection: http.client.HTTPConnection = _HttpsTo(
            host, parts.port or 443, address or host, timeout=timeout_s,
            context=tls_context(ca_file, also_trust))
    else:
        connection = http.client.HTTPConnection(address or host, parts.port or 80,
                                                timeout=timeout_s)
    try:
        connection.request("GET", parts.path or "/")
        return connection.getresponse().status
    finally:
        connection.close()


def health_ok(url: str, timeout_s: float = 5, **trust) -> bool:
    """``url/health`` answers 200 (``trust``: ``get_status``'s ca_file, also_trust, address)."""
    try:
        return get_status(f"{url}/health", timeout_s=timeout_s, **trust) == 200
    except (OSError, http.client.HTTPException):
        return False


def wait_for_health(url: str, deadline_s: float, poll_s: float = 0.5,
                    progress: Callable[[str], None] | None = None, **trust) -> bool:
    """Poll ``url/health`` until it answers 200 (True) or ``deadline_s`` passes (False);
    ``progress`` hears about it once a minute on long waits."""
    start = last_report = time.monotonic()
    while time.monotonic() - start < deadline_s:
        if health_ok(url, timeout_s=min(5.0, max(poll_s, 1.0)), **trust):
            return True
        if progress and time.monotonic() - last_report >= 60:
            progress(f"  still waiting ({(time.monotonic() - start) / 60:.0f} min)")
            last_report = time.monotonic()
        time.sleep(poll_s)
    return False


# The one replica-status reader: the formula's execution module (salt/_modules/sqlgate_db.py),
# run on the replicas through Salt by every provider's ``status``.
REPLICA_STATUS_FUNCTION = ("sqlgate_db.replica_status",)

# Asks Salt on the master: ``ask(minion ids, function and arguments)`` -> returns by minion id.
SaltAsk = Callable[[list[str], tuple[str, ...]], Mapping[str, object]]


def replication_report(ask: SaltAsk, replicas: list[str],
                       proxies: list[str]) -> dict[str, tuple[dict[str, str], str]]:
    """Per replica: its replication fields (as ``replica_fields`` names them) and the Proxy's
    one-line view of it (threads, lag, rotation)."""
    status = ask(replicas, REPLICA_STATUS_FUNCTION) if replicas else {}
    rotation: dict[str, str] = {}
    for answer in (ask(proxies, PROXY_HEALTH_CALL) if proxies else {}).values():
        rotation.update(proxy_view(answer))
    report = {}
    for name in replicas:
        answer = status.get(name)
        report[name] = (replica_fields(answer if isinstance(answer, Mapping) else {}),
                        rotation.get(name, "Proxy: no answer"))
    return report


def replica_fields(status: Mapping[str, object]) -> dict[str, str]:
    """The three fields of a replica's status, named as MySQL 8 does, '?' where missing."""
    named = {OLD_REPLICA_NAMES.get(key, key): str(value) for key, value in status.items()}
    return {field: named.get(field, "?") for field in REPLICA_FIELDS}


def replication_running(fields: Mapping[str, str]) -> bool:
    return fields["Replica_IO_Running"] == "Yes" and fields["Replica_SQL_Running"] == "Yes"


def proxy_view(health_text: object) -> dict[str, str]:
    """Per replica, one line of what the Proxy sees: threads, lag, in or out of rotation."""
    try:
        nodes = json.loads(str(health_text))["nodes"]
    except (ValueError, KeyError, TypeError):
        return {}
    view = {}
    for name, node in nodes.items():
        if node.get("role") != "replica":
            continue
        lag = node.get("lag_ms")
        threads = "/".join("Yes" if node.get(key) else "No"
                           for key in ("io_running", "sql_running"))
        rotation = ("in rotation" if node.get("in_rotation")
                    else f"OUT of rotation: {node.get('rotation_reason') or 'down'}")
        view[name] = (f"Proxy: threads {threads}  lag "
                      f"{'?' if lag is None else f'{lag:.0f} ms'}  {rotation}")
    return view
