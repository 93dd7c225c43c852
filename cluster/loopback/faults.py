"""Faults to inject into loopback processes: a CPU quota through a cgroup (v1 or v2).

A slow node is the fault that timing-based routing must notice; a CPU quota makes one
MariaDB server slow without touching the others, and is undone by moving the process back.
The same quota, given to each service process alike, makes processes sharing one machine
behave like hosts of their own (``loadtest.bench_scaleout``); ``cpu_stat`` says whether the
quota actually held a group back (its throttled periods).
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


def cpu_stat(group: Path) -> dict[str, int]:
    """A group's ``cpu.stat``: ``nr_periods`` (quota periods in which it ran),
    ``nr_throttled`` (those it used up its quota in and waited), and the time it waited
    (``throttled_time`` in ns on v1, ``throttled_usec`` on v2). A growing ``nr_throttled`` is
    the proof that the quota, not the work offered, set the group's pace."""
    stat: dict[str, int] = {}
    for line in (group / "cpu.stat").read_text().splitlines():
        name, _, value = line.partition(" ")
        if value.strip().isdigit():
            stat[name] = int(value)
    return stat
