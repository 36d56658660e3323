"""The commands of the actions service: what may be asked of an action or an activity, validated at the
edge (pydantic).

Malformed input (an action code or activity id of the wrong shape, an unknown activity type, a country
not ISO 3166-1 alpha-2, an airport not a real IATA code, ends_on before starts_on, negative participants,
an unknown GAMM pillar, theme, rating or kind of deliverable, more agreeing than respondents) is refused
here (INVALID_ARGUMENT); the rules an action's history decides on are the aggregate's (domain.py).
"""

from __future__ import annotations

from datetime import date
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from services.actions.domain import CODE_RE, parse_activity_id
from services.actions.events import DELIVERABLE_KINDS, GAMM_PILLARS, PartnerKind, Rating
from services.kernel import reference
from services.kernel.command import Command
from services.kernel.limits import ID, NAME, Day, FreeText, Id, Name, Reason, Title, capped, shown, text

MAX_THEMES = 20
MAX_PARTICIPANTS = 100_000  # of one gender at one activity
REMOTE = "remote_support"  # the activity type that needs no venue (city, airport)


def ends_after_start(v: date | None, info: ValidationInfo) -> date | None:
    """A validator of `ends_on`: refused if before the `starts_on` already validated."""
    start = info.data.get("starts_on")
    if v is not None and start is not None and v < start:
        raise ValueError("must not be before starts_on")
    return v


class ActionCommand(Command):
    """A command on an action, named by its code."""

    action_code: Id

    @field_validator("action_code")
    @classmethod
    def valid_code(cls, v: str) -> str:
        if not CODE_RE.match(v):
            raise ValueError("not an action code like 2017-03")
        return v


class ActivityCommand(Command):
    """A command on an activity, named by its id (which names its action)."""

    activity_id: Id

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

    request_id: Id
    partner: text(ID, 2)  # type: ignore[valid-type]
    partner_kind: PartnerKind
    partner_name: Name
    region: text(ID) = ""  # type: ignore[valid-type]
    themes: capped(Id, MAX_THEMES) = ()  # type: ignore[valid-type]
    approved_on: Day


def known_keys(known: dict[str, str], what: str) -> Any:
    """A validator of a list of keys: each one of `known`."""

    def check(v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [k for k in v if k not in known]
        if unknown:
            raise ValueError(f"unknown {what} {shown(', '.join(unknown))}: must be among {', '.join(known)}")
        return v

    return check


class AgreeActionFiche(ActionCommand):
    agreed_on: Day
    summary: FreeText = ""
    # the GAMM pillar(s) the action serves, and its themes (none: the action's own, from its request);
    # the aggregate refuses a fiche that names no pillar
    pillars: capped(Id, len(GAMM_PILLARS)) = ()  # type: ignore[valid-type]
    themes: capped(Id, MAX_THEMES) = ()  # type: ignore[valid-type]

    @field_validator("pillars")
    @classmethod
    def known_pillars(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return known_keys(GAMM_PILLARS, "GAMM pillars")(v)

    @field_validator("themes")
    @classmethod
    def known_themes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return known_keys(reference.themes(), "themes")(v)


class PlanActivity(ActionCommand):
    title: Title
    activity_type: Id
    starts_on: Day
    ends_on: Day
    country: Id
    # the venue's city and airport: required unless the activity is remote support
    city: text(NAME) = Field(default="", validate_default=True)  # type: ignore[valid-type]
    airport: text(ID) = Field(default="", validate_default=True)  # type: ignore[valid-type]

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
    participants_male: int = Field(default=0, ge=0, le=MAX_PARTICIPANTS)
    participants_female: int = Field(default=0, ge=0, le=MAX_PARTICIPANTS)
    participants_other: int = Field(default=0, ge=0, le=MAX_PARTICIPANTS)
    # the dates it actually took place, when they differ from the plan
    starts_on: Day | None = None
    ends_on: Day | None = None

    @field_validator("starts_on", "ends_on", mode="before")
    @classmethod
    def empty_is_none(cls, v: Any) -> Any:
        return None if v == "" else v

    @field_validator("ends_on")
    @classmethod
    def not_before_start(cls, v: date | None, info: ValidationInfo) -> date | None:
        return ends_after_start(v, info)


class CancelActivity(ActivityCommand):
    cancelled_on: Day
    reason: Reason


class CloseAction(ActionCommand):
    closed_on: Day
    summary: FreeText = ""


class RecordParticipantFeedback(ActivityCommand):
    """The participants' feedback forms of a held activity: respondents, and how many of them agree or
    strongly agree that their professional skills were enhanced, and that it will make a difference in
    their work."""

    respondents: int = Field(ge=1, le=3 * MAX_PARTICIPANTS)
    skills_enhanced: int = Field(ge=0, le=3 * MAX_PARTICIPANTS)
    makes_a_difference: int = Field(ge=0, le=3 * MAX_PARTICIPANTS)
    recorded_on: Day

    @field_validator("skills_enhanced", "makes_a_difference")
    @classmethod
    def at_most_the_respondents(cls, v: int, info: ValidationInfo) -> int:
        respondents = info.data.get("respondents")
        if respondents is not None and v > respondents:
            raise ValueError("must not be more than the respondents")
        return v


class SubmitPartnerAssessment(ActionCommand):
    """The partner authority rates its overall experience with the action: poor, fair, good or excellent."""

    rating: Rating
    submitted_on: Day
    comment: FreeText = ""


class RecordDeliverable(ActionCommand):
    kind: Id
    title: Title
    delivered_on: Day

    @field_validator("kind")
    @classmethod
    def known_kind(cls, v: str) -> str:
        if v not in DELIVERABLE_KINDS:
            raise ValueError(f"must be one of {', '.join(DELIVERABLE_KINDS)}")
        return v
