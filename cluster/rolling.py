"""``bootstrap.py restart --rolling``: the service hosts restarted one at a time through Salt
(salt/orch/rolling.sls, run on the master by either provider), and what each step did.

No request fails for it: each Proxy drains before it stops (the Gatekeepers open new
transactions on another), and each Gatekeeper is taken out of the balancer first
(salt/_modules/sqlgate_balancer.py) and drains too. A failed step stops the run there, and the
hosts after it keep running as they were.
"""

from __future__ import annotations

from collections.abc import Callable

from cluster.salt_setup import Step

ORCHESTRATION = "orch.rolling"


def report(steps: list[Step], say: Callable[[str], None] = print) -> int:
    """One line per step (``host: restarted, ready in 12.3 s``...); 0 when every step passed."""
    if not steps:
        say("restart: the orchestration ran no step")
        return 1
    for step in steps:
        answers = "; ".join(f"{minion}: {_short(answer, step.ok)}"
                            for minion, answer in sorted(step.answers.items()))
        say(f"  {'ok    ' if step.ok else 'FAILED'} {step.id}"
            f"{': ' + answers if answers else ''}"
            f"{'' if step.ok or answers else ': ' + step.comment}")
    failed = [step.id for step in steps if not step.ok]
    if failed:
        say(f"restart stopped at {failed[0]}: the hosts after it were not restarted")
        return 1
    restarted = sum(1 for step in steps for answer in step.answers.values()
                    if isinstance(answer, dict) and answer.get("restarted"))
    say(f"restart: {restarted} host(s) restarted, one at a time")
    return 0


def _short(answer: object, ok: bool) -> str:
    """A module's answer on one line; its ``comment`` (the service manager's words) only when
    the step failed."""
    if isinstance(answer, dict):
        return ", ".join(f"{key} {value}" for key, value in answer.items()
                         if (key != "comment" or not ok) and value not in ("", None, {}))
    return str(answer)[:200]
