"""Page tokens: a key round-trips through encode_key / decode_key with its types; anything else is refused. Pure."""

from __future__ import annotations

import base64
from datetime import date
from typing import Any

import pytest

from services.kernel.errors import InvalidArgument
from services.kernel.paging import BadPageToken, decode_key, encode_key, key_after, next_page


@pytest.mark.parametrize(
    ("key", "types", "decoded"),
    [
        (["bkg-1"], (str,), ["bkg-1"]),
        (["Ana Pérez ✈"], (str,), ["Ana Pérez ✈"]),
        ([2017, 3, "2017-03"], (int, int, str), [2017, 3, "2017-03"]),
        ([-(2**31), 2**31 - 1], (int, int), [-(2**31), 2**31 - 1]),
        (["1990-05-02", "bkg-1", 0], (date, str, int), [date(1990, 5, 2), "bkg-1", 0]),
    ],
)
def test_a_key_round_trips_with_its_types(key: list[Any], types: tuple[type, ...], decoded: list[Any]) -> None:
    token = encode_key(key)
    assert "=" not in token and token.isascii()
    assert decode_key(token, *types) == decoded


def test_a_date_is_its_iso_string_in_the_token() -> None:
    """The encoding services always gave (`date.isoformat()`), so tokens given before still decode."""
    token = encode_key([date(2043, 2, 28).isoformat(), "req-1"])
    assert decode_key(token, date, str) == [date(2043, 2, 28), "req-1"]


def raw(data: bytes) -> str:
    """A token with these bytes inside, as encode_key would wrap them."""
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@pytest.mark.parametrize(
    ("token", "types"),
    [
        ("", (str,)),
        ("!!", (str,)),  # not base64
        (raw(b"o:3"), (str,)),  # base64, not JSON
        (raw(b"\xff\xfe"), (str,)),  # not UTF-8
        (raw(b"[" * 100_000 + b"]" * 100_000), (str,)),  # nested too deep
        (raw(b"1" * 5000), (int,)),  # an int too long to read
        (raw(b'{"a": "b"}'), (str,)),  # not a list
        (raw(b'"a"'), (str,)),
        (encode_key(["a", "b"]), (str,)),  # wrong arity
        (encode_key(["a"]), (str, str)),
        (encode_key([]), (str,)),
        (encode_key([True, 1]), (int, int)),  # a JSON true is no int
        (encode_key([1.0]), (int,)),
        (encode_key(["1"]), (int,)),
        (encode_key([2**31]), (int,)),  # beyond PostgreSQL integer
        (encode_key([-(2**31) - 1]), (int,)),
        (encode_key([7]), (str,)),  # an int for text
        (encode_key([None]), (str,)),
        (encode_key([["a"]]), (str,)),
        (encode_key(["a\x00b"]), (str,)),  # text PostgreSQL cannot hold
        (encode_key(["\ud800"]), (str,)),  # a lone surrogate: not UTF-8
        (encode_key(["2017-02-30"]), (date,)),  # not a date
        (encode_key(["yesterday"]), (date,)),
        (encode_key([20170228]), (date,)),  # a date not as its ISO string
    ],
)
def test_a_token_this_service_did_not_give_is_a_bad_page_token(token: str, types: tuple[type, ...]) -> None:
    with pytest.raises(BadPageToken):
        decode_key(token, *types)


def test_key_after_is_none_for_the_first_page_and_invalid_argument_naming_page_token_for_a_bad_token() -> None:
    assert key_after("", int, str) is None
    assert key_after(encode_key([1, "a"]), int, str) == [1, "a"]
    with pytest.raises(InvalidArgument) as e:
        key_after(encode_key([True, "a"]), int, str)
    assert [v.field for v in e.value.violations] == ["page_token"]


def test_next_page_takes_the_extra_row_as_the_sign_of_a_next_page() -> None:
    rows = [{"on": date(2017, 1, d), "id": f"r{d}"} for d in range(1, 4)]
    page, token = next_page(rows, 2, lambda r: [r["on"], r["id"]])
    assert page == rows[:2]
    assert decode_key(token, date, str) == [date(2017, 1, 2), "r2"]  # a date travels as its ISO string
    assert next_page(rows, 3, lambda r: [r["id"]]) == (rows, "")
    assert next_page([], 3, lambda r: [r["id"]]) == ([], "")
