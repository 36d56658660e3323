"""The logistics service as a child OS process against the test stack (real PostgreSQL and broker), with
a test double of the experts service over real gRPC (fixed experts) passed in as MIEUX_EXPERTS_ADDR.

Covers: input errors naming the field, broken rules in words, NOT_FOUND, ALREADY_EXISTS, duplicates,
nothing stored for a refused command, ABORTED never a silent overwrite, auth, and the read models
(bookings, team, itineraries, miles, air miles per team member) with filters and paging.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import grpc
import pytest
from mieux.common.v1 import common_pb2
from mieux.experts.v1 import experts_pb2, experts_pb2_grpc
from mieux.logistics.v1 import logistics_pb2, logistics_pb2_grpc
from support import eventually, grpc_double, grpc_stub, running_service

from services.kernel.db import Pool
from services.kernel.grpckit import call_metadata, field_violations
from services.kernel.paging import encode_key
from services.kernel.reference import statute_miles
from services.logistics.commands import booking_id_for

pytestmark = pytest.mark.integration

RPC_TIMEOUT = 20.0
EXPERTS = {"exp-active": True, "exp-retired": False}
FLAKY_EXPERT = "exp-flaky"  # the double answers UNAVAILABLE for this one


# --- the experts double and the service ----------------------------------------------------------------


class ExpertsDouble(experts_pb2_grpc.ExpertsServicer):
    """mieux.experts.v1.Experts/GetExpert with fixed experts; remembers who asked and with which token."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def GetExpert(self, request, context: grpc.aio.ServicerContext) -> experts_pb2.Expert:
        auth = dict(context.invocation_metadata() or ()).get("authorization", "")
        self.calls.append((request.expert_id, auth))
        if request.expert_id == FLAKY_EXPERT:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "experts database is down")
        if " " in request.expert_id:  # like the real service, which checks the form of an expert id
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expert_id: not an expert id")
        if request.expert_id not in EXPERTS:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"expert {request.expert_id} does not exist")
        return experts_pb2.Expert(
            expert_id=request.expert_id,
            name="Test Expert",
            gender="female",
            background="eu_ms_administration",
            nationality="BE",
            active=EXPERTS[request.expert_id],
        )


@pytest.fixture(scope="module")
async def experts() -> AsyncIterator[tuple[ExpertsDouble, int]]:
    double = ExpertsDouble()
    async with grpc_double(experts_pb2_grpc.add_ExpertsServicer_to_server, double) as port:
        yield double, port


@pytest.fixture(scope="module")
async def service(stack_env: dict[str, str], experts: tuple[ExpertsDouble, int]) -> AsyncIterator[int]:
    async with running_service("logistics", stack_env, MIEUX_EXPERTS_ADDR=f"127.0.0.1:{experts[1]}") as svc:
        yield svc.port


@pytest.fixture
async def stub(service: int) -> AsyncIterator[logistics_pb2_grpc.LogisticsStub]:
    async with grpc_stub(logistics_pb2_grpc.LogisticsStub, service) as s:
        yield s


# --- helpers --------------------------------------------------------------------------------------------


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def d(iso: str) -> common_pb2.Date:
    return common_pb2.Date(iso=iso)


def segs(*legs: tuple[str, str, str]) -> list[logistics_pb2.Segment]:
    return [logistics_pb2.Segment(origin=o, destination=t, departs_on=d(on)) for o, t, on in legs]


ROUND_TRIP = (("BRU", "SJO", "2017-03-12"), ("SJO", "BRU", "2017-03-18"))


def book_cmd(**over: Any) -> logistics_pb2.BookFlightCommand:
    f: dict[str, Any] = {
        "command_id": uid("cmd"),
        "traveller_id": "exp-active",
        "traveller_kind": "expert",
        "action_code": "2017-03",
        "activity_id": uid("act"),
        "segments": segs(*ROUND_TRIP),
        "cabin_class": "economy",
        "fare": common_pb2.Money(amount="1234.50", currency="EUR"),
        "booked_on": d("2017-02-20"),
    }
    f.update(over)
    return logistics_pb2.BookFlightCommand(**f)


def join_cmd(member_id: str, joined_on: str = "2016-01-04", **over: Any) -> logistics_pb2.JoinTeamCommand:
    f: dict[str, Any] = {
        "command_id": uid("cmd"),
        "member_id": member_id,
        "name": "Ana Pérez",
        "gender": "female",
        "role": "Project Officer",
        "joined_on": d(joined_on),
    }
    f.update(over)
    return logistics_pb2.JoinTeamCommand(**f)


class Caller:
    def __init__(self, stub: logistics_pb2_grpc.LogisticsStub, token: str) -> None:
        self.stub = stub
        self.token = token

    def __call__(self, rpc: str, request: Any) -> Awaitable[Any]:
        return getattr(self.stub, rpc)(request, metadata=call_metadata(self.token), timeout=RPC_TIMEOUT)


@pytest.fixture
def ops(stub: logistics_pb2_grpc.LogisticsStub, tokens: dict[str, str]) -> Caller:
    return Caller(stub, tokens["ops"])


@pytest.fixture
def finance(stub: logistics_pb2_grpc.LogisticsStub, tokens: dict[str, str]) -> Caller:
    return Caller(stub, tokens["finance"])


@pytest.fixture
def reader(stub: logistics_pb2_grpc.LogisticsStub, tokens: dict[str, str]) -> Caller:
    """A caller who may read the team and its bookings (ops): they name people, so finance may not."""
    return Caller(stub, tokens["ops"])


async def refused(coro: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value


async def event_count(pool: Pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM logistics.events")


async def stream_events(pool: Pool, stream_id: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT event_type FROM logistics.events WHERE stream_id = $1 ORDER BY stream_version", stream_id
    )
    return [r["event_type"] for r in rows]


async def command_rows(pool: Pool, command_id: str) -> int:
    return await pool.fetchval("SELECT count(*) FROM logistics.commands WHERE command_id = $1", command_id)


async def until(fetch: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], what: str, timeout: float = 60) -> Any:
    """The first answer of `fetch` that satisfies `ok` (the read models are eventually consistent)."""
    seen: list[Any] = [None]

    async def check() -> bool:
        try:
            seen[0] = await fetch()
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return False
        return ok(seen[0])

    await eventually(check, timeout, what)
    return seen[0]


# --- auth -----------------------------------------------------------------------------------------------


async def test_finance_reads_figures_only_and_an_anonymous_caller_nothing(
    stub: logistics_pb2_grpc.LogisticsStub, finance: Caller, pool: Pool
) -> None:
    before = await event_count(pool)
    cmd = join_cmd(uid("tm"))
    e = await refused(finance("JoinTeam", cmd))
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED and "JoinTeam" in (e.details() or "")
    e = await refused(finance("BookFlight", book_cmd()))
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED
    e = await refused(stub.ListBookings(logistics_pb2.ListBookingsQuery(), timeout=RPC_TIMEOUT))
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED
    for rpc, q in (  # they name people (travellers, team members): not finance's
        ("ListBookings", logistics_pb2.ListBookingsQuery()),
        ("ListTeam", logistics_pb2.ListTeamQuery()),
        ("ListItineraries", logistics_pb2.ListItinerariesQuery()),
        ("ListTravellerMiles", logistics_pb2.ListTravellerMilesQuery()),
    ):
        assert (await refused(finance(rpc, q))).code() == grpc.StatusCode.PERMISSION_DENIED
    await finance("GetAirMilesPerTeamMember", logistics_pb2.GetAirMilesPerTeamMemberQuery(year=2017))  # a figure
    assert await event_count(pool) == before
    assert await command_rows(pool, cmd.command_id) == 0


# --- invalid input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"segments": segs(("XQX", "SJO", "2017-03-12"))}, "segments.0.origin"),
        ({"segments": segs(("BRU", "SJO", "2017-03-12"), ("SJO", "sjo", "2017-03-18"))}, "segments.1.destination"),
        ({"segments": segs(("BRU", "SJO", "2017-02-30"))}, "segments.0.departs_on"),
        ({"segments": segs(("BRU", "SJO", "2017-03-12"), ("SJO", "BRU", "2017-03-01"))}, "segments"),
        ({"segments": []}, "segments"),
        ({"cabin_class": "premium"}, "cabin_class"),
        ({"fare": common_pb2.Money(amount="12.5.0", currency="EUR")}, "fare.amount"),
        ({"fare": common_pb2.Money(amount="0.00", currency="EUR")}, "fare.amount"),
        ({"fare": common_pb2.Money(amount="100", currency="XYZ")}, "fare.currency"),
        ({"traveller_kind": "tourist"}, "traveller_kind"),
        ({"booked_on": d("")}, "booked_on"),
        ({"action_code": "2017/3"}, "action_code"),
    ],
)
async def test_invalid_booking_input_is_invalid_argument_naming_the_field_and_stores_nothing(
    ops: Caller, pool: Pool, experts: tuple[ExpertsDouble, int], over: dict[str, Any], field: str
) -> None:
    before, asked = await event_count(pool), len(experts[0].calls)
    cmd = book_cmd(**over)
    e = await refused(ops("BookFlight", cmd))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(e)
    assert [f for f, _ in violations] == [field], violations
    assert all(description for _, description in violations)
    assert await event_count(pool) == before
    assert await command_rows(pool, cmd.command_id) == 0
    assert len(experts[0].calls) == asked  # malformed input never reaches a collaborator


async def test_invalid_team_and_query_input_names_the_fields(ops: Caller) -> None:
    e = await refused(ops("JoinTeam", join_cmd("", gender="unknown", joined_on="2017-13-01")))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {f for f, _ in field_violations(e)} == {"member_id", "gender", "joined_on"}
    e = await refused(ops("CancelFlight", logistics_pb2.CancelFlightCommand(command_id=uid("c"), booking_id="team")))
    assert {f for f, _ in field_violations(e)} == {"booking_id", "reason", "cancelled_on"}
    e = await refused(ops("ListBookings", logistics_pb2.ListBookingsQuery(status="lost", page_size=501)))
    assert {f for f, _ in field_violations(e)} == {"status", "page_size"}
    e = await refused(ops("ListTeam", logistics_pb2.ListTeamQuery(page_token="not a token")))
    assert [f for f, _ in field_violations(e)] == ["page_token"]
    e = await refused(ops("GetAirMilesPerTeamMember", logistics_pb2.GetAirMilesPerTeamMemberQuery()))
    assert [f for f, _ in field_violations(e)] == ["year"]


@pytest.mark.parametrize(
    ("rpc", "token"),
    [
        pytest.param("ListItineraries", "not a token", id="garbage"),
        pytest.param("ListItineraries", encode_key(["1990-05-02", "b"]), id="itineraries-arity"),
        pytest.param("ListItineraries", encode_key(["1990-13-01", "b", 1]), id="bad-date"),
        pytest.param("ListItineraries", encode_key([19900502, "b", 1]), id="date-not-iso"),
        pytest.param("ListItineraries", encode_key(["1990-05-02", "b", "1"]), id="string-leg"),
        pytest.param("ListItineraries", encode_key(["1990-05-02", "b", True]), id="bool-leg"),
        pytest.param("ListItineraries", encode_key(["1990-05-02", "b", 2**31]), id="leg-beyond-integer"),
        pytest.param("ListItineraries", encode_key(["1990-05-02", 7, 1]), id="int-leg-booking-id"),
        pytest.param("ListBookings", encode_key([7]), id="int-booking-id"),
        pytest.param("ListBookings", encode_key(["a\x00b"]), id="nul-in-text"),
        pytest.param("ListBookings", encode_key(["\ud800"]), id="lone-surrogate"),
        pytest.param("ListBookings", encode_key(["a", "b"]), id="bookings-arity"),
        pytest.param("ListTeam", encode_key([7]), id="int-member-id"),
        pytest.param("ListTeam", encode_key([None]), id="null-member-id"),
        pytest.param("ListTeam", "e30", id="not-a-list"),  # {} in base64
    ],
)
async def test_a_page_token_this_service_did_not_give_is_invalid_argument_naming_page_token(
    reader: Caller, rpc: str, token: str
) -> None:
    query = getattr(logistics_pb2, f"{rpc}Query")(page_token=token)
    e = await refused(reader(rpc, query))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    assert [f for f, _ in field_violations(e)] == ["page_token"]


# --- broken rules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("traveller_id", "kind", "words"),
    [
        ("exp-nobody", "expert", "not an expert"),
        ("exp bad id", "expert", "not an expert"),
        ("exp-retired", "expert", "deactivated"),
        ("tm-never-joined", "team_member", "not on the team"),
    ],
)
async def test_a_traveller_who_is_neither_an_active_expert_nor_on_the_team_is_failed_precondition(
    ops: Caller, pool: Pool, traveller_id: str, kind: str, words: str
) -> None:
    before = await event_count(pool)
    cmd = book_cmd(traveller_id=traveller_id, traveller_kind=kind)
    e = await refused(ops("BookFlight", cmd))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert words in (e.details() or "")
    assert await event_count(pool) == before
    assert await command_rows(pool, cmd.command_id) == 0


async def test_the_experts_service_is_asked_with_the_service_token(
    ops: Caller, experts: tuple[ExpertsDouble, int], tokens: dict[str, str]
) -> None:
    cmd = book_cmd()
    await ops("BookFlight", cmd)
    assert experts[0].calls[-1] == ("exp-active", f"Bearer {tokens['logistics']}")


async def test_the_experts_service_failing_is_unavailable_and_stores_nothing(ops: Caller, pool: Pool) -> None:
    before = await event_count(pool)
    e = await refused(ops("BookFlight", book_cmd(traveller_id=FLAKY_EXPERT)))
    assert e.code() == grpc.StatusCode.UNAVAILABLE
    assert "experts" in (e.details() or "")
    assert await event_count(pool) == before


async def test_team_rules_are_failed_precondition_in_words(ops: Caller, pool: Pool) -> None:
    member = uid("tm")
    await ops("JoinTeam", join_cmd(member, "2016-03-01"))
    before = await event_count(pool)
    e = await refused(ops("JoinTeam", join_cmd(member, "2016-05-01")))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "cannot join twice" in (e.details() or "")
    e = await refused(
        ops(
            "LeaveTeam",
            logistics_pb2.LeaveTeamCommand(command_id=uid("c"), member_id=uid("tm"), left_on=d("2017-01-01")),
        )
    )
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "not on the team" in (e.details() or "")
    assert await event_count(pool) == before
    await ops(
        "LeaveTeam", logistics_pb2.LeaveTeamCommand(command_id=uid("c"), member_id=member, left_on=d("2016-12-31"))
    )
    assert await stream_events(pool, "team") != []


async def test_a_cancelled_booking_is_final(ops: Caller, pool: Pool) -> None:
    ack = await ops("BookFlight", book_cmd())
    cancel = logistics_pb2.CancelFlightCommand(
        command_id=uid("c"), booking_id=ack.stream_id, reason="activity postponed", cancelled_on=d("2017-03-01")
    )
    await ops("CancelFlight", cancel)
    before = await event_count(pool)
    again = logistics_pb2.CancelFlightCommand(
        command_id=uid("c"), booking_id=ack.stream_id, reason="again", cancelled_on=d("2017-03-02")
    )
    e = await refused(ops("CancelFlight", again))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "cancelled booking is final" in (e.details() or "")
    change = logistics_pb2.ChangeFlightCommand(
        command_id=uid("c"),
        booking_id=ack.stream_id,
        segments=segs(("BRU", "SJO", "2017-04-02")),
        cabin_class="economy",
        fare=common_pb2.Money(amount="900", currency="EUR"),
        changed_on=d("2017-03-05"),
    )
    e = await refused(ops("ChangeFlight", change))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "cancelled booking is final" in (e.details() or "")
    assert await event_count(pool) == before
    assert await stream_events(pool, ack.stream_id) == ["FlightBooked", "FlightCancelled"]


# --- not found, reuse, duplicates, concurrency ------------------------------------------------------------


async def test_unknown_ids_are_not_found(ops: Caller, pool: Pool) -> None:
    before = await event_count(pool)
    unknown = booking_id_for(uid("never-booked"))
    e = await refused(
        ops(
            "CancelFlight",
            logistics_pb2.CancelFlightCommand(
                command_id=uid("c"), booking_id=unknown, reason="x", cancelled_on=d("2017-01-01")
            ),
        )
    )
    assert e.code() == grpc.StatusCode.NOT_FOUND
    e = await refused(
        ops(
            "ChangeFlight",
            logistics_pb2.ChangeFlightCommand(
                command_id=uid("c"),
                booking_id=unknown,
                segments=segs(("BRU", "SJO", "2017-04-02")),
                cabin_class="economy",
                fare=common_pb2.Money(amount="900", currency="EUR"),
                changed_on=d("2017-03-05"),
            ),
        )
    )
    assert e.code() == grpc.StatusCode.NOT_FOUND
    assert await event_count(pool) == before
    e = await refused(ops("GetBooking", logistics_pb2.GetBookingQuery(booking_id=unknown)))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    e = await refused(ops("GetTeamMember", logistics_pb2.GetTeamMemberQuery(member_id=uid("tm"))))
    assert e.code() == grpc.StatusCode.NOT_FOUND


async def test_the_same_command_twice_is_one_booking_and_the_experts_are_asked_once(
    ops: Caller, pool: Pool, experts: tuple[ExpertsDouble, int]
) -> None:
    cmd = book_cmd()
    first = await ops("BookFlight", cmd)
    asked = len(experts[0].calls)
    again = await ops("BookFlight", cmd)
    assert not first.duplicate and again.duplicate
    assert first.stream_id == again.stream_id == booking_id_for(cmd.command_id)
    assert (again.first_version, again.last_version, again.position) == (1, 1, first.position)
    assert await stream_events(pool, first.stream_id) == ["FlightBooked"]
    assert len(experts[0].calls) == asked


async def test_a_reused_command_id_with_another_payload_is_already_exists(ops: Caller, pool: Pool) -> None:
    cmd = book_cmd()
    ack = await ops("BookFlight", cmd)
    other = book_cmd(command_id=cmd.command_id, cabin_class="business")
    e = await refused(ops("BookFlight", other))
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS
    rows = await pool.fetch("SELECT data FROM logistics.events WHERE stream_id = $1", ack.stream_id)
    assert [r["data"]["cabin_class"] for r in rows] == ["economy"]


async def test_concurrent_joins_on_the_team_stream_are_aborted_never_overwritten(ops: Caller, pool: Pool) -> None:
    members = [uid("tm") for _ in range(8)]
    results = await asyncio.gather(
        *(ops("JoinTeam", join_cmd(m, "2015-01-05")) for m in members), return_exceptions=True
    )
    for r in results:
        assert not isinstance(r, BaseException) or (
            isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.ABORTED
        ), r
    ok = [m for m, r in zip(members, results, strict=True) if not isinstance(r, BaseException)]
    stored = await pool.fetch(
        "SELECT data->>'member_id' AS m FROM logistics.events "
        "WHERE stream_id = 'team' AND data->>'member_id' = ANY($1)",
        members,
    )
    assert sorted(r["m"] for r in stored) == sorted(ok)
    versions = await pool.fetch("SELECT stream_version FROM logistics.events WHERE stream_id = 'team' ORDER BY 1")
    assert [r["stream_version"] for r in versions] == list(range(1, len(versions) + 1))


# --- read models ------------------------------------------------------------------------------------------


async def test_a_booking_changed_then_cancelled_reads_back_with_its_miles(ops: Caller, reader: Caller) -> None:
    ack = await ops("BookFlight", book_cmd(action_code="2017-07"))
    bid = ack.stream_id
    booking = await until(
        lambda: reader("GetBooking", logistics_pb2.GetBookingQuery(booking_id=bid)), lambda b: True, "the booking"
    )
    expected = statute_miles("BRU", "SJO") + statute_miles("SJO", "BRU")
    assert (booking.status, booking.year, booking.action_code, booking.cabin_class) == (
        "booked",
        2017,
        "2017-07",
        "economy",
    )
    assert [(s.origin, s.destination, s.departs_on.iso) for s in booking.segments] == list(ROUND_TRIP)
    assert Decimal(booking.statute_miles) == expected
    assert (booking.fare.amount, booking.fare.currency) == ("1234.50", "EUR")

    await ops(
        "ChangeFlight",
        logistics_pb2.ChangeFlightCommand(
            command_id=uid("c"),
            booking_id=bid,
            segments=segs(("BRU", "MAD", "2018-01-08"), ("MAD", "SJO", "2018-01-08")),
            cabin_class="business",
            fare=common_pb2.Money(amount="3100", currency="USD"),
            changed_on=d("2017-03-01"),
        ),
    )
    booking = await until(
        lambda: reader("GetBooking", logistics_pb2.GetBookingQuery(booking_id=bid)),
        lambda b: b.changes == 1,
        "the change",
    )
    assert (booking.year, booking.cabin_class, booking.fare.currency) == (2018, "business", "USD")
    assert Decimal(booking.statute_miles) == statute_miles("BRU", "MAD") + statute_miles("MAD", "SJO")
    assert [s.destination for s in booking.segments] == ["MAD", "SJO"]

    await ops(
        "CancelFlight",
        logistics_pb2.CancelFlightCommand(
            command_id=uid("c"), booking_id=bid, reason="visa refused", cancelled_on=d("2017-12-01")
        ),
    )
    booking = await until(
        lambda: reader("GetBooking", logistics_pb2.GetBookingQuery(booking_id=bid)),
        lambda b: b.status == "cancelled",
        "the cancellation",
    )
    assert (booking.cancel_reason, booking.cancelled_on.iso) == ("visa refused", "2017-12-01")


async def test_list_bookings_filters_and_pages(ops: Caller, reader: Caller) -> None:
    traveller = uid("tm")
    await ops("JoinTeam", join_cmd(traveller, "2012-01-02"))
    action = f"2013-{uuid.uuid4().int % 900 + 100}"  # an action code no other test uses
    ids = []
    for i in range(5):
        ack = await ops(
            "BookFlight",
            book_cmd(
                traveller_id=traveller,
                traveller_kind="team_member",
                action_code=action,
                segments=segs(("BRU", "DKR", f"{2013 + i % 2}-05-0{i + 1}")),
                booked_on=d("2013-01-10"),
            ),
        )
        ids.append(ack.stream_id)
    await ops(
        "CancelFlight",
        logistics_pb2.CancelFlightCommand(
            command_id=uid("c"), booking_id=ids[0], reason="x", cancelled_on=d("2013-02-01")
        ),
    )

    async def listed(**q: Any) -> list[str]:
        page = await reader("ListBookings", logistics_pb2.ListBookingsQuery(**q))
        return [b.booking_id for b in page.bookings]

    await until(lambda: listed(action_code=action), lambda r: len(r) == 5, "the bookings")
    await until(lambda: listed(action_code=action, status="cancelled"), lambda r: r == [ids[0]], "the cancellation")
    assert sorted(await listed(action_code=action)) == sorted(ids)
    assert sorted(await listed(traveller_id=traveller, year=2013)) == sorted(ids[0::2])
    assert sorted(await listed(traveller_id=traveller, year=2014)) == sorted(ids[1::2])
    assert sorted(await listed(action_code=action, status="booked")) == sorted(ids[1:])
    assert await listed(action_code=action, traveller_kind="expert") == []

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await reader(
            "ListBookings", logistics_pb2.ListBookingsQuery(action_code=action, page_size=2, page_token=token)
        )
        seen += [b.booking_id for b in page.bookings]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3 and len(seen) == 5 and sorted(seen) == sorted(ids)


async def test_team_list_itineraries_miles_and_air_miles_per_team_member(ops: Caller, reader: Caller) -> None:
    """In 2001 (a year no other test uses): two members on the team at some time, one of them left; one
    expert. Air miles per member = team members' non-cancelled 2001 flights / 2."""
    year = 2001
    a, b, c = uid("tm"), uid("tm"), uid("tm")
    await ops("JoinTeam", join_cmd(a, "2000-06-01"))
    await ops("JoinTeam", join_cmd(b, "2001-03-01", name="Ben Ode", gender="male"))
    await ops("LeaveTeam", logistics_pb2.LeaveTeamCommand(command_id=uid("c"), member_id=b, left_on=d("2001-09-30")))
    await ops("JoinTeam", join_cmd(c, "2002-01-07"))  # not on the team in 2001
    activity = uid("act")

    def book_for(traveller: str, kind: str, legs: tuple[tuple[str, str, str], ...]) -> Awaitable[Any]:
        return ops(
            "BookFlight",
            book_cmd(
                traveller_id=traveller,
                traveller_kind=kind,
                activity_id=activity,
                action_code="2001-01",
                segments=segs(*legs),
                booked_on=d("2001-04-01"),
            ),
        )

    await book_for(a, "team_member", (("BRU", "NBO", "2001-05-02"), ("NBO", "BRU", "2001-05-09")))
    await book_for(b, "team_member", (("BRU", "LIM", "2001-06-02"),))
    await book_for("exp-active", "expert", (("BRU", "NBO", "2001-05-02"),))
    dropped = await book_for(a, "team_member", (("BRU", "BKK", "2001-07-01"),))
    await ops(
        "CancelFlight",
        logistics_pb2.CancelFlightCommand(
            command_id=uid("c"), booking_id=dropped.stream_id, reason="x", cancelled_on=d("2001-05-01")
        ),
    )
    team_miles = 2 * statute_miles("BRU", "NBO") + statute_miles("BRU", "LIM")

    air = await until(
        lambda: reader("GetAirMilesPerTeamMember", logistics_pb2.GetAirMilesPerTeamMemberQuery(year=year)),
        lambda r: Decimal(r.team_statute_miles) == team_miles and r.team_members == 2,
        "air miles per team member",
    )
    assert Decimal(air.miles_per_member) == (team_miles / 2).quantize(Decimal(1))

    # itineraries per activity (cancelled left out unless asked) and per traveller
    everything = logistics_pb2.ListItinerariesQuery(activity_id=activity, include_cancelled=True)
    await until(
        lambda: reader("ListItineraries", everything),
        lambda p: len(p.legs) == 5 and sum(x.cancelled for x in p.legs) == 1,
        "every leg, the cancelled one flagged",
    )
    legs = await reader("ListItineraries", logistics_pb2.ListItinerariesQuery(activity_id=activity, page_size=2))
    all_legs, token = list(legs.legs), legs.next_page_token
    while token:
        p = await reader(
            "ListItineraries", logistics_pb2.ListItinerariesQuery(activity_id=activity, page_size=2, page_token=token)
        )
        all_legs += p.legs
        token = p.next_page_token
    assert sorted((x.traveller_id, x.origin, x.destination) for x in all_legs) == sorted(
        [(a, "BRU", "NBO"), ("exp-active", "BRU", "NBO"), (a, "NBO", "BRU"), (b, "BRU", "LIM")]
    )
    assert [x.departs_on.iso for x in all_legs] == ["2001-05-02", "2001-05-02", "2001-05-09", "2001-06-02"]
    assert len(all_legs) == 4 and not any(x.cancelled for x in all_legs)
    with_cancelled = await reader(
        "ListItineraries", logistics_pb2.ListItinerariesQuery(traveller_id=a, year=year, include_cancelled=True)
    )
    assert [(x.destination, x.cancelled) for x in with_cancelled.legs] == [
        ("NBO", False),
        ("BRU", False),
        ("BKK", True),
    ]

    miles = await reader(
        "ListTravellerMiles", logistics_pb2.ListTravellerMilesQuery(year=year, traveller_kind="team_member")
    )
    by_traveller = {(r.traveller_id, r.year): (r.flights, Decimal(r.statute_miles)) for r in miles.rows}
    assert by_traveller[(a, year)] == (2, 2 * statute_miles("BRU", "NBO"))
    assert by_traveller[(b, year)] == (1, statute_miles("BRU", "LIM"))

    # the team: by year, by status, member detail, paging
    async def team(**q: Any) -> set[str]:
        out: set[str] = set()
        token = ""
        while True:
            p = await reader("ListTeam", logistics_pb2.ListTeamQuery(page_size=1, page_token=token, **q))
            assert len(p.members) <= 1
            out |= {m.member_id for m in p.members}
            token = p.next_page_token
            if not token:
                return out

    await until(  # the team stream is one ordered stream: c joined after b left
        lambda: reader("GetTeamMember", logistics_pb2.GetTeamMemberQuery(member_id=c)), lambda m: True, "c on the team"
    )
    in_2001 = await team(year=year)
    assert {a, b} <= in_2001 and c not in in_2001
    assert b in await team(status="left") and a not in await team(status="left")
    member = await reader("GetTeamMember", logistics_pb2.GetTeamMemberQuery(member_id=b))
    assert (member.name, member.gender, member.status) == ("Ben Ode", "male", "left")
    assert [(s.joined_on.iso, s.left_on.iso) for s in member.stints] == [("2001-03-01", "2001-09-30")]


# --- rebuild --------------------------------------------------------------------------------------------

# Only rows from this store's events: other modules' tests (carbon's) publish logistics-shaped envelopes
# straight to the topic, which the live projections see and a rebuild from ReadAll rightly does not.
OURS = "(SELECT DISTINCT stream_id FROM logistics.events)"
MEMBERS = "(SELECT data->>'member_id' FROM logistics.events WHERE stream_id = 'team')"
SNAPSHOTS = {
    "logistics_bookings": (
        f"SELECT * FROM logistics_views.bookings WHERE booking_id IN {OURS} ORDER BY booking_id",
        f"SELECT * FROM logistics_views.booking_legs WHERE booking_id IN {OURS} ORDER BY booking_id, leg",
    ),
    "logistics_team": (
        f"SELECT * FROM logistics_views.team_members WHERE member_id IN {MEMBERS} ORDER BY member_id",
        f"SELECT * FROM logistics_views.team_stints WHERE member_id IN {MEMBERS} ORDER BY member_id, joined_on",
    ),
}


async def test_a_rebuild_gives_the_live_read_models(
    ops: Caller, pool: Pool, stack_env: dict[str, str], service: int
) -> None:
    """Runs last: every read model, rebuilt from the service's ReadAll, equals the live one."""
    await ops("BookFlight", book_cmd())  # at least one booking and one member even when run alone
    await ops("JoinTeam", join_cmd(uid("member")))

    async def caught_up() -> bool:
        for name in SNAPSHOTS:
            missing = await pool.fetchval(
                "SELECT count(*) FROM logistics.events e WHERE NOT EXISTS "
                "(SELECT 1 FROM logistics_projections.tracking t WHERE t.projection = $1 AND t.event_id = e.event_id)",
                name,
            )
            if missing:
                return False
        return True

    await eventually(caught_up, 60, "the projections to catch up")
    for name, queries in SNAPSHOTS.items():
        live = [[dict(r) for r in await pool.fetch(q)] for q in queries]
        assert live[0], name
        env = {**stack_env, "MIEUX_LOGISTICS_ADDR": f"127.0.0.1:{service}"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.ops.cli",
            "projections",
            "rebuild",
            name,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        assert "rebuilt" in out.decode()
        assert [[dict(r) for r in await pool.fetch(q)] for q in queries] == live, name
