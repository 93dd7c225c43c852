"""Which Proxy a request goes to: one Gatekeeper in front of one or several Proxies.

A transaction is a database connection held by one Proxy process, so a request about one (its
id in the path, or ``transaction_id`` in the body) can only go to the Proxy that holds it: the
one its id names (``<instance>.<random>``, or ``<instance>-w<i>.<random>`` for worker ``i`` of
a Proxy with several). Every other request goes to the healthy Proxy with the fewest requests
outstanding from this Gatekeeper process (ties in turn), and on to the next one only when no
connection could be made to the first, or when it refused a new transaction because it is
stopping (503 ``draining``): then nothing was done, and it cannot run twice. A
request that went out and got no whole answer (a reset, a timeout) is never sent again: a
write in it may have been done.

Each Proxy has its own keep-alive pool (``ProxyForwarder``). One whose connection failed is
taken out at once and skipped; a background check (``GET /health`` on every Proxy each
``CHECK_INTERVAL``) brings it back when it answers again, and says which are healthy (200),
for the Gatekeeper's own ``/health`` and for the choice.

What a lost Proxy means for a transaction it held (docs/api.md): its process, or its
connection to the database, is gone or out of reach, and with it the transaction, which was
never committed. So a request for it that could not be sent answers 409 (the transaction has
ended, rolled back) at once, without a timeout; but a commit that was sent and got no answer
may have committed just before the Proxy was lost: 503 (or 504), ``outcome: unknown``.

With ``GATEKEEPER_PROXY_URL`` (one Proxy) every transaction goes to it, whatever its id names:
the Proxy's name is not known here, and the Proxy answers 404 itself for one it does not hold.

A new list (``GATEKEEPER_PROXIES_FILE`` re-read, ``update``) is applied without dropping
anything. A Proxy added gets its pools and its checks at once, but no request until a check
found it healthy (``joining``): a Proxy still starting would fail them. A Proxy removed gets no
new request from then on, but the requests for its open transactions still reach it (they can
go nowhere else) while it ``retires``, for ``retire_seconds``: by then they have ended (the
Proxy's idle timeout and maximum age, or its drain when it is stopped), and its pools are
closed. A Proxy listed again while it retires is back as it was. A URL changed under the same
name is a removal and an addition: the ids naming it go to the new one (the names tell nothing
more). A removed Proxy's ``sqlgate_gatekeeper_proxy_up`` is 0 from its removal on (the series
cannot be removed from the workers' shared metric files; it is gone at the next restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from services.config import NamedProxy, worker_instance_name
from services.contract import TRANSACTION_ID_PATTERN, ApiError, new_request_id
from services.gatekeeper.forwarder import (
    ProxyAnswer,
    ProxyBusy,
    ProxyForwarder,
    ProxyLost,
    ProxyUnreachable,
)
from services.metrics import LabelCache
from services.requestlog import RequestTrace

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0  # seconds between two health checks of a Proxy
CHECK_TIMEOUT = 2.0  # a check not answered by then counts as unhealthy (not as unreachable)
UNREACHABLE_AFTER = 2  # checks in a row without a connection that make a Proxy unreachable
WORKER_SUFFIX = re.compile(r"(.+)-w([0-9]+)")

# What a request does to the transaction it names: what its loss would mean differs.
Action = Literal["statement", "commit", "rollback"]


class ProxyMetrics:
    """One Proxy's children of the Gatekeeper's metrics (labelled with its configured name)."""

    def __init__(self, metrics: Any, name: str) -> None:
        self.outstanding = metrics.proxy_outstanding.labels(name)
        self.up = metrics.proxy_up.labels(name)
        self._failures = LabelCache(metrics.proxy_failures)
        self._name = name

    def failed(self, reason: str) -> None:
        self._failures(self._name, reason).inc()


@dataclass(eq=False)
class Proxy:
    """One Proxy as this Gatekeeper process sees it. ``reachable`` turns false when a
    connection to it fails and true again when a check reaches it; ``healthy``: its last check
    answered 200; ``outstanding``: the clients' requests sent
    to it and not answered yet (the checks' not counted). The checks go on a connection of
    their own: a pool full of slow requests does not make them wait, nor they a request."""

    name: str
    forwarder: ProxyForwarder
    checker: ProxyForwarder | None = None  # the checks' own connection (else the pool's)
    reachable: bool = True
    healthy: bool | None = None  # None: not checked yet (the first check's result is logged)
    outstanding: int = 0
    unconnected: int = 0  # the checks in a row that got no connection
    metrics: ProxyMetrics | None = field(default=None, repr=False)  # None: no metrics port
    url: str = ""  # as listed: a new URL under the same name is another Proxy
    joining: bool = False  # added by a new list, and not yet checked healthy: no request
    retiring: bool = False  # removed by a new list: its transactions' requests only

    def forwarders(self) -> tuple[ProxyForwarder, ...]:
        return (self.forwarder,) if self.checker is None else (self.forwarder, self.checker)

    @property
    def rank(self) -> int:
        """Which to prefer: healthy, then reachable (the last check may be stale, or every
        Proxy sees the database down and says why better than a refusal here), then down."""
        if not self.reachable:
            return 2
        return 0 if self.healthy else 1


class Proxies:
    """The Proxies behind this Gatekeeper process: the choice, the forwarding and the checks.

    ``by_name``: route transactions by the instance name in their ids (``GATEKEEPER_PROXIES``);
    false with one Proxy (``GATEKEEPER_PROXY_URL``), which then gets them all. ``factory``
    makes the Proxy of a listed name and URL, for ``update`` (a new list); ``retire_seconds``:
    how long a removed Proxy still serves its transactions."""

    def __init__(self, proxies: Sequence[Proxy], *, by_name: bool, metrics: Any = None,
                 check_interval: float = CHECK_INTERVAL,
                 check_timeout: float = CHECK_TIMEOUT,
                 factory: Callable[[NamedProxy], Proxy] | None = None,
                 retire_seconds: float = 75.0) -> None:
        if not proxies:
            raise ValueError("no proxy")
        self.proxies = tuple(proxies)  # the listed ones: replaced whole by ``update``
        self._by_name = by_name
        self._named = {proxy.name: proxy for proxy in self.proxies}
        self._retiring: dict[str, Proxy] = {}  # removed, still serving their transactions
        self._turn = itertools.count()
        self._check_interval = check_interval
        self._check_timeout = check_timeout
        self._checks: dict[Proxy, asyncio.Task[None]] = {}
        self._retirements: dict[Proxy, asyncio.Task[None]] = {}
        self._factory = factory
        self._retire_seconds = retire_seconds
        self._metrics = metrics
        if metrics is not None:
            for proxy in self.proxies:
                proxy.metrics = ProxyMetrics(metrics, proxy.name)

    async def start(self) -> None:
        """Open the pools and start checking (the first checks at once)."""
        for proxy in self.proxies:
            for forwarder in proxy.forwarders():
                await forwarder.start()
            self._start_checking(proxy)

    def _start_checking(self, proxy: Proxy) -> None:
        """Each Proxy on its own rhythm: one slow to answer delays no other's check."""
        self._checks[proxy] = asyncio.create_task(self._check_forever(proxy))

    async def close(self) -> None:
        retired = list(self._retirements)  # retiring, or being let go
        tasks = [*self._checks.values(), *self._retirements.values()]
        self._checks.clear()
        self._retirements.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for proxy in (*self.proxies, *retired):
            for forwarder in proxy.forwarders():
                await forwarder.close()

    @property
    def retiring(self) -> tuple[Proxy, ...]:
        """The Proxies removed from the list that still serve their open transactions."""
        return tuple(self._retiring.values())

    # --- a new list ---------------------------------------------------------------------------

    async def update(self, listed: Sequence[NamedProxy]) -> bool:
        """Apply a new list of Proxies (``by_name`` only); True when it changed anything. The
        Proxies kept keep their pools, counts and state; the new ones join once healthy; the
        removed ones retire (the module's docstring)."""
        if self._factory is None or not self._by_name:
            raise ValueError("this Gatekeeper's Proxies are fixed (GATEKEEPER_PROXY_URL)")
        if not listed:
            raise ValueError("no proxy")
        wanted = {named.name: named.url for named in listed}
        if wanted == {proxy.name: proxy.url for proxy in self.proxies}:
            return False
        kept = {proxy.name: proxy for proxy in self.proxies if wanted.get(proxy.name) == proxy.url}
        back = {name: proxy for name, proxy in self._retiring.items()
                if name not in kept and wanted.get(name) == proxy.url}
        added: dict[str, Proxy] = {}
        for named in listed:
            if named.name in kept or named.name in back:
                continue
            proxy = self._factory(named)
            proxy.url, proxy.joining = named.url, True
            for forwarder in proxy.forwarders():
                await forwarder.start()
            if self._metrics is not None:
                proxy.metrics = ProxyMetrics(self._metrics, proxy.name)
            added[named.name] = proxy
        # From here on nothing waits: a request sees the old list or the new one, whole.
        removed = [proxy for proxy in self.proxies if proxy.name not in kept]
        for proxy in back.values():
            del self._retiring[proxy.name]
            self._retirements.pop(proxy).cancel()
            proxy.retiring = False
            self._mark(proxy, reachable=proxy.reachable, healthy=bool(proxy.healthy),
                       why="listed again")
        for proxy in removed:
            self._retire(proxy)
        chosen = {**kept, **back, **added}
        self.proxies = tuple(chosen[named.name] for named in listed)
        self._named = {proxy.name: proxy for proxy in self.proxies}
        for proxy in added.values():
            self._start_checking(proxy)
        log.info("new proxy list: %s; added %s, removed %s (retiring for %.0f s)%s",
                 ", ".join(f"{proxy.name}={proxy.url}" for proxy in self.proxies),
                 ", ".join(added) or "none", ", ".join(proxy.name for proxy in removed) or "none",
                 self._retire_seconds,
                 f", listed again: {', '.join(back)}" if back else "")
        return True

    def _retire(self, proxy: Proxy) -> None:
        """No new request for ``proxy`` from now on; its transactions' requests still reach it
        until ``retire_seconds`` have passed. A retiring one of the same name (an older URL)
        is let go at once: the ids naming it go to the newest."""
        older = self._retiring.pop(proxy.name, None)
        if older is not None:
            self._retirements.pop(older).cancel()
            self._retirements[older] = asyncio.create_task(self._let_go(older))
        proxy.retiring, proxy.joining = True, False
        self._retiring[proxy.name] = proxy
        if proxy.metrics is not None:
            proxy.metrics.up.set(0)
        self._retirements[proxy] = asyncio.create_task(self._retire_later(proxy))

    async def _retire_later(self, proxy: Proxy) -> None:
        await asyncio.sleep(self._retire_seconds)
        if self._retiring.get(proxy.name) is proxy:
            del self._retiring[proxy.name]
        await self._let_go(proxy)

    async def _let_go(self, proxy: Proxy) -> None:
        """Stop checking a retired Proxy and close its pools once the requests sent to it
        have been answered (each within the forwarding timeout)."""
        check = self._checks.pop(proxy, None)
        if check is not None:
            check.cancel()
        while proxy.outstanding:
            await asyncio.sleep(0.1)
        for forwarder in proxy.forwarders():
            await forwarder.close()
        self._retirements.pop(proxy, None)
        log.info("proxy %s (%s) retired: its pools are closed", proxy.name, proxy.url)

    @property
    def healthy(self) -> bool:
        """Whether some Proxy can serve: what the Gatekeeper's ``/health`` says."""
        return any(proxy.healthy is True and proxy.reachable for proxy in self.proxies)

    # --- the choice ---------------------------------------------------------------------------

    def holder(self, transaction_id: str) -> Proxy | None:
        """The Proxy whose instance name (or one of whose workers' names) the id carries; None
        when it names none of them. ``transaction_id`` is a well-formed id."""
        if not self._by_name:
            return self.proxies[0]
        match = TRANSACTION_ID_PATTERN.fullmatch(transaction_id)
        if match is None:
            return None
        instance = match.group(1)
        proxy = self._named.get(instance) or self._retiring.get(instance)
        worker = WORKER_SUFFIX.fullmatch(instance)
        if proxy is None and worker is not None:
            # worker_instance_name may have shortened a long name to fit its suffix.
            index = int(worker.group(2))
            proxy = next((candidate
                          for candidate in (*self.proxies, *self._retiring.values())
                          if worker_instance_name(candidate.name, index) == instance), None)
        return proxy

    def candidates(self) -> list[Proxy]:
        """The order to try the Proxies in for a request that may go anywhere: the best rank,
        then the fewest requests outstanding, ties in turn; the ones marked down only when
        all are (one of them may be back before the next check says so). A Proxy still
        joining is left out, unless every listed one is."""
        listed = [proxy for proxy in self.proxies if not proxy.joining] or list(self.proxies)
        count = len(listed)
        turn = next(self._turn) % count
        ordered = sorted(range(count), key=lambda index: (
            listed[index].rank, listed[index].outstanding, (index - turn) % count))
        proxies = [listed[index] for index in ordered]
        up = [proxy for proxy in proxies if proxy.reachable]
        return up or proxies

    # --- forwarding ---------------------------------------------------------------------------

    async def forward(self, method: str, path: str, request_id: str, body: bytes | None, *,
                      scope: str | None, key_name: str | None,
                      transaction_id: str | None = None, action: Action | None = None,
                      trace: RequestTrace | None = None) -> ProxyAnswer:
        """Send the request to the Proxy that holds ``transaction_id`` (doing ``action`` to
        it), or, without one, to the best Proxy that can be reached. ``trace`` learns which
        Proxy was tried last (``node``) and how many were (``attempts``), for the log line."""
        trace = trace or RequestTrace()
        if transaction_id is not None:
            return await self._to_holder(method, path, request_id, body, scope, key_name,
                                         transaction_id, action or "statement", trace)
        last: ApiError | ProxyAnswer | None = None
        trace.attempts = 0
        for proxy in self._attempts():
            trace.node, trace.attempts = proxy.name, trace.attempts + 1
            try:
                answer = await self._send(proxy, method, path, request_id, body, scope,
                                          key_name)
            except (ProxyUnreachable, ProxyBusy) as error:
                last = error  # nothing was sent: the next one may take it
                continue
            if not refused_while_draining(answer):
                return answer
            # A stopping Proxy opened nothing: another one may, and this one gets no more.
            self._mark(proxy, reachable=True, healthy=False, why="it is stopping (draining)")
            last = answer
        assert last is not None
        if isinstance(last, ProxyAnswer):
            return last
        raise last

    def _attempts(self) -> Iterator[Proxy]:
        """The candidates, then, when none of them took the request, the Proxies marked
        unreachable: one may be back before its next check says so (a Proxy restarted while
        the others stop, in a rolling restart)."""
        first = self.candidates()
        yield from first
        yield from (proxy for proxy in self.proxies if proxy not in first and not proxy.joining)

    async def _to_holder(self, method: str, path: str, request_id: str, body: bytes | None,
                         scope: str | None, key_name: str | None, transaction_id: str,
                         action: Action, trace: RequestTrace) -> ProxyAnswer:
        proxy = self.holder(transaction_id)
        if proxy is None:  # as the Proxy answers an id it never gave
            raise ApiError(404, f"no transaction {transaction_id}", transaction_id=transaction_id)
        trace.node, trace.attempts = proxy.name, 0
        if not proxy.reachable:  # a connection to it failed, and no check reached it since
            raise ended_unreachable(transaction_id)
        trace.attempts = 1
        try:
            return await self._send(proxy, method, path, request_id, body, scope, key_name)
        except ProxyUnreachable:
            raise ended_unreachable(transaction_id) from None
        except ProxyBusy:
            raise ApiError(503, f"the proxy holding transaction {transaction_id} is busy: "
                           "nothing was sent, and the transaction is still open",
                           transaction_id=transaction_id, cause="busy",
                           headers={"Retry-After": "1"}) from None
        except ProxyLost as error:
            raise lost_during(transaction_id, action, error) from None

    async def _send(self, proxy: Proxy, method: str, path: str, request_id: str,
                    body: bytes | None, scope: str | None, key_name: str | None) -> ProxyAnswer:
        """One attempt on one Proxy, counted; a failed connection marks it down."""
        metrics = proxy.metrics
        proxy.outstanding += 1
        if metrics is not None:
            metrics.outstanding.inc()
        try:
            return await proxy.forwarder.forward(method, path, request_id, body,
                                                 scope=scope, key_name=key_name)
        except ApiError as error:
            if isinstance(error, ProxyUnreachable):
                self._mark(proxy, reachable=False, healthy=False,
                           why=f"a request's connection: {error.detail}")
            if metrics is not None and error.cause is not None:
                metrics.failed(error.cause)
            raise
        finally:
            proxy.outstanding -= 1
            if metrics is not None:
                metrics.outstanding.dec()

    # --- the checks ---------------------------------------------------------------------------

    async def _check_forever(self, proxy: Proxy) -> None:
        while True:
            try:
                await self.check(proxy)
            except Exception:  # a check must never stop the checking
                log.exception("checking the proxy %s failed", proxy.name)
            await asyncio.sleep(self._check_interval)

    async def check(self, proxy: Proxy) -> None:
        """``GET /health`` on one Proxy, on a new connection each time: reached (any answer)
        and healthy (200). No connection at all (refused, or none within the timeout
        ``UNREACHABLE_AFTER`` checks in a row: its host is cut off, as a request's new
        connection would find) makes it unreachable: its transactions end (409) instead of
        waiting out the request timeout on a kept connection. A late answer on a connection
        that was made says nothing of reachability (a loaded Proxy is still there), nor does a
        full pool."""
        reachable, healthy, why, connected = proxy.reachable, False, "", True
        try:
            answer = await (proxy.checker or proxy.forwarder).forward(
                "GET", "/health", new_request_id(), timeout=self._check_timeout,
                connect_timeout=self._check_timeout * 0.75, log_failures=False)
        except ProxyUnreachable as error:
            connected = False
            proxy.unconnected += 1
            if not error.timed_out or proxy.unconnected >= UNREACHABLE_AFTER:
                reachable = False
            why = error.detail
        except ProxyBusy:
            return  # every connection in use: it is serving
        except ProxyLost as error:
            why = f"{error.message}: {error.detail}"
        except ApiError as error:
            why = error.message
        else:
            reachable, healthy = True, answer.status == 200
            why = f"/health answered {answer.status}"
        if connected:
            proxy.unconnected = 0
        self._mark(proxy, reachable=reachable, healthy=healthy, why=why)
        if proxy.joining and reachable and healthy:
            proxy.joining = False
            log.info("proxy %s joined: it gets requests from now on", proxy.name)

    def _mark(self, proxy: Proxy, *, reachable: bool, healthy: bool, why: str) -> None:
        """Set what is known of ``proxy``, logging each change once (not every check)."""
        if (reachable, healthy) != (proxy.reachable, proxy.healthy):
            state = "healthy" if reachable and healthy else (
                "reachable, unhealthy" if reachable else "unreachable")
            log.log(logging.INFO if reachable and healthy else logging.WARNING,
                    "proxy %s is now %s (%s)", proxy.name, state, why)
        proxy.reachable, proxy.healthy = reachable, healthy
        if proxy.metrics is not None:  # a retiring Proxy is down for whoever looks
            proxy.metrics.up.set(1 if reachable and healthy and not proxy.retiring else 0)


def refused_while_draining(answer: ProxyAnswer) -> bool:
    """Whether a Proxy refused the request because it is stopping: a new transaction, which
    it did not open (503 with ``"draining": true``, ``services.proxy.transactions``)."""
    if answer.status != 503:
        return False
    try:
        data = json.loads(answer.body)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("draining") is True


def ended_unreachable(transaction_id: str) -> ApiError:
    """A transaction whose Proxy cannot be reached: no request for it was sent, and none can
    be, so it cannot be committed any more (the Proxy rolls it back: its process died, or it
    sees the transaction idle past its timeout). 409, as for any ended transaction."""
    return ApiError(409, f"transaction {transaction_id} has ended: its proxy is unreachable; "
                    "nothing in it was committed", transaction_id=transaction_id,
                    outcome="rolled back", cause="unreachable")


def lost_during(transaction_id: str, action: Action, error: ProxyLost) -> ApiError:
    """A request for a transaction that was sent and got no whole answer: the Proxy may have
    run it. A commit may then have committed or not (never a 4xx: the client must not take it
    for a refusal); a statement may have run inside the transaction, which is not committed;
    a rollback leaves nothing committed whatever became of it. 503, or 504 on a timeout."""
    status = 504 if error.status == 504 else 503
    how = ("did not answer in time" if status == 504 else "was lost")
    holder = f"the proxy holding transaction {transaction_id} {how} during the"
    if action == "commit":
        return ApiError(status, f"{holder} commit: it may or may not have been committed",
                        transaction_id=transaction_id, outcome="unknown", cause=error.cause)
    if action == "rollback":
        return ApiError(status, f"{holder} rollback: nothing in the transaction was committed "
                        "(its proxy rolls it back, at the latest when it has been idle too "
                        "long)", transaction_id=transaction_id, outcome="rolled back",
                        cause=error.cause)
    return ApiError(status, f"{holder} request: the statement may or may not have run; the "
                    "transaction is not committed", transaction_id=transaction_id,
                    outcome="unknown", cause=error.cause)
