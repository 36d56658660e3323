"""Limits at the edge (DESIGN.md section 11): the field types every command and query is validated with.

Text refuses NUL and control characters and has a cap by kind: ids 64 characters, names 200, titles
300, free text 4,000 (free text alone may hold line breaks and tabs). Repeated fields are capped and
de-duplicated. Decimals are bounded. Dates are strict `YYYY-MM-DD` within 2000-2100. A refusal never
echoes more than ECHO characters of what it was given (`shown`).

Beside these pydantic types, the gRPC kit guards every request before any handler runs (`check_message`):
every text field of every message is UTF-8 without NUL or control characters and at most FREE_TEXT
characters (an id-like field, `*_id`, `*_code`, at most ID), and every repeated field at most
MAX_REPEATED items, so even a query that reads its fields directly never sees worse.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Hashable, Sequence
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from google.protobuf.message import Message
from pydantic import AfterValidator, BeforeValidator, Field

from services.kernel.errors import FieldViolation, InvalidArgument

ID, NAME, TITLE, FREE_TEXT = 64, 200, 300, 4000
ECHO = 64  # characters of a caller's value a refusal may quote
MAX_REPEATED = 1000  # items in any repeated field of a request (a kind may cap lower)
FIRST_DAY, LAST_DAY = date(2000, 1, 1), date(2100, 12, 31)
PAGE_TOKEN = 1024  # an opaque page token: a sort key, base64 of JSON

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LAYOUT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def shown(value: Any) -> str:
    """A caller's value as a refusal may quote it: at most ECHO characters, control characters escaped."""
    text = value if isinstance(value, str) else repr(value)
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if len(text) <= ECHO else text[: ECHO - 1] + "…"


def _text_problem(v: str, layout: bool) -> str | None:
    if (_CONTROL if not layout else _CONTROL_BUT_LAYOUT).search(v):
        return "must not contain NUL or control characters"
    if any(unicodedata.category(c) == "Cs" for c in v):
        return "must be valid Unicode (a lone surrogate is not)"
    return None


def plain_text(v: str) -> str:
    if (problem := _text_problem(v, layout=False)) is not None:
        raise ValueError(problem)
    return v


def layout_text(v: str) -> str:
    if (problem := _text_problem(v, layout=True)) is not None:
        raise ValueError(problem)
    return v


def text(most: int, least: int = 0, *, layout: bool = False) -> Any:
    """Text of `least` to `most` characters without NUL or control characters (line breaks and tabs
    allowed where `layout`)."""
    return Annotated[
        str, Field(min_length=least, max_length=most), AfterValidator(layout_text if layout else plain_text)
    ]


Id = Annotated[str, Field(min_length=1, max_length=ID), AfterValidator(plain_text)]
Name = Annotated[str, Field(min_length=1, max_length=NAME), AfterValidator(plain_text)]
Title = Annotated[str, Field(min_length=1, max_length=TITLE), AfterValidator(plain_text)]
FreeText = Annotated[str, Field(max_length=FREE_TEXT), AfterValidator(layout_text)]
Reason = Annotated[str, Field(min_length=1, max_length=FREE_TEXT), AfterValidator(layout_text)]

H = TypeVar("H", bound=Hashable)


def deduplicated(v: Sequence[H]) -> tuple[H, ...]:
    """The items in their first order, each once."""
    return tuple(dict.fromkeys(v))


def capped(item: Any, most: int) -> Any:
    """A repeated field: at most `most` items, de-duplicated (their first order kept)."""
    return Annotated[tuple[item, ...], Field(max_length=most), AfterValidator(deduplicated)]


_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _strict_day(v: Any) -> Any:
    if isinstance(v, date):
        return v
    if not isinstance(v, str) or not _DAY.match(v):
        raise ValueError("must be a date YYYY-MM-DD")
    return v


def in_range(d: date) -> date:
    if not FIRST_DAY <= d <= LAST_DAY:
        raise ValueError(f"must be between {FIRST_DAY} and {LAST_DAY}")
    return d


Day = Annotated[date, BeforeValidator(_strict_day), AfterValidator(in_range)]


def bounded_decimal(max_digits: int = 18, decimal_places: int = 6, *, gt: Decimal | None = None) -> Any:
    """A decimal given as text, finite, with at most `max_digits` digits of which `decimal_places` after
    the point (so no arithmetic on it can overflow)."""
    return Annotated[Decimal, Field(max_digits=max_digits, decimal_places=decimal_places, allow_inf_nan=False, gt=gt)]


# --- the guard of every request, from its descriptor -------------------------------------------------


def id_like(field_name: str) -> bool:
    return field_name.endswith(("_id", "_code")) or field_name in ("id", "code")


def check_message(msg: Message, path: str = "") -> None:
    """Refuse (InvalidArgument, naming the field) a request with text or repeated fields beyond the limits,
    before any handler reads it."""
    violations: list[FieldViolation] = []
    _check(msg, path, violations)
    if violations:
        raise InvalidArgument(*violations[:20])


def _check(msg: Message, path: str, out: list[FieldViolation]) -> None:
    for fd, value in msg.ListFields():
        name = f"{path}{fd.name}"
        if fd.is_repeated:
            if len(value) > MAX_REPEATED:
                out.append(FieldViolation(name, f"at most {MAX_REPEATED} items"))
                continue
            items: list[tuple[str, Any]] = [(f"{name}[{i}]", v) for i, v in enumerate(value)]
        else:
            items = [(name, value)]
        for where, v in items:
            if fd.message_type is not None:
                _check(v, f"{where}.", out)
            elif isinstance(v, str):
                cap = PAGE_TOKEN if fd.name == "page_token" else ID if id_like(fd.name) else FREE_TEXT
                if len(v) > cap:
                    out.append(FieldViolation(where, f"at most {cap} characters"))
                elif (problem := _text_problem(v, layout=not id_like(fd.name))) is not None:
                    out.append(FieldViolation(where, problem))
