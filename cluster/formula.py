"""The Python reader of the Salt formula's defaults, for what runs outside Salt (the loopback
stack, the AWS status).

It merges ``salt/sqlgate/defaults.yaml`` and ``salt/sqlgate/flavours.yaml`` the way
``salt/sqlgate/map.jinja`` does, so that code outside Salt uses the very values the states use
instead of copies that drift. What map.jinja takes from the host is left out: the OS layers
(osfamilymap.yaml, osmap.yaml: their database part only picks the flavour, which is given here),
the pillar, and the service manager (empty here; map.jinja fills it in from the ``init`` grain).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from cluster.state import PROJECT_ROOT

FORMULA_DIR = PROJECT_ROOT / "salt" / "sqlgate"
FORMULA_FILES = FORMULA_DIR / "files"
DEFAULTS_FILE = FORMULA_DIR / "defaults.yaml"
FLAVOURS_FILE = FORMULA_DIR / "flavours.yaml"


def merge(dest: dict, upd: Mapping) -> dict:
    """Merge ``upd`` into ``dest`` in place, as Salt's ``defaults.merge`` does (its default
    ``merge_lists=False``): mappings merge key by key, anything else (lists too) is replaced."""
    for key, value in upd.items():
        if isinstance(dest.get(key), Mapping) and isinstance(value, Mapping):
            merge(dest[key], value)
        else:
            dest[key] = copy.deepcopy(value)
    return dest


@cache
def _load(path: Path) -> dict:
    with path.open() as stream:
        return yaml.safe_load(stream)


def flavours() -> tuple[str, ...]:
    """The database flavours flavours.yaml describes (``mariadb``, ``mysql``)."""
    return tuple(sorted(_load(FLAVOURS_FILE)))


def formula_settings(flavour: str = "mariadb") -> dict[str, Any]:
    """The ``sqlgate`` settings map.jinja gives a host whose pillar picks ``flavour``: the
    defaults, with the flavour's entry under ``db`` (the defaults' ``db`` keys win over it, as in
    map.jinja). A fresh copy: callers may change it."""
    table = _load(FLAVOURS_FILE)
    if flavour not in table:
        raise ValueError(f"unknown database flavour {flavour!r}: flavours.yaml has "
                         f"{', '.join(flavours())}")
    settings = copy.deepcopy(_load(DEFAULTS_FILE)["sqlgate"])
    merge(settings, {"db": {"flavour": flavour}})
    db = copy.deepcopy(table[flavour])
    merge(db, settings["db"])
    settings["db"] = db
    return settings


def db_settings(flavour: str = "mariadb") -> dict[str, Any]:
    """``sqlgate.db`` for ``flavour``: the service name, the server options, the replication
    statement, the users' privileges and the rest the database states read."""
    return formula_settings(flavour)["db"]
