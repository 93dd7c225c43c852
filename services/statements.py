"""One SQL statement with its parameters, bound for the driver.

Values are never formatted into SQL by this code: the placeholders found by
``services.sqltext`` (which scans the text as the server's lexer does, so a ``?`` in a string or
comment is not one) become ``%s`` markers, and the driver's own escaping turns each value into
a literal. The statement's *shape* (named placeholders written as ``?``) is what the classifier
sees and caches, so a million different values cost one classification.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from services import sqltext
from services.errors import ApiError

Value = None | bool | int | float | str | bytes | Decimal
Params = tuple[Value, ...] | dict[str, Value] | None

PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TYPED_VALUES = ("binary", "decimal")
# DECIMAL's precision: a larger value could not be stored, and "1E+100000000" would be
# written out in full by the driver (a 100 MB literal from a 77-byte request).
MAX_DECIMAL_DIGITS = 65


@dataclass(frozen=True)
class Statement:
    sql: str                        # as the client sent it
    shape: str                      # the text the classifier sees: named placeholders as '?'
    text: str                       # the text the driver formats: '%s' markers, '%' doubled
    args: tuple[Value, ...] | None  # the values in marker order; None: nothing to bind

    @classmethod
    def plain(cls, sql: str) -> Statement:
        """A statement without parameters (the Proxy's own: START TRANSACTION, COMMIT...)."""
        return cls(sql, sql, sql, None)


def parse_statement(sql: Any, params: Any, where: str = "") -> Statement:
    """Check ``sql`` and ``params`` (as decoded from JSON) and bind them; raise ApiError(400).

    ``where`` prefixes messages about a statement inside a batch (``statements[3]: ``).
    """
    if sql is None:
        raise ApiError(400, f"{where}missing field 'sql'")
    if not isinstance(sql, str):
        raise ApiError(400, f"{where}'sql' must be a string")
    if not sql.strip():
        raise ApiError(400, f"{where}'sql' is empty")
    _check_unicode(sql, f"{where}'sql'")
    values = _parse_params(params, where)
    if values is None:
        return Statement.plain(sql)
    scan = sqltext.scan(sql)
    args = _ordered_args(scan, values, where)
    if not scan.placeholders:
        return Statement.plain(sql)
    return Statement(sql, sqltext.to_qmarks(sql, scan), sqltext.to_pyformat(sql, scan), args)


def _ordered_args(scan: sqltext.Scan, values: tuple | dict, where: str) -> tuple[Value, ...]:
    if isinstance(values, tuple):
        if scan.names:
            raise ApiError(400, f"{where}the statement uses named placeholders "
                           f"({', '.join(':' + n for n in dict.fromkeys(scan.names))}): "
                           "'params' must be an object")
        if scan.positional != len(values):
            raise ApiError(400, f"{where}the statement has {scan.positional} '?' "
                           f"placeholder(s) but 'params' has {len(values)} value(s)")
        return values
    if scan.positional:
        raise ApiError(400, f"{where}the statement uses '?' placeholders: 'params' must be "
                       "an array")
    missing = [name for name in dict.fromkeys(scan.names) if name not in values]
    if missing:
        raise ApiError(400, f"{where}no value for placeholder(s) "
                       f"{', '.join(':' + name for name in missing)}")
    unused = sorted(set(values) - set(scan.names))
    if unused:
        raise ApiError(400, f"{where}'params' has names the statement does not use: "
                       f"{', '.join(unused)}")
    return tuple(values[name] for name in scan.names)


def _parse_params(params: Any, where: str) -> tuple | dict | None:
    if params is None:
        return None
    if isinstance(params, list):
        return tuple(_parse_value(value, f"{where}params[{i}]") for i, value in
                     enumerate(params))
    if isinstance(params, dict):
        for name in params:
            if not PARAM_NAME.fullmatch(name):
                raise ApiError(400, f"{where}bad parameter name {name!r}: letters, digits "
                               "and _ (not starting with a digit)")
        return {name: _parse_value(value, f"{where}params.{name}")
                for name, value in params.items()}
    raise ApiError(400, f"{where}'params' must be an array (for ?) or an object (for :name)")


def _check_unicode(text: str, where: str) -> None:
    """JSON can carry lone UTF-16 surrogates (``"\\ud800"``), which no UTF-8 text can hold."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise ApiError(400, f"{where} holds a lone UTF-16 surrogate: not valid Unicode "
                           "text (send bytes as a binary value)") from None


def _parse_value(value: Any, where: str) -> Value:
    if isinstance(value, str):
        _check_unicode(value, where)
        return value
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ApiError(400, f"{where}: {value} is not a number SQL can store")
        return value
    if isinstance(value, dict):
        return _parse_typed(value, where)
    raise ApiError(400, f"{where}: a parameter is null, a boolean, a number, a string or a "
                   f"typed value {{\"type\": \"binary\"|\"decimal\", ...}}, not "
                   f"{type(value).__name__}")


def _parse_typed(value: dict, where: str) -> Value:
    kind = value.get("type")
    if kind == "binary":
        _exact_keys(value, {"type", "base64"}, where)
        data = value.get("base64")
        if not isinstance(data, str):
            raise ApiError(400, f"{where}: a binary value needs 'base64': a string")
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"{where}: 'base64' is not valid base64") from None
    if kind == "decimal":
        _exact_keys(value, {"type", "value"}, where)
        text = value.get("value")
        if not isinstance(text, str):
            raise ApiError(400, f"{where}: a decimal value needs 'value': a string of digits")
        try:
            number = Decimal(text)
        except InvalidOperation:
            number = None
        if number is None or not number.is_finite():
            raise ApiError(400, f"{where}: {text[:80]!r} is not a decimal number")
        digits, exponent = len(number.as_tuple().digits), number.as_tuple().exponent
        if digits > MAX_DECIMAL_DIGITS or number.adjusted() >= MAX_DECIMAL_DIGITS or \
                exponent < -MAX_DECIMAL_DIGITS:
            raise ApiError(400, f"{where}: {text[:80]!r} has more than the "
                           f"{MAX_DECIMAL_DIGITS} digits a DECIMAL holds")
        return number
    raise ApiError(400, f"{where}: unknown typed value {kind!r}; known: "
                   f"{', '.join(TYPED_VALUES)}")


def _exact_keys(value: dict, keys: set[str], where: str) -> None:
    unknown = sorted(set(value) - keys)
    if unknown:
        raise ApiError(400, f"{where}: unknown key(s) {', '.join(unknown)} in a typed value")
