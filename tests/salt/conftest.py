"""Fixtures of the Salt tests: a masterless minion with the formula's custom modules synced."""

from __future__ import annotations

import pytest

from tests.salt.saltcall import FLAVOURS, MINION, SaltCall, write_pillar


@pytest.fixture(scope="session")
def salt_call(tmp_path_factory) -> SaltCall:
    """``salt-call --local`` with salt/_modules and salt/_states synced, as ``MINION``."""
    call = SaltCall(tmp_path_factory.mktemp("salt-call"), FLAVOURS["mariadb"])
    write_pillar(call.pillar_dir, {})
    synced = call.run(MINION, "saltutil.sync_all", "saltenv=base")
    assert "modules.sqlgate_db" in synced["modules"], synced
    for state in ("sqlgate_replication", "sqlgate_users", "sqlgate_schema"):
        assert f"states.{state}" in synced["states"], synced
    return call
