"""A transaction's requests reach the worker that holds it, whichever worker they came to.

A transaction is a connection held by one process: the worker that opened it, named in its id
(``<instance>-w<index>.<random>``). The Gatekeeper spreads its requests over its pooled
connections, and each connection was accepted by whichever worker of the Proxy was quickest,
so a request for a transaction often lands on another worker than its holder. That worker
passes it on, over the holder's unix socket, and sends the holder's answer back as it came
(status, body, and the headers that matter): the caller's scope, key name and request id go
along, and the holder checks and runs the request as if it had come to it directly.

Each worker serves the same application on ``w<index>.sock`` in the private runtime directory
the parent made (0700; the socket 0600), so only the service's own user can reach it: the
scope headers are believed there for that reason, as on the TLS port for the client
certificate. A request that was passed on once is never passed on again. A transaction of a
worker that is not running (or no longer knows it, after a restart) is a 404, as for any
unknown transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import aiohttp
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_unix_socket

from services.config import ProxyConfig, worker_instance_name
from services.contract import (
    KEY_NAME_HEADER,
    REQUEST_ID_HEADER,
    SCOPE_HEADER,
    TRANSACTION_ID_PATTERN,
    ApiError,
)
from services.workers import Worker

log = logging.getLogger(__name__)

RELAYED_HEADER = "X-Sqlgate-Relayed"  # set on a request passed on: it is not passed on again
PASSED_ON = (SCOPE_HEADER, KEY_NAME_HEADER, REQUEST_ID_HEADER, "Content-Type")
PASSED_BACK = ("Content-Type", "Location", "Retry-After", REQUEST_ID_HEADER)


class Affinity:
    """Which worker holds a transaction, and the way to it."""

    def __init__(self, worker: Worker, instance: str, timeout: float) -> None:
        self.worker = worker
        # The names of this Proxy's workers (``instance`` is the Proxy's, not this worker's).
        self.holders = {worker_instance_name(instance, index): index
                        for index in range(worker.count)}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._sessions: dict[int, aiohttp.ClientSession] = {}
        self._server: HTTPServer | None = None

    @classmethod
    def for_worker(cls, worker: Worker, config: ProxyConfig) -> Affinity:
        """``config`` is the Proxy's (its ``instance_name`` without the worker's suffix). A
        request passed on may wait behind another on the same transaction: two statements'
        worth of query timeout, and some."""
        return cls(worker, config.instance_name, 2 * config.query_timeout + 5.0)

    def holder(self, transaction_id: str) -> int | None:
        """The index of the other worker of this Proxy whose transaction it is; None when it
        is this worker's, or no worker's of this Proxy (the transaction manager answers)."""
        match = TRANSACTION_ID_PATTERN.fullmatch(transaction_id)
        index = self.holders.get(match.group(1)) if match else None
        return None if index == self.worker.index else index

    # --- serving the other workers ------------------------------------------------------------

    def serve(self, app: tornado.web.Application) -> None:
        """Serve ``app`` to the other workers on this worker's unix socket."""
        path = self.worker.socket_path()
        sock = bind_unix_socket(str(path), mode=0o600)
        self._server = HTTPServer(app, xheaders=False, idle_connection_timeout=300)
        self._server.add_socket(sock)

    async def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
            with contextlib.suppress(OSError):
                os.unlink(self.worker.socket_path())
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    # --- passing a request on -----------------------------------------------------------------

    async def pass_on(self, handler: tornado.web.RequestHandler, transaction_id: str) -> bool:
        """When another worker holds the transaction, send it ``handler``'s request and answer
        with its answer (True); False when this worker is the one to answer."""
        index = self.holder(transaction_id)
        if index is None or handler.request.headers.get(RELAYED_HEADER):
            return False
        request = handler.request
        headers = {name: request.headers[name] for name in PASSED_ON if name in request.headers}
        request_id = getattr(handler, "request_id", None)
        if request_id:  # perhaps from the body: the same id then, said in the header too
            headers[REQUEST_ID_HEADER] = request_id
        headers[RELAYED_HEADER] = str(self.worker.index)
        handler.passed_to = index
        try:
            async with self._session(index).post(f"http://worker{index}{request.path}",
                                                 data=handler.body,
                                                 headers=headers) as answer:
                body = await answer.read()
                status, passed_back = answer.status, {
                    name: answer.headers[name] for name in PASSED_BACK if name in answer.headers}
        except aiohttp.ClientConnectorError:
            raise ApiError(404, f"transaction {transaction_id} is not held by this proxy: "
                           f"its worker ({index}) is not running",
                           transaction_id=transaction_id) from None
        except TimeoutError:
            raise ApiError(504, f"the worker holding transaction {transaction_id} did not "
                           "answer in time", transaction_id=transaction_id) from None
        except (aiohttp.ClientError, asyncio.IncompleteReadError) as error:
            log.warning("request %s: lost worker %d during a request on transaction %s: %r",
                        request_id, index, transaction_id, error)
            raise ApiError(503, f"lost the worker holding transaction {transaction_id} during "
                           "the request: its outcome is unknown",
                           transaction_id=transaction_id) from None
        handler.set_status(status)
        for name, value in passed_back.items():
            handler.set_header(name, value)
        handler.finish(body)
        return True

    def _session(self, index: int) -> aiohttp.ClientSession:
        session = self._sessions.get(index)
        if session is None or session.closed:
            connector = aiohttp.UnixConnector(path=str(self.worker.socket_path(index)),
                                              keepalive_timeout=60)
            session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                            auto_decompress=False)
            self._sessions[index] = session
        return session

