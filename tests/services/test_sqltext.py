"""The lexer must put string and comment boundaries where MySQL/MariaDB put them.

Each expectation here was written from the server's lexer (sql_lex.cc); the ones about `--`,
control characters and NUL bytes were also checked against a MariaDB 10.11 server.
"""

from __future__ import annotations

import pytest

from services import sqltext
from services.sqltext import Placeholder, has_executable_comment, scan, to_pyformat, to_qmarks


def positions(sql: str) -> list[tuple[int, str | None]]:
    return [(p.start, p.name) for p in scan(sql).placeholders]


def count(sql: str) -> int:
    return len(scan(sql).placeholders)


# --- placeholders in code --------------------------------------------------------------------

def test_positional_and_named_placeholders_in_code():
    sql = "SELECT * FROM t WHERE a = ? AND b = :b_2 AND c IN (?, :c) AND d = :b_2"
    s = scan(sql)
    assert s.placeholders[0] == Placeholder(sql.index("?"), sql.index("?") + 1, None)
    assert s.placeholders[1] == Placeholder(sql.index(":b_2"), sql.index(":b_2") + 4, "b_2")
    assert s.positional == 2
    assert s.names == ("b_2", "c", "b_2")        # in order, repeats kept
    assert not s.executable_comment


def test_placeholder_at_start_and_end_and_next_to_punctuation():
    assert positions("?") == [(0, None)]
    assert positions(":x") == [(0, "x")]
    assert positions("SELECT (?),(:a)") == [(8, None), (12, "a")]
    assert positions("SELECT 'a':x") == [(10, "x")]         # right after a string
    assert positions("SELECT ?:x") == [(7, None), (8, "x")]


def test_no_placeholders():
    s = scan("SELECT 1")
    assert s.placeholders == () and s.positional == 0 and s.names == ()


@pytest.mark.parametrize("sql", [
    "SELECT '?', ':x'",
    'SELECT "?", ":x"',
    "SELECT `?`, `:x`",
    "SELECT 1 # ? :x",
    "SELECT 1 -- ? :x",
    "SELECT 1 /* ? :x */",
    "SELECT 1 /*+ ? :x */",
])
def test_no_placeholders_in_strings_identifiers_and_comments(sql):
    assert count(sql) == 0


# --- strings ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("sql", "expected"), [
    (r"SELECT 'it\'s ?', ?", 1),       # backslash-escaped quote
    ("SELECT 'it''s ?', ?", 1),        # doubled quote
    (r'SELECT "a\"?", ?', 1),
    ('SELECT "a""?", ?', 1),
    (r"SELECT 'a\\', ?", 1),           # escaped backslash, then the quote closes the string
    (r"SELECT 'a\\\'?', ?", 1),
    ("SELECT 'a' 'b', ?", 1),          # two adjacent strings, not one with a doubled quote
    ("SELECT '''', ?", 1),
    ("SELECT '', ?", 1),
    ("""SELECT "it's", '"?"', ?""", 1),  # the other quote is an ordinary character
    (r"SELECT '\?', ?", 1),
    ("SELECT 'a\n?\nb', ?", 1),        # strings span lines
])
def test_string_escapes(sql, expected):
    assert count(sql) == expected


def test_one_backslash_string_then_a_real_placeholder():
    # A regex that stops a string at the first quote not preceded by a backslash reads
    # '\\' as an open string and misses the placeholder; the server sees '\' then code.
    sql = "SELECT '\\\\' , ?"
    assert sql[7:11] == "'\\\\'"
    assert positions(sql) == [(len(sql) - 1, None)]


def test_backtick_identifiers_double_the_backtick_and_have_no_backslash_escape():
    assert count("SELECT `a``?` , ?") == 1
    assert count("SELECT `a\\` , ?") == 1      # the backslash is an ordinary character
    assert count("SELECT `'` , ?, `\"`") == 1


@pytest.mark.parametrize("sql", [
    "SELECT 'abc ?",
    'SELECT "abc ?',
    "SELECT `abc ?",
    "SELECT 'abc\\' ?",
    "SELECT 'abc ?\\",       # a backslash as the very last character
])
def test_unterminated_string_runs_to_the_end(sql):
    s = scan(sql)
    assert s.placeholders == ()
    assert s.code_end == len(sql)


# --- comments --------------------------------------------------------------------------------

def test_dash_dash_needs_a_space_or_control_character():
    assert count("SELECT 1 -- ?") == 0
    assert count("SELECT 1 --\t?") == 0
    assert count("SELECT 1--?") == 1          # 1 - (-?): two minus signs
    assert positions("SELECT 1--?") == [(10, None)]
    assert count("SELECT 1--1, ?") == 1
    assert count("SELECT 1---1, ?") == 1
    assert count("SELECT 1 --- ?") == 0       # '-' then a comment starting at the second '-'


@pytest.mark.parametrize("after", ["\n", "\r", "\f", "\v", "\x01", "\x1f", "\x7f", "\x00"])
def test_dash_dash_before_any_control_character_is_a_comment(after):
    # The server tests my_isspace || my_iscntrl; DEL (0x7f) is a control character too.
    assert count(f"SELECT 1 --{after}?") == (1 if after in "\n\x00" else 0)
    assert count(f"SELECT 1 --{after}x ? x\n, ?") == (2 if after in "\n\x00" else 1)


@pytest.mark.parametrize("after", ["\u00a0", "\u2028", "\u3000", "é", "x", "1"])
def test_dash_dash_before_other_characters_is_code(after):
    assert count(f"SELECT 1 --{after} ?") == 1


def test_dash_dash_at_the_end_of_the_text():
    s = scan("SELECT ? --")
    assert s.positional == 1
    assert s.code_end == len("SELECT ?")
    assert count("--") == 0


def test_line_comments_end_at_newline_or_nul():
    assert count("SELECT 1 # ?\n, ?") == 1
    assert count("SELECT 1 -- ?\n, ?") == 1
    # The server ends a line comment at a NUL byte too (a NUL in code is then a syntax error,
    # unless it is the last character).
    assert count("SELECT 1 # ?\x00?") == 1
    assert count("SELECT 1 # ? ?") == 0


def test_block_comments_do_not_nest():
    assert count("SELECT 1 /* /* ? */ , ?") == 1
    assert count("SELECT 1 /* ? */ ? */") == 1
    assert count("SELECT 1 /*/ ? */ ?") == 1   # '/*/' does not close itself
    assert count("SELECT 1 /**/ ?") == 1
    assert count("SELECT 1 / 2 * ?") == 1


def test_unterminated_block_comment_runs_to_the_end():
    s = scan("SELECT ? /* ? ' ")
    assert s.positional == 1
    assert s.code_end == len("SELECT ?")


def test_comment_markers_in_strings_are_not_comments():
    assert count("SELECT '-- ', ?") == 1
    assert count("SELECT '#', ?") == 1
    assert count("SELECT '/*', ?, '*/'") == 1


def test_quotes_in_comments_do_not_open_strings():
    assert count("SELECT 1 # it's\n, ?") == 1
    assert count("SELECT 1 -- it's\n, ?") == 1
    assert count("SELECT 1 /* it's */ , ?") == 1


# --- colons that are not placeholders --------------------------------------------------------

@pytest.mark.parametrize("sql", [
    "SET @x := 1",
    "SELECT @x:=1",
    "SELECT a:b",
    "SELECT a ::x",
    "SELECT 1:x",
    "SELECT $a:x",
    "SELECT é:x",
    "SELECT : x",
    "SELECT :1",
    "SELECT @name, @@session.sql_mode",
])
def test_colons_and_variables_that_are_not_placeholders(sql):
    assert count(sql) == 0


def test_assignment_next_to_a_placeholder():
    assert positions("SELECT @x := :v") == [(13, "v")]


# --- executable comments ---------------------------------------------------------------------

@pytest.mark.parametrize("sql", [
    "SELECT 1 /*! , 2 */",
    "SELECT 1 /*!50001 , 2 */",
    "SELECT 1 /*M!100101 , 2 */",
    "SELECT 1 /*!",                   # unterminated: still one
    "/*!*/SELECT 1",
])
def test_executable_comments_are_detected(sql):
    assert scan(sql).executable_comment
    assert has_executable_comment(sql)


@pytest.mark.parametrize("sql", [
    "SELECT /*+ MAX_EXECUTION_TIME(1000) */ 1",
    "SELECT 1 /* ! */",
    "SELECT 1 /*m!100101 2 */",
    "SELECT '/*!' , 2",
    "SELECT 1 -- /*!\n",
    "SELECT 1 # /*!",
    "SELECT `/*!`",
    "SELECT 1 /* a */ /* b */",
    "SELECT 1",
])
def test_comments_that_are_not_executable(sql):
    assert not scan(sql).executable_comment
    assert not has_executable_comment(sql)


@pytest.mark.parametrize("sql", [
    "SELECT 1.5e-- x",       # MySQL: '1.5e-' swallows a '-' and runs ' x' as code
    "SELECT .5E-- x",
    "SELECT 1.e-- x",
    "SELECT 1.5e+-- x",      # MySQL: comment; MariaDB: code (or a syntax error)
    "SELECT 1.5e--- x",
])
def test_dash_dash_after_a_decimal_exponent_counts_as_executable(sql):
    assert scan(sql).executable_comment
    assert has_executable_comment(sql)


@pytest.mark.parametrize("sql", [
    "SELECT 1.5e-3 -- x",
    "SELECT 1e-- x",         # an integer then 'e' is an identifier ('1e'): a plain comment
    "SELECT t.e-- x",        # identifier
    "SELECT e-- x",
    "SELECT 1.5 -- x",
])
def test_dash_dash_after_other_e_is_a_plain_comment(sql):
    assert not scan(sql).executable_comment
    assert not has_executable_comment(sql)


# --- to_qmarks and to_pyformat ---------------------------------------------------------------

def test_to_qmarks_rewrites_named_placeholders_only():
    sql = "SELECT * FROM t WHERE a = :a AND b = ? AND c = ':c' AND d = :dd -- :e"
    assert to_qmarks(sql, scan(sql)) == (
        "SELECT * FROM t WHERE a = ? AND b = ? AND c = ':c' AND d = ? -- :e")


def test_to_qmarks_returns_the_same_text_without_named_placeholders():
    sql = "SELECT ? FROM t"
    assert to_qmarks(sql, scan(sql)) is sql


def test_to_pyformat_doubles_every_percent_and_marks_placeholders():
    sql = "SELECT * FROM t WHERE name LIKE 'a%' AND x = ?"
    assert to_pyformat(sql, scan(sql)) == "SELECT * FROM t WHERE name LIKE 'a%%' AND x = %s"


def test_to_pyformat_with_both_kinds_and_percent_in_comments():
    sql = "SELECT :a % 2, ? /* 100% */, '%s' -- %(x)s\n, :a"
    expected = "SELECT %s %% 2, %s /* 100%% */, '%%s' -- %%(x)s\n, %s"
    assert to_pyformat(sql, scan(sql)) == expected
    # What the driver does with it: only the markers take values.
    assert expected % ("1", "2", "3") == "SELECT 1 % 2, 2 /* 100% */, '%s' -- %(x)s\n, 3"


def test_to_pyformat_without_placeholders_still_doubles_percent():
    sql = "SELECT '50%'"
    assert to_pyformat(sql, scan(sql)) == "SELECT '50%%'"


# --- trailing semicolons ---------------------------------------------------------------------

@pytest.mark.parametrize(("sql", "code_end", "trailing"), [
    ("SELECT 1", 8, False),
    ("SELECT 1;", 8, True),
    ("SELECT 1 ; ;\n", 8, True),
    ("SELECT 1; -- done\n ; /* x */ ", 8, True),
    ("SELECT 1 -- ;", 8, False),
    ("SELECT ';'", 10, False),
    ("SELECT 1; SELECT 2", 18, False),
    ("SELECT 'a;", 10, False),        # unterminated string: all of it is a token
    ("  ; ", 0, True),
    ("-- only a comment", 0, False),
    ("", 0, False),
])
def test_code_end_and_trailing_semicolons(sql, code_end, trailing):
    s = scan(sql)
    assert s.code_end == code_end
    assert s.trailing_semicolons is trailing


# --- caching ---------------------------------------------------------------------------------

def test_short_statements_are_cached_and_long_ones_are_not():
    short = "SELECT ? /* cache */"
    assert scan(short) is scan(short)
    long = "SELECT ?" + " " * sqltext.CACHED_LENGTH + "-- long"
    assert scan(long) == scan(long)
    assert scan(long) is not scan(long)
    assert scan(long).positional == 1


def test_scan_is_linear_on_many_candidate_comments():
    # Every '--' after digits and an 'e' looks back over those digits only.
    sql = "SELECT " + "1.5e-- x\n" * 20000 + "?"
    s = scan(sql)
    assert s.executable_comment
    assert s.positional == 1


# --- agreement with the server's own lexer -------------------------------------------------------

AGREEMENT = [
    "SELECT ?",
    "SELECT '?', ?",
    "SELECT \"?\", ? AS `?`",
    "SELECT 'it\\'s ?', ?",
    "SELECT 'it''s ?', ?",
    "SELECT '\\\\', ?",
    "SELECT 1 -- ?\n, ?",
    "SELECT 1 # ?\n, ?",
    "SELECT 1 /* ? */, ?",
    "SELECT 1--?",
    "SELECT 1 --\t?\n, ?",
    "SELECT ?, 'a\n?', ?",
    "SELECT @v := ?",
    "SELECT \"a\"\"?\", ?",
    "SELECT `a``?` FROM (SELECT ? AS `a``?`) AS t",
    "SELECT x'3F', ?",
    "SELECT _utf8mb4'?' , ?",
    "SELECT 1 /*+ ? */, ?",
]


@pytest.mark.parametrize("sql", AGREEMENT)
def test_placeholder_counts_agree_with_mariadb(db_cluster, sql):
    """The server's PREPARE counts the same '?' the lexer finds: EXECUTE with that many
    values runs, with one more it is refused (1210, wrong number of arguments)."""
    import pymysql

    found = scan(sql).positional
    with db_cluster.primary.connect() as conn, conn.cursor() as cursor:
        cursor.execute("PREPARE agreement FROM %s", (sql,))
        values = [f"@v{i}" for i in range(found)]
        cursor.execute("SET " + ", ".join(f"@v{i} = {i}" for i in range(found + 1)))
        cursor.execute("EXECUTE agreement" + (f" USING {', '.join(values)}" if values else ""))
        cursor.fetchall()
        with pytest.raises(pymysql.err.MySQLError) as refused:
            cursor.execute(f"EXECUTE agreement USING {', '.join([*values, f'@v{found}'])}")
        assert refused.value.args[0] == 1210
