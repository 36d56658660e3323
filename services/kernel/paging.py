"""Paging for List queries: an opaque page token over a stable order, and a bounded page size."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from services.kernel.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(requested: int) -> int:
    if requested < 0 or requested > MAX_PAGE_SIZE:
        raise InvalidArgument(FieldViolation("page_size", f"must be between 0 and {MAX_PAGE_SIZE}"))
    return requested or DEFAULT_PAGE_SIZE


class BadPageToken(ValueError):
    """A page token this service did not give (a ValueError, so pydantic validators name the field)."""


def encode_key(key: Sequence[Any]) -> str:
    """An opaque page token for keyset paging: the last row's sort key."""
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_key(token: str, arity: int) -> list[Any]:
    """The sort key inside a token from `encode_key`, checked for its shape."""
    try:
        key = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, UnicodeDecodeError) as e:
        raise BadPageToken("not a page token this service gave") from e
    if not isinstance(key, list) or len(key) != arity or not all(isinstance(k, str | int) for k in key):
        raise BadPageToken("not a page token this service gave")
    return key
