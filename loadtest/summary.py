"""The latency table of a run: avg, p50, p95, p99 and max per mode and type, with failures.

Latency statistics cover the successful requests only; the failures are counted beside them,
so a fast error never makes a mode look quick and a failure is never hidden.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from loadtest.runner import Phase, RunResult


@dataclass(frozen=True)
class Row:
    mode: str
    type: str
    requests: int
    failures: int
    avg_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    req_per_s: float
    waited: int  # reads whose replica had to catch up with their write first (>= 1 ms)
    nodes: str  # which DB nodes answered, e.g. "replica1:503 replica2:497"

    @classmethod
    def from_phase(cls, phase: Phase) -> Row:
        ok = np.array([s.latency_ms for s in phase.samples if s.ok], dtype=float)
        stats = ([float(ok.mean()), *map(float, np.percentile(ok, [50, 95, 99])), float(ok.max())]
                 if ok.size else [float("nan")] * 5)
        nodes = Counter(s.node for s in phase.samples if s.ok)
        waited = sum(1 for s in phase.samples if s.ok and (s.waited_ms or 0.0) >= WAITED_MS)
        return cls(phase.mode, phase.kind, len(phase.samples),
                   sum(not s.ok for s in phase.samples), *stats,
                   len(phase.samples) / phase.wall_s if phase.wall_s else 0.0, waited,
                   " ".join(f"{node}:{count}" for node, count in sorted(nodes.items())))


COLUMNS = [f.name for f in fields(Row)]
HEADERS = ["Mode", "Type", "Requests", "Failures", "Average", "P50", "P95", "P99", "Max",
           "Req/s", "Waited", "Nodes"]
# A read "waited" when the wait for its write's position took this long: the replica had not
# applied it yet (an applied position answers in one round trip, about 0.2 ms here).
WAITED_MS = 1.0


def summarize(result: RunResult) -> list[Row]:
    return [Row.from_phase(phase) for phase in result.phases]


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |",
             "|" + "|".join("---" if h in ("Mode", "Type", "Nodes") else "---:"
                            for h in HEADERS) + "|"]
    for row in rows:
        cells = [row.mode, row.type, str(row.requests), str(row.failures),
                 *(f"{getattr(row, c):.2f}" for c in COLUMNS[4:9]), f"{row.req_per_s:.0f}",
                 str(row.waited) if row.type == "read" else "", row.nodes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(v, 3) if isinstance(v, float) else v
                             for k, v in asdict(row).items()})


def write_samples_csv(result: RunResult, path: Path) -> None:
    """Every request, so each figure in the table can be traced back."""
    samples = result.samples
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(asdict(samples[0])) if samples else ["mode"])
        writer.writeheader()
        writer.writerows(asdict(s) for s in samples)
