"""Read/write classification: only a plain single read may leave the primary."""

import pytest

from services.proxy.classify import Kind, StatementError, classify

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

# (statement, kind, a word of the reason)
PRIMARY = [
    ("SELECT * FROM t FOR UPDATE", Kind.WRITE, "locking read"),
    ("SELECT * FROM t FOR SHARE", Kind.WRITE, "locking read"),
    ("SELECT * FROM t LOCK IN SHARE MODE", Kind.WRITE, "locking read"),
    ("SELECT * FROM (SELECT * FROM t FOR UPDATE) AS x", Kind.WRITE, "locking read"),
    ("SELECT LAST_INSERT_ID()", Kind.WRITE, "LAST_INSERT_ID"),
    ("SELECT a FROM t WHERE b IN (SELECT LAST_INSERT_ID())", Kind.WRITE, "LAST_INSERT_ID"),
    ("SELECT IS_FREE_LOCK('job')", Kind.WRITE, "IS_FREE_LOCK"),
    ("SELECT NEXTVAL(seq)", Kind.WRITE, "NEXTVAL"),
    ("SELECT * FROM t INTO OUTFILE '/tmp/out'", Kind.OTHER, "parser"),
    ("INSERT INTO t VALUES (1)", Kind.WRITE, "plain write"),
    ("INSERT INTO t VALUES (?, ?)", Kind.WRITE, "plain write"),
    ("REPLACE INTO t VALUES (1)", Kind.WRITE, "plain write"),
    ("UPDATE t SET a = 1", Kind.WRITE, "plain write"),
    ("DELETE FROM t", Kind.WRITE, "plain write"),
    ("WITH old AS (SELECT 1) DELETE FROM t", Kind.WRITE, "write"),
    ("CREATE TABLE t (a INT)", Kind.DDL, "CREATE"),
    ("DROP TABLE t", Kind.DDL, "DROP"),
    ("ALTER TABLE t ADD COLUMN b INT", Kind.DDL, "ALTER"),
    ("TRUNCATE TABLE t", Kind.DDL, "TRUNCATE"),
    ("RENAME TABLE a TO b", Kind.DDL, "RENAME"),
    ("CALL sakila.rewards_report(7, 20.00, @count)", Kind.OTHER, "CALL"),
    ("DO SLEEP(1)", Kind.OTHER, "DO"),
    ("DO GET_LOCK('job', 0)", Kind.OTHER, "DO"),  # not parsed: made harmless by the reset
    ("FLUSH TABLES", Kind.OTHER, "FLUSH"),
    ("SET STATEMENT max_statement_time=1 FOR SELECT 1", Kind.OTHER, "SET STATEMENT"),
    ("EXPLAIN ANALYZE DELETE FROM t", Kind.WRITE, "EXPLAIN"),
    ("SELEC 1", Kind.OTHER, "parser"),
]

# Statements whose only purpose is session state: refused outside a transaction.
SESSION = [
    ("SET @a = 1", "SET"),
    ("SET SESSION foreign_key_checks = 0", "SET"),
    ("SET sql_mode = ''", "SET"),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "SET TRANSACTION"),
    ("USE sakila", "USE"),
    ("/* why */ USE sakila", "USE"),
    ("LOCK TABLES t READ", "LOCK"),
    ("LOCK TABLE t WRITE", "LOCK"),
    ("UNLOCK TABLES", "UNLOCK"),
    ("SELECT GET_LOCK('job', 10)", "GET_LOCK"),
    ("SELECT RELEASE_LOCK('job')", "RELEASE_LOCK"),
    ("INSERT INTO t SELECT GET_LOCK('job', 0)", "GET_LOCK"),
    ("SELECT 1 INTO @x", "INTO @variable"),
    ("SELECT a INTO @x FROM t", "INTO @variable"),
    ("SELECT @x := 1", "user variable"),
    ("UPDATE t SET a = (@v := @v + 1)", "user variable"),
    ("HANDLER t OPEN", "HANDLER"),
    ("PREPARE s FROM 'SELECT 1'", "PREPARE"),
    ("EXECUTE s", "EXECUTE"),
    ("DEALLOCATE PREPARE s", "DEALLOCATE"),
    ("CREATE TEMPORARY TABLE t (a INT)", "TEMPORARY"),
    ("CREATE OR REPLACE TEMPORARY TABLE t (a INT)", "TEMPORARY"),
    ("DROP TEMPORARY TABLE t", "TEMPORARY"),
    ("SAVEPOINT a", "SAVEPOINT"),
    ("ROLLBACK TO SAVEPOINT a", "SAVEPOINT"),
    ("RELEASE SAVEPOINT a", "SAVEPOINT"),
]
TRANSACTION_CONTROL = ["SET autocommit = 0", "SET @@session.autocommit = 1", "BEGIN",
                       "BEGIN WORK", "START TRANSACTION", "START TRANSACTION READ ONLY", "COMMIT",
                       "COMMIT AND CHAIN", "ROLLBACK", "XA START 'x'", "XA COMMIT 'x'"]
ACCOUNT = ["SET PASSWORD = PASSWORD('x')", "ALTER USER CURRENT_USER() IDENTIFIED BY 'x'",
           "GRANT ALL ON *.* TO x", "REVOKE ALL ON *.* FROM x", "CREATE USER x", "DROP USER x",
           "SET ROLE admin"]
CONNECTION = ["SET NAMES latin1", "SET CHARACTER SET latin1", "SET character_set_client = latin1",
              "SET @@session.character_set_results = NULL", "SET sql_mode = 'ANSI_QUOTES'",
              "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'", "SET sql_mode = @saved",
              "SET @a = 1, NAMES latin1"]


@pytest.mark.parametrize("sql", READS)
def test_plain_reads_may_go_to_a_replica(sql):
    result = classify(sql)
    assert result.query_type == "read" and result.kind is Kind.READ
    assert not result.leaves_state


@pytest.mark.parametrize(("sql", "kind", "reason"), PRIMARY)
def test_everything_else_stays_on_the_primary(sql, kind, reason):
    result = classify(sql)
    assert result.query_type == "write"
    assert result.kind is kind
    assert reason in result.reason
    assert result.leaves_state == (kind is not Kind.WRITE)  # anything but DML is reset after


@pytest.mark.parametrize(("sql", "reason"), SESSION)
def test_session_statements_are_recognised(sql, reason):
    result = classify(sql)
    assert result.kind is Kind.SESSION, result
    assert reason in result.reason
    assert result.query_type == "write" and result.leaves_state


@pytest.mark.parametrize("sql", TRANSACTION_CONTROL)
def test_transaction_control_is_recognised(sql):
    assert classify(sql).kind is Kind.TRANSACTION


@pytest.mark.parametrize("sql", ACCOUNT)
def test_account_management_is_recognised(sql):
    assert classify(sql).kind is Kind.ACCOUNT


@pytest.mark.parametrize("sql", CONNECTION)
def test_settings_that_would_break_parameter_binding_are_recognised(sql):
    assert classify(sql).kind is Kind.CONNECTION


@pytest.mark.parametrize("sql", ["CREATE TABLE t (a INT)", "DROP TABLE t", "LOCK TABLES t READ",
                                 "UNLOCK TABLES", "TRUNCATE t"])
def test_statements_that_commit_implicitly_are_flagged(sql):
    assert classify(sql).commits_implicitly


@pytest.mark.parametrize("sql", ["INSERT INTO t VALUES (1)", "SELECT 1", "SET @a = 1",
                                 "SAVEPOINT a", "CREATE TEMPORARY TABLE t (a INT)"])
def test_statements_that_keep_the_transaction_are_not_flagged(sql):
    assert not classify(sql).commits_implicitly


@pytest.mark.parametrize("sql", ["SELECT 1 /*!, GET_LOCK('x', 0) */",
                                 "SELECT * FROM t /*!50000 FOR UPDATE */",
                                 "/*M!100100 SET @a = 1 */ SELECT 1",
                                 "SELECT 1.5e-- x\n"])
def test_executable_comments_are_refused(sql):
    with pytest.raises(StatementError, match="executable comments"):
        classify(sql)


@pytest.mark.parametrize("sql", ["SELECT '/*!' AS text", "SELECT 1 /*+ hint */",
                                 "SELECT 1 /* ! not executable */"])
def test_look_alikes_of_executable_comments_are_fine(sql):
    assert classify(sql).is_read


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
    assert result.kind is Kind.OTHER


@pytest.mark.parametrize(("sql", "scope"), [
    ("SELECT * FROM sakila.actor", "read"),
    ("SHOW TABLES FROM sakila", "read"),
    ("EXPLAIN SELECT * FROM t", "read"),
    ("SELECT LAST_INSERT_ID()", "read"),  # a read only the primary can answer
    ("WITH x AS (SELECT 1) SELECT * FROM x", "read"),
    ("INSERT INTO t VALUES (1)", "write"),
    ("UPDATE t SET a = 1", "write"),
    ("DELETE FROM t", "write"),
    ("REPLACE INTO t VALUES (1)", "write"),
    ("INSERT INTO t SELECT * FROM u", "write"),
    ("SELECT * FROM t FOR UPDATE", "write"),
    ("SET @a = 1", "write"),
    ("SAVEPOINT s", "write"),
    ("CREATE TABLE t (a INT)", "admin"),
    ("CREATE INDEX i ON t (a)", "admin"),
    ("CREATE VIEW v AS SELECT 1", "admin"),
    ("DROP TABLE t", "admin"),
    ("ALTER TABLE t ADD COLUMN b INT", "admin"),
    ("TRUNCATE TABLE t", "admin"),
    ("RENAME TABLE t TO u", "admin"),
    ("CREATE TEMPORARY TABLE t (a INT)", "admin"),
    ("LOCK TABLES t WRITE", "admin"),
    ("CALL p()", "admin"),  # a procedure may do anything
    ("DO SLEEP(1)", "admin"),
    ("OPTIMIZE TABLE t", "admin"),
    ("SELEC 1", "admin"),  # not understood: may be anything
])
def test_each_statement_needs_a_scope(sql, scope):
    assert classify(sql).scope == scope


@pytest.mark.parametrize("sql", [
    "SHOW GRANTS", "show grants for current_user", "SHOW CREATE USER app_read",
    "SHOW PROCESSLIST", "SHOW FULL PROCESSLIST", "KILL 7", "KILL QUERY 7",
    "KILL CONNECTION 7", "SELECT * FROM information_schema.PROCESSLIST",
    "SELECT COUNT(*) FROM (SELECT * FROM INFORMATION_SCHEMA.processlist) AS p",
])
def test_what_shows_or_ends_other_clients_sessions_is_refused(sql):
    """Clients of a scope share its database user, which sees and may end its own sessions."""
    assert classify(sql).kind is Kind.ACCOUNT
