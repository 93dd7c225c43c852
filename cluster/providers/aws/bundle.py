"""The tarball that carries the Salt tree, the pillar, the project code, the master's config and
the pre-generated keys to the Salt master (no pushed Git remote needed).

Member paths are absolute paths on the master without the leading ``/``: the master unpacks it
with ``tar -C /``. Keys and pillar are 0600 inside directories that are 0700.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cluster import salt_setup
from cluster.providers.aws.keys import ClusterKeys
from cluster.state import PROJECT_PATHS, PROJECT_ROOT, SKIP_NAMES

SRV = "srv/sqlgate"
FILE_ROOT = f"{SRV}/salt"
PILLAR_ROOT = f"{SRV}/pillar"
# A second file root holding the project as ``salt://sqlgate-src`` (the states' ``app:source``).
SOURCE_ROOT = f"{SRV}/source"
PROJECT_DIR = f"{SOURCE_ROOT}/sqlgate-src"
# Member names of the master's files (absolute paths on the master, without the leading /).
MASTER_PKI = salt_setup.MASTER_PKI.lstrip("/")
MASTER_CONF = salt_setup.MASTER_CONFIG.lstrip("/")


@dataclass(frozen=True)
class Bundle:
    data: bytes
    sha256: str


def master_config() -> dict:
    """The master serves the formula and the project's code, and the pillar of the bundle."""
    return salt_setup.master_config([f"/{FILE_ROOT}", f"/{SOURCE_ROOT}"], f"/{PILLAR_ROOT}",
                                    state_output="mixed")


def _keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Skip caches and bytecode; files are root-owned on the master."""
    if any(fnmatch.fnmatch(part, skip) for part in Path(info.name).parts for skip in SKIP_NAMES):
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _add_text(tar: tarfile.TarFile, name: str, text: str, mode: int = 0o600) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    tar.addfile(info)


def _add_master_files(tar: tarfile.TarFile, keys: ClusterKeys) -> None:
    """The master's configuration and pre-seeded keys, in private directories."""
    _add_dir(tar, MASTER_PKI, 0o700)
    _add_dir(tar, f"{MASTER_PKI}/minions", 0o700)
    for item in salt_setup.master_files(keys.salt, master_config()):
        _add_text(tar, item.path.lstrip("/"), item.content, item.mode)


def _add_pillar(tar: tarfile.TarFile, pillar_dir: Path) -> None:
    _add_dir(tar, PILLAR_ROOT, 0o700)
    for path in sorted(p for p in pillar_dir.rglob("*") if p.is_file()):
        _add_text(tar, f"{PILLAR_ROOT}/{path.relative_to(pillar_dir)}", path.read_text())


def build_bundle(pillar_dir: Path, keys: ClusterKeys, root: Path = PROJECT_ROOT) -> Bundle:
    """Pack the Salt tree and project code from ``root``, the pillar written in ``pillar_dir``."""
    with tempfile.TemporaryFile() as raw:
        with tarfile.open(fileobj=raw, mode="w:gz") as tar:
            tar.add(root / "salt", FILE_ROOT, filter=_keep)
            for rel in PROJECT_PATHS:
                if (root / rel).exists():
                    tar.add(root / rel, f"{PROJECT_DIR}/{rel}", filter=_keep)
            _add_pillar(tar, pillar_dir)
            _add_master_files(tar, keys)
        raw.seek(0)
        data = raw.read()
    return Bundle(data, hashlib.sha256(data).hexdigest())
