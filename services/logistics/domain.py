"""The team and booking aggregates and their commands. Pure: no I/O.

Reference data come from maintained libraries: airports from `airportsdata` (IATA), currencies from
`pycountry` (ISO 4217), distances geodesic on WGS84 (`geographiclib`), genders from the kernel's
published language.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import cache
from typing import Any

import airportsdata
import pycountry
from geographiclib.geodesic import Geodesic
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from services.kernel import reference
from services.kernel.application import Aggregate
from services.kernel.errors import RuleBroken
from services.logistics.events import (
    CabinClass,
    Fare,
    FlightBooked,
    FlightCancelled,
    FlightChanged,
    Segment,
    TeamMemberJoined,
    TeamMemberLeft,
    TravellerKind,
)

TEAM_STREAM = "team"
BOOKING_NAMESPACE = uuid.UUID("0b5e5d0c-7a2e-4b7e-8f8b-2f6a1c9d4e31")
CABIN_CLASSES: tuple[str, ...] = ("economy", "premium_economy", "business", "first")
TRAVELLER_KINDS: tuple[str, ...] = ("expert", "team_member")
BOOKING_STATUSES: tuple[str, ...] = ("booked", "cancelled")
MAX_SEGMENTS = 12
KM_PER_STATUTE_MILE = Decimal("1.609344")
ACTION_CODE = re.compile(r"^\d{4}-\d{2,}$")
AMOUNT = re.compile(r"^\d{1,12}(\.\d{1,4})?$")
BOOKING_ID = r"^booking-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


# --- reference data ---------------------------------------------------------------------------------


@cache
def airports() -> dict[str, dict[str, Any]]:
    """IATA code -> airport record (airportsdata)."""
    return airportsdata.load("IATA")


def is_airport(code: str) -> bool:
    return code in airports()


def is_currency(code: str) -> bool:
    return len(code) == 3 and pycountry.currencies.get(alpha_3=code) is not None


def distance_km(origin: str, destination: str) -> Decimal:
    """Geodesic distance on WGS84 between two airports, in km (DESIGN.md section 7)."""
    a, b = airports()[origin], airports()[destination]
    metres = Geodesic.WGS84.Inverse(a["lat"], a["lon"], b["lat"], b["lon"])["s12"]
    return Decimal(repr(metres)) / 1000


def statute_miles(origin: str, destination: str) -> Decimal:
    """Statute miles between two airports (km / 1.609344), to three decimals."""
    return (distance_km(origin, destination) / KM_PER_STATUTE_MILE).quantize(Decimal("0.001"), ROUND_HALF_UP)


def booking_id_for(command_id: str) -> str:
    """Derived from the command id, so a retried BookFlight lands on the same stream."""
    return f"booking-{uuid.uuid5(BOOKING_NAMESPACE, command_id)}"


# --- commands -----------------------------------------------------------------------------------------


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, extra="forbid")
    command_id: str = Field(min_length=1, max_length=200)


class SegmentInput(BaseModel):
    """One flight as a command gives it: codes are upper-cased, must be real IATA airports and differ."""

    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, extra="forbid")
    origin: str
    destination: str
    departs_on: date

    @field_validator("origin", "destination")
    @classmethod
    def real_airport(cls, v: str) -> str:
        code = v.upper()
        if not is_airport(code):
            raise ValueError("not an IATA airport code (airportsdata)")
        return code

    @field_validator("destination")
    @classmethod
    def not_the_origin(cls, v: str, info: ValidationInfo) -> str:
        if info.data.get("origin") == v:
            raise ValueError("must differ from the origin")
        return v

    def to_event(self) -> Segment:
        return Segment(origin=self.origin, destination=self.destination, departs_on=self.departs_on)


class FareInput(BaseModel):
    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, extra="forbid")
    amount: str
    currency: str

    @field_validator("amount")
    @classmethod
    def positive_decimal(cls, v: str) -> str:
        if not AMOUNT.match(v):
            raise ValueError("must be a decimal number like 1234.50 (at most 4 decimals)")
        try:
            d = Decimal(v)
        except InvalidOperation as e:  # pragma: no cover - the pattern admits only decimals
            raise ValueError("must be a decimal number") from e
        if d <= 0:
            raise ValueError("must be greater than 0")
        return v

    @field_validator("currency")
    @classmethod
    def iso_4217(cls, v: str) -> str:
        code = v.upper()
        if not is_currency(code):
            raise ValueError("not an ISO 4217 currency code")
        return code

    def to_event(self) -> Fare:
        return Fare(amount=self.amount, currency=self.currency)


def _segments_in_order(v: tuple[SegmentInput, ...]) -> tuple[SegmentInput, ...]:
    for i in range(1, len(v)):
        if v[i].departs_on < v[i - 1].departs_on:
            raise ValueError(f"segment {i} departs before segment {i - 1}: segments must be in travel order")
    return v


class _Itinerary(_Command):
    segments: tuple[SegmentInput, ...]
    cabin_class: CabinClass
    fare: FareInput

    @field_validator("segments", mode="before")
    @classmethod
    def one_to_max_segments(cls, v: Any) -> Any:
        # checked before the items (pydantic would also report an empty tuple when an item is invalid)
        if isinstance(v, list | tuple) and not 1 <= len(v) <= MAX_SEGMENTS:
            raise ValueError(f"must have from 1 to {MAX_SEGMENTS} segments")
        return v

    @field_validator("segments")
    @classmethod
    def in_travel_order(cls, v: tuple[SegmentInput, ...]) -> tuple[SegmentInput, ...]:
        return _segments_in_order(v)


class JoinTeam(_Command):
    member_id: str = Field(min_length=1, max_length=100)
    name: str = Field(min_length=1, max_length=200)
    gender: str
    role: str = Field(min_length=1, max_length=200)
    joined_on: date

    @field_validator("gender")
    @classmethod
    def known_gender(cls, v: str) -> str:
        if v not in reference.genders():
            raise ValueError(f"must be one of {', '.join(reference.genders())}")
        return v


class LeaveTeam(_Command):
    member_id: str = Field(min_length=1, max_length=100)
    left_on: date


class BookFlight(_Itinerary):
    traveller_id: str = Field(min_length=1, max_length=100)
    traveller_kind: TravellerKind
    action_code: str | None = None
    activity_id: str | None = Field(default=None, min_length=1, max_length=100)
    booked_on: date

    @field_validator("action_code")
    @classmethod
    def action_code_form(cls, v: str | None) -> str | None:
        if v is not None and not ACTION_CODE.match(v):
            raise ValueError("must be an action code like 2017-01")
        return v

    @property
    def booking_id(self) -> str:
        return booking_id_for(self.command_id)


class ChangeFlight(_Itinerary):
    booking_id: str = Field(pattern=BOOKING_ID)
    changed_on: date


class CancelFlight(_Command):
    booking_id: str = Field(pattern=BOOKING_ID)
    reason: str = Field(min_length=1, max_length=500)
    cancelled_on: date


# --- the team -----------------------------------------------------------------------------------------


@dataclass
class Stint:
    joined_on: date
    left_on: date | None = None

    def covers(self, day: date) -> bool:
        """On the team that day: from the day joined up to and including the day left."""
        return self.joined_on <= day and (self.left_on is None or day <= self.left_on)


@dataclass
class Member:
    member_id: str
    name: str
    stints: list[Stint]

    @property
    def on_team(self) -> bool:
        return bool(self.stints) and self.stints[-1].left_on is None


class Team(Aggregate):
    """The MIEUX team (one stream): members join and leave, and may come back after leaving."""

    def __init__(self, stream_id: str = TEAM_STREAM) -> None:
        super().__init__(stream_id)
        self.members: dict[str, Member] = {}

    def when_TeamMemberJoined(self, e: TeamMemberJoined) -> None:
        m = self.members.setdefault(e.member_id, Member(e.member_id, e.name, []))
        m.name = e.name
        m.stints.append(Stint(e.joined_on))

    def when_TeamMemberLeft(self, e: TeamMemberLeft) -> None:
        self.members[e.member_id].stints[-1].left_on = e.left_on

    def on_team_on(self, member_id: str, day: date) -> bool:
        m = self.members.get(member_id)
        return m is not None and any(s.covers(day) for s in m.stints)

    def check_not_on_team(self, member_id: str) -> None:
        m = self.members.get(member_id)
        if m is not None and m.on_team:
            raise RuleBroken(f"team member {member_id} is already on the team: a member cannot join twice")

    def check_rejoins_after_leaving(self, member_id: str, joined_on: date) -> None:
        m = self.members.get(member_id)
        if m is not None and m.stints:
            left_on = m.stints[-1].left_on
            if left_on is not None and joined_on <= left_on:
                raise RuleBroken(f"team member {member_id} left on {left_on}: they can rejoin only after that day")

    def check_on_team(self, member_id: str) -> Member:
        m = self.members.get(member_id)
        if m is None or not m.on_team:
            raise RuleBroken(f"{member_id} is not on the team: only a member on the team can leave it")
        return m

    def check_leaves_after_joining(self, m: Member, left_on: date) -> None:
        joined_on = m.stints[-1].joined_on
        if left_on < joined_on:
            raise RuleBroken(f"team member {m.member_id} joined on {joined_on}: they cannot leave before that")

    def join(self, cmd: JoinTeam) -> list[TeamMemberJoined]:
        self.check_not_on_team(cmd.member_id)
        self.check_rejoins_after_leaving(cmd.member_id, cmd.joined_on)
        return [
            TeamMemberJoined(
                member_id=cmd.member_id, name=cmd.name, gender=cmd.gender, role=cmd.role, joined_on=cmd.joined_on
            )
        ]

    def leave(self, cmd: LeaveTeam) -> list[TeamMemberLeft]:
        m = self.check_on_team(cmd.member_id)
        self.check_leaves_after_joining(m, cmd.left_on)
        return [TeamMemberLeft(member_id=cmd.member_id, left_on=cmd.left_on)]


# --- bookings -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpertRecord:
    """What the experts service says about an expert (None when it does not know them)."""

    expert_id: str
    active: bool


def check_traveller(
    kind: TravellerKind, traveller_id: str, on: date, *, expert: ExpertRecord | None, team: Team
) -> None:
    """The traveller is an active expert, or a team member on the team on the booking date."""
    if kind == "expert":
        if expert is None:
            raise RuleBroken(f"traveller {traveller_id} is not an expert of the roster")
        if not expert.active:
            raise RuleBroken(f"expert {traveller_id} is deactivated: only active experts may travel")
    elif not team.on_team_on(traveller_id, on):
        raise RuleBroken(f"traveller {traveller_id} is not on the team on {on}: only team members may travel as such")


class Booking(Aggregate):
    """One flight booking (possibly several segments). A cancelled booking is final."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(stream_id)
        self.traveller_id = ""
        self.traveller_kind: TravellerKind = "expert"
        self.booked_on: date | None = None
        self.cancelled = False

    def when_FlightBooked(self, e: FlightBooked) -> None:
        self.traveller_id = e.traveller_id
        self.traveller_kind = e.traveller_kind
        self.booked_on = e.booked_on

    def when_FlightCancelled(self, e: FlightCancelled) -> None:
        self.cancelled = True

    def check_not_booked(self) -> None:
        if self.exists:
            raise RuleBroken(f"booking {self.id} was already made")

    def check_not_cancelled(self) -> None:
        if self.cancelled:
            raise RuleBroken(f"booking {self.id} is cancelled: a cancelled booking is final")

    def check_not_before_booking(self, day: date, what: str) -> None:
        if self.booked_on is not None and day < self.booked_on:
            raise RuleBroken(f"booking {self.id} was made on {self.booked_on}: it cannot be {what} before that")

    def book(self, cmd: BookFlight, *, expert: ExpertRecord | None, team: Team) -> list[FlightBooked]:
        self.check_not_booked()
        check_traveller(cmd.traveller_kind, cmd.traveller_id, cmd.booked_on, expert=expert, team=team)
        return [
            FlightBooked(
                booking_id=self.id,
                traveller_id=cmd.traveller_id,
                traveller_kind=cmd.traveller_kind,
                action_code=cmd.action_code,
                activity_id=cmd.activity_id,
                segments=tuple(s.to_event() for s in cmd.segments),
                cabin_class=cmd.cabin_class,
                fare=cmd.fare.to_event(),
                booked_on=cmd.booked_on,
            )
        ]

    def change(self, cmd: ChangeFlight) -> list[FlightChanged]:
        self.check_not_cancelled()
        self.check_not_before_booking(cmd.changed_on, "changed")
        return [
            FlightChanged(
                booking_id=self.id,
                traveller_id=self.traveller_id,
                traveller_kind=self.traveller_kind,
                segments=tuple(s.to_event() for s in cmd.segments),
                cabin_class=cmd.cabin_class,
                fare=cmd.fare.to_event(),
                changed_on=cmd.changed_on,
            )
        ]

    def cancel(self, cmd: CancelFlight) -> list[FlightCancelled]:
        self.check_not_cancelled()
        self.check_not_before_booking(cmd.cancelled_on, "cancelled")
        return [
            FlightCancelled(
                booking_id=self.id, traveller_id=self.traveller_id, reason=cmd.reason, cancelled_on=cmd.cancelled_on
            )
        ]
