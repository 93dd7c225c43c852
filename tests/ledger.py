"""A ledger of writes under a fault (Jepsen's lesson): every write is recorded as acknowledged,
failed, or of unknown outcome (a 503 that says so, or no answer at all), while readers check
that no read fails. Afterwards every acknowledged write must be on every node.

Shared by the loopback fault tests and the namespace cluster's failover tests: both give it a
way to make a client (``Client`` of services.client) and the table to insert into.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from services.client import Client

READ = "SELECT COUNT(*) FROM sakila.actor"


@dataclass
class Ledger:
    """What the writers and readers of one fault saw."""

    table: str
    acknowledged: set[int] = field(default_factory=set)
    outcomes: Counter = field(default_factory=Counter)
    # Why each write that was not acknowledged was not (the answer, or the error).
    refusals: list[str] = field(default_factory=list)
    # (sent, answered) of every acknowledged write, monotonic seconds.
    acks: list[tuple[float, float]] = field(default_factory=list)
    reads: Counter = field(default_factory=Counter)  # by node
    read_failures: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def write(self, client: Client, tag: str) -> int:
        """One insert; its id once acknowledged, else 0 (and the outcome recorded)."""
        began = time.monotonic()
        try:
            answer = client.query(f"INSERT INTO {self.table} (tag) VALUES (?)", [tag])
        except OSError as error:
            self._note("unknown", str(error))
            return 0
        if answer.ok:
            with self._lock:
                self.acknowledged.add(answer.json["last_insert_id"])
                self.outcomes["ok"] += 1
                self.acks.append((began, time.monotonic()))
            return answer.json["last_insert_id"]
        outcome = "unknown" if answer.json.get("outcome") == "unknown" else "failed"
        self._note(outcome, f"{answer.status} {answer.json.get('error')}")
        return 0

    def _note(self, outcome: str, why: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1
            self.refusals.append(why)

    def read(self, client: Client, mode: str) -> None:
        try:
            answer = client.query(READ, mode=mode)
        except OSError as error:
            self.read_failures.append(f"{mode}: {error}")
            return
        if answer.ok:
            self.reads[answer.json["node"]] += 1
        else:
            self.read_failures.append(f"{mode}: {answer.status} {answer.json}")

    def unavailable_after(self, moment: float) -> float:
        """The longest time without an acknowledged write from ``moment`` on: from the fault
        to the first acknowledged write after it, or a longer gap later."""
        ends = sorted(end for _, end in self.acks if end >= moment)
        return max((b - a for a, b in zip([moment, *ends], ends, strict=False)), default=0.0)

    def acknowledged_after(self, moment: float) -> int:
        """How many writes sent after ``moment`` were acknowledged."""
        return sum(1 for sent, _ in self.acks if sent >= moment)

    def missing_on(self, ids: set[int]) -> set[int]:
        """The acknowledged writes absent from ``ids`` (a node's rows)."""
        return self.acknowledged - ids


@contextmanager
def load(ledger: Ledger, client: Callable[[], Client], writers: int = 8,
         readers: tuple[str, ...] = ("random",), pause: float = 0.0) -> Iterator[Ledger]:
    """``writers`` threads inserting and one reader per mode reading, until the block ends."""
    stop = threading.Event()

    def writing() -> None:
        with client() as own:
            while not stop.is_set():
                ledger.write(own, "ledger")
                if pause:
                    time.sleep(pause)

    def reading(mode: str) -> None:
        with client() as own:
            while not stop.is_set():
                ledger.read(own, mode)

    threads = [threading.Thread(target=writing) for _ in range(writers)]
    threads += [threading.Thread(target=reading, args=(mode,)) for mode in readers]
    for thread in threads:
        thread.start()
    try:
        yield ledger
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
