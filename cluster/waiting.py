"""Waiting for something with a deadline (never sleep-and-hope), for every part of the project."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class GiveUp(RuntimeError):
    """Raised by a check when waiting longer cannot help (the process exited)."""


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05, *,
               tolerate: tuple[type[Exception], ...] = (Exception,),
               error: type[Exception] = TimeoutError) -> T:
    """Call ``check`` until it returns something truthy and return that.

    Exceptions in ``tolerate`` count as "not yet" (the thing may raise until it is ready);
    GiveUp ends the wait at once; at the deadline ``error`` is raised, naming ``what``.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
        except GiveUp:
            raise
        except tolerate as problem:
            last_error = problem
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            raise error(f"timed out after {timeout:g}s waiting for {what}"
                        + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(interval)
