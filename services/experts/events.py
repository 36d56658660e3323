"""Events the experts service publishes on `mieux.experts.events`: its public contract.

One stream per expert, `expert-<uuid>` (a uuid5 of the RegisterExpert command id, so a retried
registration lands on the same stream). Deployments and evaluations live in their expert's stream:
the rules that guard them (no overlapping deployments, one evaluation per deployment) are the expert's.
"""

from __future__ import annotations

from datetime import date
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from services.kernel.envelope import Event


class Answer(BaseModel):
    """One answer of a post-mission evaluation: a question key and a score from 1 to 5 (4 and 5 agree)."""

    model_config = ConfigDict(frozen=True)
    question: str
    score: int


class ExpertEvent(Event, abstract=True):
    source: ClassVar[str] = "experts"
    expert_id: str


class ExpertRegistered(ExpertEvent):
    """An expert joins the pool (the Expert and Action Roster)."""

    name: str
    gender: str  # a value of reference.genders()
    background: str  # a key of reference.expert_backgrounds()
    nationality: str  # ISO 3166-1 alpha-2
    themes: tuple[str, ...] = ()  # keys of reference.themes(): the expert's fields of expertise
    registered_on: date


class ExpertProfileUpdated(ExpertEvent):
    """The whole profile after the update, and which fields changed."""

    name: str
    gender: str
    background: str
    nationality: str
    themes: tuple[str, ...] = ()
    changed: tuple[str, ...]
    updated_on: date


class ExpertDeployed(ExpertEvent):
    """The expert is deployed to an activity; the deployment's dates are the activity's."""

    deployment_id: str
    action_code: str  # YYYY-NN
    activity_id: str  # YYYY-NN/A<n>
    starts_on: date
    ends_on: date


class ExpertDeploymentCancelled(ExpertEvent):
    deployment_id: str
    action_code: str
    activity_id: str
    reason: str
    cancelled_on: date


class ExpertEvaluationSubmitted(ExpertEvent):
    """The expert's post-mission evaluation of one deployment."""

    evaluation_id: str
    deployment_id: str
    action_code: str
    activity_id: str
    answers: tuple[Answer, ...]
    submitted_on: date


class ExpertDeactivated(ExpertEvent):
    """The expert leaves the pool: no more deployments."""

    reason: str
    deactivated_on: date
