"""The commands of the logistics service (the team, flight bookings), validated at the edge (pydantic).

Each command derives from the kernel's `Command` (a client-chosen `command_id`, frozen, stripped, no
extra fields). The checks here are pure input checks: airports are known IATA codes and currencies
ISO 4217 codes (services.kernel.reference), amounts are decimals, segments are in travel order. The rules
that depend on the team or on a booking's history are the aggregates' (domain.py).
"""

from __future__ import annotations

import re
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from services.kernel import reference
from services.kernel.command import Command
from services.kernel.limits import ID, Day, Id, Name, Reason
from services.kernel.personal import PersonalCommand
from services.logistics.events import CabinClass, Fare, Segment, TravellerKind

BOOKING_NAMESPACE = uuid.UUID("0b5e5d0c-7a2e-4b7e-8f8b-2f6a1c9d4e31")
MAX_SEGMENTS = 12
ACTION_CODE = re.compile(r"^\d{4}-\d{2,}$")
AMOUNT = re.compile(r"^\d{1,12}(\.\d{1,4})?$")
BOOKING_ID = r"^booking-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def booking_id_for(command_id: str) -> str:
    """Derived from the command id, so a retried BookFlight lands on the same stream."""
    return f"booking-{uuid.uuid5(BOOKING_NAMESPACE, command_id)}"


class SegmentInput(BaseModel):
    """One flight as a command gives it: codes are upper-cased, must be real IATA airports and differ."""

    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, extra="forbid")
    origin: Id
    destination: Id
    departs_on: Day

    @field_validator("origin", "destination")
    @classmethod
    def real_airport(cls, v: str) -> str:
        code = v.upper()
        if not reference.is_airport(code):
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
    """The fare as a command gives it: a positive decimal amount (a string, never a float), ISO 4217."""

    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, extra="forbid")
    amount: Id
    currency: Id

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
        if not reference.is_currency(code):
            raise ValueError("not an ISO 4217 currency code")
        return code

    def to_event(self) -> Fare:
        return Fare(amount=self.amount, currency=self.currency)


def _segments_in_order(v: tuple[SegmentInput, ...]) -> tuple[SegmentInput, ...]:
    for i in range(1, len(v)):
        if v[i].departs_on < v[i - 1].departs_on:
            raise ValueError(f"segment {i} departs before segment {i - 1}: segments must be in travel order")
    return v


class _Itinerary(Command):
    """What BookFlight and ChangeFlight both give: the segments, the cabin and the fare."""

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


class JoinTeam(PersonalCommand):
    personal = ("name", "role")
    member_id: Id
    name: Name
    gender: Id
    role: Name
    joined_on: Day

    @field_validator("gender")
    @classmethod
    def known_gender(cls, v: str) -> str:
        if v not in reference.genders():
            raise ValueError(f"must be one of {', '.join(reference.genders())}")
        return v


class LeaveTeam(Command):
    member_id: Id
    left_on: Day


class ForgetTeamMember(Command):
    """Admin only: destroy the member's key (their name and role are gone everywhere for good). The reason
    stays readable: it must not name the person."""

    member_id: Id
    reason: Reason
    forgotten_on: Day


class BookFlight(_Itinerary):
    traveller_id: Id
    traveller_kind: TravellerKind
    action_code: Id | None = None
    activity_id: Id | None = None
    booked_on: Day

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
    booking_id: str = Field(max_length=ID, pattern=BOOKING_ID)
    changed_on: Day


class CancelFlight(Command):
    booking_id: str = Field(max_length=ID, pattern=BOOKING_ID)
    reason: Reason
    cancelled_on: Day
