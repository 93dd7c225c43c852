"""The plain-HTTP listener: it only points at HTTPS.

Every request, whatever its method and path, is answered 308 (which keeps the method and
body) to the same path on ``https://<host>``, with a JSON error saying so; nothing is
forwarded and no key is checked. A request that carried a key has already sent it in clear,
which the answer says, so that its owner can replace it.
"""

from __future__ import annotations

import re

import tornado.web

from services.contract import API_KEY_HEADER, ApiError
from services.http import JsonHandler
from services.requestlog import RequestLog

# A host name or IPv4 address, or a bracketed IPv6 one, then maybe a port.
HOST = re.compile(r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])"
                  r"(?::[0-9]{1,5})?")


class RedirectHandler(JsonHandler):
    endpoint = "redirect"

    def initialize(self, https_port: int) -> None:
        self.https_port = https_port

    def check_request(self) -> None:
        # Headers alone decide: raised here, the answer goes out before any body is read.
        match = HOST.fullmatch(self.request.headers.get("Host", ""))
        if match is None:
            raise ApiError(400, "plain HTTP is not served here, and the request has no usable "
                           "Host header to redirect to: use https://")
        port = "" if self.https_port == 443 else f":{self.https_port}"
        path = self.request.path if self.request.path.startswith("/") else "/"
        query = f"?{self.request.query}" if self.request.query else ""
        location = f"https://{match['host']}{port}{path}{query}"
        message = f"plain HTTP is not served: use {location}"
        if API_KEY_HEADER in self.request.headers:
            message += (f" (this request sent its {API_KEY_HEADER} unencrypted: replace that "
                        "key)")
        raise ApiError(308, message, headers={"Location": location})

    # Every method reaches check_request; none is ever served.
    def get(self) -> None:
        raise AssertionError("answered in check_request")

    post = put = delete = patch = head = options = get


def make_redirect_app(https_port: int,
                      requests: RequestLog | None = None) -> tornado.web.Application:
    """``requests``: the Gatekeeper's request log, which counts and logs redirects too."""
    settings = {"log_function": requests.finished, "request_log": requests} if requests else {}
    return tornado.web.Application([(r".*", RedirectHandler, {"https_port": https_port})],
                                   **settings)
