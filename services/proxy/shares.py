"""Each key's share of the statements in flight at this Proxy worker.

What limits statements in flight without it is the pools: ``pool_max_size`` connections per
node and database user, and a statement that finds none free waits ``connect_timeout`` and
answers 503 (busy). So one key sending many slow statements at once could hold every
connection of its scope's pool on the primary, and every other key of that scope would wait,
then fail. A share bounds what one key holds: at most ``max_statements_per_key`` requests of
the key run (or wait for a connection, or for a primary) at once; one more is refused at once
with a 429 and ``Retry-After``, before anything is sent to a database, so its outcome is
certain (not applied), and it waits for nothing the other keys need. It is the key's own
doing and only its own answers end it, as for its share of open transactions
(``services.proxy.transactions``); the key is the Gatekeeper's key name, and requests without
one count as one anonymous key.

What counts is a request outside an interactive transaction: a ``/query``, or a ``/batch``
once whatever its statements (they run one after the other, or together in one transaction on
one connection, so the request holds one connection at a time). A request inside a
transaction the key holds does not count, and is never refused for this: the transaction
already holds its connection (bounded by the key's share of open transactions), the requests
on one transaction run one at a time, so each adds at most one statement, on that connection
and no other; and refusing it mid-transaction would leave the client holding its locks while it
waits to retry, which is what makes others wait. Refusals carry the cause
``statements_per_key`` (the metric ``sqlgate_proxy_refusals_total``).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from services.contract import ApiError

CAUSE = "statements_per_key"


class StatementShares:
    """The requests each key has in flight, and the one bound they all have (``limit``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: Counter[str] = Counter()

    def in_flight(self, key: str | None) -> int:
        return self._held[key or ""]

    @contextlib.contextmanager
    def hold(self, key: str | None) -> Iterator[None]:
        """One more of the key's requests in flight for the block; a 429 instead, before the
        block runs, when the key has ``limit`` already."""
        key = key or ""
        if self._held[key] >= self.limit:
            raise ApiError(429, f"too many statements in flight for this key ({self.limit}): "
                           "this request was not run; wait for the key's earlier requests to "
                           "be answered, or retry later", headers={"Retry-After": "1"},
                           retry_after=1, cause=CAUSE)
        self._held[key] += 1
        try:
            yield
        finally:
            self._held[key] -= 1
            if self._held[key] <= 0:
                del self._held[key]  # a key with nothing in flight takes no room
