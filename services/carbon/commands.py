"""The commands of the carbon service (pydantic, validated at the edge): the flight emissions commands the
policy issues on the logistics service's flights, and the offset commands an operator sends, with their
input sub-models (a leg flown, a unit price)."""

from __future__ import annotations

import re
import uuid
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.carbon.events import CabinClass, TravellerKind
from services.kernel import reference
from services.kernel.command import Command
from services.kernel.limits import Day, Id, Name, Title, shown

LOT_NAMESPACE = uuid.UUID("3a0f6c2d-8e41-4b7a-9c55-0d2e7f1b6a93")
MIN_YEAR, MAX_YEAR = 1990, 2100
MAX_SEGMENTS = 12  # as a booking holds at most (logistics)
MAX_VERS = 10_000_000  # VERs in one purchase or retirement
AMOUNT = re.compile(r"^\d{1,12}(\.\d{1,6})?$")


def emissions_stream(booking_id: str) -> str:
    return f"emissions-{booking_id}"


# --- flight emissions ----------------------------------------------------------------------------------


class Leg(BaseModel):
    """One flight of an itinerary, between two known airports."""

    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, extra="forbid")
    origin: str = Field(min_length=3, max_length=3)
    destination: str = Field(min_length=3, max_length=3)
    departs_on: Day

    @field_validator("origin", "destination")
    @classmethod
    def known_airport(cls, v: str) -> str:
        if not reference.is_airport(v.upper()):
            raise ValueError(f"{shown(v)} is not a known IATA airport code")
        return v.upper()


class FlightCommand(Command):
    booking_id: Id
    traveller_id: Id
    on: Day

    @property
    def stream_id(self) -> str:
        return emissions_stream(self.booking_id)


class Itinerary(FlightCommand):
    traveller_kind: TravellerKind
    segments: tuple[Leg, ...] = Field(min_length=1, max_length=MAX_SEGMENTS)
    cabin_class: CabinClass
    radiative_forcing: bool = True
    distance_uplift: bool = False


class CalculateFlightEmissions(Itinerary):
    """Issued by the policy on FlightBooked."""

    action_code: Id | None = None
    activity_id: Id | None = None


class RecalculateFlightEmissions(Itinerary):
    """Issued by the policy on FlightChanged: the new itinerary replaces the recorded one."""


class ReverseFlightEmissions(FlightCommand):
    """Issued by the policy on FlightCancelled."""


# --- offsets -------------------------------------------------------------------------------------------


def _year(v: int) -> int:
    if not MIN_YEAR <= v <= MAX_YEAR:
        raise ValueError(f"must be a year between {MIN_YEAR} and {MAX_YEAR}")
    return v


class Price(BaseModel):
    """A positive decimal amount in an ISO 4217 currency."""

    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, extra="forbid")
    amount: Id
    currency: Id

    @field_validator("amount")
    @classmethod
    def positive_decimal(cls, v: str) -> str:
        # a plain decimal of bounded size (never an exponent, NaN or infinity): no arithmetic can overflow
        if not AMOUNT.match(v):
            raise ValueError("must be a decimal number, e.g. 3.50 (at most 12 digits before the point, 6 after)")
        if Decimal(v) <= 0:
            raise ValueError("must be a positive decimal number")
        return v

    @field_validator("currency")
    @classmethod
    def iso_4217(cls, v: str) -> str:
        if not reference.is_currency(v.upper()):
            raise ValueError("must be an ISO 4217 currency code, e.g. EUR")
        return v.upper()


class PurchaseOffsets(Command):
    registry: Name
    project: Title
    vintage_year: int
    quantity: int = Field(gt=0, le=MAX_VERS, description="VERs: whole tonnes CO2e")
    unit_price: Price
    purchased_on: Day

    _vintage = field_validator("vintage_year")(_year)

    @property
    def lot_id(self) -> str:
        """Derived from the command id, so a retried purchase lands on the same stream."""
        return f"lot-{uuid.uuid5(LOT_NAMESPACE, self.command_id)}"


class RetireOffsets(Command):
    lot_id: Id
    quantity: int = Field(gt=0, le=MAX_VERS, description="VERs: whole tonnes CO2e")
    against_year: int
    retired_on: Day

    _against = field_validator("against_year")(_year)
