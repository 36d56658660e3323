"""The commands of the actions service: what may be asked of an action or an activity, validated at the
edge (pydantic).

Malformed input (an action code or activity id of the wrong shape, an unknown activity type, a country
not ISO 3166-1 alpha-2, an airport not a real IATA code, ends_on before starts_on, negative participants)
is refused here (INVALID_ARGUMENT); the rules an action's history decides on are the aggregate's
(domain.py).
"""

from __future__ import annotations

from datetime import date
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from services.actions.domain import CODE_RE, parse_activity_id
from services.actions.events import PartnerKind
from services.kernel import reference
from services.kernel.command import Command

REMOTE = "remote_support"  # the activity type that needs no venue (city, airport)


def ends_after_start(v: date | None, info: ValidationInfo) -> date | None:
    """A validator of `ends_on`: refused if before the `starts_on` already validated."""
    start = info.data.get("starts_on")
    if v is not None and start is not None and v < start:
        raise ValueError("must not be before starts_on")
    return v


class ActionCommand(Command):
    """A command on an action, named by its code."""

    action_code: str = Field(min_length=1)

    @field_validator("action_code")
    @classmethod
    def valid_code(cls, v: str) -> str:
        if not CODE_RE.match(v):
            raise ValueError("not an action code like 2017-03")
        return v


class ActivityCommand(Command):
    """A command on an activity, named by its id (which names its action)."""

    activity_id: str = Field(min_length=1)

    @field_validator("activity_id")
    @classmethod
    def valid_activity_id(cls, v: str) -> str:
        parse_activity_id(v)
        return v

    @property
    def action_code(self) -> str:
        return parse_activity_id(self.activity_id)[0]


class OpenAction(Command):
    """Issued by the policy on RequestApproved (command id derived from the event id)."""

    request_id: str = Field(min_length=1)
    partner: str = Field(min_length=2)
    partner_kind: PartnerKind
    partner_name: str = Field(min_length=1)
    region: str = ""
    themes: tuple[str, ...] = ()
    approved_on: date


class AgreeActionFiche(ActionCommand):
    agreed_on: date
    summary: str = Field(default="", max_length=4000)


class PlanActivity(ActionCommand):
    title: str = Field(min_length=1, max_length=300)
    activity_type: str
    starts_on: date
    ends_on: date
    country: str
    # the venue's city and airport: required unless the activity is remote support
    city: str = Field(default="", max_length=200, validate_default=True)
    airport: str = Field(default="", validate_default=True)

    @field_validator("activity_type")
    @classmethod
    def known_type(cls, v: str) -> str:
        if v not in reference.activity_types():
            raise ValueError(f"must be one of {', '.join(reference.activity_types())}")
        return v

    @field_validator("ends_on")
    @classmethod
    def not_before_start(cls, v: date, info: ValidationInfo) -> date:
        return ends_after_start(v, info)

    @field_validator("country")
    @classmethod
    def known_country(cls, v: str) -> str:
        return reference.country_code(v)

    @field_validator("city")
    @classmethod
    def city_unless_remote(cls, v: str, info: ValidationInfo) -> str:
        if not v and info.data.get("activity_type", REMOTE) != REMOTE:
            raise ValueError("required unless the activity is remote support")
        return v

    @field_validator("airport")
    @classmethod
    def known_airport(cls, v: str, info: ValidationInfo) -> str:
        if v:
            return reference.airport_code(v)
        if info.data.get("activity_type", REMOTE) != REMOTE:
            raise ValueError("required unless the activity is remote support")
        return v


class RecordActivityHeld(ActivityCommand):
    participants_male: int = Field(default=0, ge=0)
    participants_female: int = Field(default=0, ge=0)
    participants_other: int = Field(default=0, ge=0)
    # the dates it actually took place, when they differ from the plan
    starts_on: date | None = None
    ends_on: date | None = None

    @field_validator("starts_on", "ends_on", mode="before")
    @classmethod
    def empty_is_none(cls, v: Any) -> Any:
        return None if v == "" else v

    @field_validator("ends_on")
    @classmethod
    def not_before_start(cls, v: date | None, info: ValidationInfo) -> date | None:
        return ends_after_start(v, info)


class CancelActivity(ActivityCommand):
    cancelled_on: date
    reason: str = Field(min_length=1, max_length=2000)


class CloseAction(ActionCommand):
    closed_on: date
    summary: str = Field(default="", max_length=4000)
