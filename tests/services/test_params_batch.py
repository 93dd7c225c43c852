"""Parameters and batches, end to end: client -> Gatekeeper -> Proxy -> replicated MariaDB.

Values are bound by the driver's escaping at the placeholders the Proxy finds, so what a test
sends must arrive in the table byte for byte, whatever quotes, comments or backslashes it
holds. Everything goes through the Gatekeeper, which must refuse bad parameters itself.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest

from tests.conftest import Answer, http, scratch_tables

REPLICAS = {"replica1", "replica2"}


@pytest.fixture
def post(gatekeeper, api_key) -> Callable[[str, dict | bytes], Answer]:
    """POST any endpoint through the Gatekeeper with the right key."""
    def send(path: str, body: dict | bytes) -> Answer:
        return http(gatekeeper.url + path, body, {"X-API-Key": api_key})
    return send


@pytest.fixture(scope="module")
def scratch(db_cluster) -> Iterator[Callable[..., str]]:
    with scratch_tables(db_cluster, "pb") as make:
        yield make


def b64(data: bytes) -> dict:
    return {"type": "binary", "base64": base64.b64encode(data).decode()}


def dec(text: str) -> dict:
    return {"type": "decimal", "value": text}


def table_exists(db_cluster, table: str, node=None) -> bool:
    schema, name = table.split(".")
    rows = (node or db_cluster.primary).sql(
        f"SELECT COUNT(*) AS n FROM information_schema.TABLES "
        f"WHERE TABLE_SCHEMA = '{schema}' AND TABLE_NAME = '{name}'")
    return rows[0]["n"] == 1


# --- parameters: values arrive literally ---------------------------------------------------

INJECTIONS = [
    "'; DROP TABLE {table}; --",
    "'); DROP TABLE {table}; -- ",
    "\\'",
    "\\'; DROP TABLE {table}; #",
    "\\",
    "ends with a backslash\\",
    '" OR 1=1 --',
    "' OR '1'='1",
    "*/ SELECT 1 /*",
    "/*! DROP TABLE {table} */",
    "-- \n DROP TABLE {table}",
    "''''",
    "\\\\\\'\\\"",
    "%s %d %(name)s %%",
    "? ?? :x :name",
    "a\x00b\x00",
    "\x1a\r\n\t\b",
    "`{table}`",
]


def test_injection_strings_are_stored_literally(post, db_cluster, scratch):
    table = scratch("id INT AUTO_INCREMENT PRIMARY KEY, "
                    "s VARCHAR(255) CHARACTER SET utf8mb4 NOT NULL")
    values = [template.replace("{table}", table) for template in INJECTIONS]
    for value in values:
        for sql, params in ((f"INSERT INTO {table} (s) VALUES (?)", [value]),
                            (f"INSERT INTO {table} (s) VALUES (:v)", {"v": value})):
            answer = post("/query", {"sql": sql, "params": params})
            assert answer.status == 200, (value, answer.json)
            assert answer.json["rowcount"] == 1
            inserted = answer.json["last_insert_id"]
            assert db_cluster.primary.sql(f"SELECT s FROM {table} WHERE id = {inserted}") == \
                [{"s": value}], value
    assert table_exists(db_cluster, table)
    assert db_cluster.primary.sql(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"] == 2 * len(values)
    # In a WHERE clause a would-be tautology matches only the rows holding it literally.
    tautology = post("/query", {"sql": f"SELECT COUNT(*) FROM {table} WHERE s = ?",
                                "params": ["' OR '1'='1"]})
    assert tautology.status == 200, tautology.json
    assert tautology.json["rows"] == [[2]]
    # Read back through the API too: the same strings, in insertion order.
    read = post("/query", {"sql": f"SELECT s FROM {table} ORDER BY id"})
    assert [row[0] for row in read.json["rows"]] == [v for v in values for _ in range(2)]


BINARY = bytes(range(256))  # every byte value; 0x80-0xff are not UTF-8, so it comes back hex
QUOTES_BINARY = b"\xff\x00'\\\"\xc0'\xe0\\'\xbf\\\x27"  # quotes after would-be lead bytes

ROWS = [
    # id, BIGINT, DOUBLE, DECIMAL(40,10), VARCHAR utf8mb4, VARBINARY
    (1, 1, -1.5, "-0.5", "", b"\xff"),
    (2, -1, 0.1, "12345678901234567890.123456789", "h\u00e9llo w\u00f6rld \U0001F42C \u4e16\u754c",
     BINARY),
    (3, 2**63 - 1, 1.7976931348623157e308, "99999999999999999999999999999.9999999999",
     "it's \"quoted\" \\back\\slash\\", QUOTES_BINARY),
    (4, -2**63, -2.2250738585072014e-308, "-99999999999999999999999999999.9999999999",
     "a\x00b %s */ ? :x -- # /*", b"\x80"),
    (5, 0, 3.141592653589793, "42", "\U0001F600\U0001F680 emoji only", b"\xfe\xff"),
    (6, None, None, None, None, None),
]


def test_every_type_round_trips(post, db_cluster, scratch):
    table = scratch("id INT PRIMARY KEY, i BIGINT NULL, d DOUBLE NULL, dc DECIMAL(40,10) NULL, "
                    "s VARCHAR(255) CHARACTER SET utf8mb4 NULL, b VARBINARY(300) NULL")
    for number, (row_id, i, d, dc, s, b) in enumerate(ROWS):
        typed = [row_id, i, d, None if dc is None else dec(dc), s, None if b is None else b64(b)]
        if number % 2:  # half positional, half named
            params: list | dict = typed
            sql = f"INSERT INTO {table} (id, i, d, dc, s, b) VALUES (?, ?, ?, ?, ?, ?)"
        else:
            params = dict(zip(("id", "i", "d", "dc", "s", "b"), typed, strict=True))
            sql = f"INSERT INTO {table} (id, i, d, dc, s, b) VALUES (:id, :i, :d, :dc, :s, :b)"
        answer = post("/query", {"sql": sql, "params": params})
        assert answer.status == 200, (row_id, answer.json)

    through_api = post("/query", {"sql": f"SELECT id, i, d, dc, s, b FROM {table} ORDER BY id"})
    assert through_api.status == 200, through_api.json
    assert through_api.json["columns"] == ["id", "i", "d", "dc", "s", "b"]
    by_root = db_cluster.primary.sql(f"SELECT id, i, d, dc, CAST(dc AS CHAR) AS dc_text, s, "
                                     f"HEX(b) AS hex FROM {table} ORDER BY id")
    assert len(through_api.json["rows"]) == len(by_root) == len(ROWS)
    for expected, api_row, root in zip(ROWS, through_api.json["rows"], by_root, strict=True):
        row_id, i, d, dc, s, b = expected
        assert api_row[:3] == [row_id, i, d]
        assert (root["id"], root["i"], root["d"]) == (row_id, i, d)
        assert api_row[4] == root["s"] == s
        if dc is None:
            assert api_row[3] is None and root["dc"] is None
        else:
            assert isinstance(api_row[3], str), api_row  # exact digits, never a float
            assert Decimal(api_row[3]) == root["dc"] == Decimal(dc)
            assert api_row[3] == root["dc_text"]  # MySQL's own notation, all 10 decimals
        if b is None:
            assert api_row[5] is None and root["hex"] is None
        else:
            assert api_row[5] == "0x" + b.hex()
            assert root["hex"] == b.hex().upper()


def test_booleans_bind_as_1_and_0_and_null_as_null(post, db_cluster, scratch):
    answer = post("/query", {"sql": "SELECT ?, ?, ?, ? IS NULL",
                             "params": [True, False, None, None]})
    assert answer.status == 200, answer.json
    assert answer.json["rows"] == [[1, 0, None, 1]]
    table = scratch("id INT PRIMARY KEY, flag TINYINT(1) NULL")
    inserted = post("/query", {"sql": f"INSERT INTO {table} VALUES (1, :t), (2, :f), (3, :n)",
                               "params": {"t": True, "f": False, "n": None}})
    assert inserted.status == 200, inserted.json
    assert db_cluster.primary.sql(f"SELECT id, flag FROM {table} ORDER BY id") == [
        {"id": 1, "flag": 1}, {"id": 2, "flag": 0}, {"id": 3, "flag": None}]


def test_small_and_zero_decimals_come_back_in_mysql_notation(post, db_cluster, scratch):
    table = scratch("id INT PRIMARY KEY, dc DECIMAL(40,10) NOT NULL")
    inserted = post("/query", {"sql": f"INSERT INTO {table} VALUES (1, ?), (2, ?), (3, ?)",
                               "params": [dec("0"), dec("0.0000001"), dec("-0.0000000001")]})
    assert inserted.status == 200, inserted.json
    answer = post("/query", {"sql": f"SELECT dc FROM {table} ORDER BY id"})
    texts = db_cluster.primary.sql(f"SELECT CAST(dc AS CHAR) AS t FROM {table} ORDER BY id")
    assert [t["t"] for t in texts] == ["0.0000000000", "0.0000001000", "-0.0000000001"]
    assert [row[0] for row in answer.json["rows"]] == [t["t"] for t in texts]


@pytest.mark.parametrize("body", [
    {"sql": "SELECT ?", "params": ["x\ud800y"]},
    {"sql": "SELECT 'x\udfff'"},
])
def test_a_lone_surrogate_is_a_400_not_a_500(post, body):
    answer = post("/query", body)
    assert answer.status == 400, answer.json


def test_binary_that_looks_like_text_still_comes_back_hex(post, db_cluster, scratch):
    table = scratch("id INT PRIMARY KEY, b VARBINARY(16) NOT NULL")
    inserted = post("/query", {"sql": f"INSERT INTO {table} VALUES (1, ?)",
                               "params": [b64(b"abc\x00")]})
    assert inserted.status == 200, inserted.json
    assert db_cluster.primary.sql(f"SELECT HEX(b) AS h FROM {table}") == [{"h": "61626300"}]
    answer = post("/query", {"sql": f"SELECT b FROM {table}"})
    assert answer.json["rows"] == [["0x61626300"]]


# --- parameters: where placeholders are ----------------------------------------------------

@pytest.mark.parametrize(("sql", "params", "row"), [
    ("SELECT '?', ? -- ?", [7], ["?", 7]),
    ('SELECT "?", ? # ?', [7], ["?", 7]),
    ("SELECT '?' AS `?`, ? /* ? :x */", [7], ["?", 7]),
    ("SELECT 'it''s ?', ?", ["v"], ["it's ?", "v"]),
    ("SELECT 'a\\' ?', ?", ["v"], ["a' ?", "v"]),
    ("SELECT ':x', :x /* :y */", {"x": 3}, [":x", 3]),
    ("SELECT '10:30', :t -- :u", {"t": "ten"}, ["10:30", "ten"]),
    ("SELECT '100%', '%s', ?", ["%s"], ["100%", "%s", "%s"]),
    ("SELECT :a + :a", {"a": 20}, [40]),
    ("SELECT :a, :b, :a", {"a": 1, "b": "x"}, [1, "x", 1]),
    ("SELECT @sqlgate_unset_var, :x, `:y`.`?` FROM (SELECT 2 AS `?`) AS `:y`", {"x": 1},
     [None, 1, 2]),
])
def test_placeholders_only_in_code(post, sql, params, row):
    answer = post("/query", {"sql": sql, "params": params})
    assert answer.status == 200, answer.json
    assert answer.json["rows"] == [row]


# --- parameters: bad ones are refused at the edge ------------------------------------------

@pytest.mark.parametrize(("sql", "params", "words"), [
    ("SELECT ?, ?", [1], ["2 '?' placeholder", "1 value"]),
    ("SELECT ?", [1, 2, 3], ["1 '?' placeholder", "3 value"]),
    ("SELECT 1", [1], ["0 '?' placeholder", "1 value"]),
    ("SELECT :a, :b", {"a": 1}, [":b"]),
    ("SELECT :a", {"a": 1, "unused": 2}, ["unused"]),
    ("SELECT ?", {"a": 1}, ["'?'", "array"]),
    ("SELECT :a", [1], [":a", "object"]),
    ("SELECT ?", [{"type": "money", "value": "1"}], ["unknown typed value", "money"]),
    ("SELECT ?", [{"type": "binary", "base64": "not base64!"}], ["base64"]),
    ("SELECT ?", [{"type": "binary", "base64": "YWJ"}], ["base64"]),
    ("SELECT ?", [{"type": "binary", "base64": 12}], ["base64"]),
    ("SELECT ?", [{"type": "decimal", "value": "12a"}], ["not a decimal"]),
    ("SELECT ?", [{"type": "decimal", "value": "NaN"}], ["not a decimal"]),
    ("SELECT ?", [{"type": "decimal", "value": "Infinity"}], ["not a decimal"]),
    # written out in full by the driver, this would be a 100 MB literal from a tiny request
    ("SELECT ?", [{"type": "decimal", "value": "1E+100000000"}], ["65 digits"]),
    ("SELECT ?", [{"type": "decimal", "value": "1E-100000000"}], ["65 digits"]),
    ("SELECT ?", [{"type": "decimal", "value": "1" * 66}], ["65 digits"]),
    ("SELECT ?", [{"type": "decimal", "value": 1.5}], ["decimal"]),
    ("SELECT ?", [{"type": "decimal", "value": "1", "scale": 2}], ["scale"]),
    ("SELECT ?", [{"value": "1"}], ["typed value"]),
    ("SELECT ?", "abc", ["'params' must be an array"]),
    ("SELECT ?", 5, ["'params' must be an array"]),
    ("SELECT ?", [[1]], ["params[0]", "list"]),
    ("SELECT :1a", {"1a": 1}, ["bad parameter name"]),
])
def test_bad_params_are_400_at_the_gatekeeper(post, sql, params, words):
    answer = post("/query", {"sql": sql, "params": params})
    assert answer.status == 400, answer.json
    for word in words:
        assert word in answer.json["error"]


def test_non_finite_json_numbers_are_400(post):
    answer = post("/query", b'{"sql": "SELECT ?", "params": [NaN]}')
    assert answer.status == 400, answer.json
    assert "not a number SQL can store" in answer.json["error"]


def test_the_proxy_refuses_bad_params_the_same_way(post, proxy):
    body = {"sql": "SELECT ?, ?", "params": [1]}
    at_edge, inside = post("/query", body), http(proxy.url + "/query", body)
    assert at_edge.status == inside.status == 400
    assert at_edge.json["error"] == inside.json["error"]
    assert "has 2 '?' placeholder(s) but 'params' has 1 value(s)" in inside.json["error"]


def test_a_refused_parameter_runs_nothing(post, db_cluster, scratch):
    table = scratch("id INT PRIMARY KEY, s VARCHAR(20)")
    answer = post("/query", {"sql": f"INSERT INTO {table} VALUES (1, ?), (2, ?)",
                             "params": ["one"]})
    assert answer.status == 400
    assert db_cluster.primary.sql(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"] == 0


# --- batches ---------------------------------------------------------------------------------

@pytest.fixture
def keyed(scratch, db_cluster) -> str:
    """A table with a unique key, known to the replicas."""
    table = scratch("id INT PRIMARY KEY, v VARCHAR(64) CHARACTER SET utf8mb4")
    db_cluster.wait_for_replicas()
    return table


def ids_on(node, table: str) -> list[int]:
    return [row["id"] for row in node.sql(f"SELECT id FROM {table} ORDER BY id")]


def test_a_failing_transactional_batch_leaves_no_trace(post, db_cluster, keyed):
    db_cluster.primary.sql(f"INSERT INTO {keyed} VALUES (100, 'already there')")
    insert = f"INSERT INTO {keyed} VALUES (?, ?)"
    answer = post("/batch", {"statements": [
        {"sql": insert, "params": [1, "one"]},
        {"sql": f"UPDATE {keyed} SET v = :v WHERE id = :id", "params": {"v": "changed", "id": 100}},
        {"sql": insert, "params": [100, "duplicate"]},
        {"sql": insert, "params": [4, "four"]},
        {"sql": insert, "params": [5, "five"]},
    ]})
    assert answer.status == 409, answer.json
    assert answer.json["failed_statement"] == 2
    assert answer.json["rolled_back"] is True
    assert answer.json["mysql_errno"] == 1062
    assert "statements" not in answer.json and "results" not in answer.json
    db_cluster.wait_for_replicas()
    for node in db_cluster.nodes:
        assert node.sql(f"SELECT id, v FROM {keyed}") == [{"id": 100, "v": "already there"}], \
            node.name


def test_a_transactional_batch_applies_everywhere(post, db_cluster, scratch):
    table = scratch("id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(64) CHARACTER SET utf8mb4")
    answer = post("/batch", {"statements": [
        {"sql": f"INSERT INTO {table} (v) VALUES (?)", "params": ["first"]},
        {"sql": f"INSERT INTO {table} (v) VALUES (:v), (:w)", "params": {"v": "2nd", "w": "3rd"}},
        {"sql": f"UPDATE {table} SET v = CONCAT(v, '!') WHERE v = ?", "params": ["first"]},
        {"sql": f"SELECT id, v FROM {table} ORDER BY id"},
    ], "mode": "random"})
    assert answer.status == 200, answer.json
    assert answer.json["transaction"] is True
    assert answer.json["node"] == "primary"  # a transaction runs on the primary, reads included
    results = answer.json["results"]
    assert len(results) == 4
    for result in results:
        assert {"columns", "rows", "rowcount", "last_insert_id"} <= set(result)
    first_id = results[0]["last_insert_id"]
    assert first_id is not None and results[0]["rowcount"] == 1
    assert results[1]["rowcount"] == 2
    assert results[1]["last_insert_id"] == first_id + 1  # the first row of a multi-row insert
    assert results[2]["rowcount"] == 1
    # The read inside the batch sees the batch's own, not yet committed, writes.
    assert results[3]["columns"] == ["id", "v"]
    assert results[3]["rows"] == [[first_id, "first!"], [first_id + 1, "2nd"],
                                  [first_id + 2, "3rd"]]
    db_cluster.wait_for_replicas()
    for node in db_cluster.nodes:
        assert [row["v"] for row in node.sql(f"SELECT v FROM {table} ORDER BY id")] == \
            ["first!", "2nd", "3rd"], node.name


def test_session_statements_work_inside_a_transactional_batch(post):
    answer = post("/batch", {"statements": [{"sql": "SET @sqlgate_batch_var = ?", "params": [41]},
                                            {"sql": "SELECT @sqlgate_batch_var + 1"}]})
    assert answer.status == 200, answer.json
    assert answer.json["results"][1]["rows"] == [[42]]


def test_a_non_transactional_batch_runs_each_statement_on_its_own(post, db_cluster, keyed):
    db_cluster.primary.sql(f"INSERT INTO {keyed} VALUES (7, 'taken')")
    db_cluster.wait_for_replicas()
    insert = f"INSERT INTO {keyed} VALUES (?, ?)"
    answer = post("/batch", {"transaction": False, "mode": "random", "statements": [
        {"sql": insert, "params": [1, "one"]},
        {"sql": insert, "params": [7, "duplicate"]},
        {"sql": "SET @x = 1"},
        {"sql": f"SELECT COUNT(*) FROM {keyed} WHERE id = ?", "params": [7]},
        {"sql": insert, "params": [2, "two"]},
        {"sql": "SELECT COUNT(*) FROM sakila.actor"},
    ]})
    assert answer.status == 200, answer.json
    assert answer.json["transaction"] is False
    results = answer.json["results"]
    assert [result["status"] for result in results] == [200, 409, 400, 200, 200, 200]
    assert results[0]["rowcount"] == 1 and results[0]["node"] == "primary"
    assert results[1]["mysql_errno"] == 1062 and results[1]["error"]
    assert "SET" in results[2]["error"] and "mysql_errno" not in results[2]
    assert results[3]["node"] in REPLICAS and results[3]["rows"] == [[1]]
    assert results[4]["node"] == "primary"
    assert results[5]["node"] in REPLICAS and results[5]["rows"][0][0] > 0
    assert ids_on(db_cluster.primary, keyed) == [1, 2, 7]
    assert db_cluster.primary.sql(f"SELECT v FROM {keyed} WHERE id = 7") == [{"v": "taken"}]
    db_cluster.wait_for_replicas()
    for replica in db_cluster.replicas:
        assert ids_on(replica, keyed) == [1, 2, 7], replica.name


def test_ddl_in_a_transactional_batch_is_refused_before_anything_runs(post, db_cluster, keyed):
    created = f"sqlgate_test.pb_never_{uuid.uuid4().hex[:12]}"
    answer = post("/batch", {"statements": [
        {"sql": f"INSERT INTO {keyed} VALUES (?, ?)", "params": [1, "one"]},
        {"sql": f"CREATE TABLE {created} (id INT)"},
        {"sql": f"INSERT INTO {keyed} VALUES (?, ?)", "params": [2, "two"]},
    ]})
    assert answer.status == 400, answer.json
    assert answer.json["failed_statement"] == 1
    assert "nothing was run" in answer.json["error"]
    assert ids_on(db_cluster.primary, keyed) == []
    assert not table_exists(db_cluster, created)


def test_a_hundred_statements_is_the_limit(post):
    hundred = [{"sql": "SELECT ?", "params": [n]} for n in range(100)]
    answer = post("/batch", {"statements": hundred})
    assert answer.status == 200, answer.json
    assert [result["rows"] for result in answer.json["results"]] == [[[n]] for n in range(100)]
    too_many = post("/batch", {"statements": [*hundred, {"sql": "SELECT 100"}]})
    assert too_many.status == 400
    assert "at most 100" in too_many.json["error"] and "101" in too_many.json["error"]


@pytest.mark.parametrize(("body", "words", "failed"), [
    ({"statements": []}, ["non-empty array"], None),
    ({"statements": "SELECT 1"}, ["non-empty array"], None),
    ({}, ["non-empty array"], None),
    ({"statements": [{"sql": "SELECT 1"}, {"sql": "SELECT 2", "parms": [1]}]},
     ["statements[1]", "unknown field", "parms"], 1),
    ({"statements": [{"sql": "SELECT 1"}, "SELECT 2"]}, ["statements[1]"], 1),
    ({"statements": [{"sql": "SELECT 1"}, {"sql": "SELECT 1"}, {"sql": "SELECT ?",
                                                                  "params": [1, 2]}]},
     ["statements[2]", "1 '?' placeholder", "2 value"], 2),
    ({"statements": [{"params": [1]}]}, ["statements[0]", "missing field 'sql'"], 0),
    ({"statements": [{"sql": "SELECT 1"}], "transaction": "yes"},
     ["'transaction' must be true or false"], None),
    ({"statements": [{"sql": "SELECT 1"}], "transaction": 1},
     ["'transaction' must be true or false"], None),
    ({"statements": [{"sql": "SELECT 1"}], "atomic": True}, ["unknown field", "atomic"], None),
])
def test_bad_batches_are_400(post, body, words, failed):
    answer = post("/batch", body)
    assert answer.status == 400, answer.json
    for word in words:
        assert word in answer.json["error"]
    assert answer.json.get("failed_statement") == failed


def test_the_proxy_refuses_bad_batches_the_same_way(post, proxy):
    body = {"statements": [{"sql": "SELECT 1"}, {"sql": "SELECT 2", "parms": [1]}]}
    at_edge, inside = post("/batch", body), http(proxy.url + "/batch", body)
    assert at_edge.status == inside.status == 400
    assert at_edge.json["error"] == inside.json["error"]
    assert at_edge.json["failed_statement"] == inside.json["failed_statement"] == 1
