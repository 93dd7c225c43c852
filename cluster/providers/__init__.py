"""Where the cluster's hosts run. Each subpackage is one provider: its ``__init__`` defines a
``Provider`` subclass named ``PROVIDER`` (light imports only: ``bootstrap.py`` loads every
provider to build its command line), and its other modules do the work.

Adding a provider means adding one subpackage here; ``bootstrap.py`` finds it.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from abc import ABC, abstractmethod
from typing import ClassVar


class Provider(ABC):
    """``up``, ``status``, ``down``, ``keys``, ``failover``, ``switchover`` and ``rebuild`` of
    one kind of host, each taking the parsed
    arguments and returning an exit code (0: done and healthy). A provider raises
    ``ClusterError`` for what the user can act on; ``bootstrap.py`` prints it as one line. ``up``
    writes the cluster record (``cluster.record``) that ``status``, ``down``, the demo and the
    load tests read; ``keys`` manages the key set in the provider's private directory
    (``cluster.keys``) and applies it through Salt on ``--apply``.

    The commands live in the module named by ``commands`` (functions ``up``, ``status``,
    ``down`` and ``keys``), imported only when one runs, so that building the command line stays
    light."""

    name: ClassVar[str]
    description: ClassVar[str]
    commands: ClassVar[str]

    @classmethod
    @abstractmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        """The provider's own options (the common ones are ``bootstrap.py``'s)."""

    def _run(self, command: str, args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(self.commands), command)(args)

    def up(self, args: argparse.Namespace) -> int:
        return self._run("up", args)

    def status(self, args: argparse.Namespace) -> int:
        return self._run("status", args)

    def down(self, args: argparse.Namespace) -> int:
        return self._run("down", args)

    def keys(self, args: argparse.Namespace) -> int:
        return self._run("keys", args)

    # Failover (docs/failover.md): each runs the failover runner on the Salt master
    # (salt/_runners/sqlgate_failover.py), as the reactor does.
    def failover(self, args: argparse.Namespace) -> int:
        return self._run("failover", args)

    def switchover(self, args: argparse.Namespace) -> int:
        return self._run("switchover", args)

    def rebuild(self, args: argparse.Namespace) -> int:
        return self._run("rebuild", args)

    # The service hosts restarted one at a time (``restart --rolling``: salt/orch/rolling.sls
    # on the master, cluster.rolling), with no request failing.
    def restart(self, args: argparse.Namespace) -> int:
        return self._run("restart", args)

    # More or fewer Gatekeepers, Proxies and replicas under load (``scale``:
    # salt/orch/scale.sls on the master, cluster.scaling), with no request failing.
    def scale(self, args: argparse.Namespace) -> int:
        return self._run("scale", args)

    # An operator's Salt command on the cluster's master (``salt TARGET FUNCTION ARGS...``),
    # its output as Salt prints it, its exit code.
    def salt(self, args: argparse.Namespace) -> int:
        return self._run("run_salt", args)


def providers() -> dict[str, type[Provider]]:
    """Every provider of this package, by name."""
    found: dict[str, type[Provider]] = {}
    for module in pkgutil.iter_modules(__path__):
        if module.ispkg:
            provider = importlib.import_module(f"{__name__}.{module.name}").PROVIDER
            found[provider.name] = provider
    return dict(sorted(found.items()))
