"""A bug in a handler is answered 503 with the outcome said, never a bare 500: a write in the
request may have been applied, and the client must not take the error for a refusal."""

from __future__ import annotations

import asyncio
import json
import logging

import tornado.httpclient
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from services.http import JsonHandler


class Broken(JsonHandler):
    async def post(self) -> None:
        raise RuntimeError("Transport does not expose socket instance")


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_an_uncaught_exception_answers_503_with_an_unknown_outcome():
    async def ask() -> tornado.httpclient.HTTPResponse:
        sockets = bind_sockets(0, "127.0.0.1")
        server = HTTPServer(tornado.web.Application([(r"/query", Broken)],
                                                    log_function=lambda handler: None))
        server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        try:
            return await tornado.httpclient.AsyncHTTPClient().fetch(
                f"http://127.0.0.1:{port}/query", method="POST", body=b"{}",
                raise_error=False)
        finally:
            server.stop()

    log = logging.getLogger("tornado.application")  # where Tornado logs the traceback
    kept = Kept()
    log.addHandler(kept)
    log.propagate = False
    try:
        answer = asyncio.run(ask())
    finally:
        log.removeHandler(kept)
        log.propagate = True
    assert answer.code == 503, answer.code
    body = json.loads(answer.body)
    assert body["outcome"] == "unknown" and "internal error" in body["error"], body
    assert "Transport" not in body["error"]  # the detail stays in the log
    assert any(record.exc_info and "Transport" in str(record.exc_info[1])
               for record in kept.records), kept.records
