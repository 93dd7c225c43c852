"""The cluster file ``.cluster/<provider>.json``: what ``up`` made, for ``status``, ``down`` and
the load tests. It holds the API key, so it is written with mode 0600."""

from __future__ import annotations

import json
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CLUSTER_DIR = PROJECT_ROOT / ".cluster"
# Tests (and anyone running two checkouts' clusters side by side) point this elsewhere.
CLUSTER_DIR_ENV = "SQLGATE_CLUSTER_DIR"


def default_cluster_dir() -> Path:
    """``$SQLGATE_CLUSTER_DIR`` if set, else the repo's ``.cluster``; read at call time."""
    override = os.environ.get(CLUSTER_DIR_ENV)
    return Path(override) if override else CLUSTER_DIR


def cluster_file(provider: str, directory: Path | None = None) -> Path:
    return (directory or default_cluster_dir()) / f"{provider}.json"


def write_cluster_file(provider: str, data: dict, directory: Path | None = None) -> Path:
    """Write atomically with mode 0600; the directory is private too."""
    directory = directory or default_cluster_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = cluster_file(provider, directory)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2, sort_keys=True)
        out.write("\n")
    os.replace(tmp, path)
    return path


def read_cluster_file(provider: str, directory: Path | None = None) -> dict | None:
    path = cluster_file(provider, directory)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def remove_cluster_file(provider: str, directory: Path | None = None) -> None:
    cluster_file(provider, directory).unlink(missing_ok=True)
