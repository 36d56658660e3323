"""Scenarios: years of operations as data (`scenarios/*.yaml`): the file's shape, validated on load.

`scenario_replay.py` sends a scenario through the gRPC APIs. Every command id is derived from the file:
`<id_prefix>:<section>:<key>[:<step>]`, so a second replay is answered with the first results and appends
nothing. The file's `report:` section (the published figures the data is built to give) is never replayed:
the tests check the data against it and the demo prints it beside the figures the services computed.

A scenario may follow another (`follows:`, a file beside it): it is replayed after that one, and names its
experts and actions (e.g. the history of 2009-2016 deploys the experts of the 2017 roster).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

# --- the file -------------------------------------------------------------------------------------


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Money(_Entry):
    amount: str
    currency: str


class TeamEntry(_Entry):
    key: str = Field(min_length=1)
    name: str
    gender: str
    role: str
    joined_on: date
    left_on: date | None = None


class RequestEntry(_Entry):
    key: str = Field(min_length=1)
    partner: str
    institution: str
    institution_type: str
    received_on: date
    title: str
    themes: tuple[str, ...] = ()
    assessed_on: date | None = None
    decision: Literal["approved", "rejected", "withdrawn"] | None = None
    decided_on: date | None = None
    reason: str = ""
    # the code the actions service gives on approval, and the partner's n-th action it is
    action: str | None = None
    follow_up: int | None = None


class Fiche(_Entry):
    agreed_on: date
    summary: str = ""
    pillars: tuple[str, ...] = ()  # the GAMM pillars the action serves
    themes: tuple[str, ...] = ()  # none: the request's


class Feedback(_Entry):
    """The participants' feedback forms of a held activity."""

    respondents: int = Field(ge=1)
    skills_enhanced: int = Field(ge=0)
    makes_a_difference: int = Field(ge=0)
    recorded_on: date


class Assessment(_Entry):
    rating: Literal["poor", "fair", "good", "excellent"]
    submitted_on: date


class Deliverable(_Entry):
    kind: str
    title: str
    delivered_on: date


class Evaluation(_Entry):
    """An expert's post-mission evaluation of a deployment: question key -> score 1-5."""

    submitted_on: date
    answers: dict[str, int]


class Held(_Entry):
    male: int = Field(ge=0)
    female: int = Field(ge=0)
    other: int = Field(default=0, ge=0)


class Cancelled(_Entry):
    cancelled_on: date
    reason: str


class ActivityEntry(_Entry):
    n: int = Field(ge=1)
    title: str
    type: str
    starts_on: date
    ends_on: date
    country: str
    city: str = ""
    airport: str = ""
    held: Held | None = None
    feedback: Feedback | None = None
    cancelled: Cancelled | None = None


class ActionEntry(_Entry):
    code: str
    partner: str
    report_name: str = ""
    follow_up: int | None = None
    fiche: Fiche | None = None
    activities: tuple[ActivityEntry, ...] = ()
    assessment: Assessment | None = None  # the partner's
    deliverables: tuple[Deliverable, ...] = ()  # recorded in order: the n-th is <code>/D<n>
    closed_on: date | None = None

    @field_validator("code", mode="before")
    @classmethod
    def as_text(cls, v: Any) -> str:
        return str(v)


class ExpertEntry(_Entry):
    key: str = Field(min_length=1)
    name: str
    gender: str
    background: str
    nationality: str
    registered_on: date
    themes: tuple[str, ...] = ()
    deactivated_on: date | None = None
    deactivation_reason: str = "no longer available"


class DeploymentEntry(_Entry):
    expert: str
    activity: str
    cancelled: Cancelled | None = None
    evaluation: Evaluation | None = None

    @property
    def key(self) -> str:
        return f"{self.expert}@{self.activity}"


class FlightChange(_Entry):
    segments: tuple[tuple[str, str, date], ...]
    cabin: str
    fare: Money
    changed_on: date


class FlightEntry(_Entry):
    key: str = Field(min_length=1)
    traveller: str
    activity: str = ""
    segments: tuple[tuple[str, str, date], ...]
    cabin: str
    fare: Money
    booked_on: date
    change: FlightChange | None = None
    cancelled: Cancelled | None = None

    def flown(self) -> tuple[tuple[str, str, date], ...]:
        """The itinerary flown: none if cancelled, the changed one if changed."""
        if self.cancelled is not None:
            return ()
        return self.change.segments if self.change is not None else self.segments


class Retirement(_Entry):
    key: str
    quantity: int = Field(gt=0)
    against_year: int
    retired_on: date


class OffsetEntry(_Entry):
    key: str
    registry: str
    project: str
    vintage_year: int
    quantity: int = Field(gt=0)
    unit_price: Money
    purchased_on: date
    retirements: tuple[Retirement, ...] = ()


class Scenario(_Entry):
    name: str
    id_prefix: str = Field(min_length=1)
    follows: str = ""  # the scenario file (beside this one) replayed before it, whose experts this one names
    report: dict[str, Any] = Field(default_factory=dict)  # published figures: for the tests, never replayed
    team: tuple[TeamEntry, ...] = ()
    requests: tuple[RequestEntry, ...] = ()
    actions: tuple[ActionEntry, ...] = ()
    experts: tuple[ExpertEntry, ...] = ()
    deployments: tuple[DeploymentEntry, ...] = ()
    flights: tuple[FlightEntry, ...] = ()
    offsets: tuple[OffsetEntry, ...] = ()

    def cid(self, section: str, key: str, step: str = "") -> str:
        """The command id of an entry's command: fixed by the file, so a replay is idempotent."""
        return f"{self.id_prefix}:{section}:{key}" + (f":{step}" if step else "")

    def approvals(self) -> list[RequestEntry]:
        """Approved requests in the order they are approved (the order their actions' codes follow)."""
        approved = [r for r in self.requests if r.decision == "approved"]
        return sorted(approved, key=lambda r: (r.decided_on or date.min, r.action or ""))

    def commands(self) -> int:
        """How many commands a replay sends (the progress bar's total)."""
        n = len(self.team) + sum(1 for t in self.team if t.left_on)
        n += len(self.experts) + sum(1 for e in self.experts if e.deactivated_on)
        n += sum(1 + bool(r.assessed_on) + bool(r.decision) for r in self.requests)
        for a in self.actions:
            n += (a.fiche is not None) + (a.closed_on is not None) + (a.assessment is not None) + len(a.deliverables)
            n += sum(
                1 + (x.held is not None) + (x.cancelled is not None) + (x.feedback is not None) for x in a.activities
            )
        n += sum(1 + (d.cancelled is not None) + (d.evaluation is not None) for d in self.deployments)
        n += sum(1 + (f.change is not None) + (f.cancelled is not None) for f in self.flights)
        n += sum(1 + len(o.retirements) for o in self.offsets)
        return n


def load(path: str | Path) -> Scenario:
    """Read and validate a scenario file (structure only; the services check the rules when replayed)."""
    return Scenario.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")))
