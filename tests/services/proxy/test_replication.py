"""Replication positions, waits and tokens for both flavours.

No MySQL server runs here, so MySQL's side is checked through the SQL it produces and the
positions it parses; MariaDB's SQL also runs for real in
tests/services/proxy/test_replication_faults.py.
"""

import pytest

from services.errors import ApiError
from services.proxy.replication import FLAVOURS, PositionError, flavour_of
from services.proxy.tokens import TokenCodec, derive_secret

MARIADB, MYSQL = FLAVOURS["mariadb"], FLAVOURS["mysql"]
UUID_A = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
UUID_B = "4a5b6c7d-0000-11e1-9e33-c80aa9429562"


def test_flavour_from_the_server_greeting():
    assert flavour_of("10.11.6-MariaDB-0+deb12u1-log") is MARIADB
    assert flavour_of("5.5.5-10.11.6-MariaDB") is MARIADB
    assert flavour_of("8.0.39-0ubuntu0.22.04.1") is MYSQL


def test_the_sql_each_flavour_emits():
    # After a write: the position, and whether semi-sync was still on (fail closed).
    assert MARIADB.position_statement().text == (
        "SELECT @@GLOBAL.gtid_binlog_pos, (SELECT VARIABLE_VALUE FROM "
        "information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_STATUS')")
    assert MYSQL.position_statement().text == (
        "SELECT @@GLOBAL.gtid_executed, (SELECT VARIABLE_VALUE FROM "
        "performance_schema.global_status WHERE VARIABLE_NAME = 'Rpl_semi_sync_source_status')")
    # Every check, on every node: writable, the epoch row, the primary side of semi-sync.
    assert MYSQL.role_sql("sqlgate.epoch") == (
        "SELECT @@GLOBAL.read_only AS read_only, (SELECT epoch FROM sqlgate.epoch WHERE id = 1) "
        "AS epoch, (SELECT VARIABLE_VALUE FROM performance_schema.global_status WHERE "
        "VARIABLE_NAME = 'Rpl_semi_sync_source_status') AS semi_sync, (SELECT VARIABLE_VALUE "
        "FROM performance_schema.global_status WHERE VARIABLE_NAME = "
        "'Rpl_semi_sync_source_clients') AS semi_sync_clients")
    assert "NULL AS epoch" in MARIADB.role_sql(None)
    assert (MARIADB.on("ON"), MYSQL.on("OFF"), MARIADB.on(None)) == (True, False, None)
    wait = MARIADB.wait_statement("0-1-42", 0.5)
    assert (wait.text, wait.args) == ("SELECT MASTER_GTID_WAIT(%s, %s)", ("0-1-42", 0.5))
    wait = MYSQL.wait_statement(f"{UUID_A}:1-42", 0.25)
    assert (wait.text, wait.args) == ("SELECT WAIT_FOR_EXECUTED_GTID_SET(%s, %s)",
                                      (f"{UUID_A}:1-42", 0.25))
    assert MARIADB.status_sql == MYSQL.status_sql == "SHOW REPLICA STATUS"
    # Both functions answer 0 once the position is applied; -1 (MariaDB) or 1 (MySQL) on a
    # timeout, NULL on bad arguments.
    assert MARIADB.wait_succeeded(0) and MYSQL.wait_succeeded(0)
    assert not any(flavour.wait_succeeded(value) for flavour in (MARIADB, MYSQL)
                   for value in (-1, 1, None))


def test_mariadb_positions_merge_to_the_newest_seqno_per_domain():
    assert MARIADB.merge(["0-1-10", "0-1-12,1-2-3", "1-2-2"]) == "0-1-12,1-2-3"
    assert MARIADB.merge(["0-1-10"]) == "0-1-10"
    assert MARIADB.merge(["0-2-9", "0-1-10"]) == "0-1-10"  # a new primary's server id


def test_mysql_gtid_sets_merge_to_their_union():
    merged = MYSQL.merge([f"{UUID_A}:1-5", f"{UUID_A}:6-9:12,\n{UUID_B}:3", f"{UUID_A}:11"])
    assert merged == f"{UUID_A}:1-9:11-12,{UUID_B}:3"
    assert MYSQL.merge([f"{UUID_A.upper()}:7"]) == f"{UUID_A}:7"


@pytest.mark.parametrize(("flavour", "position"), [
    (MARIADB, ""), (MARIADB, "0-1"), (MARIADB, "0-1-x"), (MARIADB, "0-1-1'); DROP TABLE t; --"),
    (MYSQL, ""), (MYSQL, "not-a-uuid:1-5"), (MYSQL, f"{UUID_A}"), (MYSQL, f"{UUID_A}:5-3"),
    (MYSQL, f"{UUID_A}:0"), (MYSQL, f"{UUID_A}:1-5'"),
])
def test_malformed_positions_are_refused_before_any_sql(flavour, position):
    with pytest.raises(PositionError):
        flavour.wait_statement(position, 0.5)


CODEC = TokenCodec(derive_secret("the-cluster-password"))


def test_a_token_carries_its_position_and_merges_with_others():
    first, second = CODEC.issue(MARIADB, "0-1-10"), CODEC.issue(MARIADB, "0-1-15")
    assert CODEC.position([first], MARIADB) == "0-1-10"
    assert CODEC.position([second, first], MARIADB) == "0-1-15"
    mysql = CODEC.issue(MYSQL, f"{UUID_A}:1-10")
    assert CODEC.position([mysql, CODEC.issue(MYSQL, f"{UUID_B}:1-2")], MYSQL) == \
        f"{UUID_A}:1-10,{UUID_B}:1-2"


def refused(tokens: list[str], flavour=MARIADB) -> str:
    with pytest.raises(ApiError) as error:
        CODEC.position(tokens, flavour)
    assert error.value.status == 400
    return error.value.message


def test_foreign_edited_and_malformed_tokens_are_400():
    token = CODEC.issue(MARIADB, "0-1-10")
    other_cluster = TokenCodec(derive_secret("another-password")).issue(MARIADB, "0-1-10")
    assert "not a token issued by this cluster" in refused([other_cluster])
    version, payload, mac = token.split(".")  # the payload is signed: any edit shows
    assert "not a token issued by this cluster" in refused([f"{version}.{payload}x.{mac}"])
    assert "not a token issued by this cluster" in refused(["v2." + token[3:]])
    assert "not a token issued by this cluster" in refused(["garbage"])
    assert "'after'[1]" in refused([token, other_cluster])
    assert "issued for a mariadb cluster, this one runs mysql" in refused([token], MYSQL)
