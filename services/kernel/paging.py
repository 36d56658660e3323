"""Paging for List queries: an opaque page token over a stable order, and a bounded page size."""

from __future__ import annotations

import base64

from services.kernel.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(requested: int) -> int:
    if requested < 0 or requested > MAX_PAGE_SIZE:
        raise InvalidArgument(FieldViolation("page_size", f"must be between 0 and {MAX_PAGE_SIZE}"))
    return requested or DEFAULT_PAGE_SIZE


def offset_of(token: str) -> int:
    if not token:
        return 0
    try:
        value = int(base64.urlsafe_b64decode(token.encode()).decode().removeprefix("o:"))
    except ValueError:
        raise InvalidArgument(FieldViolation("page_token", "not a page token this service gave")) from None
    if value < 0:
        raise InvalidArgument(FieldViolation("page_token", "not a page token this service gave"))
    return value


def next_token(offset: int, size: int, total: int) -> str:
    nxt = offset + size
    return base64.urlsafe_b64encode(f"o:{nxt}".encode()).decode() if nxt < total else ""
