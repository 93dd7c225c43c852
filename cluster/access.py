"""Reaching a cluster once it is up, the same way for every provider: waiting for the
Gatekeeper's health, the request to try, and what ``status`` asks Salt about replication (the
replica's own threads and delay, and whether the Proxy keeps it in rotation) under one set of
names."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping

from cluster.topology import PROXY_PORT

# Run on the Proxy's host (through Salt): its own /health, with every replica's rotation.
PROXY_HEALTH_COMMAND = f"curl -s --max-time 5 http://127.0.0.1:{PROXY_PORT}/health"

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


def curl_line(url: str, key_expression: str) -> str:
    """A working curl of ``POST /query``; ``key_expression`` is shell that prints the key."""
    return (f"curl -s -X POST {url}/query -H 'Content-Type: application/json' "
            f"-H \"X-API-Key: {key_expression}\" -d '{TRY_BODY}'")


def access_lines(url: str, key_where: str, key_expression: str) -> list[str]:
    """What ``up`` prints last on every provider: the endpoint, where the key is, a curl."""
    return [f"Gatekeeper: {url}", f"API key:    {key_where}",
            f"Try:\n  {curl_line(url, key_expression)}"]


def health_ok(url: str, timeout_s: float = 5) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout_s) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def wait_for_health(url: str, deadline_s: float, poll_s: float = 0.5,
                    progress: Callable[[str], None] | None = None) -> bool:
    """Poll ``url/health`` until it answers 200 (True) or ``deadline_s`` passes (False);
    ``progress`` hears about it once a minute on long waits."""
    start = last_report = time.monotonic()
    while time.monotonic() - start < deadline_s:
        if health_ok(url, timeout_s=min(5.0, max(poll_s, 1.0))):
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
    for answer in (ask(proxies, ("cmd.run", PROXY_HEALTH_COMMAND)) if proxies else {}).values():
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
