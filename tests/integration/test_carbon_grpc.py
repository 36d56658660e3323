"""The carbon service as a child OS process against the test stack: its policy on the logistics topic
(FlightBooked / FlightChanged / FlightCancelled published here as envelopes), its commands and queries
over gRPC, errors and status codes, idempotency, read models with filters and paging, and roles."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal
from typing import Any

import asyncpg
import grpc
import pytest
from mieux.carbon.v1 import carbon_pb2, carbon_pb2_grpc
from mieux.common.v1 import common_pb2
from support import eventually, grpc_stub, make_envelope, running_service, signed

from services.carbon.commands import PurchaseOffsets
from services.carbon.queries import CarbonQueries
from services.kernel import bus
from services.kernel.db import Pool
from services.kernel.envelope import Envelope, topic_for
from services.kernel.grpckit import call_metadata, field_violations
from services.kernel.paging import encode_key
from services.kernel.policy import command_id_for
from services.kernel.settings import Settings
from services.logistics.events import Fare, FlightBooked, FlightCancelled, FlightChanged, Segment

pytestmark = pytest.mark.integration

RPC_TIMEOUT = 15.0
LOGISTICS = topic_for("logistics")


# --- the service process -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def carbon(stack_env: dict[str, str]) -> AsyncIterator[int]:
    async with running_service("carbon", stack_env) as svc:
        yield svc.port


@pytest.fixture
async def stub(carbon: int) -> AsyncIterator[carbon_pb2_grpc.CarbonStub]:
    async with grpc_stub(carbon_pb2_grpc.CarbonStub, carbon) as s:
        yield s


async def refused(coro: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value


async def events_of(pool: Pool, stream_id: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM carbon.events WHERE stream_id = $1 ORDER BY stream_version", stream_id)


async def event_count(pool: Pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM carbon.events")


# --- logistics events, published as the logistics service would ------------------------------------------


def envelope(event: Any, stream_id: str, version: int) -> Envelope:
    return make_envelope(
        event.event_type,
        event.model_dump(mode="json"),
        stream_id=stream_id,
        version=version,
        source="logistics",
        position=version,
        correlation_id=f"corr-{stream_id}",
        actor="dev-service",
    )


async def publish(*envs: Envelope) -> None:
    settings = Settings()
    await bus.ensure_topics(settings, [LOGISTICS])
    producer = bus.producer(settings)
    await producer.start()
    try:
        for m in signed(LOGISTICS, envs):  # as the logistics service's relay publishes them
            await producer.send_and_wait(LOGISTICS, m.value, key=m.key, headers=m.headers)
    finally:
        await producer.stop()


def flight_booked(
    booking_id: str,
    legs: list[tuple[str, str, str]],
    cabin: str = "economy",
    kind: str = "expert",
    action_code: str | None = "2017-03",
) -> FlightBooked:
    return FlightBooked(
        booking_id=booking_id,
        traveller_id=f"trav-{booking_id}",
        traveller_kind=kind,  # type: ignore[arg-type]
        action_code=action_code,
        activity_id=f"{action_code}/A1" if action_code else None,
        segments=tuple(Segment(origin=o, destination=d, departs_on=date.fromisoformat(on)) for o, d, on in legs),
        cabin_class=cabin,  # type: ignore[arg-type]
        fare=Fare(amount="812.40", currency="EUR"),
        booked_on=date(2017, 4, 1),
    )


def new_booking() -> str:
    return f"booking-{uuid.uuid4()}"


async def wait_events(pool: Pool, stream_id: str, n: int) -> list[asyncpg.Record]:
    async def enough() -> bool:
        return len(await events_of(pool, stream_id)) >= n

    await eventually(enough, 90, f"{n} events on {stream_id}")
    return await events_of(pool, stream_id)


async def wait_flight(
    stub: carbon_pb2_grpc.CarbonStub, token: str, booking_id: str, version: int
) -> carbon_pb2.FlightEmissions:
    found: dict[str, carbon_pb2.FlightEmissions] = {}

    async def projected() -> bool:
        try:
            r = await stub.GetFlightEmissions(
                carbon_pb2.GetFlightEmissionsQuery(booking_id=booking_id),
                metadata=call_metadata(token),
                timeout=RPC_TIMEOUT,
            )
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        found["r"] = r
        return r.version >= version

    await eventually(projected, 60, f"the read model of {booking_id} at version {version}")
    return found["r"]


# --- the policy: flights become emissions ----------------------------------------------------------------


async def test_lhr_nbo_economy_is_recorded_once_even_when_redelivered(stub, pool, tokens) -> None:
    booking = new_booking()
    env = envelope(flight_booked(booking, [("LHR", "NBO", "2017-05-02")]), booking, 1)
    await publish(env, env)  # delivered twice
    [row] = await wait_events(pool, f"emissions-{booking}", 1)
    assert row["event_type"] == "FlightEmissionsCalculated"
    assert row["causation_id"] == str(env.event_id) and row["correlation_id"] == env.correlation_id
    data = row["data"]
    assert abs(Decimal(data["kg_co2e"]) - 799) < 1
    assert (data["method"], data["factor_year"], data["radiative_forcing"]) == ("DESNZ", 2025, True)
    assert data["distance_uplift_applied"] is False
    [seg] = data["segments"]
    assert abs(Decimal(seg["distance_km"]) - 6828) < 2
    assert (seg["haul"], seg["kg_co2e_per_pkm"]) == ("long_haul_uk", "0.11704")

    r = await wait_flight(stub, tokens["ops"], booking, 1)
    assert (r.status, r.traveller_kind, r.action_code, r.cabin_class) == ("recorded", "expert", "2017-03", "economy")
    assert r.kg_co2e == data["kg_co2e"] and r.segments[0].factor_id == "desnz-2025-long-haul-uk-economy-with-rf"
    assert r.departure_year == 2017 and r.factor_set.startswith("DESNZ 2025")
    # the second delivery was handled too (same command id) and stored nothing more
    commands = await pool.fetchval(
        "SELECT count(*) FROM carbon.commands WHERE command_id = $1", command_id_for("flight_emissions", env)
    )
    assert commands == 1
    assert len(await events_of(pool, f"emissions-{booking}")) == 1


async def test_bru_sjo_business_uses_the_international_business_factor(stub, pool, tokens) -> None:
    booking = new_booking()
    await publish(envelope(flight_booked(booking, [("BRU", "SJO", "2017-09-11")], cabin="business"), booking, 1))
    r = await wait_flight(stub, tokens["ops"], booking, 1)
    [seg] = r.segments
    assert (seg.haul, seg.factor_cabin_class, seg.kg_co2e_per_pkm) == ("international_non_uk", "business", "0.31656")
    assert seg.factor_id == "desnz-2025-international-non-uk-business-with-rf"
    assert Decimal(r.kg_co2e) == (Decimal(seg.distance_km) * Decimal("0.31656")).quantize(Decimal("0.001"))


async def test_a_change_reverses_and_recalculates(stub, pool, tokens) -> None:
    booking = new_booking()
    booked = flight_booked(booking, [("LHR", "NBO", "2017-05-02")])
    changed = FlightChanged(
        booking_id=booking,
        traveller_id=booked.traveller_id,
        traveller_kind="expert",
        segments=(
            Segment(origin="BRU", destination="LHR", departs_on=date(2017, 5, 3)),
            Segment(origin="LHR", destination="NBO", departs_on=date(2017, 5, 3)),
        ),
        cabin_class="premium_economy",
        fare=Fare(amount="990.00", currency="EUR"),
        changed_on=date(2017, 4, 20),
    )
    await publish(envelope(booked, booking, 1), envelope(changed, booking, 2))
    rows = await wait_events(pool, f"emissions-{booking}", 3)
    assert [r["event_type"] for r in rows] == [
        "FlightEmissionsCalculated",
        "FlightEmissionsReversed",
        "FlightEmissionsCalculated",
    ]
    first, reversal, second = (r["data"] for r in rows)
    assert reversal["kg_co2e"] == first["kg_co2e"] and reversal["segments"] == first["segments"]
    assert reversal["reverses_version"] == 1 and reversal["cause"] == "changed"
    assert [s["haul"] for s in second["segments"]] == ["short_haul_uk", "long_haul_uk"]
    # short haul has no premium economy row: the average factor, said so
    assert second["segments"][0]["factor_cabin_class"] == "average" and second["segments"][0]["fallback"]
    assert second["action_code"] == "2017-03"  # kept from the booking
    r = await wait_flight(stub, tokens["ops"], booking, 3)
    assert (r.status, r.calculations, r.reversals, r.cabin_class) == ("recorded", 2, 1, "premium_economy")
    assert r.kg_co2e == second["kg_co2e"]


async def test_a_cancellation_reverses_exactly_what_was_recorded(stub, pool, tokens) -> None:
    booking = new_booking()
    action = f"2099-{uuid.uuid4().hex[:6]}"
    booked = flight_booked(booking, [("NBO", "ADD", "2017-07-01"), ("ADD", "BRU", "2017-07-05")], action_code=action)
    cancelled = FlightCancelled(
        booking_id=booking, traveller_id=booked.traveller_id, reason="activity postponed", cancelled_on=date(2017, 6, 1)
    )
    await publish(envelope(booked, booking, 1), envelope(cancelled, booking, 2))
    first, reversal = (r["data"] for r in await wait_events(pool, f"emissions-{booking}", 2))
    recorded = {k: v for k, v in first.items() if k not in ("calculated_on", "cause")}
    assert {k: reversal[k] for k in recorded} == recorded
    assert reversal["cause"] == "cancelled"
    r = await wait_flight(stub, tokens["ops"], booking, 2)
    assert (r.status, r.reversals) == ("cancelled", 1)

    async def footprint_nets_to_zero() -> bool:
        row = await pool.fetchrow("SELECT * FROM carbon_views.footprint WHERE action_code = $1", action)
        return row is not None and row["flights"] == 0

    await eventually(footprint_nets_to_zero, 60, "the footprint to take the flight back")
    row = await pool.fetchrow("SELECT * FROM carbon_views.footprint WHERE action_code = $1", action)
    assert (row["kg_co2e"], row["distance_km"]) == (0, 0)


async def test_an_unknown_booking_is_not_found(stub, tokens) -> None:
    e = await refused(
        stub.GetFlightEmissions(
            carbon_pb2.GetFlightEmissionsQuery(booking_id="booking-none"),
            metadata=call_metadata(tokens["ops"]),
            timeout=RPC_TIMEOUT,
        )
    )
    assert e.code() == grpc.StatusCode.NOT_FOUND


async def test_list_flight_emissions_filters_and_pages(stub, pool, tokens) -> None:
    action = f"2098-{uuid.uuid4().hex[:6]}"
    experts = [new_booking() for _ in range(3)]
    members = [new_booking() for _ in range(2)]
    envs = [envelope(flight_booked(b, [("BRU", "DKR", "2016-11-02")], action_code=action), b, 1) for b in experts]
    envs += [
        envelope(flight_booked(b, [("BRU", "DKR", "2017-01-02")], kind="team_member", action_code=action), b, 1)
        for b in members
    ]
    await publish(*envs)
    for b in experts + members:
        await wait_flight(stub, tokens["ops"], b, 1)

    async def listing(**q: Any) -> carbon_pb2.FlightEmissionsPage:
        return await stub.ListFlightEmissions(
            carbon_pb2.ListFlightEmissionsQuery(action_code=action, **q),
            metadata=call_metadata(tokens["ops"]),
            timeout=RPC_TIMEOUT,
        )

    assert {f.booking_id for f in (await listing()).flight_emissions} == set(experts + members)
    assert {f.booking_id for f in (await listing(traveller_kind="team_member")).flight_emissions} == set(members)
    assert {f.booking_id for f in (await listing(year=2016)).flight_emissions} == set(experts)
    assert (await listing(year=2016, traveller_kind="team_member")).flight_emissions == []
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await listing(page_size=2, page_token=token)
        pages += 1
        assert len(page.flight_emissions) <= 2
        seen += [f.booking_id for f in page.flight_emissions]
        token = page.next_page_token
        if not token:
            break
    assert pages == 3 and sorted(seen) == sorted(experts + members) and len(seen) == 5

    e = await refused(listing(traveller_kind="astronaut"))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(e)] == ["traveller_kind"]


# --- offsets ---------------------------------------------------------------------------------------------


def purchase_command(command_id: str | None = None, **over: Any) -> carbon_pb2.PurchaseOffsetsCommand:
    f: dict[str, Any] = {
        "command_id": command_id or f"test-{uuid.uuid4()}",
        "registry": "Gold Standard",
        "project": "African Biomass Energy Conservation PoA",
        "vintage_year": 2016,
        "quantity": 3750,
        "unit_price": common_pb2.Money(amount="4.50", currency="EUR"),
        "purchased_on": common_pb2.Date(iso="2017-12-12"),
    }
    f.update(over)
    return carbon_pb2.PurchaseOffsetsCommand(**f)


def lot_of(command_id: str) -> str:
    return PurchaseOffsets(
        command_id=command_id,
        registry="r",
        project="p",
        vintage_year=2016,
        quantity=1,
        unit_price={"amount": "1", "currency": "EUR"},  # type: ignore[arg-type]
        purchased_on=date(2017, 1, 1),
    ).lot_id


async def purchase(stub, token: str, cmd: carbon_pb2.PurchaseOffsetsCommand) -> common_pb2.CommandAck:
    return await stub.PurchaseOffsets(cmd, metadata=call_metadata(token), timeout=RPC_TIMEOUT)


async def retire(stub, token: str, **f: Any) -> common_pb2.CommandAck:
    f.setdefault("command_id", f"test-{uuid.uuid4()}")
    f.setdefault("against_year", 2017)
    f.setdefault("retired_on", common_pb2.Date(iso="2017-12-20"))
    return await stub.RetireOffsets(
        carbon_pb2.RetireOffsetsCommand(**f), metadata=call_metadata(token), timeout=RPC_TIMEOUT
    )


async def wait_lot(stub, token: str, lot_id: str, version: int) -> carbon_pb2.OffsetLot:
    found: dict[str, carbon_pb2.OffsetLot] = {}

    async def projected() -> bool:
        try:
            found["r"] = await stub.GetOffsetLot(
                carbon_pb2.GetOffsetLotQuery(lot_id=lot_id), metadata=call_metadata(token), timeout=RPC_TIMEOUT
            )
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return found["r"].version >= version

    await eventually(projected, 60, f"lot {lot_id} at version {version}")
    return found["r"]


async def test_purchase_then_retire_and_read_the_lot(stub, pool, tokens) -> None:
    cmd = purchase_command()
    ack = await purchase(stub, tokens["ops"], cmd)
    assert ack.stream_id == lot_of(cmd.command_id) and (ack.first_version, ack.last_version) == (1, 1)
    await retire(stub, tokens["ops"], lot_id=ack.stream_id, quantity=3000)
    await retire(stub, tokens["admin"], lot_id=ack.stream_id, quantity=750, against_year=2018)
    lot = await wait_lot(stub, tokens["finance"], ack.stream_id, 3)
    assert (lot.quantity, lot.retired, lot.remaining) == (3750, 3750, 0)
    assert (lot.unit_price.amount, lot.total_cost.amount, lot.total_cost.currency) == ("4.50", "16875.00", "EUR")
    assert [(r.quantity, r.against_year) for r in lot.retirements] == [(3000, 2017), (750, 2018)]
    assert lot.purchased_on.iso == "2017-12-12"
    rows = await events_of(pool, ack.stream_id)
    assert [r["event_type"] for r in rows] == ["OffsetsPurchased", "OffsetsRetired", "OffsetsRetired"]
    assert rows[1]["actor"] == "dev-ops" and rows[2]["actor"] == "dev-admin"


async def test_retiring_more_than_the_lot_holds_is_failed_precondition_and_stores_nothing(stub, pool, tokens) -> None:
    ack = await purchase(stub, tokens["ops"], purchase_command(quantity=10))
    before = await event_count(pool)
    command_id = f"test-{uuid.uuid4()}"
    e = await refused(retire(stub, tokens["ops"], command_id=command_id, lot_id=ack.stream_id, quantity=11))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "holds 10 VERs" in (e.details() or "") and "no more than that can be retired" in (e.details() or "")
    assert await event_count(pool) == before
    assert len(await events_of(pool, ack.stream_id)) == 1
    assert await pool.fetchval("SELECT count(*) FROM carbon.commands WHERE command_id = $1", command_id) == 0
    # the same command id may then be used for a retirement the lot allows
    ok = await retire(stub, tokens["ops"], command_id=command_id, lot_id=ack.stream_id, quantity=10)
    assert (ok.first_version, ok.duplicate) == (2, False)


async def test_retiring_from_an_unknown_lot_is_not_found(stub, pool, tokens) -> None:
    before = await event_count(pool)
    e = await refused(retire(stub, tokens["ops"], lot_id=f"lot-{uuid.uuid4()}", quantity=1))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    assert await event_count(pool) == before
    e = await refused(
        stub.GetOffsetLot(
            carbon_pb2.GetOffsetLotQuery(lot_id="lot-none"), metadata=call_metadata(tokens["ops"]), timeout=RPC_TIMEOUT
        )
    )
    assert e.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"quantity": 0}, "quantity"),
        ({"quantity": -5}, "quantity"),
        ({"unit_price": common_pb2.Money(amount="4,50", currency="EUR")}, "unit_price.amount"),
        ({"unit_price": common_pb2.Money(amount="4.50", currency="XXY")}, "unit_price.currency"),
        ({"purchased_on": common_pb2.Date(iso="2017-02-30")}, "purchased_on"),
        ({"registry": ""}, "registry"),
        ({"vintage_year": 0}, "vintage_year"),
    ],
)
async def test_invalid_purchase_is_invalid_argument_naming_the_field(stub, pool, tokens, over, field) -> None:
    before = await event_count(pool)
    cmd = purchase_command(**over)
    e = await refused(purchase(stub, tokens["ops"], cmd))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(e)] == [field]
    assert await event_count(pool) == before
    assert await pool.fetchval("SELECT count(*) FROM carbon.commands WHERE command_id = $1", cmd.command_id) == 0


async def test_a_purchase_without_a_price_names_the_price(stub, tokens) -> None:
    cmd = purchase_command()
    cmd.ClearField("unit_price")
    e = await refused(purchase(stub, tokens["ops"], cmd))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(e)] == ["unit_price"]


async def test_an_invalid_retirement_names_the_field(stub, pool, tokens) -> None:
    ack = await purchase(stub, tokens["ops"], purchase_command(quantity=5))
    e = await refused(retire(stub, tokens["ops"], lot_id=ack.stream_id, quantity=0))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(e)] == ["quantity"]
    assert len(await events_of(pool, ack.stream_id)) == 1


async def test_the_same_purchase_twice_is_one_lot_and_another_payload_is_already_exists(stub, pool, tokens) -> None:
    cmd = purchase_command()
    first = await purchase(stub, tokens["ops"], cmd)
    again = await purchase(stub, tokens["ops"], cmd)
    assert not first.duplicate and again.duplicate
    assert (again.stream_id, again.first_version, again.position) == (
        first.stream_id,
        first.first_version,
        first.position,
    )
    assert len(await events_of(pool, first.stream_id)) == 1
    e = await refused(purchase(stub, tokens["ops"], purchase_command(cmd.command_id, quantity=1)))
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS
    [row] = await events_of(pool, first.stream_id)
    assert row["data"]["quantity"] == 3750


async def test_list_offset_lots_filters_and_pages(stub, tokens) -> None:
    registry = f"Registry {uuid.uuid4().hex[:8]}"
    acks = [
        await purchase(
            stub, tokens["ops"], purchase_command(registry=registry, purchased_on=common_pb2.Date(iso=f"{y}-06-01"))
        )
        for y in (2016, 2017, 2017, 2017)
    ]
    await retire(stub, tokens["ops"], lot_id=acks[1].stream_id, quantity=3750)
    for a, v in zip(acks, (1, 2, 1, 1), strict=True):
        await wait_lot(stub, tokens["ops"], a.stream_id, v)

    async def listing(**q: Any) -> carbon_pb2.OffsetLotsPage:
        return await stub.ListOffsetLots(
            carbon_pb2.ListOffsetLotsQuery(registry=registry, **q),
            metadata=call_metadata(tokens["finance"]),
            timeout=RPC_TIMEOUT,
        )

    ids = [a.stream_id for a in acks]
    assert {lot.lot_id for lot in (await listing()).lots} == set(ids)
    assert {lot.lot_id for lot in (await listing(year=2016)).lots} == {ids[0]}
    assert {lot.lot_id for lot in (await listing(status="retired")).lots} == {ids[1]}
    assert {lot.lot_id for lot in (await listing(status="open", year=2017)).lots} == {ids[2], ids[3]}
    first = await listing(page_size=3)
    second = await listing(page_size=3, page_token=first.next_page_token)
    assert len(first.lots) == 3 and first.next_page_token and len(second.lots) == 1 and not second.next_page_token
    assert sorted(lot.lot_id for lot in [*first.lots, *second.lots]) == sorted(ids)
    e = await refused(listing(status="sold"))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and [f for f, _ in field_violations(e)] == ["status"]
    for bad in ("garbage!", encode_key([7]), encode_key(["a\x00b"]), encode_key([ids[0], ids[1]])):
        e = await refused(listing(page_token=bad))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert [f for f, _ in field_violations(e)] == ["page_token"], bad


# --- roles -----------------------------------------------------------------------------------------------


async def test_finance_reads_the_ledger_but_no_traveller_and_commands_nothing(stub, pool, tokens) -> None:
    cmd = purchase_command()
    e = await refused(purchase(stub, tokens["finance"], cmd))
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED and "PurchaseOffsets" in (e.details() or "")
    e = await refused(retire(stub, tokens["finance"], lot_id="lot-x", quantity=1))
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await events_of(pool, lot_of(cmd.command_id)) == []
    e = await refused(purchase(stub, "", cmd))
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED
    page = await stub.ListOffsetLots(
        carbon_pb2.ListOffsetLotsQuery(page_size=1), metadata=call_metadata(tokens["finance"]), timeout=RPC_TIMEOUT
    )
    assert isinstance(page, carbon_pb2.OffsetLotsPage)
    for call in (  # a flight's emissions name its traveller: not finance's
        stub.ListFlightEmissions(
            carbon_pb2.ListFlightEmissionsQuery(), metadata=call_metadata(tokens["finance"]), timeout=RPC_TIMEOUT
        ),
        stub.GetFlightEmissions(
            carbon_pb2.GetFlightEmissionsQuery(booking_id="bk-x"),
            metadata=call_metadata(tokens["finance"]),
            timeout=RPC_TIMEOUT,
        ),
    ):
        assert (await refused(call)).code() == grpc.StatusCode.PERMISSION_DENIED
    e = await refused(
        stub.ListFlightEmissions(
            carbon_pb2.ListFlightEmissionsQuery(), metadata=call_metadata(None), timeout=RPC_TIMEOUT
        )
    )
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED


# --- finance read models (footprint and ledger; their RPCs come with the next issue) ----------------------


async def test_footprint_and_offset_ledger_of_a_year(stub, pool, tokens) -> None:
    year = 2091  # a year no other test uses
    a, b = new_booking(), new_booking()
    await publish(
        envelope(flight_booked(a, [("BRU", "NBO", f"{year}-03-01")]), a, 1),
        envelope(flight_booked(b, [("LHR", "NBO", f"{year}-03-02")], kind="team_member"), b, 1),
    )
    ra, rb = await wait_flight(stub, tokens["ops"], a, 1), await wait_flight(stub, tokens["ops"], b, 1)
    ack = await purchase(
        stub,
        tokens["ops"],
        purchase_command(
            quantity=5,
            unit_price=common_pb2.Money(amount="10.00", currency="EUR"),
            purchased_on=common_pb2.Date(iso=f"{year}-06-01"),
        ),
    )
    await retire(
        stub,
        tokens["ops"],
        lot_id=ack.stream_id,
        quantity=2,
        against_year=year,
        retired_on=common_pb2.Date(iso=f"{year}-12-01"),
    )
    await wait_lot(stub, tokens["ops"], ack.stream_id, 2)
    queries = CarbonQueries(pool)
    expected = Decimal(ra.kg_co2e) + Decimal(rb.kg_co2e)

    async def footprint_counted() -> bool:
        return await queries.footprint_total_kg(year) == expected

    await eventually(footprint_counted, 60, "the footprint of the year")
    by_kind = {r["traveller_kind"]: r["kg_co2e"] for r in await queries.footprint(year)}
    assert by_kind == {"expert": Decimal(ra.kg_co2e), "team_member": Decimal(rb.kg_co2e)}
    ledger = await queries.ledger(year)
    before = await queries.ledger(year - 1)  # the balance carries the earlier years' lots
    assert (ledger.purchased, ledger.retired_against, ledger.balance - before.balance) == (5, 2, 3)
    assert ledger.cost == {"EUR": Decimal("50.00")}
    assert ledger.coverage(expected) == (Decimal(2000) / expected).quantize(Decimal("0.0001"))


# --- finance: footprint and offset ledger -----------------------------------------------------------------


async def test_finance_reads_the_footprint_by_kind_action_and_region_and_the_ledger(stub, pool, tokens) -> None:
    from services.actions.events import ActionOpened

    year, code = 2029, "2029-07"
    opened = ActionOpened(
        action_code=code,
        request_id="req-x",
        partner="KE",
        partner_kind="country",
        partner_name="Kenya",
        region="africa_ces",
        title="Kenya",
        follow_up=1,
        year=year,
        opened_on=date(year, 2, 1),
    )
    action_env = envelope(opened, code, 1).model_copy(update={"source": "actions"})
    settings = Settings()
    producer = bus.producer(settings)
    await producer.start()
    try:
        [m] = signed("mieux.actions.events", [action_env])
        await producer.send_and_wait("mieux.actions.events", m.value, key=m.key, headers=m.headers)
    finally:
        await producer.stop()
    b1, b2, b3 = new_booking(), new_booking(), new_booking()
    await publish(
        envelope(flight_booked(b1, [("LHR", "NBO", f"{year}-03-01")], action_code=code), b1, 1),
        envelope(flight_booked(b2, [("BRU", "NBO", f"{year}-03-02")], kind="team_member", action_code=code), b2, 1),
        envelope(flight_booked(b3, [("BRU", "MAD", f"{year}-05-02")], kind="team_member", action_code=None), b3, 1),
    )
    flights = [await wait_flight(stub, tokens["ops"], b, 1) for b in (b1, b2, b3)]
    expected_total = sum(Decimal(f.kg_co2e) for f in flights)
    md = call_metadata(tokens["finance"])

    async def regional() -> bool:
        fp = await stub.GetFootprint(carbon_pb2.GetFootprintQuery(year=year), metadata=md, timeout=RPC_TIMEOUT)
        return Decimal(fp.kg_co2e) == expected_total and "africa_ces" in fp.kg_co2e_by_region

    await eventually(regional, 60, "the footprint with its region")
    fp = await stub.GetFootprint(carbon_pb2.GetFootprintQuery(year=year), metadata=md, timeout=RPC_TIMEOUT)
    assert Decimal(fp.kg_co2e_by_region["africa_ces"]) == Decimal(flights[0].kg_co2e) + Decimal(flights[1].kg_co2e)
    assert Decimal(fp.kg_co2e_by_traveller_kind["team_member"]) == Decimal(flights[1].kg_co2e) + Decimal(
        flights[2].kg_co2e
    )
    assert Decimal(fp.kg_co2e_by_action[""]) == Decimal(flights[2].kg_co2e)

    before = await stub.GetOffsetLedger(carbon_pb2.GetOffsetLedgerQuery(year=year), metadata=md, timeout=RPC_TIMEOUT)
    lot = await purchase(
        stub, tokens["ops"], purchase_command(quantity=2, purchased_on=common_pb2.Date(iso=f"{year}-12-01"))
    )
    await retire(
        stub,
        tokens["ops"],
        lot_id=lot.stream_id,
        quantity=1,
        against_year=year,
        retired_on=common_pb2.Date(iso=f"{year}-12-05"),
    )
    await wait_lot(stub, tokens["finance"], lot.stream_id, 2)
    ledger = await stub.GetOffsetLedger(carbon_pb2.GetOffsetLedgerQuery(year=year), metadata=md, timeout=RPC_TIMEOUT)
    # the balance at the year's end counts every earlier lot too (other tests buy some): compare deltas
    assert (ledger.vers_purchased, ledger.vers_retired, ledger.balance - before.balance) == (2, 1, 1)
    assert [(m.amount, m.currency) for m in ledger.cost] == [("9.00", "EUR")]
    assert Decimal(ledger.footprint_kg_co2e) == expected_total
    assert Decimal(ledger.coverage) == (Decimal(1000) / expected_total).quantize(Decimal("0.0001"))

    # ops may not; the `service` role may (the stats service builds the annual report page with it)
    for role in ("ops",):
        e = await refused(
            stub.GetOffsetLedger(
                carbon_pb2.GetOffsetLedgerQuery(year=year), metadata=call_metadata(tokens[role]), timeout=RPC_TIMEOUT
            )
        )
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED
    e = await refused(stub.PurchaseOffsets(purchase_command(), metadata=md, timeout=RPC_TIMEOUT))
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED


# --- a booking across New Year: each leg in the year it departs (DESIGN.md section 6) ---------------------------


async def test_a_booking_across_new_year_counts_each_leg_in_the_year_it_departs(
    stub, pool, tokens, carbon, tmp_path, monkeypatch
) -> None:
    """Out on 29 December, back on 1 January: the footprint by traveller kind, action and region, the ledger's
    coverage, the listing by year and the finance CSV of each year have the leg that departs in it, and only it
    (the booking's first-leg `departure_year` stays on its emissions, as their contract says)."""
    from services.actions.events import ActionOpened
    from services.carbon.cli import carbon_cmd

    y1, y2, code = 2087, 2088, "2087-11"
    opened = ActionOpened(
        action_code=code,
        request_id="req-ny",
        partner="KE",
        partner_kind="country",
        partner_name="Kenya",
        region="africa_ces",
        title="Kenya",
        follow_up=1,
        year=y1,
        opened_on=date(y1, 2, 1),
    )
    settings = Settings()
    producer = bus.producer(settings)
    await producer.start()
    try:
        env = envelope(opened, code, 1).model_copy(update={"source": "actions"})
        [m] = signed("mieux.actions.events", [env])
        await producer.send_and_wait("mieux.actions.events", m.value, key=m.key, headers=m.headers)
    finally:
        await producer.stop()
    b = new_booking()
    await publish(
        envelope(
            flight_booked(b, [("BRU", "NBO", f"{y1}-12-29"), ("NBO", "BRU", f"{y2}-01-01")], action_code=code), b, 1
        )
    )
    flight = await wait_flight(stub, tokens["ops"], b, 1)
    assert flight.departure_year == y1
    out, back = (Decimal(s.kg_co2e) for s in flight.segments)
    assert out + back == Decimal(flight.kg_co2e) and out > 0 and back > 0
    md = call_metadata(tokens["finance"])

    async def footprint(year: int) -> carbon_pb2.Footprint:
        return await stub.GetFootprint(carbon_pb2.GetFootprintQuery(year=year), metadata=md, timeout=RPC_TIMEOUT)

    async def both_years() -> bool:
        return (Decimal((await footprint(y1)).kg_co2e), Decimal((await footprint(y2)).kg_co2e)) == (out, back)

    await eventually(both_years, 60, "each leg's footprint in its own year")
    for year, kg in ((y1, out), (y2, back)):
        fp = await footprint(year)
        assert [(r.traveller_kind, r.action_code, r.region, r.flights) for r in fp.rows] == [
            ("expert", code, "africa_ces", 1)
        ], year
        assert Decimal(fp.kg_co2e_by_region["africa_ces"]) == Decimal(fp.kg_co2e_by_action[code]) == kg
        listed = await stub.ListFlightEmissions(
            carbon_pb2.ListFlightEmissionsQuery(year=year), metadata=call_metadata(tokens["ops"]), timeout=RPC_TIMEOUT
        )
        assert b in {f.booking_id for f in listed.flight_emissions}, year
    # coverage: one VER retired against each year, over that year's legs only
    lot = await purchase(
        stub, tokens["ops"], purchase_command(quantity=2, purchased_on=common_pb2.Date(iso=f"{y1}-12-01"))
    )
    for year in (y1, y2):
        await retire(
            stub, tokens["ops"], lot_id=lot.stream_id, quantity=1, against_year=year,
            retired_on=common_pb2.Date(iso=f"{y1}-12-{10 + year - y1}"),
        )  # fmt: skip
    await wait_lot(stub, tokens["finance"], lot.stream_id, 3)
    for year, kg in ((y1, out), (y2, back)):
        ledger = await stub.GetOffsetLedger(
            carbon_pb2.GetOffsetLedgerQuery(year=year), metadata=md, timeout=RPC_TIMEOUT
        )
        assert Decimal(ledger.footprint_kg_co2e) == kg, year
        assert Decimal(ledger.coverage) == (Decimal(1000) / kg).quantize(Decimal("0.0001")), year
    # the finance CSV of each year, as `mieux carbon report --year Y --csv FILE` writes it
    monkeypatch.setenv("MIEUX_CARBON_ADDR", f"127.0.0.1:{carbon}")
    monkeypatch.setenv("MIEUX_TOKEN", tokens["finance"])
    for year, kg in ((y1, out), (y2, back)):
        path = tmp_path / f"carbon-{year}.csv"
        await carbon_cmd(type("Args", (), {"year": year, "csv": str(path)})())  # type: ignore[arg-type]
        rows = path.read_text().splitlines()
        footprint_rows = [r.split(",") for r in rows if r.startswith("footprint,")]
        assert [(r[3], r[4], Decimal(r[10])) for r in footprint_rows] == [(code, "africa_ces", kg)], year
        retired = next(r.split(",") for r in rows if r.startswith("retired_against_year,"))
        assert (retired[9], Decimal(retired[10])) == ("1", kg), year
