"""Events the actions service publishes on `mieux.actions.events`: its public contract.

Stream: one per action, id = the action code `YYYY-NN` (2017-01, 2017-02 ... in order of approval).
Activities live inside their action's stream; an activity id is `<code>/A<n>` (e.g. `2017-03/A2`),
n counting the activities planned in the action.

Every activity event repeats its action's partner and region, so read models (stats: activities by
region, countries benefitted, participants) need no join with ActionOpened; so do the results of an
action (participants' feedback, the partner's assessment, deliverables), and feedback also repeats the
date its activity started (the year it counts in).

The GAMM pillars, the kinds of deliverable and the partner's ratings are part of this contract (below):
events carry their keys.
"""

from __future__ import annotations

from datetime import date
from typing import Any, ClassVar, Literal

from pydantic import Field

from services.kernel.envelope import Event, registry

PartnerKind = Literal["country", "regional_organisation"]
Rating = Literal["poor", "fair", "good", "excellent"]

# The four pillars of the Global Approach to Migration and Mobility (GAMM) as the MIEUX Annual Report 2017
# names them ("MIEUX has been active in all four pillars of the GAMM since 2011"); an action fiche names
# the pillar(s) its action serves.
GAMM_PILLARS: dict[str, str] = {
    "legal_migration": "Legal migration and mobility",
    "irregular_migration": "Irregular migration and trafficking in human beings",
    "international_protection": "International protection",
    "migration_and_development": "Migration and development",
}
# What an action may deliver (DESIGN.md section 5)
DELIVERABLE_KINDS: dict[str, str] = {
    "policy": "Policy",
    "strategy": "Strategy",
    "action_plan": "Action plan",
    "handbook": "Handbook or manual",
    "sop": "Standard operating procedures",
    "legislation": "Legislation",
    "curriculum": "Curriculum",
    "other": "Other",
}
RATINGS: tuple[Rating, ...] = ("poor", "fair", "good", "excellent")


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
    """The Action Fiche (the intervention's logic and its set of activities) was agreed with the partner.

    Version 2 names the GAMM pillar(s) the action serves and its themes (keys of reference.themes()); a
    version 1 event (before fiches named them) is upcast with none of either (events.py, below)."""

    schema_version: ClassVar[int] = 2
    agreed_on: date
    summary: str = ""
    pillars: tuple[str, ...] = ()  # keys of GAMM_PILLARS
    themes: tuple[str, ...] = ()


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


class ParticipantFeedbackRecorded(ActionEvent):
    """The participants' feedback forms of a held activity: how many answered, and how many agree or
    strongly agree that their professional skills were enhanced, and that it will make a difference in
    their work."""

    activity_id: str
    activity_starts_on: date  # the date the activity started: the year its feedback counts in
    partner: str
    region: str
    respondents: int = Field(ge=0)
    skills_enhanced: int = Field(ge=0)
    makes_a_difference: int = Field(ge=0)
    recorded_on: date


class PartnerAssessmentSubmitted(ActionEvent):
    """The partner authority's rating of its overall experience with the action (once per action)."""

    partner: str
    region: str
    rating: Rating
    submitted_on: date
    comment: str = ""


class DeliverableRecorded(ActionEvent):
    """Something the action delivered with the partner (a strategy, a policy, a handbook ...); its id is
    `<code>/D<n>`, n counting the action's deliverables."""

    deliverable_id: str
    kind: str  # a key of DELIVERABLE_KINDS
    title: str
    delivered_on: date
    partner: str
    region: str


@registry.upcaster("ActionFicheAgreed", 1)
def _fiche_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """A fiche agreed before fiches named their pillars and themes: none of either (stats then take the
    action's themes from its ActionOpened)."""
    return {**data, "pillars": [], "themes": []}
