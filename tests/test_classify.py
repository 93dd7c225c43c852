"""Read/write classification: only a plain single read may leave the primary."""

import pytest

from services.classify import StatementError, classify

READS = [
    "SELECT 1",
    "select * from sakila.actor where actor_id = 3",
    "/* leading comment */ SELECT * FROM t",
    "-- a line comment\nSELECT 1",
    "(SELECT 1)",
    "SELECT 1 UNION SELECT 2",
    "SELECT a FROM t UNION ALL (SELECT b FROM u)",
    "WITH a AS (SELECT 1 AS x) SELECT * FROM a",
    "SELECT * FROM t1 JOIN t2 USING (id) WHERE id > 3 ORDER BY 1 LIMIT 5",
    "SELECT COUNT(*), NOW(), UPPER(name) FROM t GROUP BY name",
    "SHOW TABLES",
    "SHOW DATABASES",
    "DESCRIBE sakila.actor",
    "DESC sakila.actor",
    "EXPLAIN SELECT * FROM sakila.actor",
    "SELECT 'a;b'",
    "SELECT 1;",
]

PRIMARY = [
    ("SELECT * FROM t FOR UPDATE", "locking read"),
    ("SELECT * FROM t FOR SHARE", "locking read"),
    ("SELECT * FROM t LOCK IN SHARE MODE", "locking read"),
    ("SELECT * FROM (SELECT * FROM t FOR UPDATE) AS x", "locking read"),
    ("SELECT GET_LOCK('job', 10)", "GET_LOCK"),
    ("SELECT RELEASE_LOCK('job')", "RELEASE_LOCK"),
    ("SELECT LAST_INSERT_ID()", "LAST_INSERT_ID"),
    ("SELECT a FROM t WHERE b IN (SELECT LAST_INSERT_ID())", "LAST_INSERT_ID"),
    ("SELECT NEXTVAL(seq)", "NEXTVAL"),
    ("SELECT 1 INTO @x", "INTO"),
    ("SELECT * FROM t INTO OUTFILE '/tmp/out'", "parser"),
    ("INSERT INTO t VALUES (1)", "INSERT"),
    ("REPLACE INTO t VALUES (1)", "REPLACE"),
    ("UPDATE t SET a = 1", "UPDATE"),
    ("DELETE FROM t", "DELETE"),
    ("WITH old AS (SELECT 1) DELETE FROM t", "DELETE"),
    ("CREATE TABLE t (a INT)", "CREATE"),
    ("DROP TABLE t", "DROP"),
    ("ALTER TABLE t ADD COLUMN b INT", "ALTER"),
    ("TRUNCATE TABLE t", "TRUNCATE"),
    ("CALL sakila.rewards_report(7, 20.00, @count)", "CALL"),
    ("SET @a = 1", "SET"),
    ("LOCK TABLES t READ", "LOCK"),
    ("EXPLAIN ANALYZE DELETE FROM t", "EXPLAIN"),
    ("SELEC 1", "parser"),
    ("DO SLEEP(1)", "parser"),
]


@pytest.mark.parametrize("sql", READS)
def test_plain_reads_may_go_to_a_replica(sql):
    assert classify(sql).query_type == "read"


@pytest.mark.parametrize(("sql", "reason"), PRIMARY)
def test_everything_else_stays_on_the_primary(sql, reason):
    result = classify(sql)
    assert result.query_type == "write"
    assert reason in result.reason


@pytest.mark.parametrize("sql", ["SELECT 1; SELECT 2", "INSERT INTO t VALUES (1); SELECT 1",
                                 "SELECT 1; DROP TABLE t"])
def test_more_than_one_statement_is_refused(sql):
    with pytest.raises(StatementError, match="one statement"):
        classify(sql)


@pytest.mark.parametrize("sql", ["", "   ", ";", "-- only a comment", "/* nothing */"])
def test_no_statement_is_refused(sql):
    with pytest.raises(StatementError, match="empty"):
        classify(sql)


def test_nesting_too_deep_for_the_parser_goes_to_the_primary():
    result = classify("SELECT " + "(" * 5000 + "1" + ")" * 5000)
    assert result.query_type == "write" and "parser" in result.reason
