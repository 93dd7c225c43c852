"""The key set: parsing the keys file, constant-time lookup, token buckets, reloads."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from pathlib import Path

import pytest

from services.contract import ApiError
from services.gatekeeper.keys import KeyRing, TokenBucket, hash_secret, parse_keys


def entry(name: str, secret: str, scope: str = "read", **limits) -> dict:
    return {"name": name, "scope": scope, "sha256": hash_secret(secret), **limits}


def keys_text(*entries: dict) -> str:
    return json.dumps({"keys": list(entries)})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_keys_file_holds_names_scopes_hashes_and_limits():
    (key,) = parse_keys(keys_text(entry("ci", "s3cret", "write", rate=50.0, burst=100)))
    assert (key.name, key.scope, key.rate, key.burst) == ("ci", "write", 50.0, 100)
    assert key.digest == hashlib.sha256(b"s3cret").digest()


@pytest.mark.parametrize(("text", "message"), [
    ("nope", "not JSON"),
    ('{"key": []}', '{"keys": [...]}'),
    (keys_text({"name": "x", "scope": "read"}), "'sha256' must be 64 hex digits"),
    (keys_text(entry("x", "s", "root")), "'scope' must be one of read, write, admin"),
    (keys_text(entry("bad name", "s")), "'name' must be"),
    (keys_text(entry("x", "s", rate=-1)), "'rate'"),
    (keys_text(entry("x", "s", rate=5, burst=0)), "'burst'"),
    (keys_text({**entry("x", "s"), "secret": "s"}), "unknown field(s) secret"),
    (keys_text(entry("x", "a"), entry("x", "b")), "used twice"),
    (keys_text(entry("x", "a"), entry("y", "a")), "same sha256"),
])
def test_a_bad_keys_file_is_refused_naming_the_problem(text, message):
    with pytest.raises(ValueError) as error:
        parse_keys(text, "keys.json")
    assert message in str(error.value)


def test_an_unlimited_key_may_have_burst_zero():
    """As ``bootstrap.py keys`` writes them (cluster/keys.py): rate 0, burst 0."""
    (key,) = parse_keys(keys_text(entry("admin", "s", "admin", rate=0.0, burst=0)))
    assert (key.rate, key.burst) == (0.0, 0)


def test_the_offered_secret_finds_its_key_and_nothing_else_does(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(keys_text(entry("ci", "ci-secret", "write"), entry("bi", "bi-secret")))
    ring = KeyRing(str(path))
    assert ring.authenticate("ci-secret").name == "ci"
    assert ring.authenticate("bi-secret").scope == "read"
    for offered in ("", None, "ci-secre", "ci-secret ", hash_secret("ci-secret")):
        with pytest.raises(ApiError) as error:
            ring.authenticate(offered)
        assert error.value.status == 401
        assert error.value.headers == {"WWW-Authenticate": "X-API-Key"}


def test_every_hash_is_compared_whichever_matches(tmp_path, monkeypatch):
    """No early exit: the first key and the last cost the same number of comparisons."""
    import services.gatekeeper.keys as module

    path = tmp_path / "keys.json"
    path.write_text(keys_text(*(entry(f"k{i}", f"secret-{i}") for i in range(5))))
    ring = KeyRing(str(path))
    calls = []
    real = module.hmac.compare_digest
    monkeypatch.setattr(module.hmac, "compare_digest",
                        lambda a, b: calls.append(1) or real(a, b))
    for offered in ("secret-0", "secret-4", "wrong"):
        calls.clear()
        with pytest.raises(ApiError) if offered == "wrong" else contextlib.nullcontext():
            ring.authenticate(offered)
        assert len(calls) == 5


def test_the_inline_key_is_an_unlimited_admin_named_default():
    ring = KeyRing("", "a-development-key-0123")
    key = ring.authenticate("a-development-key-0123")
    assert (key.name, key.scope, key.rate) == ("default", "admin", 0.0)
    for _ in range(1000):
        asyncio.run(ring.admit(key))


def test_a_bucket_allows_its_burst_then_refills_at_its_rate():
    bucket = TokenBucket(rate=10, burst=10, now=0.0)
    assert [bucket.take(0.0) for _ in range(10)] == [0.0] * 10
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert bucket.take(0.1) == 0.0  # one token back after 1/rate seconds
    assert bucket.take(0.1) > 0


def test_the_eleventh_request_in_a_second_is_429_with_retry_after(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(keys_text(entry("limited", "s", rate=10, burst=10)))
    clock = Clock()
    ring = KeyRing(str(path), clock=clock)
    key = ring.authenticate("s")
    for _ in range(10):
        asyncio.run(ring.admit(key))
    with pytest.raises(ApiError) as error:
        asyncio.run(ring.admit(key))
    assert error.value.status == 429
    assert error.value.headers == {"Retry-After": "1"}  # whole seconds, at least 1
    assert error.value.details == {"retry_after": 1}
    assert "'limited'" in error.value.message and "10 requests per second" in error.value.message
    clock.now += 1.0
    for _ in range(10):
        asyncio.run(ring.admit(key))


def test_a_slow_rate_says_how_long_to_wait(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(keys_text(entry("slow", "s", rate=0.25, burst=1)))
    ring = KeyRing(str(path), clock=Clock())
    key = ring.authenticate("s")
    asyncio.run(ring.admit(key))
    with pytest.raises(ApiError) as error:
        asyncio.run(ring.admit(key))
    assert error.value.headers["Retry-After"] == "4"


def test_a_changed_file_replaces_the_set_and_buckets_survive(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(keys_text(entry("a", "a-secret", rate=1, burst=1), entry("b", "b-secret")))
    ring = KeyRing(str(path), clock=Clock())
    asyncio.run(ring.admit(ring.authenticate("a-secret")))
    assert not ring.reload_if_changed()
    path.write_text(keys_text(entry("a", "a-secret", rate=1, burst=1),
                              entry("c", "c-secret", "admin")))
    assert ring.reload_if_changed()
    assert ring.authenticate("c-secret").scope == "admin"
    with pytest.raises(ApiError):
        ring.authenticate("b-secret")  # revoked
    with pytest.raises(ApiError) as error:
        asyncio.run(ring.admit(ring.authenticate("a-secret")))  # its bucket is still empty
    assert error.value.status == 429


def test_a_broken_or_missing_file_keeps_the_old_set_and_says_why(tmp_path, caplog):
    path = tmp_path / "keys.json"
    path.write_text(keys_text(entry("a", "a-secret")))
    ring = KeyRing(str(path))
    with caplog.at_level(logging.ERROR):
        path.write_text('{"keys": [')
        assert not ring.reload_if_changed()
        assert "not usable" in caplog.text and "not JSON" in caplog.text
        path.unlink()
        assert not ring.reload_if_changed()
        assert "unreadable" in caplog.text
    assert ring.authenticate("a-secret").name == "a"
    assert "a-secret" not in caplog.text


def test_an_empty_key_set_is_refused(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(keys_text())
    with pytest.raises(ValueError, match="no keys"):
        KeyRing(str(path))


def test_a_changed_file_that_cannot_be_read_yet_is_read_once_it_can(tmp_path, monkeypatch):
    """A new file whose read fails (Salt still placing it, a permission not set yet) is tried
    again on the next check, not taken as seen."""
    path = tmp_path / "keys.json"
    path.write_text(keys_text(entry("a", "a-secret")))
    ring = KeyRing(str(path))
    path.write_text(keys_text(entry("a", "a-secret"), entry("b", "b-secret")))
    real_read = Path.read_text

    def not_yet(self: Path, *args: object, **kwargs: object) -> str:
        if self == path:
            raise PermissionError("not yet")
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", not_yet)
    assert not ring.reload_if_changed()
    monkeypatch.setattr(Path, "read_text", real_read)
    assert ring.reload_if_changed()
    assert ring.authenticate("b-secret").name == "b"
