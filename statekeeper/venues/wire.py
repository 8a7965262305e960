"""Pure helpers for the parse boundary: JSON in, canonical values out, or a clear :class:`WireError`.

Venues send amounts as decimal strings and ids as strings or JSON integers (Extended's reach 2**63). Parsing
goes through orjson for speed; orjson turns integers beyond 64 bits and every number with a fraction into a
``float``, which would lose digits. The converters here refuse a ``float`` by raising :class:`NeedsExactNumbers`,
and :func:`parse_frame_with` then parses the frame again with the standard library, exactly (arbitrary
integers, ``Decimal`` for numbers with a fraction). Nothing is ever rounded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError

from statekeeper.events import validation_message

T = TypeVar("T")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Below this a numeric timestamp is taken as seconds, at or above it as milliseconds (10**11 s is year 5138).
SECONDS_LIMIT = 10**11


class WireError(ValueError):
    """A frame or response does not have the shape the venue documents. The message says what is wrong."""

    def __init__(self, message: str, *, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


class NeedsExactNumbers(Exception):
    """A number arrived as a float from the fast JSON parser: parse the frame again, exactly."""


def loads_fast(text: str | bytes) -> Any:
    return orjson.loads(text)


def loads_exact(text: str | bytes) -> Any:
    """Arbitrary-precision integers, ``Decimal`` for numbers with a fraction."""
    return json.loads(text, parse_float=Decimal)


# ------------------------------------------------------------------------------------------- accessors


def obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise WireError(f"{where}: expected an object, got {_type(value)}")
    return value


def arr(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise WireError(f"{where}: expected an array, got {_type(value)}")
    return value


def field(data: Mapping[str, Any], *names: str, where: str = "") -> Any:
    """The value of the first of ``names`` present (venues spell some fields two ways). Missing is an error."""
    for name in names:
        if name in data and data[name] is not None:
            return data[name]
    raise WireError(f"{_at(where, '/'.join(names))}: missing")


def optional(data: Mapping[str, Any], *names: str) -> Any:
    """The value of the first of ``names`` present and not null, or None."""
    for name in names:
        value = data.get(name)
        if value is not None:
            return value
    return None


# ------------------------------------------------------------------------------------------ converters


def amount(value: Any, where: str) -> Decimal:
    """A decimal amount from a decimal string or an integer (a float triggers the exact re-parse)."""
    if isinstance(value, bool):
        raise WireError(f"{where}: expected a decimal, got a boolean")
    if isinstance(value, float):
        raise NeedsExactNumbers(where)
    if isinstance(value, Decimal | int):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise WireError(f"{where}: {value[:40]!r} is not a decimal number") from None
    else:
        raise WireError(f"{where}: expected a decimal, got {_type(value)}")
    if not result.is_finite():
        raise WireError(f"{where}: {value!r} is not a finite number")
    return result


def optional_amount(value: Any, where: str, *, blank_is_none: bool = True) -> Decimal | None:
    """Like :func:`amount`, but null (and, by default, an empty string) is None."""
    if value is None or (blank_is_none and value == ""):
        return None
    return amount(value, where)


def venue_id(value: Any, where: str) -> str:
    """A venue id as a string, from a string or a JSON integer of any size."""
    if isinstance(value, bool):
        raise WireError(f"{where}: expected an id, got a boolean")
    if isinstance(value, float):
        raise NeedsExactNumbers(where)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    raise WireError(f"{where}: expected an id, got {_type(value)}")


def integer(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise WireError(f"{where}: expected an integer, got a boolean")
    if isinstance(value, float):
        raise NeedsExactNumbers(where)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise WireError(f"{where}: expected an integer, got {_type(value)}")


def timestamp(value: Any, where: str) -> datetime:
    """An aware UTC datetime from epoch milliseconds (or seconds, below :data:`SECONDS_LIMIT`)."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise WireError(f"{where}: {value} is not a finite number")
        value = int(value) if value == value.to_integral_value() else value
    number = integer(value, where) if not isinstance(value, Decimal) else value
    if number < 0:
        raise WireError(f"{where}: negative timestamp {number}")
    try:
        if number < SECONDS_LIMIT:
            return datetime.fromtimestamp(float(number), UTC)
        return datetime.fromtimestamp(int(number) // 1000, UTC).replace(microsecond=(int(number) % 1000) * 1000)
    except (OverflowError, OSError, ValueError):
        raise WireError(f"{where}: timestamp {number} is out of range") from None


def epoch_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime, exactly (a float timestamp can be off by one): query parameters."""
    if moment.utcoffset() is None:
        raise ValueError("a naive datetime is ambiguous: give a timezone-aware time")
    return (moment - EPOCH) // timedelta(milliseconds=1)


def optional_timestamp(value: Any, where: str) -> datetime | None:
    if isinstance(value, Decimal) and not value.is_finite():  # a signalling NaN cannot even be compared
        raise WireError(f"{where}: {value} is not a finite number")
    if value is None or value in ("", 0):
        return None
    return timestamp(value, where)


def text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise WireError(f"{where}: expected a non-empty string, got {_type(value)}")
    return value


def optional_text(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return str(value)
    return text(value, where)


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise WireError(f"{where}: expected true or false, got {_type(value)}")
    return value


def optional_boolean(value: Any, where: str) -> bool | None:
    return None if value is None else boolean(value, where)


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def dump_item(value: Any) -> str:
    """An item of a REST answer as compact JSON, for ``Event.raw``.

    The item is re-serialised from what was parsed (the exact text of one item inside a page is not kept).
    Integers of any size survive, and a ``Decimal`` (only after an exact re-parse) is written as the number it
    was, digit for digit.
    """
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        dumped = json.dumps(_mark_decimals(value), separators=(",", ":"), ensure_ascii=False)
        return _DECIMAL_MARK.sub(lambda m: m.group(1), dumped)


# A NUL cannot occur in a string the parse boundary accepts, so the marker cannot collide with venue data.
_DECIMAL_MARK = re.compile(r'"\\u0000decimal:([-+0-9.eE]+)\\u0000"')


def _mark_decimals(value: Any) -> Any:
    if isinstance(value, Decimal):
        return f"\x00decimal:{value}\x00"
    if isinstance(value, dict):
        return {k: _mark_decimals(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark_decimals(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------- driver


def decode_text(raw: str | bytes) -> str:
    """The frame as text; bytes must be UTF-8."""
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None


def parse_json_with(
    raw: str | bytes,
    mapper: Callable[[Any], T],
    *,
    seq_of: Callable[[Any], int | None] | None = None,
) -> T:
    """Decode ``raw`` as JSON and map it with ``mapper``, exactly when numbers need it.

    Raises :class:`WireError` (with the frame's seq when ``seq_of`` can read it) for anything malformed. A pydantic
    validation error from building the canonical models, and any other exception from ``mapper`` (a parser bug),
    become a :class:`WireError` too.
    """
    text_value = decode_text(raw)
    try:
        data = loads_fast(text_value)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"not JSON: {exc}") from None
    seq = _safe_seq(seq_of, data)
    try:
        try:
            return mapper(data)
        except NeedsExactNumbers:
            return mapper(loads_exact(text_value))
    except WireError as exc:
        if exc.seq is None:
            exc.seq = seq
        raise
    except ValidationError as exc:
        raise WireError(validation_message(exc), seq=seq) from None
    except NeedsExactNumbers as exc:  # still a float after the exact parse: cannot happen, but never raise
        raise WireError(f"{exc}: unexpected number format", seq=seq) from None
    except Exception as exc:  # noqa: BLE001 - a mapper bug must reject the frame, not end the stream
        raise WireError(f"parser error: {type(exc).__name__}: {exc}", seq=seq) from None


def _safe_seq(seq_of: Callable[[Any], int | None] | None, data: Any) -> int | None:
    if seq_of is None:
        return None
    try:
        return seq_of(data)
    except Exception:  # noqa: BLE001 - reading the seq of a malformed frame is best effort
        return None
