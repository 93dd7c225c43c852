"""Where the deployment tools keep their files: the checkout, what the hosts install from, the
private ``.cluster/`` directory, and the one way of writing a private file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# What the hosts install the services from (served by the Salt master as salt://sqlgate-src),
# without caches and bytecode (names or glob patterns).
PROJECT_PATHS = ("pyproject.toml", "README.md", "services", "cluster")
SKIP_NAMES = ("__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache")
CLUSTER_DIR = PROJECT_ROOT / ".cluster"
# Tests (and anyone running two checkouts' clusters side by side) point this elsewhere.
CLUSTER_DIR_ENV = "SQLGATE_CLUSTER_DIR"


def default_cluster_dir() -> Path:
    """``$SQLGATE_CLUSTER_DIR`` if set, else the repo's ``.cluster``; read at call time."""
    override = os.environ.get(CLUSTER_DIR_ENV)
    return Path(override) if override else CLUSTER_DIR


def write_private(path: Path, text: str) -> Path:
    """Replace ``path`` atomically with ``text``, readable by its owner only (0600 from creation);
    its directory is made private (0700) if missing."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:  # mkstemp creates it 0600
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
