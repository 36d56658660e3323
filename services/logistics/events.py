"""Events the logistics service publishes on `mieux.logistics.events`: its public contract.

Streams: `booking-<uuid>` (one flight booking, possibly several segments) and `team` (the MIEUX team).

A team member's name and role are personal data (a small team's role names its holder): both are sealed
with the member's own key (services.kernel.personal), and only the logistics service opens them. Gender, stints
and flights stay readable: the statistics count them. TeamMemberForgotten records that the key was destroyed;
it holds nothing of the person. Member ids stay: choose ids that are not names.
"""

from __future__ import annotations

from datetime import date
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from services.kernel.envelope import Event
from services.kernel.personal import Sealed

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

    # an error never quotes a value: a bug that made a name in clear would otherwise log it
    model_config = ConfigDict(hide_input_in_errors=True)


class BookingEvent(LogisticsEvent, abstract=True):
    """An event of a booking's stream (`booking-<uuid>`)."""


class TeamMemberJoined(TeamEvent):
    member_id: str
    name: Sealed
    gender: str
    role: Sealed
    joined_on: date


class TeamMemberLeft(TeamEvent):
    member_id: str
    left_on: date


class TeamMemberForgotten(TeamEvent):
    """The member's key was destroyed (crypto-shredding): their name and role can never be read again; their
    gender, stints and flights stay, so every figure stays the same. The reason never names the person."""

    member_id: str
    reason: str
    forgotten_on: date


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
