"""Local processes: free loopback ports, waiting with deadlines (never sleep-and-hope), and
stopping what we started, by its own handle."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GiveUp(RuntimeError):
    """Raised by a check when waiting longer cannot help (the process exited)."""


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call ``check`` until it returns something truthy; fail with ``what`` at the deadline,
    or at once when the check raises GiveUp."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except GiveUp:
            raise
        except Exception as error:  # the thing we wait for may raise until it is ready
            last_error = error
        else:
            if result:
                return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}"
                       + (f" (last error: {last_error})" if last_error else ""))


def terminate(process: subprocess.Popen | None, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaps the process."""
    if process is None:
        return
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
