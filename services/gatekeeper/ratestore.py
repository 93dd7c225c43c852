"""Where a key's token bucket lives: on this host (``LocalLimiter``), or in a Redis that every
Gatekeeper shares (``RedisLimiter``), so that N Gatekeepers grant a key its rate once, not N
times.

Both answer ``take(name, rate, burst)``: 0 when the request may go, else the seconds until a
token is there. The Redis bucket is one hash per key, changed by one Lua script (atomic in
Redis, and timed by Redis's own clock, so the Gatekeepers' clocks never have to agree).

The store must never cost a request more than ``timeout``, nor fail one: when it does not
answer in time (down, cut off, slow), this Gatekeeper falls back at once to its local buckets
with ``rate / peers`` and ``burst / peers`` (``peers``: how many Gatekeepers share the store, so
that together they still grant about the key's rate), logs it once, and asks the store again
at most once a second, in the background; requests never wait on those checks. When the store
answers again, it logs that once and the shared buckets are back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from services.gatekeeper.keys import LocalLimiter
from services.gatekeeper.metrics import GatekeeperMetrics

log = logging.getLogger(__name__)

KEY_PREFIX = "sqlgate:rate:"
RETRY_INTERVAL = 1.0  # seconds between checks of a store that failed

# KEYS[1]: the key's bucket; ARGV: rate (tokens a second), burst. The same arithmetic as
# ``keys.refill``, on Redis's clock. Returns the seconds to wait as a string ("0": granted):
# a Lua number would come back truncated to an integer. The bucket expires once it would be
# full again anyway, so keys that are gone leave nothing behind.
TOKEN_BUCKET = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens, updated = tonumber(saved[1]), tonumber(saved[2])
if tokens == nil or updated == nil then tokens, updated = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'updated', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return string.format('%.17g', wait)
"""


class RedisLimiter:
    """One bucket per key in Redis, shared by every Gatekeeper and worker; this host's buckets
    at ``rate / peers`` while the store does not answer within ``timeout``."""

    def __init__(self, client: redis.Redis, fallback: LocalLimiter, timeout: float,
                 metrics: GatekeeperMetrics | None = None,
                 retry_interval: float = RETRY_INTERVAL) -> None:
        self._client = client
        self._script = client.register_script(TOKEN_BUCKET)
        self._fallback = fallback
        self._timeout = timeout
        self._metrics = metrics
        self._retry_interval = retry_interval
        self.up = True
        self._check: asyncio.Task | None = None
        if metrics is not None:
            metrics.rate_store_up.set(1)

    async def start(self, patience: float = 2.0) -> None:
        """Connect before the first request, allowing more than the requests' timeout (a
        first TLS handshake in a fresh process); a store that does not answer is the
        fallback, as for any request."""
        try:
            async with asyncio.timeout(patience):
                await self._client.ping()
        except (RedisError, OSError, TimeoutError) as error:
            self._went_down(error)

    async def take(self, name: str, rate: float, burst: float) -> float:
        if self.up:
            try:
                async with asyncio.timeout(self._timeout):
                    wait = await self._script(keys=[KEY_PREFIX + name], args=[rate, burst])
                return float(wait)
            except (RedisError, OSError, TimeoutError) as error:
                self._went_down(error)
        if self._metrics is not None:
            self._metrics.rate_store_fallbacks.inc()
        return self._fallback.take_now(name, rate, burst)

    def _went_down(self, error: BaseException) -> None:
        if not self.up:  # another request found out first
            return
        self.up = False
        log.error("the shared rate store does not answer (%s): this Gatekeeper grants each "
                  "key its share of the rate from its own buckets until it does",
                  type(error).__name__ if isinstance(error, TimeoutError) else error)
        if self._metrics is not None:
            self._metrics.rate_store_up.set(0)
        self._check = asyncio.get_running_loop().create_task(self._check_until_back())

    async def _check_until_back(self) -> None:
        """A PING every ``retry_interval`` until one is answered within the timeout."""
        while True:
            await asyncio.sleep(self._retry_interval)
            try:
                async with asyncio.timeout(self._timeout):
                    await self._client.ping()
            except (RedisError, OSError, TimeoutError):
                continue
            log.warning("the shared rate store answers again: the keys' buckets are shared "
                        "again")
            if self._metrics is not None:
                self._metrics.rate_store_up.set(1)
            self.up = True
            return

    async def close(self) -> None:
        if self._check is not None:
            self._check.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._check
        await self._client.aclose()


def redis_client(url: str, password: str, timeout: float,
                 ssl_files: tuple[str, str, str] | None) -> redis.Redis:
    """A client of the store at ``url`` (``rediss://user@host:port``, ``redis://`` without
    TLS), failing fast: every connect and command bounded by ``timeout``, no retries (the
    caller falls back instead). ``ssl_files``: the CA that signed the store's certificate,
    and this host's certificate and key, which the store asks for."""
    tls = {}
    if url.startswith("rediss://") and ssl_files is not None:
        ca, cert, key = ssl_files
        tls = {"ssl_ca_certs": ca or None, "ssl_certfile": cert or None,
               "ssl_keyfile": key or None, "ssl_cert_reqs": "required",
               "ssl_check_hostname": True, "ssl_min_version": ssl.TLSVersion.TLSv1_2}
    return redis.Redis.from_url(url, password=password or None, socket_timeout=timeout,
                                socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
                                driver_info=None,  # no CLIENT SETINFO: Redis 7.0 has none
                                **tls)
