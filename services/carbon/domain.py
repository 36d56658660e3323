"""The carbon aggregates (flight emissions of a booking; a lot of offsets) and their rules. Pure: no I/O
(the method reads its reference data files once, through caches). Their commands are in commands.py."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Literal

from services.carbon import method
from services.carbon.commands import (
    CalculateFlightEmissions,
    Itinerary,
    PurchaseOffsets,
    RecalculateFlightEmissions,
    RetireOffsets,
    ReverseFlightEmissions,
)
from services.carbon.events import (
    FlightEmissionsCalculated,
    FlightEmissionsEvent,
    FlightEmissionsReversed,
    Money,
    OffsetLotEvent,
    OffsetsPurchased,
    OffsetsRetired,
    SegmentEmissions,
)
from services.kernel.application import Aggregate
from services.kernel.errors import RuleBroken

# --- flight emissions ----------------------------------------------------------------------------------


class FlightEmissions(Aggregate):
    """The emissions recorded for one booking: at most one calculation in force at a time."""

    folds = FlightEmissionsEvent

    def __init__(self, stream_id: str) -> None:
        super().__init__(stream_id)
        self.in_force: FlightEmissionsCalculated | None = None
        self.in_force_version = 0
        self.cancelled = False

    def when_FlightEmissionsCalculated(self, e: FlightEmissionsCalculated) -> None:
        self.in_force = e
        self.in_force_version = self.version + 1

    def when_FlightEmissionsReversed(self, e: FlightEmissionsReversed) -> None:
        self.in_force = None
        self.in_force_version = 0
        if e.cause == "cancelled":
            self.cancelled = True

    def check_not_cancelled(self, booking_id: str) -> None:
        if self.cancelled:
            raise RuleBroken(f"booking {booking_id} was cancelled: its emissions are final")

    def check_nothing_in_force(self, booking_id: str) -> None:
        if self.in_force is not None:
            raise RuleBroken(f"the emissions of booking {booking_id} are already recorded: a change recalculates them")

    def check_something_in_force(self, booking_id: str) -> FlightEmissionsCalculated:
        if self.in_force is None:
            raise RuleBroken(f"booking {booking_id} has no emissions recorded to reverse")
        return self.in_force

    def calculate(self, cmd: CalculateFlightEmissions) -> list[FlightEmissionsCalculated]:
        self.check_not_cancelled(cmd.booking_id)
        self.check_nothing_in_force(cmd.booking_id)
        return [calculation(cmd, "booked", cmd.action_code, cmd.activity_id)]

    def recalculate(self, cmd: RecalculateFlightEmissions) -> list[FlightEmissionsCalculated | FlightEmissionsReversed]:
        """Reverse what is recorded (if anything), then record the new itinerary."""
        self.check_not_cancelled(cmd.booking_id)
        out: list[FlightEmissionsCalculated | FlightEmissionsReversed] = []
        action_code = activity_id = None
        if self.in_force is not None:
            out.append(reversal(self.in_force, self.in_force_version, cmd.on, "changed"))
            action_code, activity_id = self.in_force.action_code, self.in_force.activity_id
        out.append(calculation(cmd, "changed", action_code, activity_id))
        return out

    def reverse(self, cmd: ReverseFlightEmissions) -> list[FlightEmissionsReversed]:
        self.check_not_cancelled(cmd.booking_id)
        recorded = self.check_something_in_force(cmd.booking_id)
        return [reversal(recorded, self.in_force_version, cmd.on, "cancelled")]


def calculation(
    cmd: Itinerary, cause: Literal["booked", "changed"], action_code: str | None, activity_id: str | None
) -> FlightEmissionsCalculated:
    figures = [
        method.segment_figure(
            leg.origin,
            leg.destination,
            leg.departs_on,
            cmd.cabin_class,
            radiative_forcing=cmd.radiative_forcing,
            distance_uplift=cmd.distance_uplift,
        )
        for leg in cmd.segments
    ]
    segments = tuple(
        SegmentEmissions(
            origin=f.origin,
            destination=f.destination,
            departs_on=f.departs_on,
            distance_km=f.distance_km,
            distance_miles=f.distance_miles,
            haul=f.haul,
            factor_cabin_class=f.factor_cabin_class,
            factor_id=f.factor_id,
            kg_co2e_per_pkm=f.kg_co2e_per_pkm,
            kg_co2e=f.kg_co2e,
            fallback=f.fallback,
        )
        for f in figures
    )
    return FlightEmissionsCalculated(
        booking_id=cmd.booking_id,
        traveller_id=cmd.traveller_id,
        traveller_kind=cmd.traveller_kind,
        action_code=action_code,
        activity_id=activity_id,
        cabin_class=cmd.cabin_class,
        segments=segments,
        distance_km=sum((s.distance_km for s in segments), Decimal(0)),
        distance_miles=sum((s.distance_miles for s in segments), Decimal(0)),
        kg_co2e=sum((s.kg_co2e for s in segments), Decimal(0)),
        departure_year=segments[0].departs_on.year,
        method=method.METHOD,
        factor_set=method.FACTOR_SET,
        factor_year=method.FACTOR_YEAR,
        radiative_forcing=cmd.radiative_forcing,
        distance_uplift_applied=cmd.distance_uplift,
        calculated_on=cmd.on,
        cause=cause,
    )


def reversal(
    recorded: FlightEmissionsCalculated, version: int, on: date, cause: Literal["changed", "cancelled"]
) -> FlightEmissionsReversed:
    """Exactly the recorded figures, to be taken back."""
    figures = recorded.model_dump(exclude={"calculated_on", "cause"})
    return FlightEmissionsReversed(**figures, reverses_version=version, reversed_on=on, cause=cause)


# --- offset lots ---------------------------------------------------------------------------------------


class OffsetLot(Aggregate):
    folds = OffsetLotEvent

    def __init__(self, stream_id: str) -> None:
        super().__init__(stream_id)
        self.quantity = 0
        self.remaining = 0
        self.purchased_on: date | None = None

    def when_OffsetsPurchased(self, e: OffsetsPurchased) -> None:
        self.quantity = self.remaining = e.quantity
        self.purchased_on = e.purchased_on

    def when_OffsetsRetired(self, e: OffsetsRetired) -> None:
        self.remaining -= e.quantity

    def check_not_purchased(self) -> None:
        if self.exists:
            raise RuleBroken(f"lot {self.id} was already purchased")

    def check_holds(self, quantity: int) -> None:
        if quantity > self.remaining:
            raise RuleBroken(
                f"lot {self.id} holds {self.remaining} VERs: no more than that can be retired, not {quantity}"
            )

    def check_retired_after_purchase(self, retired_on: date) -> None:
        if self.purchased_on is not None and retired_on < self.purchased_on:
            raise RuleBroken(
                f"VERs cannot be retired ({retired_on}) before their lot was purchased ({self.purchased_on})"
            )

    def purchase(self, cmd: PurchaseOffsets) -> list[OffsetsPurchased]:
        self.check_not_purchased()
        price = Decimal(cmd.unit_price.amount)
        return [
            OffsetsPurchased(
                lot_id=self.id,
                registry=cmd.registry,
                project=cmd.project,
                vintage_year=cmd.vintage_year,
                quantity=cmd.quantity,
                unit_price=Money(amount=price, currency=cmd.unit_price.currency),
                total_cost=Money(amount=price * cmd.quantity, currency=cmd.unit_price.currency),
                purchased_on=cmd.purchased_on,
            )
        ]

    def retire(self, cmd: RetireOffsets) -> list[OffsetsRetired]:
        self.check_holds(cmd.quantity)
        self.check_retired_after_purchase(cmd.retired_on)
        return [
            OffsetsRetired(
                lot_id=self.id,
                quantity=cmd.quantity,
                against_year=cmd.against_year,
                retired_on=cmd.retired_on,
                remaining=self.remaining - cmd.quantity,
            )
        ]
