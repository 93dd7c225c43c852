"""Send exactly N writes then N reads per routing mode through the Gatekeeper, timing each one.

One aiohttp session with keep-alive connections, ``concurrency`` clients pulling from one
counter (1 = sequential). Every request is accounted for: an answer that is not
a 200 with the request id we sent, a timeout, or a request left unsent at the deadline is a
failure with its reason, never dropped from the counts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from loadtest import workload
from loadtest.target import Target, gatekeeper_tls
from loadtest.workload import (
    DEFAULT_TABLE,
    MODES,
    create_table_sql,
    read_statement,
    write_statement,
)
from services.contract import API_KEY_HEADER


@dataclass(frozen=True)
class Plan:
    requests: int = 1000  # per mode and kind
    modes: tuple[str, ...] = MODES
    concurrency: int = 1
    table: str = DEFAULT_TABLE
    timeout_s: float = 10.0  # per request
    deadline_s: float = 1800.0  # for the whole run; what is left then is counted as failed
    tokens: bool = True  # each read sends its write's read-your-writes token in `after`


@dataclass(frozen=True)
class Sample:
    mode: str
    kind: str
    seq: int
    request_id: str
    ok: bool
    status: int  # HTTP status, 0 when there was no answer
    latency_ms: float  # client side: from sending to the decoded answer
    node: str = ""
    server_ms: float | None = None  # the services' own elapsed_ms
    rowcount: int | None = None
    last_insert_id: int | None = None
    error: str = ""
    token: str | None = None  # a write's read-your-writes token
    waited_ms: float | None = None  # how long a read waited for its replica to catch up


@dataclass(frozen=True)
class Phase:
    """One mode and kind: its N samples and the wall time they took."""

    mode: str
    kind: str
    wall_s: float
    samples: list[Sample]


@dataclass
class RunResult:
    run_id: str
    plan: Plan
    target_url: str
    phases: list[Phase] = field(default_factory=list)
    # Wall-clock (Unix seconds) bounds of the run, for what the servers recorded meanwhile.
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def samples(self) -> list[Sample]:
        return [s for phase in self.phases for s in phase.samples]

    @property
    def failures(self) -> list[Sample]:
        return [s for s in self.samples if not s.ok]


class Client:
    """POST /query with the key; one call = one timed request."""

    def __init__(self, session: aiohttp.ClientSession, target: Target) -> None:
        self.session, self.url = session, target.gatekeeper_url + "/query"
        self.headers = {API_KEY_HEADER: target.api_key}

    async def query(self, statement: dict, mode: str, kind: str, seq: int,
                    request_id: str) -> Sample:
        """``statement``: ``{"sql", "params"?, "after"?}`` as the workload makes it."""
        body = {**statement, "mode": mode, "request_id": request_id}
        start = time.perf_counter()
        try:
            async with self.session.post(self.url, json=body, headers=self.headers) as answer:
                data = await answer.json(content_type=None)
                status = answer.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            elapsed = (time.perf_counter() - start) * 1000
            return Sample(mode, kind, seq, request_id, False, 0, elapsed,
                          error=f"{type(error).__name__}: {error}")
        elapsed = (time.perf_counter() - start) * 1000
        if status != 200 or not isinstance(data, dict) or data.get("request_id") != request_id:
            error = data.get("error") if isinstance(data, dict) else None
            return Sample(mode, kind, seq, request_id, False, status, elapsed,
                          error=str(error or f"unexpected answer: {str(data)[:200]}"))
        return Sample(mode, kind, seq, request_id, True, status, elapsed, node=data.get("node", ""),
                      server_ms=data.get("elapsed_ms"), rowcount=data.get("rowcount"),
                      last_insert_id=data.get("last_insert_id"), token=data.get("token"),
                      waited_ms=data.get("waited_ms"))


async def run(target: Target, plan: Plan, progress: Callable[[str], None] = print) -> RunResult:
    """Create the table if missing, then for each mode N writes followed by N reads of them."""
    result = RunResult(workload.new_run_id(), plan, target.gatekeeper_url,
                       started_at=time.time())
    deadline = time.monotonic() + plan.deadline_s
    timeout = aiohttp.ClientTimeout(total=plan.timeout_s)
    tls = gatekeeper_tls(target)
    # HTTPS checked against the cluster's CA (a request never goes out unverified).
    connector = aiohttp.TCPConnector(limit=plan.concurrency,
                                     ssl=tls.context() if tls else True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        client = Client(session, target)
        setup = await client.query({"sql": create_table_sql(plan.table)}, "direct", "setup", 0,
                                   f"{result.run_id}-setup")
        if not setup.ok:
            raise RuntimeError(f"cannot create {plan.table} through {target.gatekeeper_url}: "
                               f"{setup.status} {setup.error}")
        for mode in plan.modes:
            writes = await _phase(client, result.run_id, mode, "write", plan, deadline,
                                  lambda seq, m=mode: write_statement(plan.table, result.run_id,
                                                                      m, seq))
            written = [(s.last_insert_id, s.token if plan.tokens else None)
                       for s in writes.samples if s.ok and s.last_insert_id]
            reads = await _phase(client, result.run_id, mode, "read", plan, deadline,
                                 lambda seq, written=written: read_statement(
                                     plan.table, *(written[seq % len(written)] if written
                                                   else (None, None))))
            for phase in (writes, reads):
                result.phases.append(phase)
                failed = sum(not s.ok for s in phase.samples)
                progress(f"{mode:>6} {phase.kind:<5} {len(phase.samples)} requests in "
                         f"{phase.wall_s:.2f} s, {failed} failed")
    result.finished_at = time.time()
    return result


async def _phase(client: Client, run_id: str, mode: str, kind: str, plan: Plan, deadline: float,
                 statement_for: Callable[[int], dict]) -> Phase:
    """Exactly ``plan.requests`` requests from ``plan.concurrency`` clients sharing one counter."""
    samples: list[Sample] = []
    next_seq = iter(range(plan.requests))

    async def worker() -> None:
        for seq in next_seq:
            request_id = f"{run_id}-{mode}-{kind}-{seq}"
            if time.monotonic() > deadline:
                samples.append(Sample(mode, kind, seq, request_id, False, 0, 0.0,
                                      error=f"not sent: the run's {plan.deadline_s:g} s "
                                            "deadline passed"))
                continue
            samples.append(await client.query(statement_for(seq), mode, kind, seq, request_id))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(plan.concurrency)))
    wall_s = time.perf_counter() - start
    return Phase(mode, kind, wall_s, sorted(samples, key=lambda s: s.seq))
