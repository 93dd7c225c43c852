"""Faults to inject into loopback processes: a CPU quota through a cgroup (v1 or v2).

A slow node is the fault that timing-based routing must notice; a CPU quota makes one
MariaDB server slow without touching the others, and is undone by moving the process back.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


def _cpu_hierarchy() -> tuple[Path, bool]:
    """The directory to make a group in, and whether it is cgroup v2."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return CGROUP_ROOT, True
    if (CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us").exists():
        return CGROUP_ROOT / "cpu", False
    raise OSError("no cgroup CPU controller mounted under /sys/fs/cgroup")


@contextlib.contextmanager
def cpu_limited(pid: int, percent: float, name: str) -> Iterator[Path]:
    """Run process ``pid`` (all its threads) under ``percent`` of one CPU until the block
    ends; the group is removed afterwards. Needs root."""
    hierarchy, v2 = _cpu_hierarchy()
    group = hierarchy / name
    group.mkdir()
    quota = max(1000, int(PERIOD_US * percent / 100))
    try:
        if v2:
            (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        (group / "cgroup.procs").write_text(str(pid))
        yield group
    finally:
        with contextlib.suppress(OSError):  # the process may have exited meanwhile
            for member in (group / "cgroup.procs").read_text().split():
                (hierarchy / "cgroup.procs").write_text(member)
        os.rmdir(group)
