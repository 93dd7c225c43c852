"""The report's latency figure, p95 beside the average: bars per mode and type, values on top."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI

import matplotlib.pyplot as plt
import numpy as np

from loadtest.summary import Row

COLORS = {"avg_ms": "#4C72B0", "p95_ms": "#DD8452"}
LABELS = {"avg_ms": "average", "p95_ms": "p95"}


def plot(rows: list[Row], path: Path, title: str) -> None:
    groups = [f"{row.mode}\n{row.type}" + (f"\n{row.failures} failed" if row.failures else "")
              for row in rows]
    x = np.arange(len(rows))
    width = 0.38
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=120)
    for i, stat in enumerate(COLORS):
        values = [getattr(row, stat) for row in rows]
        bars = ax.bar(x + (i - 0.5) * width, values, width, label=LABELS[stat],
                      color=COLORS[stat])
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    ax.set_xticks(x, groups)
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title(title, fontsize=10)
    ax.margins(y=0.25)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
