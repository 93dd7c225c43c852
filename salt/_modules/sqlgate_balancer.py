"""The balancer host's HAProxy, through its runtime API (the admin socket of
salt/sqlgate/balancer/files/haproxy.cfg.jinja): which Gatekeepers it sends to, and a planned
stop of one of them without cutting a client's request.

    salt balancer sqlgate_balancer.servers
    salt balancer sqlgate_balancer.drain gatekeeper2
    salt balancer sqlgate_balancer.ready gatekeeper2

HAProxy cuts the connections of a Gatekeeper it marks down (``on-marked-down
shutdown-sessions``): its host may be gone, and its clients are better off connecting again.
A Gatekeeper that stops on purpose is not gone: it finishes what is in flight before it exits,
and its checks fail meanwhile. So ``drain`` first stops new connections to it (state
``drain``) and its health checks (``disable health``: its stop does not mark it down, and
nothing is cut); ``ready`` turns both back on and waits until HAProxy finds it up again.
The rolling restart (salt/orch/rolling.sls) calls them around each Gatekeeper's restart.
"""

import csv
import io
import logging
import os
import socket
import time

log = logging.getLogger(__name__)

__virtualname__ = "sqlgate_balancer"

RUN_DIR = "/run/haproxy"
# Every backend a Gatekeeper is a server of (HTTPS, and the plain-HTTP redirect).
BACKENDS = ("gatekeepers", "gatekeepers-redirect")


def __virtual__():
    return __virtualname__


def _socket_path():
    # From __pillar__ itself: Salt 3008's pillar.get answers every value masked.
    balancer = (__pillar__.get("sqlgate") or {}).get("balancer") or {}  # noqa: F821
    return os.path.join(balancer.get("run_dir") or RUN_DIR, "admin.sock")


def _command(line, timeout=5.0):
    """One runtime API command; its answer's text."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(_socket_path())
        sock.sendall(line.encode() + b"\n")
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def servers():
    """Every Gatekeeper server of every backend: ``{"backend/server": {"status": "UP",
    "check": "L7OK", "sessions": 3, "admin": ...}}`` (``show stat``)."""
    text = _command("show stat").lstrip("# ")
    found = {}
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("pxname") in BACKENDS and row.get("svname") not in ("FRONTEND", "BACKEND"):
            found[f"{row['pxname']}/{row['svname']}"] = {
                "status": row.get("status", ""), "check": row.get("check_status", ""),
                "sessions": int(row.get("scur") or 0)}
    return found


def _set(server, command, tail=""):
    """``command backend/server tail`` on every backend: HAProxy's answers where it said
    something (it answers nothing when a command succeeds)."""
    answers = {}
    for backend in BACKENDS:
        line = f"{command} {backend}/{server}{tail}"
        answer = _command(line).strip()
        if answer:
            answers[line] = answer
    return answers


def drain(server):
    """No new connection to ``server``, and no health check that could mark it down (and cut
    its connections) while it stops: ``{"drained": bool, "errors": {...}, "sessions": n}``."""
    errors = _set(server, "disable health")
    errors.update(_set_state(server, "drain"))
    state = servers().get(f"{BACKENDS[0]}/{server}", {})
    if errors:
        __context__["retcode"] = 1  # noqa: F821
    return {"drained": not errors, "errors": errors, "sessions": state.get("sessions")}


def _set_state(server, state):
    return _set(server, "set server", f" state {state}")


def ready(server, timeout=60):
    """Health checks and new connections back on for ``server``, once HAProxy's checks find it
    up (``rise`` checks in a row that pass): ``{"up": bool, "seconds": ..., "status": ...}``."""
    errors = _set(server, "enable health")
    errors.update(_set_state(server, "ready"))
    began = time.monotonic()
    statuses = {}
    while time.monotonic() - began < float(timeout):
        statuses = {name: state["status"] for name, state in servers().items()
                    if name.endswith(f"/{server}")}
        if statuses and set(statuses.values()) == {"UP"}:  # not "UP 1/2": a check failed
            break
        time.sleep(0.2)
    up = not errors and bool(statuses) and set(statuses.values()) == {"UP"}
    if not up:
        __context__["retcode"] = 1  # noqa: F821
    return {"up": up, "seconds": round(time.monotonic() - began, 1), "status": statuses,
            "errors": errors}
