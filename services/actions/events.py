"""Events the actions service publishes on `mieux.actions.events`: its public contract.

Stream: one per action, id = the action code `YYYY-NN` (2017-01, 2017-02 ... in order of approval).
Activities live inside their action's stream; an activity id is `<code>/A<n>` (e.g. `2017-03/A2`),
n counting the activities planned in the action.

Every activity event repeats its action's partner and region, so read models (stats: activities by
region, countries benefitted, participants) need no join with ActionOpened.
"""

from __future__ import annotations

from datetime import date
from typing import ClassVar, Literal

from pydantic import Field

from services.kernel.envelope import Event

PartnerKind = Literal["country", "regional_organisation"]


class ActionEvent(Event, abstract=True):
    source: ClassVar[str] = "actions"
    action_code: str


class ActionOpened(ActionEvent):
    """An approved request became an action (by policy on RequestApproved)."""

    request_id: str
    partner: str
    partner_kind: PartnerKind
    partner_name: str
    region: str
    themes: tuple[str, ...] = ()
    # "Costa Rica III": the partner's name and, from the second action of a partner on, a Roman numeral
    title: str
    # 1 for a partner's first action, 2 for its first follow-up ("II") ...
    follow_up: int = Field(ge=1)
    year: int
    opened_on: date


class ActionFicheAgreed(ActionEvent):
    """The Action Fiche (the intervention's logic and its set of activities) was agreed with the partner."""

    agreed_on: date
    summary: str = ""


class ActivityPlanned(ActionEvent):
    activity_id: str
    number: int = Field(ge=1)
    title: str
    activity_type: str  # a key of reference.activity_types()
    starts_on: date
    ends_on: date
    country: str  # ISO 3166-1 alpha-2 of the venue
    city: str = ""  # empty for remote support
    airport: str = ""  # IATA code of the venue's airport; empty for remote support
    partner: str
    region: str


class ActivityHeld(ActionEvent):
    activity_id: str
    activity_type: str
    starts_on: date  # the date it actually started (stats count activities by this date's year)
    ends_on: date
    country: str
    partner: str
    region: str
    participants_male: int = Field(ge=0)
    participants_female: int = Field(ge=0)
    participants_other: int = Field(ge=0)


class ActivityCancelled(ActionEvent):
    activity_id: str
    cancelled_on: date
    reason: str


class ActionClosed(ActionEvent):
    closed_on: date
    activities_held: int = Field(ge=0)
    summary: str = ""
