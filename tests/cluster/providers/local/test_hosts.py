"""What the local provider's master host does for its unprivileged ``salt`` user: which
directories it must open a way through (in that host only)."""

from __future__ import annotations

from pathlib import Path

from cluster.providers.local.hosts import blocked_ancestors, closed_to_others


def within(top: Path):
    """``closed_to_others`` for directories under ``top`` only (pytest's own temporary root
    is private)."""
    return lambda directory: directory.is_relative_to(top) and closed_to_others(directory)


def test_paths_behind_a_closed_directory_are_grouped_by_it(tmp_path):
    closed = tmp_path / "closed"
    (closed / "deeper" / "python").mkdir(parents=True)
    (closed / "venv").mkdir()
    (tmp_path / "open" / "venv").mkdir(parents=True)
    closed.chmod(0o700)
    (closed / "deeper").chmod(0o700)  # under the first closed one: one tmpfs covers both
    tmp_path.chmod(0o755)
    found = blocked_ancestors([closed / "deeper" / "python", closed / "venv",
                               tmp_path / "open" / "venv", closed / "venv"], within(tmp_path))
    assert found == {closed: [closed / "deeper" / "python", closed / "venv"]}


def test_symlinks_count_where_they_lead(tmp_path):
    closed = tmp_path / "closed"
    (closed / "real").mkdir(parents=True)
    closed.chmod(0o700)
    tmp_path.chmod(0o755)
    (tmp_path / "link").symlink_to(closed / "real")
    assert blocked_ancestors([tmp_path / "link"], within(tmp_path)) == \
        {closed: [closed / "real"]}
