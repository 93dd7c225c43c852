"""The scale-out bench (``loadtest.bench_scaleout``): the cgroup quota it relies on, its
arithmetic, and a short real run of 1 against 2 pairs behind HAProxy.

The real run asserts what it must get right whatever the machine's load: both settings served
every request with 200, through the balancer, the Gatekeepers' own logs agreeing with wrk, and
the quota held and bound each cell's busiest process. No timing thresholds: this machine's two
cores are shared with whatever else runs; the ratio is ``make bench``'s to state.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.keys import KeySet
from cluster.loopback.faults import CGROUP_ROOT, cpu_limited, cpu_stat
from cluster.loopback.processes import terminate
from loadtest.bench_overhead import (
    BENCH_KEY_NAME,
    BENCH_KEY_RATE,
    BENCH_KEY_SCOPE,
    Measurement,
    cpu_seconds,
)
from loadtest.bench_scaleout import Cell, Setting, quota_verdict, ratios, report, run, turns

QUOTA = 25.0
# The real runs' quota: small enough that even a machine busy with other work gives each
# group that much (a runnable group gets about a core's worth over the runnable tasks), so
# the quota binds whatever else runs beside the test.
SMALL = 10.0


def test_a_cpu_quota_holds_a_busy_process_to_its_share_and_is_undone():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with cpu_limited(spinner.pid, SMALL, f"sqlgate-test-{secrets.token_hex(4)}") as group:
            cpu, began = cpu_seconds(spinner.pid), time.monotonic()
            time.sleep(1.0)
            share = (cpu_seconds(spinner.pid) - cpu) / (time.monotonic() - began)
            stat = cpu_stat(group)
            assert str(spinner.pid) in (group / "cgroup.procs").read_text().split()
        assert 0.05 < share < 0.12, share  # 10% of one core
        assert stat["nr_throttled"] > 0 and stat["nr_periods"] >= stat["nr_throttled"], stat
        assert not group.exists()
        home = (CGROUP_ROOT / "cgroup.procs" if (CGROUP_ROOT / "cgroup.controllers").exists()
                else CGROUP_ROOT / "cpu" / "cgroup.procs")
        assert str(spinner.pid) in home.read_text().split()  # back where it came from
    finally:
        terminate(spinner, grace=5)


def test_the_settings_take_turns_and_the_ratio_is_per_turn_and_overall(capsys):
    assert turns([1, 2], 2) == [1, 2, 2, 1]
    assert turns([1, 2], 3) == [1, 2, 2, 1, 1, 2]
    one, two = Setting(1, [], []), Setting(2, [], [])

    def cell(setting: Setting, rate: float, cpu: dict[str, float]) -> Cell:
        return Cell(setting, Measurement(setting.name, "point select", 64, rate, 1.0, 2.0, 0),
                    10.0, cpu, {name: (100, 90) for name in cpu}, {}, 0)

    measured = [cell(one, 500, {"gk1": 2.5, "px1": 2.2}),
                cell(two, 1000, {"gk1": 2.5, "gk2": 2.5, "px1": 2.4, "px2": 2.4}),
                cell(two, 1100, {"gk1": 2.5, "gk2": 2.5, "px1": 2.4, "px2": 2.4}),
                cell(one, 500, {"gk1": 3.0, "px1": 1.0})]
    ratio, each = ratios(measured, [1, 2])
    assert ratio == pytest.approx(2.1) and each == ["2.00", "2.20"]
    lines, enforced = quota_verdict(measured, QUOTA)
    assert lines[0] == ("  cell 1 (1 pair): gk1 25.0% of one core (100% of its quota, "
                        "throttled in 90 of 100 periods): the quota bound")
    assert "gk1 25.0% of one core" in lines[1] and "gk2 25.0% of one core" in lines[1]
    assert measured[1].bottleneck() == ["gk1", "gk2"]
    assert not enforced and "OVER the quota: gk1" in lines[3]  # 30% of a core under 25%
    assert quota_verdict(measured[:3], QUOTA)[1]
    assert report(measured[:3], [1, 2], QUOTA, 1.8) == 0
    assert "2.10x the requests/s (mean of the rounds; each turn: 2.00); required >= 1.8: met" \
        in capsys.readouterr().out
    assert report(measured[:3], [1, 2], QUOTA, 2.2) == 1
    assert report(measured, [1, 2], QUOTA, 1.8) == 1  # 2.1x, but a process over its quota
    # One Gatekeeper of two held back by a busy machine: the machine set the pace, and the
    # ratio, whatever it is, is no measurement of equal hosts.
    measured[1].cpu["gk2"] = 1.5
    assert quota_verdict(measured, QUOTA)[0][1].endswith("NOT bound (the machine set the pace)")
    capsys.readouterr()
    assert report(measured[:3], [1, 2], QUOTA, 1.0) == 1
    assert "INCONCLUSIVE: 1 of 3 cells were not bound" in capsys.readouterr().out


@pytest.fixture(scope="module")
def bench_keys(tmp_path_factory) -> tuple[Path, str]:
    keys, secret = KeySet().add(BENCH_KEY_NAME, BENCH_KEY_SCOPE, rate=BENCH_KEY_RATE,
                                burst=int(BENCH_KEY_RATE))
    return keys.save(tmp_path_factory.mktemp("scaleout") / "keys.json"), secret


def test_a_short_run_serves_both_settings_under_the_quota(db_cluster, bench_keys, tmp_path):
    for tool in ("wrk", "haproxy"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"{tool} is not installed (packages.apt: make system-packages)")
    keys_file, secret = bench_keys
    groups_before = set(CGROUP_ROOT.glob("cpu/sqlgate-scaleout-*"))
    measured = run(db_cluster, keys_file, secret, tmp_path, pairs=[1, 2], quota=SMALL,
                   seconds=2, clients=16, rounds=1, warmup=0)
    assert [cell.setting.pairs for cell in measured] == [1, 2]
    for cell in measured:
        m = cell.measurement
        assert m.requests_per_second > 0 and m.errors == 0 and cell.refused == 0, m
        # Every request wrk counted reached a Gatekeeper of its setting and was logged there
        # (wrk does not count those still in flight when it stops: at most one per client; and
        # its rate is over the time it really ran, a little more than the 2 s asked on a busy
        # machine).
        served, counted = sum(cell.answered.values()), m.requests_per_second * 2
        assert abs(served - counted) <= 16 + 0.15 * counted, (served, m)
        assert set(cell.cpu) == {host.name for host in cell.setting.hosts}
        assert set(cell.rest) == {"db", "lb", "wrk"} and cell.rest["wrk"] > 0, cell.rest
        assert 0 <= cell.idle < 1
    # With 2 pairs, the balancer gave both Gatekeepers connections, and both Proxies worked.
    two = measured[1]
    assert all(count > 0 for count in two.answered.values()), two.answered
    assert min(two.cpu["px1"], two.cpu["px2"]) > 0.1 * max(two.cpu.values()), two.cpu
    lines, enforced = quota_verdict(measured, SMALL)
    assert enforced, lines
    for cell in measured:
        busiest = cell.busiest()
        assert cell.periods[busiest][1] > 0, lines  # throttled: the quota, not the work, bound
    # Everything it made is gone: the groups, the services' and the balancer's processes.
    assert set(CGROUP_ROOT.glob("cpu/sqlgate-scaleout-*")) == groups_before
    for cell in measured:
        for host in cell.setting.hosts:
            assert host.service.process is None
    config = str(tmp_path / "haproxy.cfg").encode()
    assert not [process for process in Path("/proc").glob("[0-9]*")
                if config in read_or_empty(process / "cmdline")]


def read_or_empty(path: Path) -> bytes:
    """A /proc file of a process that may be gone meanwhile."""
    try:
        return path.read_bytes()
    except OSError:
        return b""
