"""The carbon method and aggregates, given/when/then on events. Pure and fast."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from services.carbon import method
from services.carbon.commands import (
    CalculateFlightEmissions,
    PurchaseOffsets,
    RecalculateFlightEmissions,
    RetireOffsets,
    ReverseFlightEmissions,
)
from services.carbon.domain import FlightEmissions, OffsetLot
from services.carbon.events import (
    FlightEmissionsCalculated,
    FlightEmissionsReversed,
    OffsetsPurchased,
    OffsetsRetired,
)
from services.carbon.policies import command_for
from services.carbon.settings import CarbonSettings
from services.kernel.errors import InvalidArgument, RuleBroken

BOOKING = "booking-1"
STREAM = f"emissions-{BOOKING}"


def calc(**over: Any) -> CalculateFlightEmissions:
    fields: dict[str, Any] = {
        "command_id": "c1",
        "booking_id": BOOKING,
        "traveller_id": "exp-1",
        "traveller_kind": "expert",
        "action_code": "2017-03",
        "activity_id": "2017-03/A1",
        "segments": [{"origin": "LHR", "destination": "NBO", "departs_on": "2017-05-02"}],
        "cabin_class": "economy",
        "on": "2017-04-01",
    }
    fields.update(over)
    return CalculateFlightEmissions.model_validate(fields)


def recalc(**over: Any) -> RecalculateFlightEmissions:
    fields: dict[str, Any] = {
        "command_id": "c2",
        "booking_id": BOOKING,
        "traveller_id": "exp-1",
        "traveller_kind": "expert",
        "segments": [{"origin": "BRU", "destination": "SJO", "departs_on": "2018-01-10"}],
        "cabin_class": "business",
        "on": "2017-04-05",
    }
    fields.update(over)
    return RecalculateFlightEmissions.model_validate(fields)


def cancel() -> ReverseFlightEmissions:
    return ReverseFlightEmissions(command_id="c3", booking_id=BOOKING, traveller_id="exp-1", on=date(2017, 4, 9))


def given(*events: Any) -> FlightEmissions:
    return FlightEmissions.fold(STREAM, list(events))


def booked(**over: Any) -> FlightEmissionsCalculated:
    [e] = given().calculate(calc(**over))
    return e


# --- the method ------------------------------------------------------------------------------------------


def test_lhr_nbo_economy_is_long_haul_uk_about_6828_km_and_799_kg() -> None:
    f = method.segment_figure("LHR", "NBO", date(2017, 5, 2), "economy")
    assert abs(f.distance_km - Decimal(6828)) < 2
    assert f.distance_miles == (f.distance_km / Decimal("1.609344")).quantize(Decimal("0.001"))
    assert f.haul == "long_haul_uk"
    assert f.kg_co2e_per_pkm == Decimal("0.11704")
    assert f.factor_id == "desnz-2025-long-haul-uk-economy-with-rf"
    assert abs(f.kg_co2e - Decimal(799)) < 1
    assert f.fallback is None


def test_the_8_percent_uplift_makes_lhr_nbo_about_863_kg() -> None:
    f = method.segment_figure("LHR", "NBO", date(2017, 5, 2), "economy", distance_uplift=True)
    assert abs(f.kg_co2e - Decimal(863)) < 1
    assert abs(f.distance_km - Decimal(6828)) < 2  # the geodesic is recorded as it is


def test_without_radiative_forcing_the_without_rf_factor_is_used() -> None:
    f = method.segment_figure("LHR", "NBO", date(2017, 5, 2), "economy", radiative_forcing=False)
    assert f.kg_co2e_per_pkm == Decimal("0.06926")
    assert f.factor_id.endswith("without-rf")


def test_bru_sjo_business_uses_the_international_non_uk_business_factor() -> None:
    f = method.segment_figure("BRU", "SJO", date(2017, 6, 1), "business")
    assert f.haul == "international_non_uk"
    assert f.kg_co2e_per_pkm == Decimal("0.31656")
    assert f.factor_cabin_class == "business"
    assert f.kg_co2e == (f.distance_km * Decimal("0.31656")).quantize(Decimal("0.001"))


def test_uk_short_haul_is_under_3700_km() -> None:
    f = method.segment_figure("LHR", "BRU", date(2017, 6, 1), "economy")
    assert f.distance_km < 3700 and f.haul == "short_haul_uk"
    assert f.kg_co2e_per_pkm == Decimal("0.12576")


def test_both_ends_in_the_uk_is_domestic_with_the_average_factor_stated() -> None:
    f = method.segment_figure("LHR", "EDI", date(2017, 6, 1), "economy")
    assert f.haul == "domestic_uk"
    assert f.factor_cabin_class == "average" and f.kg_co2e_per_pkm == Decimal("0.22928")
    assert f.fallback and "average" in f.fallback


@pytest.mark.parametrize(
    ("cabin", "used", "factor"), [("first", "business", "0.18863"), ("premium_economy", "average", "0.12786")]
)
def test_short_haul_first_and_premium_economy_fall_back_and_say_so(cabin: str, used: str, factor: str) -> None:
    f = method.segment_figure("LHR", "BRU", date(2017, 6, 1), cabin)
    assert f.factor_cabin_class == used and f.kg_co2e_per_pkm == Decimal(factor)
    assert f.fallback == f"short_haul_uk has no {cabin} factor: the {used} factor is used"


def test_long_haul_first_has_its_own_row() -> None:
    f = method.segment_figure("LHR", "NBO", date(2017, 6, 1), "first")
    assert f.factor_cabin_class == "first" and f.fallback is None


def test_an_unknown_airport_is_refused() -> None:
    with pytest.raises(RuleBroken, match="ZZZ"):
        method.segment_figure("ZZZ", "NBO", date(2017, 6, 1), "economy")


def test_a_flight_to_where_it_starts_is_refused() -> None:
    with pytest.raises(RuleBroken, match="origin and destination"):
        method.segment_figure("NBO", "NBO", date(2017, 6, 1), "economy")


def test_the_factor_table_names_its_source_and_covers_every_band() -> None:
    table = method.factors()
    assert {k[0] for k in table} == {"domestic_uk", "short_haul_uk", "long_haul_uk", "international_non_uk"}
    assert all(f.year == method.FACTOR_YEAR for f in table.values())
    assert "DESNZ 2025" in method.FACTOR_FILE.read_text().splitlines()[1]


# --- flight emissions: calculate -------------------------------------------------------------------------


def test_a_booking_gets_its_emissions_with_method_and_factor_year() -> None:
    [e] = given().calculate(calc())
    assert isinstance(e, FlightEmissionsCalculated)
    assert (e.method, e.factor_year, e.radiative_forcing, e.distance_uplift_applied) == ("DESNZ", 2025, True, False)
    assert e.factor_set.startswith("DESNZ 2025")
    assert (e.traveller_kind, e.action_code, e.activity_id, e.cabin_class) == (
        "expert",
        "2017-03",
        "2017-03/A1",
        "economy",
    )
    assert e.departure_year == 2017 and e.cause == "booked"
    assert e.kg_co2e == e.segments[0].kg_co2e and abs(e.kg_co2e - Decimal(799)) < 1


def test_several_segments_are_summed_and_the_first_departure_gives_the_year() -> None:
    e = booked(
        segments=[
            {"origin": "BRU", "destination": "LHR", "departs_on": "2017-12-31"},
            {"origin": "LHR", "destination": "NBO", "departs_on": "2018-01-01"},
        ]
    )
    assert e.departure_year == 2017
    assert e.kg_co2e == sum(s.kg_co2e for s in e.segments)
    assert e.distance_km == sum(s.distance_km for s in e.segments)
    assert [s.haul for s in e.segments] == ["short_haul_uk", "long_haul_uk"]


def test_emissions_already_recorded_are_not_recorded_twice() -> None:
    with pytest.raises(RuleBroken, match="already recorded"):
        given(booked()).calculate(calc(command_id="other"))


def test_a_booking_needs_a_real_airport_and_a_segment() -> None:
    with pytest.raises(ValidationError) as info:
        calc(segments=[{"origin": "XQX", "destination": "NBO", "departs_on": "2017-05-02"}])
    assert info.value.errors()[0]["loc"] == ("segments", 0, "origin")
    with pytest.raises(ValidationError) as info:
        calc(segments=[])
    assert info.value.errors()[0]["loc"] == ("segments",)


# --- flight emissions: change and cancel -----------------------------------------------------------------


def test_a_change_reverses_what_was_recorded_then_calculates_the_new_itinerary() -> None:
    first = booked()
    reversed_, new = given(first).recalculate(recalc())
    assert isinstance(reversed_, FlightEmissionsReversed) and isinstance(new, FlightEmissionsCalculated)
    assert reversed_.cause == "changed" and reversed_.reverses_version == 1
    assert (reversed_.kg_co2e, reversed_.distance_km, reversed_.segments) == (
        first.kg_co2e,
        first.distance_km,
        first.segments,
    )
    assert new.cause == "changed" and new.segments[0].haul == "international_non_uk"
    assert new.departure_year == 2018
    assert (new.action_code, new.activity_id) == ("2017-03", "2017-03/A1")  # kept from the booking


def test_a_change_of_a_booking_never_recorded_only_calculates() -> None:
    [new] = given().recalculate(recalc())
    assert isinstance(new, FlightEmissionsCalculated)


def test_a_cancellation_reverses_exactly_what_was_recorded() -> None:
    first = booked()
    r1, second = given(first).recalculate(recalc())
    [r2] = given(first, r1, second).reverse(cancel())
    assert r2.cause == "cancelled" and r2.reverses_version == 3
    same = {k: v for k, v in second.model_dump().items() if k not in ("calculated_on", "cause")}
    assert {k: v for k, v in r2.model_dump().items() if k in same} == same


def test_nothing_to_reverse_is_refused() -> None:
    with pytest.raises(RuleBroken, match="no emissions recorded"):
        given().reverse(cancel())


def test_a_cancelled_booking_is_final() -> None:
    first = booked()
    [r] = given(first).reverse(cancel())
    with pytest.raises(RuleBroken, match="cancelled"):
        given(first, r).reverse(cancel())
    with pytest.raises(RuleBroken, match="cancelled"):
        given(first, r).recalculate(recalc())
    with pytest.raises(RuleBroken, match="cancelled"):
        given(first, r).calculate(calc())


# --- the policy's commands -------------------------------------------------------------------------------


def test_an_unknown_airport_in_a_logistics_event_is_refused_not_retried() -> None:
    from services.kernel.envelope import Envelope, utcnow
    from services.logistics.events import Fare, FlightBooked, Segment

    e = FlightBooked(
        booking_id="b",
        traveller_id="t",
        traveller_kind="expert",
        segments=(Segment(origin="QQQ", destination="NBO", departs_on=date(2017, 1, 1)),),
        cabin_class="economy",
        fare=Fare(amount="1", currency="EUR"),
        booked_on=date(2017, 1, 1),
    )
    now = utcnow()
    env = Envelope(
        event_id="00000000-0000-0000-0000-000000000001",
        event_type="FlightBooked",
        schema_version=1,
        source="logistics",
        stream_id="booking-b",
        stream_version=1,
        position=1,
        occurred_at=now,
        recorded_at=now,
        correlation_id="",
        causation_id="",
        actor="t",
        data=e.model_dump(mode="json"),
    )
    with pytest.raises(InvalidArgument, match=r"segments\.0\.origin"):
        command_for(env, e, "cmd", CarbonSettings())
    ok = e.model_copy(update={"segments": (Segment(origin="LHR", destination="NBO", departs_on=date(2017, 1, 1)),)})
    cmd = command_for(env, ok, "cmd", CarbonSettings(MIEUX_CARBON_DISTANCE_UPLIFT=True))
    assert isinstance(cmd, CalculateFlightEmissions) and cmd.distance_uplift and cmd.radiative_forcing


# --- offsets ---------------------------------------------------------------------------------------------


def purchase(**over: Any) -> PurchaseOffsets:
    fields: dict[str, Any] = {
        "command_id": "p1",
        "registry": "Gold Standard",
        "project": "African Biomass Energy Conservation PoA",
        "vintage_year": 2016,
        "quantity": 3750,
        "unit_price": {"amount": "4.50", "currency": "EUR"},
        "purchased_on": "2017-12-12",
    }
    fields.update(over)
    return PurchaseOffsets.model_validate(fields)


def retire(**over: Any) -> RetireOffsets:
    fields: dict[str, Any] = {
        "command_id": "r1",
        "lot_id": "lot-1",
        "quantity": 1000,
        "against_year": 2017,
        "retired_on": "2017-12-20",
    }
    fields.update(over)
    return RetireOffsets.model_validate(fields)


def lot(*events: Any) -> OffsetLot:
    return OffsetLot.fold("lot-1", list(events))


def purchased() -> OffsetsPurchased:
    [e] = lot().purchase(purchase())
    return e


def test_a_purchase_records_the_lot_and_its_cost() -> None:
    e = purchased()
    assert (e.lot_id, e.quantity, e.vintage_year) == ("lot-1", 3750, 2016)
    assert e.unit_price.amount == Decimal("4.50") and e.total_cost.amount == Decimal("16875.00")
    assert e.total_cost.currency == "EUR"


def test_the_lot_id_derives_from_the_command_id() -> None:
    assert purchase().lot_id == purchase().lot_id != purchase(command_id="p2").lot_id


def test_a_lot_is_purchased_once() -> None:
    with pytest.raises(RuleBroken, match="already purchased"):
        lot(purchased()).purchase(purchase())


@pytest.mark.parametrize("quantity", [2.5, 0, -3])
def test_vers_are_whole_tonnes_more_than_none(quantity: float) -> None:
    with pytest.raises(ValidationError) as info:
        purchase(quantity=quantity)
    assert [err["loc"] for err in info.value.errors()] == [("quantity",)]
    with pytest.raises(ValidationError) as info:
        retire(quantity=quantity)
    assert [err["loc"] for err in info.value.errors()] == [("quantity",)]


@pytest.mark.parametrize(
    ("over", "loc"),
    [
        ({"unit_price": {"amount": "abc", "currency": "EUR"}}, ("unit_price", "amount")),
        ({"unit_price": {"amount": "-1", "currency": "EUR"}}, ("unit_price", "amount")),
        ({"unit_price": {"amount": "1", "currency": "EURO"}}, ("unit_price", "currency")),
        ({"vintage_year": 0}, ("vintage_year",)),
        ({"registry": ""}, ("registry",)),
        ({"purchased_on": "2017-02-30"}, ("purchased_on",)),
    ],
)
def test_a_purchase_needs_a_price_a_vintage_a_registry_and_a_date(over: dict[str, Any], loc: tuple) -> None:
    with pytest.raises(ValidationError) as info:
        purchase(**over)
    assert [err["loc"] for err in info.value.errors()] == [loc]


def test_retiring_takes_vers_from_the_lot() -> None:
    [e] = lot(purchased()).retire(retire())
    assert isinstance(e, OffsetsRetired)
    assert (e.quantity, e.against_year, e.remaining) == (1000, 2017, 2750)


def test_no_more_than_the_lot_holds_can_be_retired() -> None:
    first = OffsetsRetired(
        lot_id="lot-1", quantity=3000, against_year=2017, retired_on=date(2017, 12, 20), remaining=750
    )
    with pytest.raises(RuleBroken, match="holds 750 VERs"):
        lot(purchased(), first).retire(retire(quantity=751))
    [e] = lot(purchased(), first).retire(retire(quantity=750))
    assert e.remaining == 0
    with pytest.raises(RuleBroken, match="holds 0 VERs"):
        lot(purchased(), first, e).retire(retire(quantity=1))


def test_vers_cannot_be_retired_before_their_lot_was_bought() -> None:
    with pytest.raises(RuleBroken, match="before their lot was purchased"):
        lot(purchased()).retire(retire(retired_on="2017-12-11"))
    assert lot(purchased()).retire(retire(retired_on="2017-12-12"))
