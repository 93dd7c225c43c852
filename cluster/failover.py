"""What ``bootstrap.py failover``, ``switchover``, ``rebuild`` and ``status`` show of the
failover runner's answers (salt/_runners/sqlgate_failover.py), for every provider, and what the
cluster record keeps of them (the current primary and epoch)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Mapping

from cluster.record import ClusterRecord, write_record

# The results a command reports as done.
DONE = {"failover": ("promoted",), "switchover": ("promoted",), "rebuild": ("rebuilt",)}


def runner_arguments(command: str, args: argparse.Namespace) -> tuple[str, ...]:
    """The runner function's ``key=value`` arguments for ``bootstrap.py failover``,
    ``switchover`` or ``rebuild`` (the runner function has the command's name)."""
    if command == "failover":
        return ("reason=operator: bootstrap.py failover", "automatic=False",
                f"force={bool(args.force)}")
    if command == "switchover":
        return (f"to={args.to}",) if args.to else ()
    if command == "rebuild":
        return (f"node={args.host}",)
    raise ValueError(f"no runner function for {command}")


def _moment(at: object) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(at))) if at else "?"


def timeline(run: Mapping[str, object]) -> str:
    """One line: when the failure was detected, then each step the runner recorded, writes
    possible and the pillar updated, as offsets from the detection."""
    start = run.get("detected")
    parts = [f"detected {_moment(start)} UTC"]
    steps = run.get("steps") if isinstance(run.get("steps"), Mapping) else {}
    moments = {**{name.replace("_", " "): at for name, at in steps.items()},  # type: ignore[union-attr]
               "writes possible": run.get("writable"), "pillar updated": run.get("finished")}
    for name, at in sorted(((n, a) for n, a in moments.items() if a and start),
                           key=lambda item: float(item[1])):
        parts.append(f"{name} +{float(at) - float(start):.1f}s")  # type: ignore[arg-type]
    return ", ".join(parts)


def status_lines(shape: Mapping[str, object]) -> list[str]:
    """The current primary, epoch and quarantined nodes, the last failover's timeline and the
    recent alerts."""
    lines = [f"  primary: {shape.get('primary')} (epoch {shape.get('epoch')})"]
    quarantined = shape.get("quarantined") or []
    if quarantined:
        lines.append(f"  QUARANTINED (diverged; never in rotation; bootstrap.py rebuild HOST): "
                     f"{', '.join(quarantined)}")  # type: ignore[arg-type]
    last = shape.get("last")
    if isinstance(last, Mapping):
        who = "automatic" if last.get("automatic") else "operator"
        lines.append(f"  last {last.get('kind')} ({who}): {last.get('old_primary')} -> "
                     f"{last.get('new_primary') or '-'}, {last.get('result')}: "
                     f"{timeline(last)}")
        if last.get("why"):
            lines.append(f"    {last['why']}")
    for alert in shape.get("alerts") or []:  # type: ignore[union-attr]
        lines.append(f"  ALERT {_moment(alert.get('at'))} UTC: {alert.get('alert')}")
    return lines


def report(command: str, answer: Mapping[str, object], shape: Mapping[str, object]) -> int:
    """Print what the runner did and the cluster's shape after; 0 when it did what was asked."""
    result = answer.get("result")
    print(f"{command}: {result}" + (f": {answer['why']}" if answer.get("why") else ""))
    if answer.get("detected_to_writable_s") is not None:
        print(f"  detection to writes possible: {answer['detected_to_writable_s']}s")
    for line in status_lines(shape):
        print(line)
    return 0 if result in DONE.get(command, ()) else 1


def remember(record: ClusterRecord, shape: Mapping[str, object]) -> ClusterRecord:
    """The record keeps the current primary, epoch and quarantined nodes (provider_data), for
    the demo, the load tests and the next ``status``."""
    data = {**record.provider_data, "primary": shape.get("primary"),
            "epoch": shape.get("epoch"), "quarantined": list(shape.get("quarantined") or [])}
    if data == record.provider_data:
        return record
    updated = dataclasses.replace(record, provider_data=data)
    write_record(updated)
    return updated
