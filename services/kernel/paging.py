"""Paging for List queries: an opaque page token over a stable order, and a bounded page size."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any, TypeVar

from services.kernel.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
R = TypeVar("R")
INT_MIN, INT_MAX = -(2**31), 2**31 - 1  # PostgreSQL `integer`, the type of every int key column


def page_size(requested: int) -> int:
    if requested < 0 or requested > MAX_PAGE_SIZE:
        raise InvalidArgument(FieldViolation("page_size", f"must be between 0 and {MAX_PAGE_SIZE}"))
    return requested or DEFAULT_PAGE_SIZE


class BadPageToken(ValueError):
    """A page token this service did not give (a ValueError, so pydantic validators name the field)."""


NOT_OURS = "not a page token this service gave"


def encode_key(key: Sequence[Any]) -> str:
    """An opaque page token for keyset paging: the last row's sort key (a date as its ISO string)."""
    parts = [k.isoformat() if isinstance(k, date) else k for k in key]
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


def next_page(rows: Sequence[R], size: int, key: Callable[[R], Sequence[Any]]) -> tuple[list[R], str]:
    """Rows fetched with LIMIT size + 1 (the extra row says that a next page exists): the page, and the
    next page's token, the key of the page's last row ("" on the last page)."""
    page = list(rows[:size])
    return page, encode_key(key(page[-1])) if len(rows) > size else ""


def decode_key(token: str, *types: type) -> list[Any]:
    """The sort key inside a token from `encode_key`, one part per type given, each checked for it:
    `str` (text PostgreSQL can hold), `int` (an int, not a JSON true, within PostgreSQL `integer`) or
    `date` (its ISO string in the token, returned as a `date`). BadPageToken for anything else."""
    try:
        key = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError; RecursionError: deep nesting
        raise BadPageToken(NOT_OURS) from e
    if not isinstance(key, list) or len(key) != len(types):
        raise BadPageToken(NOT_OURS)
    return [_part(k, t) for k, t in zip(key, types, strict=True)]


def _part(k: Any, t: type) -> Any:
    # `type(k) is`, not isinstance: a JSON true is a Python bool, which is an int
    if t is int and type(k) is int and INT_MIN <= k <= INT_MAX:
        return k
    if t in (str, date) and type(k) is str and _pg_text(k):
        try:
            return k if t is str else date.fromisoformat(k)
        except ValueError:
            pass
    raise BadPageToken(NOT_OURS)


def _pg_text(s: str) -> bool:
    """Text PostgreSQL can hold: encodable as UTF-8 (a JSON escape can give a lone surrogate), no NUL."""
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in s


def key_after(token: str, *types: type) -> list[Any] | None:
    """`decode_key` for a List query: None for the first page (no token), INVALID_ARGUMENT naming
    `page_token` for a token this service did not give."""
    if not token:
        return None
    try:
        return decode_key(token, *types)
    except BadPageToken as e:
        raise InvalidArgument(FieldViolation("page_token", str(e))) from e


async def estimated_total(
    pool: Any, from_where: str, args: Sequence[Any], *, first_page: bool, shown: int, more: bool
) -> int:
    """The `total` of a List page, never a count over the table: exact when the first page holds every
    match (no page token, no next page); otherwise the planner's row estimate for `from_where` (the
    statement's FROM and WHERE, with `args`), from the table's statistics, and at least the rows known
    to exist (this page's, plus one if a next page exists). `pool` is the kernel's Pool."""
    if first_page and not more:
        return shown
    plan = await pool.fetchval(f"EXPLAIN (FORMAT JSON) SELECT 1 {from_where}", *args)
    if isinstance(plan, str):  # json, not jsonb: no codec decodes it
        plan = json.loads(plan)
    return max(int(plan[0]["Plan"]["Plan Rows"]), shown + (1 if more else 0))
