"""The API keys: who may call, with which scope, how often.

The Gatekeeper host holds only hashes: ``keys_file`` is JSON, ``{"keys": [{"name": "ci",
"scope": "write", "sha256": "<hex of sha256(secret)>", "rate": 50.0, "burst": 100}]}``, so a
copy of it (or of the pillar it comes from) lets nobody in. An offered key is hashed and
compared with every hash in constant time, so the time an answer takes says nothing about how
close a guess was, nor which key it was close to.

The file is checked every second and a changed one replaces the whole set at once (a request
sees the old set or the new one, never a mix); one that does not parse or check out is logged
and the old set stays. Each key has a token bucket (``rate`` requests per second, at most
``burst`` at once, ``rate`` 0: unlimited) that survives a reload while the key keeps its name.

The buckets live in memory shared by the Gatekeeper's worker processes (``SharedBuckets``, made
by the parent before it forks), so N workers grant a key its rate once, not N times; each
worker still reads the keys file itself. Several Gatekeepers share theirs in Redis instead
(``services.gatekeeper.ratestore``), with these as the fallback.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import hmac
import json
import logging
import math
import re
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.sharedctypes import RawArray
from pathlib import Path
from typing import Any, Protocol

from services.contract import API_KEY_HEADER, SCOPES, ApiError
from services.watchedfile import WatchedFile

log = logging.getLogger(__name__)

# Names go into a header to the Proxy, the request log and metric labels: short and plain.
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
KEY_FIELDS = frozenset({"name", "scope", "sha256", "rate", "burst"})
INLINE_KEY_NAME = "default"
MIN_SECRET_LENGTH = 16


def hash_secret(secret: str) -> str:
    """What a keys file holds for a secret: the hex of its sha256."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    scope: str
    digest: bytes          # sha256 of the secret
    rate: float = 0.0      # requests per second; 0: unlimited
    burst: int = 0         # requests at once, when rate > 0

    @classmethod
    def inline(cls, secret: str) -> ApiKey:
        """The development shortcut: an inline secret is one unlimited admin key."""
        return cls(INLINE_KEY_NAME, "admin", hashlib.sha256(secret.encode()).digest())


def parse_keys(text: str, source: str = "the keys file") -> tuple[ApiKey, ...]:
    """The keys of a keys file, or ValueError naming the first problem (never a secret: the
    file holds none)."""
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{source}: not JSON: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError(f'{source}: expected {{"keys": [...]}}')
    keys: list[ApiKey] = []
    for index, item in enumerate(data["keys"]):
        keys.append(_parse_key(item, f"{source}: keys[{index}]"))
    names = [key.name for key in keys]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"{source}: the name {name!r} is used twice")
    digests = [key.digest for key in keys]
    if len(set(digests)) != len(digests):
        raise ValueError(f"{source}: two keys have the same sha256 (one secret, two names)")
    return tuple(keys)


def _parse_key(item: Any, where: str) -> ApiKey:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: each key is an object {{name, scope, sha256, rate?, burst?}}")
    unknown = sorted(set(item) - KEY_FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
    name, scope, digest = item.get("name"), item.get("scope"), item.get("sha256")
    if not isinstance(name, str) or not KEY_NAME.fullmatch(name):
        raise ValueError(f"{where}: 'name' must be 1-64 of A-Z a-z 0-9 . _ - "
                         "(starting with a letter or digit)")
    where = f"{where} ({name})"
    if scope not in SCOPES:
        raise ValueError(f"{where}: 'scope' must be one of {', '.join(SCOPES)}")
    if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest.lower()):
        raise ValueError(f"{where}: 'sha256' must be 64 hex digits (the sha256 of the secret)")
    rate = item.get("rate", 0)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (
            0 <= rate < math.inf):
        raise ValueError(f"{where}: 'rate' must be a number of requests per second, >= 0")
    burst = item.get("burst", max(1, math.ceil(rate)))
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < (1 if rate else 0):
        raise ValueError(f"{where}: 'burst' must be a whole number, at least 1 for a key with "
                         "a rate")
    return ApiKey(name, scope, bytes.fromhex(digest), float(rate), burst)


def refill(tokens: float, updated: float, rate: float, burst: float,
           now: float) -> tuple[float, float]:
    """A bucket's tokens at ``now`` and what a request gets: (tokens left, 0) when it took
    one, else (tokens, the seconds until one is there)."""
    tokens = min(burst, tokens + max(0.0, now - updated) * rate)
    if tokens >= 1:
        return tokens - 1, 0.0
    return tokens, (1 - tokens) / rate


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; a request takes one."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one is there."""
        self.tokens, wait = refill(self.tokens, self.updated, self.rate, self.burst, now)
        self.updated = now
        return wait

    def reconfigure(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = min(self.tokens, burst)


class _Slot(ctypes.Structure):
    """One key's bucket in shared memory; an empty name is a free slot."""

    _fields_ = [("name", ctypes.c_char * 64), ("rate", ctypes.c_double),
                ("burst", ctypes.c_double), ("tokens", ctypes.c_double),
                ("updated", ctypes.c_double)]


class SharedBuckets:
    """Every key's token bucket, in memory that processes forked after it share.

    A fixed table of slots, each found from a stable hash of the key's name (crc32, the same in
    every process) and probed onwards; a slot holds the whole name, so two names never share a
    bucket. A bucket that has refilled to its burst is as good as a new one: its slot is taken
    over by a new name when the table needs room, so keys that come and go never fill it.
    Slots are never emptied, so a probe never stops short of a name further on.

    The lock is a POSIX record lock (``lockf``) on an unlinked file: the kernel drops it with
    its process, so a worker killed inside the few microseconds it holds it cannot block the
    others. Should every slot be a live bucket, a key gets one of this process's own.
    """

    SLOTS = 1024

    def __init__(self, slots: int = SLOTS) -> None:
        self._slots = RawArray(_Slot, slots)
        # Open as long as the table lives: the lock is on it.
        self._lock_file = tempfile.TemporaryFile()  # noqa: SIM115
        self._own: dict[str, TokenBucket] = {}
        self._warned = False

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = self._lock_file.fileno()
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)

    def take(self, name: str, rate: float, burst: int, now: float) -> float:
        """Take a token from the key's bucket: 0, else the seconds until one is there. The
        bucket follows the key's ``rate`` and ``burst`` as they are now (after a reload)."""
        encoded = name.encode()
        with self._locked():
            slot = self._slot(encoded, now)
            if slot is None:
                return self._own_bucket(name, rate, burst, now).take(now)
            if slot.name != encoded:  # a new bucket, full
                slot.name, slot.tokens, slot.updated = encoded, float(burst), now
            slot.rate, slot.burst = rate, float(burst)
            slot.tokens, wait = refill(slot.tokens, slot.updated, rate, burst, now)
            slot.updated = now
            return wait

    def _slot(self, name: bytes, now: float) -> _Slot | None:
        """The name's slot, else a free or refilled one to take over; None if none is."""
        slots = self._slots
        start = zlib.crc32(name) % len(slots)
        spare = None
        for step in range(len(slots)):
            slot = slots[(start + step) % len(slots)]
            if slot.name == name:
                return slot
            if not slot.name:
                return slot if spare is None else spare
            if spare is None and slot.tokens + max(0.0, now - slot.updated) * slot.rate \
                    >= slot.burst:
                spare = slot
        return spare

    def _own_bucket(self, name: str, rate: float, burst: int, now: float) -> TokenBucket:
        if not self._warned:
            log.error("all %d shared rate-limit slots hold live buckets: key %r gets a bucket "
                      "of this worker's own (each worker then grants its rate)",
                      len(self._slots), name)
            self._warned = True
        bucket = self._own.get(name)
        if bucket is None:
            bucket = self._own[name] = TokenBucket(rate, burst, now)
        else:
            bucket.reconfigure(rate, burst)
        return bucket


class RateLimiter(Protocol):
    """Where the keys' buckets are: ``LocalLimiter`` (this host) or
    ``services.gatekeeper.ratestore.RedisLimiter`` (every Gatekeeper's), chosen by
    ``GATEKEEPER_RATE_STORE``. ``take``: 0 when a token was taken, else the seconds until one
    is there."""

    async def start(self) -> None: ...

    async def take(self, name: str, rate: float, burst: float) -> float: ...

    async def close(self) -> None: ...


class LocalLimiter:
    """This host's buckets, shared by its workers; ``share`` divides every key's rate and burst
    (the fallback of N Gatekeepers: each grants its share)."""

    def __init__(self, buckets: SharedBuckets | None = None,
                 clock: Callable[[], float] = time.monotonic, share: int = 1) -> None:
        self.buckets = buckets if buckets is not None else SharedBuckets()
        self._clock = clock
        self._share = share

    async def start(self) -> None:
        pass

    async def take(self, name: str, rate: float, burst: float) -> float:
        return self.take_now(name, rate, burst)

    def take_now(self, name: str, rate: float, burst: float) -> float:
        share = self._share
        return self.buckets.take(name, rate / share, max(1.0, burst / share), self._clock())

    async def close(self) -> None:
        pass


class KeyRing:
    """The key set in force: the keys file's (reloaded when it changes) plus the inline key."""

    def __init__(self, keys_file: str = "", inline_secret: str = "",
                 clock: Callable[[], float] = time.monotonic,
                 buckets: SharedBuckets | None = None,
                 limiter: RateLimiter | None = None) -> None:
        """``limiter``: where the buckets are; by default ``buckets``, the table shared with
        the other workers (one of its own by default), on ``clock``, which must be the same
        in every process that shares it (the monotonic clock is the system's)."""
        if not keys_file and not inline_secret:
            raise ValueError("no API key: set GATEKEEPER_KEYS_FILE")
        self._path = Path(keys_file) if keys_file else None
        self._file = WatchedFile(self._path, "the keys file") if self._path else None
        self._inline = (ApiKey.inline(inline_secret),) if inline_secret else ()
        self._limiter = limiter if limiter is not None else LocalLimiter(buckets, clock)
        self.keys: tuple[ApiKey, ...] = ()
        if self._file is not None:
            self._install(self._file.read(), first=True)
        else:
            self._install_keys(self._inline)

    # --- the set and its reloads -------------------------------------------------------------

    def _install(self, text: str, first: bool = False) -> None:
        keys = parse_keys(text, str(self._path))
        if self._inline and any(key.name == INLINE_KEY_NAME for key in keys):
            raise ValueError(f"{self._path}: the name {INLINE_KEY_NAME!r} is the inline "
                             "GATEKEEPER_API_KEY's")
        if not keys and not self._inline:
            raise ValueError(f"{self._path}: no keys (nobody could call)")
        self._install_keys(self._inline + keys)
        log.info("%s %d API key(s) from %s: %s", "loaded" if first else "reloaded", len(keys),
                 self._path, ", ".join(f"{key.name} ({key.scope})" for key in keys) or "none")

    def _install_keys(self, keys: tuple[ApiKey, ...]) -> None:
        # A key's bucket is found by its name at each request, and follows its rate and burst.
        self.keys = keys  # one assignment: a request sees the old set or the new one

    def reload_if_changed(self) -> bool:
        """Re-read the keys file if it changed; True when a new set is in force. A file that
        is gone or wrong leaves the old set, and is logged once per change."""
        if self._file is None:
            return False
        text = self._file.changed(f"the {len(self.keys)} key(s)")
        if text is None:
            return False
        try:
            self._install(text)
        except ValueError as error:
            log.error("the keys file changed but is not usable, keeping the %d key(s) in "
                      "force: %s", len(self.keys), error)
            return False
        return True

    # --- per request -------------------------------------------------------------------------

    def authenticate(self, offered: str | None) -> ApiKey:
        """The key whose secret was offered, or the 401. Every hash is compared, whichever
        matches, so the time taken does not depend on which (if any) did."""
        digest = hashlib.sha256((offered or "").encode()).digest()
        found: ApiKey | None = None
        for key in self.keys:
            if hmac.compare_digest(key.digest, digest):
                found = key
        if found is None or not offered:
            raise ApiError(401, f"missing or wrong {API_KEY_HEADER} header",
                           headers={"WWW-Authenticate": API_KEY_HEADER})
        return found

    async def admit(self, key: ApiKey) -> None:
        """Take one request from the key's bucket, or the 429 saying when to retry."""
        if key.rate <= 0:
            return
        wait = await self._limiter.take(key.name, key.rate, key.burst)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            raise ApiError(429, f"the key {key.name!r} is over its rate limit of "
                           f"{key.rate:g} requests per second: retry in {retry_after} s",
                           headers={"Retry-After": str(retry_after)}, retry_after=retry_after)
