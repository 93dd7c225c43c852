"""What the local master serves besides the formula: the project's code and a wheelhouse of its
dependencies (the hosts cannot reach PyPI)."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

from cluster.providers.local.cluster import VENV_BIN, LocalCluster
from cluster.providers.local.hosts import run
from cluster.state import PROJECT_PATHS, PROJECT_ROOT, SKIP_NAMES


def runtime_requirements() -> list[str]:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    build = project["build-system"]["requires"]
    return [*build, *project["project"]["dependencies"]]


def fileserver_dir(cluster: LocalCluster) -> Path:
    """Where the master's served code and wheelhouse are kept."""
    return cluster.state_dir / "fileserver"


def bake_fileserver(cluster: LocalCluster) -> Path:
    """The project's code and a wheelhouse of its dependencies, for the master to serve; the
    wheelhouse is rebuilt only when the requirements change."""
    root = fileserver_dir(cluster)
    source = root / "sqlgate-src"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    for rel in PROJECT_PATHS:
        path = PROJECT_ROOT / rel
        if path.is_dir():
            shutil.copytree(path, source / rel, ignore=shutil.ignore_patterns(*SKIP_NAMES))
        elif path.exists():
            shutil.copy2(path, source / rel)
    wheelhouse = root / "sqlgate-wheelhouse"
    requirements = runtime_requirements()
    stamp = wheelhouse / "requirements.txt"
    wanted = "\n".join(requirements) + "\n"
    if not stamp.exists() or stamp.read_text() != wanted:
        shutil.rmtree(wheelhouse, ignore_errors=True)
        wheelhouse.mkdir(parents=True)
        print(f"building the wheelhouse ({len(requirements)} requirements) ...", flush=True)
        run([str(VENV_BIN / "python"), "-m", "pip", "wheel", "--quiet",
             "--disable-pip-version-check", "--wheel-dir", str(wheelhouse), *requirements],
            timeout=900)
        stamp.write_text(wanted)
    return root
