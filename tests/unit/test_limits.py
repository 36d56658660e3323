"""Limits at the edge (DESIGN.md section 11): text kinds, repeated fields, decimals, dates, echoes, and the
guard every gRPC request passes; and the status each kind of failure answers with."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import ClassVar

import asyncpg
import grpc
import pytest
from aiokafka.errors import KafkaConnectionError
from google.rpc import code_pb2, error_details_pb2
from mieux.logistics.v1 import logistics_pb2
from mieux.requests.v1 import requests_pb2
from pydantic import BaseModel, ValidationError

from services.kernel.envelope import Event
from services.kernel.errors import FieldViolation, InvalidArgument, RuleBroken
from services.kernel.faults import PoolTimeout, describe, is_transient
from services.kernel.grpckit import Undecodable, correlation_id_of, status_for, tolerant
from services.kernel.limits import (
    ECHO,
    FREE_TEXT,
    ID,
    MAX_REPEATED,
    Day,
    FreeText,
    Id,
    Name,
    Title,
    bounded_decimal,
    capped,
    check_message,
    shown,
)
from services.kernel.store import MAX_EVENT_BYTES, EventTooLarge, check_size


class Sample(BaseModel):
    id: Id = "x"
    name: Name = "x"
    title: Title = "x"
    text: FreeText = ""
    day: Day = date(2017, 1, 1)
    tags: capped(Id, 5) = ()  # type: ignore[valid-type]
    amount: bounded_decimal(12, 2) = Decimal(1)  # type: ignore[valid-type]


def refused(**fields: object) -> list[str]:
    with pytest.raises(ValidationError) as e:
        Sample(**fields)
    return [".".join(map(str, err["loc"])) for err in e.value.errors()]


@pytest.mark.parametrize("bad", ["a\x00b", "a\x07b", "tab\there", "line\nbreak", "\x9f"])
def test_ids_names_and_titles_refuse_nul_and_control_characters(bad: str) -> None:
    for field in ("id", "name", "title"):
        assert refused(**{field: bad}) == [field]


def test_free_text_may_hold_line_breaks_and_tabs_but_no_other_control_character() -> None:
    assert Sample(text="first line\n\tsecond\r\n").text.startswith("first")
    assert refused(text="bell\x07") == ["text"]
    assert refused(text="nul\x00") == ["text"]


def test_each_kind_has_its_cap() -> None:
    Sample(id="x" * ID, name="x" * 200, title="x" * 300, text="x" * FREE_TEXT)
    assert refused(id="x" * (ID + 1)) == ["id"]
    assert refused(name="x" * 201) == ["name"]
    assert refused(title="x" * 301) == ["title"]
    assert refused(text="x" * (FREE_TEXT + 1)) == ["text"]


def test_lone_surrogates_are_refused() -> None:
    assert refused(name="a\ud800b") == ["name"]


def test_dates_are_strict_and_within_2000_to_2100() -> None:
    assert Sample(day="2017-03-08").day == date(2017, 3, 8)
    assert Sample(day=date(2100, 12, 31)).day == date(2100, 12, 31)
    for bad in ("0001-01-01", "9999-12-31", "1999-12-31", "2101-01-01", "2017-02-30", "20170308", "1700000000", ""):
        assert refused(day=bad) == ["day"], bad
    assert refused(day=1700000000) == ["day"]


def test_repeated_fields_are_capped_and_deduplicated_in_order() -> None:
    assert Sample(tags=["b", "a", "b", "a", "c"]).tags == ("b", "a", "c")
    assert refused(tags=["t"] * 6) == ["tags"]
    assert refused(tags=["ok", "bad\x00"]) == ["tags.1"]


def test_decimals_are_bounded_and_finite() -> None:
    assert Sample(amount="1234567890.12").amount == Decimal("1234567890.12")
    for bad in ("1e999999", "NaN", "Infinity", "-Infinity", "12345678901.1", "1.123"):
        assert refused(amount=bad) == ["amount"], bad


def test_a_refusal_quotes_at_most_64_characters() -> None:
    assert shown("short") == "short"
    long = shown("x" * 10_000)
    assert len(long) == ECHO and long.endswith("…")
    assert shown("nul\x00") == "nul\\x00"


def test_the_request_guard_names_the_field_and_stops_before_any_handler() -> None:
    ok = requests_pb2.SubmitRequestCommand(command_id="c-1", partner="MG", title="A title\nwith a line")
    check_message(ok)
    cases = [
        (requests_pb2.SubmitRequestCommand(command_id="c\x00"), "command_id"),
        (requests_pb2.SubmitRequestCommand(command_id="c" * (ID + 1)), "command_id"),
        (requests_pb2.SubmitRequestCommand(title="x" * (FREE_TEXT + 1)), "title"),
        (requests_pb2.SubmitRequestCommand(institution="bell\x07"), "institution"),
        (requests_pb2.SubmitRequestCommand(themes=["t"] * (MAX_REPEATED + 1)), "themes"),
        (requests_pb2.SubmitRequestCommand(themes=["ok", "n\x00"]), "themes[1]"),
        (requests_pb2.ListRequestsQuery(page_token="x" * 2000), "page_token"),
    ]
    for msg, field in cases:
        with pytest.raises(InvalidArgument) as e:
            check_message(msg)
        assert [v.field for v in e.value.violations] == [field]
    nested = logistics_pb2.BookFlightCommand(segments=[logistics_pb2.Segment(origin="B\x00U")])
    with pytest.raises(InvalidArgument) as e:
        check_message(nested)
    assert [v.field for v in e.value.violations] == ["segments[0].origin"]


def test_an_unparsable_request_becomes_undecodable_not_a_grpc_failure() -> None:
    parse = tolerant(requests_pb2.SubmitRequestCommand.FromString)
    assert parse is not None
    good = requests_pb2.SubmitRequestCommand(command_id="c-1").SerializeToString()
    assert parse(good).command_id == "c-1"
    invalid_utf8 = b"\x0a\x03\xff\xfe\xfd"  # field 1 (command_id), 3 bytes that are not UTF-8
    assert isinstance(parse(invalid_utf8), Undecodable)


def test_correlation_ids_are_short_and_plain_or_replaced() -> None:
    assert correlation_id_of("corr-1.a_B") == "corr-1.a_B"
    for bad in (None, "", "x" * 65, "has space", "nul\x00", "ünïcode"):
        fresh = correlation_id_of(bad)
        assert fresh != bad and len(fresh) == 36


def code(e: BaseException) -> int:
    return status_for(e, "corr-1").code


def test_passing_faults_are_unavailable_and_never_quote_the_exception() -> None:
    for e in (
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.DeadlockDetectedError("deadlock detected"),
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.LockNotAvailableError("could not obtain lock"),
        asyncpg.TooManyConnectionsError("too many clients"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.exceptions.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
        ConnectionRefusedError(111, "Connection refused"),
        PoolTimeout("no connection"),
        KafkaConnectionError("broker away"),
    ):
        assert is_transient(e), e
        st = status_for(e, "corr-1")
        assert st.code == code_pb2.UNAVAILABLE and "corr-1" in st.message, e
        assert str(e) not in st.message


def test_anything_unexpected_is_internal_with_the_correlation_id_and_no_text() -> None:
    for e in (
        KeyError("Jane Doe"),
        ZeroDivisionError("secret"),
        asyncpg.UniqueViolationError("duplicate key value (name)=(Jane Doe)"),
        asyncpg.NumericValueOutOfRangeError("integer out of range"),
    ):
        assert not is_transient(e)
        st = status_for(e, "corr-9")
        assert st.code == code_pb2.INTERNAL and st.message == "internal error (correlation id corr-9)"


def test_described_faults_carry_the_kind_never_the_text() -> None:
    assert describe(asyncpg.UniqueViolationError("Key (name)=(Jane Doe)")) == "UniqueViolationError (SQLSTATE 23505)"
    assert describe(KeyError("Jane Doe")) == "KeyError"


def test_refusals_keep_their_codes_and_stay_small() -> None:
    assert code(RuleBroken("no")) == code_pb2.FAILED_PRECONDITION
    big = InvalidArgument(*(FieldViolation(f"f{i}", "x" * 5000) for i in range(100)))
    st = status_for(big, "c")
    assert st.code == code_pb2.INVALID_ARGUMENT and len(st.message) <= 1000
    bad = error_details_pb2.BadRequest()
    st.details[0].Unpack(bad)
    assert len(bad.field_violations) == 20 and all(len(v.description) <= 1000 for v in bad.field_violations)
    assert grpc.StatusCode.INVALID_ARGUMENT.value[0] == code_pb2.INVALID_ARGUMENT


class Noted(Event, register=False):
    source: ClassVar[str] = "test"
    note: str
    tag: str = ""


def test_an_event_over_256_kib_is_refused_naming_its_largest_field() -> None:
    small = Noted(note="x" * 1000, tag="t")
    check_size(small, small.model_dump_json())
    big = Noted(note="é" * (MAX_EVENT_BYTES // 2), tag="t")  # fewer characters than bytes: counted in bytes
    with pytest.raises(EventTooLarge) as e:
        check_size(big, big.model_dump_json())
    assert e.value.field == "note"
    st = status_for(e.value, "c")
    assert st.code == code_pb2.INVALID_ARGUMENT
    bad = error_details_pb2.BadRequest()
    st.details[0].Unpack(bad)
    assert [v.field for v in bad.field_violations] == ["note"]
