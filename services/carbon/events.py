"""Events the carbon service publishes on `mieux.carbon.events`: its public contract.

Streams: `emissions-<booking_id>` (the emissions of one flight booking) and `lot-<uuid>` (one lot of
offsets). Every figure records its method and factor year (DESIGN.md section 7). Figures are decimals
(JSON strings on the bus), never floats; one VER is one tonne CO2e.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from services.kernel.envelope import Event

CabinClass = Literal["economy", "premium_economy", "business", "first"]
TravellerKind = Literal["expert", "team_member"]
Haul = Literal["domestic_uk", "short_haul_uk", "long_haul_uk", "international_non_uk"]


class SegmentEmissions(BaseModel):
    """One flight of a booking: where, when, how far, which factor, how much CO2e."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    origin: str  # IATA
    destination: str  # IATA
    departs_on: date
    distance_km: Decimal  # geodesic on WGS84, without any uplift
    distance_miles: Decimal  # statute: km / 1.609344
    haul: Haul
    factor_cabin_class: str  # the factor row used: the cabin booked, or its fallback
    factor_id: str
    kg_co2e_per_pkm: Decimal
    kg_co2e: Decimal
    fallback: str | None = None  # why another cabin's factor was used, if it was


class Money(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    amount: Decimal
    currency: str  # ISO 4217


class CarbonEvent(Event, abstract=True):
    source: ClassVar[str] = "carbon"


class FlightEmissionsEvent(CarbonEvent, abstract=True):
    booking_id: str
    traveller_id: str
    traveller_kind: TravellerKind
    action_code: str | None = None
    activity_id: str | None = None
    cabin_class: CabinClass
    segments: tuple[SegmentEmissions, ...]
    distance_km: Decimal
    distance_miles: Decimal
    kg_co2e: Decimal
    departure_year: int  # the year the first segment departs (the footprint counts each segment in its own year)
    method: Literal["DESNZ"] = "DESNZ"
    factor_set: str
    factor_year: int
    radiative_forcing: bool
    distance_uplift_applied: bool


class FlightEmissionsCalculated(FlightEmissionsEvent):
    """The emissions of a booking's itinerary (on FlightBooked, or on FlightChanged for the new one)."""

    calculated_on: date
    cause: Literal["booked", "changed"]


class FlightEmissionsReversed(FlightEmissionsEvent):
    """Exactly what was recorded is taken back (on FlightChanged or FlightCancelled): the figures are
    those of the FlightEmissionsCalculated at `reverses_version`, as positive numbers to subtract."""

    reverses_version: int
    reversed_on: date
    cause: Literal["changed", "cancelled"]


class OffsetLotEvent(CarbonEvent, abstract=True):
    """An event of an offset lot's stream (`lot-<uuid>`)."""


class OffsetsPurchased(OffsetLotEvent):
    lot_id: str
    registry: str  # e.g. Gold Standard
    project: str
    vintage_year: int
    quantity: int  # VERs, whole tonnes CO2e
    unit_price: Money
    total_cost: Money
    purchased_on: date


class OffsetsRetired(OffsetLotEvent):
    lot_id: str
    quantity: int  # VERs, whole tonnes CO2e
    against_year: int  # the footprint year these VERs offset
    retired_on: date
    remaining: int  # VERs the lot still holds after this retirement
