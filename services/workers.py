"""Several processes serving one service's ports: a parent that binds, forks and watches.

One Python process uses one core. With ``workers`` N > 1 a Gatekeeper or Proxy runs N worker
processes over the same listening sockets. The parent binds every port once (the service's,
the metrics', the redirect's) before it forks, and the workers inherit the sockets: the kernel
hands each new connection to whichever worker accepts it first, and a port never closes while
a worker restarts. The parent runs no event loop and serves nothing: it forwards SIGTERM and
SIGINT, restarts a worker that died (when they keep dying at start it gives up, exit code 1),
and exits once every worker has stopped. A worker dies with its parent (``PR_SET_PDEATHSIG``),
so a parent killed outright leaves none behind.

Each worker finds in its environment its index (``SQLGATE_WORKER``, 0-based), how many there
are (``SQLGATE_WORKERS``) and a private runtime directory (``SQLGATE_RUNTIME_DIR``, 0700: the
Proxy's workers put there the unix sockets they pass transactions to each other over).
``PROMETHEUS_MULTIPROC_DIR``, a fresh 0700 directory set before the fork, lets the workers'
metrics add up (``services.metrics`` makes its metrics after the fork, in each worker); a dead
worker is marked dead in it. Both directories go when the parent exits. ``workers`` = 1 forks
nothing: ``services.http.serve`` runs the service in its own process, as it always did.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tornado.netutil import bind_sockets

from services.http import WORKER_VARIABLES, Listener, MakeApp, ServerOptions, run_server

log = logging.getLogger(__name__)

WORKER_VARIABLE, COUNT_VARIABLE, RUNTIME_VARIABLE = WORKER_VARIABLES
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
STOP_GRACE = 12.0     # seconds a worker has to stop after SIGTERM before it gets SIGKILL
                      # (unless the service says how long its drain may take)
START_GRACE = 10.0    # a worker that dies younger than this died "at start"
MAX_START_DEATHS = 5  # deaths at start in a row, of any worker, before the parent gives up
RESTART_DELAY = 0.1   # before a worker is started again; doubled per death at start, up to:
MAX_RESTART_DELAY = 5.0
PR_SET_PDEATHSIG = 1
SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}


@dataclass(frozen=True)
class Worker:
    """This process's place among the workers of its service."""

    index: int
    count: int
    runtime_dir: Path

    @classmethod
    def current(cls) -> Worker | None:
        """The worker this process is; None when the service runs as a single process."""
        index = os.environ.get(WORKER_VARIABLE)
        if index is None:
            return None
        return cls(int(index), int(os.environ[COUNT_VARIABLE]),
                   Path(os.environ[RUNTIME_VARIABLE]))

    def socket_path(self, index: int | None = None) -> Path:
        """The unix socket worker ``index`` (this one by default) serves its peers on."""
        return self.runtime_dir / f"w{self.index if index is None else index}.sock"


def serve_workers(make_app: MakeApp, address: str, port: int, name: str,
                  options: ServerOptions | None, also: Sequence[Listener], count: int,
                  stop_seconds: float | None = None) -> None:
    """``services.http.serve`` over ``count`` worker processes; returns when all stopped."""
    logging.basicConfig(level=logging.INFO, force=True,
                        format=f"%(asctime)s {name} %(levelname)s %(message)s")
    listeners = [(address, port), *((listener.address, listener.port) for listener in also)]
    sockets: list[list[socket.socket]] = []
    try:
        for listen_address, listen_port in listeners:
            sockets.append(bind_sockets(listen_port, listen_address))
    except OSError as error:
        sys.exit(f"{name}: cannot listen on {listen_address}:{listen_port}: {error}")
    root = Path(tempfile.mkdtemp(prefix=f"sqlgate-{name}-",
                                 dir=os.environ.get("RUNTIME_DIRECTORY") or None))
    code = 1
    try:
        metrics, runtime = root / "metrics", root / "run"
        metrics.mkdir(mode=0o700)
        runtime.mkdir(mode=0o700)
        os.environ.update({MULTIPROC_VARIABLE: str(metrics), RUNTIME_VARIABLE: str(runtime),
                           COUNT_VARIABLE: str(count)})

        def worker_main(index: int) -> None:
            run_server(make_app, address, port, f"{name}[w{index}]", options, also, sockets)

        def close_sockets() -> None:
            # Stopping, the parent starts no worker again: once the last worker stopped
            # listening, the ports are closed and a new connection is refused, not left
            # waiting in a backlog nobody accepts from.
            for group in sockets:
                for sock in group:
                    sock.close()

        code = Supervisor(count, worker_main, name, root, stop_seconds or STOP_GRACE,
                          on_stop=close_sockets).run()
    finally:
        for group in sockets:
            for sock in group:
                sock.close()
        shutil.rmtree(root, ignore_errors=True)
    if code:
        sys.exit(code)


class Supervisor:
    """Forks the workers and waits for signals, synchronously: SIGTERM, SIGINT and SIGCHLD
    are blocked and taken with ``sigtimedwait``, so no handler runs at an awkward moment and
    no signal is lost between two checks."""

    def __init__(self, count: int, worker_main, name: str, root: Path,
                 stop_grace: float = STOP_GRACE,
                 on_stop: Callable[[], None] | None = None) -> None:
        self.root = root
        self.stop_grace = stop_grace  # seconds the workers have to stop after SIGTERM
        self.on_stop = on_stop  # called once, when the workers are told to stop
        self.count = count
        self.worker_main = worker_main
        self.name = name
        self.children: dict[int, int] = {}     # pid -> worker index
        self.started: dict[int, float] = {}    # worker index -> when its process started
        self.restarts: dict[int, float] = {}   # worker index -> when to start it again
        self.deaths_at_start = 0
        self.stopping = False
        self.failed = False
        self.kill_at: float | None = None
        self._mask: set[int] = set()

    def run(self) -> int:
        """Run the workers until a signal stops them (0) or they keep dying at start (1)."""
        self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            for index in range(self.count):
                self._start(index)
            log.info("%s: %d workers started (private directory %s)", self.name, self.count,
                     self.root)
            while self.children or (self.restarts and not self.stopping):
                received = signal.sigtimedwait(SIGNALS, self._timeout())
                if received is not None and received.si_signo != signal.SIGCHLD:
                    self.stop(received.si_signo)
                self._reap()  # after any signal or none: SIGCHLD is not queued per child
                self._tick()
        finally:
            for pid in self.children:  # only when the parent itself failed
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)
        log.info("%s: all workers stopped", self.name)
        return 1 if self.failed else 0

    def stop(self, signo: int = signal.SIGTERM) -> None:
        """Pass the signal on to every worker: a first SIGTERM as it is (each worker drains),
        SIGINT or any signal after the first as SIGINT (each stops at once: a worker takes a
        SIGTERM only once, since a service manager stopping the process group sends it one
        too). Those still running after ``stop_grace`` are killed."""
        forward = signo
        if not self.stopping:
            log.info("%s: %s, stopping the workers", self.name, signal.Signals(signo).name)
            self.stopping = True
            self.restarts.clear()
            self.kill_at = time.monotonic() + self.stop_grace
            if self.on_stop is not None:
                self.on_stop()
        else:
            log.info("%s: %s again, stopping the workers at once", self.name,
                     signal.Signals(signo).name)
            forward = signal.SIGINT
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, forward)

    def _timeout(self) -> float:
        due = [*self.restarts.values(), *([self.kill_at] if self.kill_at else [])]
        soonest = min(due, default=time.monotonic() + 1.0) - time.monotonic()
        return min(1.0, max(0.01, soonest))

    def _tick(self) -> None:
        now = time.monotonic()
        if self.stopping:
            if self.kill_at is not None and now >= self.kill_at and self.children:
                log.warning("%s: %d worker(s) still running after %gs: killing them",
                            self.name, len(self.children), self.stop_grace)
                for pid in self.children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.kill_at = None
            return
        for index, when in list(self.restarts.items()):
            if now >= when:
                del self.restarts[index]
                self._start(index)

    def _start(self, index: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            self._be_worker(index, parent)  # never returns
        self.children[pid] = index
        self.started[index] = time.monotonic()

    def _be_worker(self, index: int, parent: int) -> None:
        code = 1
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)
            _die_with(parent)
            os.environ[WORKER_VARIABLE] = str(index)
            self.worker_main(index)
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)  # never back into the parent's code (its cleanup, above all)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            index = self.children.pop(pid, None)
            if index is None:
                continue
            _mark_dead(pid)
            if self.stopping:
                continue
            self._died(index, pid, os.waitstatus_to_exitcode(status))

    def _died(self, index: int, pid: int, code: int) -> None:
        age = time.monotonic() - self.started[index]
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        if age < START_GRACE:
            self.deaths_at_start += 1
        else:
            self.deaths_at_start = 0
        if self.deaths_at_start >= MAX_START_DEATHS:
            log.error("%s: worker %d (pid %d) %s after %.1fs, the %dth death at start in a "
                      "row: giving up", self.name, index, pid, how, age, self.deaths_at_start)
            self.failed = True
            self.stop()
            return
        delay = min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** self.deaths_at_start)
        log.warning("%s: worker %d (pid %d) %s after %.1fs: starting it again in %.1fs",
                    self.name, index, pid, how, age, delay)
        self.restarts[index] = time.monotonic() + delay


def _die_with(parent: int) -> None:
    """SIGTERM this process when its parent dies (Linux); exit now if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _mark_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (in-flight requests, pool sizes) from the metrics.
    prometheus_client is imported here, in the parent, only once the directory is set."""
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
    except Exception:  # the metrics are not worth a parent that stops watching
        log.exception("marking worker pid %d dead in the metrics", pid)
