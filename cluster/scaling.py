"""``bootstrap.py scale``: a running cluster given more or fewer Gatekeepers, Proxies and
replicas under load, with no request failing (salt/orch/scale.sls, run on the master by either
provider once it has made the new hosts; it removes the old ones afterwards).

Hosts are added and removed by name: ``gatekeeper3``, ``proxy3`` and ``replica3`` are the
third of their role, and going back from three to two removes them. A replica that has become
the primary (a failover) is not removed: the operator switches over first.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cluster.errors import ClusterError
from cluster.record import ClusterRecord
from cluster.salt_setup import OrchestrationResult, Step

ORCHESTRATION = "orch.scale"
# The roles whose number scale changes, by the option that sets it.
COUNTED = {"gatekeepers": "gatekeeper", "proxies": "proxy", "replicas": "replica"}


def counts(record: ClusterRecord) -> dict[str, int]:
    """How many hosts of each scaled role the record's cluster has, by option name."""
    return {option: sum(1 for host in record.hosts if host.role == role)
            for option, role in COUNTED.items()}


def wanted(args: argparse.Namespace, record: ClusterRecord) -> argparse.Namespace:
    """``args`` with the record's count for every role they do not give a number for."""
    have = counts(record)
    return argparse.Namespace(**{**vars(args), **{
        option: getattr(args, option, None) or have[option] for option in COUNTED}})


@dataclass(frozen=True)
class Change:
    """The hosts a scale adds and removes (name, and role for the removed ones)."""

    added: tuple[str, ...]
    removed: dict[str, str]

    @classmethod
    def between(cls, now: Iterable[tuple[str, str]], wanted: Iterable[tuple[str, str]]
                ) -> Change:
        before, after = dict(now), dict(wanted)
        return cls(tuple(name for name in after if name not in before),
                   {name: role for name, role in before.items() if name not in after})

    def pillar(self) -> dict:
        """What salt/orch/scale.sls reads (``sqlgate_scale``), besides the new hosts' list in
        the pillar tree."""
        return {"sqlgate_scale": {"added": list(self.added), "removed": dict(self.removed)}}

    @property
    def empty(self) -> bool:
        return not self.added and not self.removed


def refuse_removing_the_primary(change: Change, primary: str | None) -> None:
    if primary is not None and primary in change.removed:
        raise ClusterError(f"{primary} is the primary now: 'bootstrap.py switchover' to "
                           f"another host first, then scale")


def describe(change: Change) -> str:
    if change.empty:
        return "scale: every role already has that many hosts; checking that they are " \
               "configured"
    parts = []
    if change.added:
        parts.append(f"adding {', '.join(change.added)}")
    if change.removed:
        parts.append(f"removing {', '.join(change.removed)}")
    return f"scale: {'; '.join(parts)}"


def report(steps: list[Step], result: OrchestrationResult,
           say: Callable[[str], None] = print) -> int:
    """One line per step, then what changed; 0 when every step passed."""
    if not steps:
        say("scale: the orchestration ran no step")
        return 1
    for step in steps:
        took = f" ({step.seconds:.1f} s)" if step.seconds is not None else ""
        say(f"  {'ok    ' if step.ok else 'FAILED'} {step.id}{took}"
            f"{'' if step.ok else ': ' + step.comment}")
    failed = [step.id for step in steps if not step.ok]
    if failed:
        for line in result.failed[:20]:
            say(f"  FAILED {line}")
        say(f"scale stopped at {failed[0]}: the steps after it did not run; the hosts it "
            "was to remove still run")
        return 1
    if result.changed:
        for minion, states in sorted(result.changed.items()):
            say(f"  {minion}: {len(states)} state(s) changed")
    else:
        say("  no changes: every host was already in its configured state")
    return 0
