"""A planned restart of one of the formula's services on this minion, for the rolling restart
(salt/orch/rolling.sls): the same call on both kinds of host, whatever runs the service.

    salt proxy sqlgate_service.restart sqlgate-proxy sqlgate.proxy.service

The service manager stops the service with SIGTERM and waits for it (the formula's
``stop_seconds``): the services drain on SIGTERM (docs/architecture.md), so what is in flight
finishes first. Then the service is started, and the call returns once the service's own
``<name>-ready`` check of the formula (``managed_service`` in salt/sqlgate/services.jinja)
passes: the next host is not touched before this one serves again.
"""

import logging
import os

log = logging.getLogger(__name__)

__virtualname__ = "sqlgate_service"

SUPERVISOR_CONF = "/etc/supervisor/supervisord.conf"


def __virtual__():
    return __virtualname__


def _sqlgate():
    """The pillar's ``sqlgate`` settings, from __pillar__ itself: Salt 3008's pillar.get
    answers every value masked."""
    return __pillar__.get("sqlgate") or {}  # noqa: F821


def _manager():
    """The formula's rule (map.jinja): the pillar's choice, else systemd when it booted the
    host, else supervisor."""
    chosen = _sqlgate().get("service_manager")
    if chosen:
        return chosen
    return "systemd" if os.path.isdir("/run/systemd/system") else "supervisor"


def restart(name, sls):
    """Restart the service ``name`` and wait for its ``<name>-ready`` state (in ``sls``):
    ``{"restarted": bool, "ready": bool, "manager": ..., "comment": ...}``."""
    manager = _manager()
    if manager == "systemd":
        restarted = bool(__salt__["service.restart"](name))  # noqa: F821
        comment = ""
    else:
        conf = (_sqlgate().get("supervisor") or {}).get("config_file") or SUPERVISOR_CONF
        comment = str(__salt__["supervisord.restart"](name, conf_file=conf))  # noqa: F821
        restarted = "started" in comment and "ERROR" not in comment
    if not restarted:
        __context__["retcode"] = 1  # noqa: F821 (the orchestration stops here)
        return {"restarted": False, "ready": False, "manager": manager, "comment": comment}
    result = __salt__["state.sls_id"](f"{name}-ready", sls)  # noqa: F821
    ready = isinstance(result, dict) and bool(result) and all(
        isinstance(state, dict) and state.get("result") is True for state in result.values())
    if not ready:
        __context__["retcode"] = 1  # noqa: F821
        log.warning("sqlgate_service: %s restarted but not ready: %s", name, result)
    return {"restarted": True, "ready": ready, "manager": manager, "comment": comment}
