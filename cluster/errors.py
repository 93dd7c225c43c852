"""The one error type of the deployment tools, and the one way it reaches the user."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

A = TypeVar("A")


class ClusterError(Exception):
    """A problem the user can act on (a bad argument, a refusal of the machine or of the cloud,
    a host that did not come up): printed as one line, never as a traceback."""


def run_command(command: Callable[[A], int], args: A) -> int:
    """Run one command of a provider: its exit code, or its ClusterError as one line on stderr
    and exit code 2."""
    try:
        return command(args)
    except ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
