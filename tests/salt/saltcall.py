"""Salt itself, masterless, on this machine: render (``state.show_sls``) or apply SLS files of the
tree as a given minion, with the OS grains of one of the two flavours.

The flavours: Ubuntu booted by systemd (MySQL 8.0, systemd units) and Debian without systemd
(MariaDB 10.11, supervisor).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import yaml

from cluster.state import PROJECT_ROOT

SALT_TREE = PROJECT_ROOT / "salt"
SALT_CALL = Path(sys.executable).parent / "salt-call"
MINION = "db"  # the masterless minion of the checks against real databases (conftest.py)


@dataclass(frozen=True)
class Flavour:
    name: str
    grains: dict
    service_manager: str
    change_source: str


FLAVOURS = {
    "mysql": Flavour("mysql", {"os": "Ubuntu", "os_family": "Debian", "init": "systemd"},
                     "systemd", "CHANGE REPLICATION SOURCE TO"),
    "mariadb": Flavour("mariadb", {"os": "Debian", "os_family": "Debian", "init": "unknown"},
                       "supervisor", "CHANGE MASTER TO"),
}


def write_pillar(directory: Path, pillar: dict) -> None:
    """A pillar tree giving ``pillar`` to every minion."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "top.sls").write_text(yaml.safe_dump({"base": {"*": ["data"]}}))
    (directory / "data.sls").write_text(yaml.safe_dump(pillar))


class SaltCall:
    """A masterless minion configuration per (flavour, minion id) under ``root``, reading the
    pillar tree in ``root / "pillar"`` (the caller writes it)."""

    def __init__(self, root: Path, flavour: Flavour) -> None:
        self.root, self.flavour = root, flavour
        self.pillar_dir = root / "pillar"

    def config_dir(self, minion_id: str, **options: object) -> Path:
        config_dir = self.root / minion_id
        config_dir.mkdir(exist_ok=True)
        (config_dir / "minion").write_text(yaml.safe_dump({
            "id": minion_id,
            "file_client": "local",
            "root_dir": str(config_dir / "root"),
            "file_roots": {"base": [str(SALT_TREE)]},
            "pillar_roots": {"base": [str(self.pillar_dir)]},
            "grains": self.flavour.grains,
            "log_level": "quiet",
            **options,
        }))
        return config_dir

    def run(self, minion_id: str, *args: str, failing: bool = False,
            **options: object) -> object:
        """``salt-call --local <args>`` as ``minion_id``; its ``local`` answer. It must succeed,
        or with ``failing`` fail (a state whose result is False)."""
        result = subprocess.run([str(SALT_CALL), "--local", "-c",
                                 str(self.config_dir(minion_id, **options)), *args,
                                 "--out=json"], capture_output=True, text=True, timeout=120)
        assert (result.returncode != 0) is failing, result.stdout + result.stderr
        return json.loads(result.stdout)["local"]

    def show_sls(self, minion_id: str, sls: str) -> dict:
        states = self.run(minion_id, "state.show_sls", sls)
        assert isinstance(states, dict), f"{sls} as {minion_id} did not render: {states}"
        return states


def state_args(states: dict, state_id: str) -> dict:
    """The arguments of one state of ``show_sls`` output, as one dict."""
    body = states[state_id]
    module = next(key for key in body if not key.startswith("__"))
    return {k: v for item in body[module] if isinstance(item, dict) for k, v in item.items()}


def state_function(states: dict, state_id: str) -> str:
    """``module.function`` of one state of ``show_sls`` output."""
    body = states[state_id]
    module = next(key for key in body if not key.startswith("__"))
    function = next(item for item in body[module] if isinstance(item, str))
    return f"{module}.{function}"


def load_salt_module(kind: str, name: str, salt: dict, opts: dict | None = None) -> ModuleType:
    """``salt/_<kind>/<name>.py`` imported on its own, with the Salt dunders the loader would
    give it (``__salt__``, ``__opts__``)."""
    from salt._logging.impl import shutdown_temp_handler

    # Importing salt queues log records for stderr until logging is set up, and writes them at
    # exit, when pytest has closed that stream: here pytest's logging is the real one.
    shutdown_temp_handler()
    path = SALT_TREE / f"_{kind}" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"sqlgate_test_{kind}_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.__salt__ = salt
    module.__opts__ = opts if opts is not None else {"test": False}
    return module
