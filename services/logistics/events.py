"""Events the logistics service publishes on `mieux.logistics.events`: its public contract.

Streams: `booking-<uuid>` (one flight booking, possibly several segments) and `team` (the MIEUX team).
"""

from __future__ import annotations

from datetime import date
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from services.kernel.envelope import Event

CabinClass = Literal["economy", "premium_economy", "business", "first"]
TravellerKind = Literal["expert", "team_member"]


class Segment(BaseModel):
    """One flight: IATA airport codes and the departure date."""

    model_config = ConfigDict(frozen=True)
    origin: str
    destination: str
    departs_on: date


class Fare(BaseModel):
    model_config = ConfigDict(frozen=True)
    amount: str  # a decimal, never a float
    currency: str  # ISO 4217


class LogisticsEvent(Event, abstract=True):
    source: ClassVar[str] = "logistics"


class TeamEvent(LogisticsEvent, abstract=True):
    """An event of the team's one stream (`team`)."""


class BookingEvent(LogisticsEvent, abstract=True):
    """An event of a booking's stream (`booking-<uuid>`)."""


class TeamMemberJoined(TeamEvent):
    member_id: str
    name: str
    gender: str
    role: str
    joined_on: date


class TeamMemberLeft(TeamEvent):
    member_id: str
    left_on: date


class FlightBooked(BookingEvent):
    booking_id: str
    traveller_id: str
    traveller_kind: TravellerKind
    action_code: str | None = None
    activity_id: str | None = None
    segments: tuple[Segment, ...]
    cabin_class: CabinClass
    fare: Fare
    booked_on: date


class FlightChanged(BookingEvent):
    """The booking's itinerary or cabin changed: the new values replace the old ones."""

    booking_id: str
    traveller_id: str
    traveller_kind: TravellerKind
    segments: tuple[Segment, ...]
    cabin_class: CabinClass
    fare: Fare
    changed_on: date


class FlightCancelled(BookingEvent):
    """Final: a cancelled booking never changes again."""

    booking_id: str
    traveller_id: str
    reason: str
    cancelled_on: date
