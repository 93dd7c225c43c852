"""Reading results from asyncmy as they are consumed: a read-ahead limit, and bulk rows.

asyncmy's protocol takes every byte the transport delivers into one growing buffer and never
pauses the transport, so a streamed (unbuffered) result still lands whole in memory, as fast as
the server sends it: 15 MB asked for are 15 MB held, however few rows are kept. Here reading
pauses once more than ``high_water`` unconsumed bytes are buffered, and resumes as soon as the
driver waits for more; the kernel's receive window then holds the server back. A result cut at
``max_result_bytes`` costs about that much memory, and the rest is never read.

It works through two of asyncmy's protocol hooks (``buffer_updated``, which the transport calls
with new bytes, and ``wait_for_data``, which every packet read awaits when short of bytes),
replaced on the one connection's protocol and handed to the transport again with
``set_protocol``, which is how transports learn a protocol's methods. (Prepared statements
wait otherwise; the Proxy does not use them.)

``parsed_rows`` takes, in one call, the rows asyncmy has already parsed out of that buffer, so
a streamed result is not read one coroutine call per row; they are bounded by the buffer.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

HIGH_WATER = 1024 * 1024


def limit_read_ahead(conn: Any, high_water: int = HIGH_WATER) -> bool:
    """Make ``conn`` (an open asyncmy connection) read at most about ``high_water`` bytes
    ahead of its consumer; False (and nothing changed) if the driver is not as expected."""
    proto = getattr(conn, "_proto", None)
    transport = getattr(conn, "_transport", None)
    if proto is None or transport is None or not all(
            hasattr(proto, name) for name in ("buffer_updated", "wait_for_data", "length",
                                              "pos")):
        log.warning("asyncmy's protocol is not as expected: results are read without a "
                    "read-ahead limit")
        return False
    delivered = proto.buffer_updated
    wait = proto.wait_for_data
    paused = False

    def buffer_updated(nbytes: int) -> None:
        nonlocal paused
        delivered(nbytes)  # wakes a waiting reader first
        if not paused and proto.length - proto.pos > high_water and not transport.is_closing():
            paused = True
            transport.pause_reading()

    async def wait_for_data(need: int) -> None:
        nonlocal paused
        if paused:
            paused = False
            if not transport.is_closing():
                transport.resume_reading()
        await wait(need)

    proto.buffer_updated = buffer_updated
    proto.wait_for_data = wait_for_data
    transport.set_protocol(proto)
    return True


def parsed_rows(cursor: Any) -> list[tuple[Any, ...]]:
    """The rows of ``cursor``'s streamed result already parsed after the one ``fetchone``
    returned (none when the driver keeps them otherwise)."""
    take = getattr(cursor._result, "_take_pending_rows", None)
    return take() if take is not None else []
