"""Where a MySQL/MariaDB statement's strings, comments and placeholders are, as the server sees it.

Parameters are bound by splicing driver-escaped literals into the text at the placeholder
positions. The escaping is only safe if every position we splice at is one the server's own
lexer reads as code: a ``?`` that we take for code but the server takes for the inside of a
string would let the escaped value close that string and run as SQL. So this module is a small
lexer that follows the server's rules (``sql_lex.cc``, default ``sql_mode``: backslash escapes on,
``"`` quotes strings) for exactly the things that decide string and comment boundaries, and
nothing else. sqlglot's tokenizer is not used for this: it starts a comment at every ``--``
(the server needs a space or control character after it, so ``1--1`` is code), and any such
difference is an injection.

Assumptions this relies on, which the callers must keep true: the connection's character set is
utf8mb4 (or another one in which a backslash or quote byte is never part of a multi-byte
character), and the session's ``sql_mode`` has neither ``NO_BACKSLASH_ESCAPES`` nor
``ANSI_QUOTES``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Placeholder:
    start: int          # index in the text of '?' or ':'
    end: int            # index just past the placeholder
    name: str | None    # None for '?', else the name without ':'


@dataclass(frozen=True)
class Scan:
    placeholders: tuple[Placeholder, ...]
    # True when text this scan reads as a comment may be run as code by the server: a /*! or
    # /*M! comment, or a `--` right after a decimal number's exponent (`1.5e-- x`), where the
    # server's number lexer swallows the `-` and MySQL and MariaDB disagree on what follows.
    executable_comment: bool
    positional: int            # number of '?'
    names: tuple[str, ...]     # named placeholders in order of appearance (repeats kept)
    # Index just past the last code character that is neither white space nor ';' (strings and
    # quoted identifiers count as code, comments do not); 0 when there is none.
    code_end: int = 0
    # True when a ';' in code follows code_end: the statement ends with semicolons.
    trailing_semicolons: bool = False


# Characters that change the lexer's state, or are placeholders, or are ';'. Everything between
# two of them is plain code that the scan skips in one regex step.
_CODE_SPECIAL = re.compile(r"""['"`#\-/?:;]""")
# A string's body up to (not including) its closing quote: a backslash escapes any one
# character, a doubled quote is a quote. Unrolled, so it runs in linear time.
_SINGLE_BODY = re.compile(r"[^'\\]*(?:(?:\\.|'')[^'\\]*)*", re.S)
_DOUBLE_BODY = re.compile(r'[^"\\]*(?:(?:\\.|"")[^"\\]*)*', re.S)
_BACKTICK_BODY = re.compile(r"[^`]*(?:``[^`]*)*")
# The server ends a '#' or '--' comment at a newline or at a NUL byte.
_LINE_END = re.compile(r"[\n\x00]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Bytes the server's ident_map accepts (plus every non-ASCII character): a ':' right after one
# belongs to something else (`a:b`), not to a placeholder.
_IDENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")
_DIGITS = frozenset("0123456789")
# MY_LEX_SKIP characters (white space in the utf8mb4 ctype table) and ';'.
_BLANK_OR_SEMICOLON = " \t\n\r\v\f;"

# Statements are cached by their text; long ones are rare and would make the cache large.
CACHED_LENGTH = 2048

_CODE, _IN_QUOTES, _IN_COMMENT = 0, 1, 2


def scan(sql: str) -> Scan:
    """Scan one statement: its placeholders, and whether it holds an executable comment."""
    return _scan_cached(sql) if len(sql) <= CACHED_LENGTH else _scan(sql)


def has_executable_comment(sql: str) -> bool:
    """True when the server may run something this lexer reads as a comment (see ``Scan``).

    Called for every request, so it answers without scanning when neither ``/*`` nor an
    exponent followed by ``--`` can be in the text.
    """
    if "/*" not in sql and ("--" not in sql or not (
            "e--" in sql or "E--" in sql or "e+--" in sql or "E+--" in sql)):
        return False
    return scan(sql).executable_comment


def to_qmarks(sql: str, s: Scan) -> str:
    """The text with every named placeholder written as ``?``: the statement's shape.

    The classifier caches by this text, so ``:id`` and ``?`` statements share entries.
    """
    if not s.names:
        return sql
    parts = []
    pos = 0
    for p in s.placeholders:
        if p.name is not None:
            parts.append(sql[pos:p.start])
            parts.append("?")
            pos = p.end
    parts.append(sql[pos:])
    return "".join(parts)


def to_pyformat(sql: str, s: Scan) -> str:
    """The text for a pymysql-style driver: placeholders as ``%s``, every other ``%`` doubled.

    The driver applies Python ``%`` formatting to the whole text, strings and comments
    included, so a ``%`` anywhere must be escaped or it would be read as a marker.
    """
    if not s.placeholders:
        return sql.replace("%", "%%")
    parts = []
    pos = 0
    for p in s.placeholders:
        parts.append(sql[pos:p.start].replace("%", "%%"))
        parts.append("%s")
        pos = p.end
    parts.append(sql[pos:].replace("%", "%%"))
    return "".join(parts)


def _after_exponent(sql: str, i: int) -> bool:
    """Whether the ``-`` at ``i`` may be read by the server as part of a decimal's exponent.

    In ``1.5e-- x`` the server's number lexer takes ``e-`` as the start of an exponent, finds
    no digit and returns the next character as a token of its own, so the ``--`` never starts
    a comment (MySQL then runs the rest of the line as code, MariaDB rejects the statement).
    Whether a ``.5e`` really starts a number depends on the tokens before it, so this answers
    conservatively: a ``.`` then digits then ``e``/``E`` (then an optional sign) before ``i``.
    The walk back covers only the digits next to this ``-``, so a whole scan stays linear.
    """
    k = i - 1
    if k >= 0 and sql[k] in "+-":
        k -= 1
    if k < 1 or sql[k] not in "eE":
        return False
    j = k
    while j > 0 and sql[j - 1] in _DIGITS:
        j -= 1
    if j == 0 or sql[j - 1] != ".":
        return False
    return j < k or (j >= 2 and sql[j - 2] in _DIGITS)


@lru_cache(maxsize=4096)
def _scan_cached(sql: str) -> Scan:
    return _scan(sql)


def _scan(sql: str) -> Scan:
    n = len(sql)
    placeholders: list[Placeholder] = []
    comments: list[tuple[int, int]] = []   # (start, end) of each comment, for code_end
    executable = False
    last_semicolon = -1
    state = _CODE                          # the state the text ends in
    has_nul = "\x00" in sql
    search = _CODE_SPECIAL.search
    pos = 0
    while True:
        m = search(sql, pos)
        if m is None:
            break
        i = m.start()
        c = sql[i]
        if c == "?":
            placeholders.append(Placeholder(i, i + 1, None))
            pos = i + 1
        elif c == "'" or c == '"' or c == "`":
            body = _SINGLE_BODY if c == "'" else _DOUBLE_BODY if c == '"' else _BACKTICK_BODY
            end = body.match(sql, i + 1).end()
            if end >= n or sql[end] != c:     # unterminated (or ends in a lone backslash)
                state = _IN_QUOTES
                break
            pos = end + 1
        elif c == ":":
            pos = i + 1
            if i > 0:
                before = sql[i - 1]
                if before in _IDENT_CHARS or before == ":" or before >= "\x80":
                    continue
            name = _NAME.match(sql, pos)
            if name is not None:
                pos = name.end()
                placeholders.append(Placeholder(i, pos, name.group()))
        elif c == ";":
            last_semicolon = i
            pos = i + 1
        elif c == "/":
            if not sql.startswith("*", i + 1):
                pos = i + 1
                continue
            if sql.startswith("!", i + 2) or sql.startswith("M!", i + 2):
                executable = True
            end = sql.find("*/", i + 2)
            if end < 0:
                comments.append((i, n))
                state = _IN_COMMENT
                break
            pos = end + 2
            comments.append((i, pos))
        else:   # '#' or '-'
            if c == "-":
                # '--' starts a comment only before a space or control character (or the end).
                if not sql.startswith("-", i + 1) or (
                        i + 2 < n and sql[i + 2] > " " and sql[i + 2] != "\x7f"):
                    pos = i + 1
                    continue
                if _after_exponent(sql, i):
                    executable = True
            if has_nul:
                line_end = _LINE_END.search(sql, i + 1)
                end = line_end.start() if line_end is not None else -1
            else:
                end = sql.find("\n", i + 1)
            if end < 0:
                comments.append((i, n))
                state = _IN_COMMENT
                break
            comments.append((i, end))
            pos = end   # the newline (or NUL) itself is code again

    names = tuple(p.name for p in placeholders if p.name is not None)
    code_end = n if state == _IN_QUOTES else _code_end(sql, comments)
    return Scan(
        placeholders=tuple(placeholders),
        executable_comment=executable,
        positional=len(placeholders) - len(names),
        names=names,
        code_end=code_end,
        trailing_semicolons=last_semicolon >= code_end,
    )


def _code_end(sql: str, comments: list[tuple[int, int]]) -> int:
    """Index past the last code character that is not blank or ';', skipping trailing comments."""
    end = len(sql)
    k = len(comments) - 1
    while True:
        solid = len((sql if end == len(sql) else sql[:end]).rstrip(_BLANK_OR_SEMICOLON))
        # A comment starts with a solid character, so if the last one reaches the last solid
        # character, that character is inside it.
        if solid and k >= 0 and comments[k][1] >= solid:
            end = comments[k][0]
            k -= 1
            continue
        return solid
