"""The carbon aggregates (flight emissions of a booking; a lot of offsets) and their commands. Pure: no I/O
(the method reads its reference data files once, through caches)."""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Literal

import pycountry
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.carbon import method
from services.carbon.events import (
    CabinClass,
    FlightEmissionsCalculated,
    FlightEmissionsReversed,
    Money,
    OffsetsPurchased,
    OffsetsRetired,
    SegmentEmissions,
    TravellerKind,
)
from services.kernel.application import Aggregate
from services.kernel.errors import RuleBroken

LOT_NAMESPACE = uuid.UUID("3a0f6c2d-8e41-4b7a-9c55-0d2e7f1b6a93")
MIN_YEAR, MAX_YEAR = 1990, 2100


def emissions_stream(booking_id: str) -> str:
    return f"emissions-{booking_id}"


# --- commands ------------------------------------------------------------------------------------------


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, extra="forbid")


class Leg(Frozen):
    origin: str = Field(min_length=3, max_length=3)
    destination: str = Field(min_length=3, max_length=3)
    departs_on: date

    @field_validator("origin", "destination")
    @classmethod
    def known_airport(cls, v: str) -> str:
        if not method.is_airport(v):
            raise ValueError(f"{v} is not a known IATA airport code")
        return v.upper()


class FlightCommand(Frozen):
    command_id: str = Field(min_length=1, max_length=200)
    booking_id: str = Field(min_length=1, max_length=200)
    traveller_id: str = Field(min_length=1, max_length=200)
    on: date

    @property
    def stream_id(self) -> str:
        return emissions_stream(self.booking_id)


class Itinerary(FlightCommand):
    traveller_kind: TravellerKind
    segments: tuple[Leg, ...] = Field(min_length=1)
    cabin_class: CabinClass
    radiative_forcing: bool = True
    distance_uplift: bool = False


class CalculateFlightEmissions(Itinerary):
    """Issued by the policy on FlightBooked."""

    action_code: str | None = None
    activity_id: str | None = None


class RecalculateFlightEmissions(Itinerary):
    """Issued by the policy on FlightChanged: the new itinerary replaces the recorded one."""


class ReverseFlightEmissions(FlightCommand):
    """Issued by the policy on FlightCancelled."""


def _year(v: int) -> int:
    if not MIN_YEAR <= v <= MAX_YEAR:
        raise ValueError(f"must be a year between {MIN_YEAR} and {MAX_YEAR}")
    return v


class Price(Frozen):
    amount: str
    currency: str

    @field_validator("amount")
    @classmethod
    def positive_decimal(cls, v: str) -> str:
        try:
            d = Decimal(v)
        except InvalidOperation:
            raise ValueError("must be a decimal number, e.g. 3.50") from None
        if not d.is_finite() or d <= 0:
            raise ValueError("must be a positive decimal number")
        return v

    @field_validator("currency")
    @classmethod
    def iso_4217(cls, v: str) -> str:
        if pycountry.currencies.get(alpha_3=v.upper()) is None:
            raise ValueError("must be an ISO 4217 currency code, e.g. EUR")
        return v.upper()


class PurchaseOffsets(Frozen):
    command_id: str = Field(min_length=1, max_length=200)
    registry: str = Field(min_length=1, max_length=200)
    project: str = Field(min_length=1, max_length=300)
    vintage_year: int
    quantity: int = Field(gt=0, description="VERs: whole tonnes CO2e")
    unit_price: Price
    purchased_on: date

    _vintage = field_validator("vintage_year")(_year)

    @property
    def lot_id(self) -> str:
        """Derived from the command id, so a retried purchase lands on the same stream."""
        return f"lot-{uuid.uuid5(LOT_NAMESPACE, self.command_id)}"


class RetireOffsets(Frozen):
    command_id: str = Field(min_length=1, max_length=200)
    lot_id: str = Field(min_length=1, max_length=200)
    quantity: int = Field(gt=0, description="VERs: whole tonnes CO2e")
    against_year: int
    retired_on: date

    _against = field_validator("against_year")(_year)


# --- flight emissions ----------------------------------------------------------------------------------


class FlightEmissions(Aggregate):
    """The emissions recorded for one booking: at most one calculation in force at a time."""

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
            haul=f.haul,  # type: ignore[arg-type]
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
