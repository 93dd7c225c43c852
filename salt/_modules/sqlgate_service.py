"""A planned restart or stop of one of the formula's services on this minion, for the rolling
restart (salt/orch/rolling.sls) and for a host that ``bootstrap.py scale`` removes
(salt/orch/scale.sls): the same call on both kinds of host, whatever runs the service.

    salt proxy sqlgate_service.restart sqlgate-proxy sqlgate.proxy.service
    salt proxy3 sqlgate_service.stop sqlgate-proxy
    salt replica3 sqlgate_service.stop database

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
# ``database``: the database service, whichever flavour's name it has here
# (salt/sqlgate/flavours.yaml).
DATABASE = "database"
DATABASE_SERVICES = ("mariadb", "mysql")


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
        comment = str(__salt__["supervisord.restart"](name, conf_file=_supervisor_conf()))  # noqa: F821
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


def _supervisor_conf():
    return (_sqlgate().get("supervisor") or {}).get("config_file") or SUPERVISOR_CONF


def _known(manager, name):
    """``name``, or for ``database`` the flavour's service this host has."""
    if name != DATABASE:
        return name
    if manager == "systemd":
        return next((service for service in DATABASE_SERVICES
                     if __salt__["service.available"](service)), None)  # noqa: F821
    programs = __salt__["supervisord.status"](conf_file=_supervisor_conf())  # noqa: F821
    return next((service for service in DATABASE_SERVICES if service in programs), None)


def stop(name):
    """Stop the service ``name`` (``database``: the database, whatever its flavour calls it)
    for good: SIGTERM, so that it drains, then the service manager waits for it to exit.
    ``{"stopped": bool, "manager": ..., "service": ..., "comment": ...}``; a service that
    does not run here counts as stopped."""
    manager = _manager()
    service = _known(manager, name)
    if service is None:
        return {"stopped": True, "manager": manager, "service": None,
                "comment": f"no {name} service here"}
    if manager == "systemd":
        stopped = bool(__salt__["service.stop"](service))  # noqa: F821
        comment = ""
    else:
        comment = str(__salt__["supervisord.stop"](service,  # noqa: F821
                                                     conf_file=_supervisor_conf()))
        stopped = "ERROR" not in comment or "not running" in comment
    if not stopped:
        __context__["retcode"] = 1  # noqa: F821 (the orchestration stops here)
    return {"stopped": stopped, "manager": manager, "service": service, "comment": comment}
