"""Events the experts service publishes on `mieux.experts.events`: its public contract.

One stream per expert, `expert-<uuid>` (a uuid5 of the RegisterExpert command id, so a retried
registration lands on the same stream). Deployments and evaluations live in their expert's stream:
the rules that guard them (no overlapping deployments, one evaluation per deployment) are the expert's.

An expert's name is personal data: it is sealed with the expert's own key (services.kernel.personal), and only
the experts service opens it. Gender, background, nationality and themes stay readable: the statistics count
them. ExpertForgotten records that the key was destroyed; it holds nothing of the person.
"""

from __future__ import annotations

from datetime import date
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from services.kernel.envelope import Event
from services.kernel.personal import Sealed

# The questions of the post-mission evaluation form, scored 1 (strongly disagree) to 5 (strongly agree):
# part of the contract, since answers carry their keys. The first is the one the MIEUX Annual Report 2017
# publishes ("94.7% of experts agreed or strongly agreed that the peer-to-peer approach and knowledge
# exchange with other (non-) EU MS was beneficial"); the second is the overall rating the report quotes for
# partner authorities, asked of experts too (a choice).
PEER_TO_PEER = "peer_to_peer_beneficial"
EVALUATION_QUESTIONS: dict[str, str] = {
    PEER_TO_PEER: "The peer-to-peer approach and knowledge exchange with other (non-) EU MS was beneficial",
    "overall_experience": "My overall experience with the MIEUX mission was good or excellent",
}


class Answer(BaseModel):
    """One answer of a post-mission evaluation: a question key and a score from 1 to 5 (4 and 5 agree)."""

    model_config = ConfigDict(frozen=True)
    question: str
    score: int


class ExpertEvent(Event, abstract=True):
    # an error never quotes a value: a bug that made a name in clear would otherwise log it
    model_config = ConfigDict(hide_input_in_errors=True)
    source: ClassVar[str] = "experts"
    expert_id: str


class ExpertRegistered(ExpertEvent):
    """An expert joins the pool (the Expert and Action Roster)."""

    name: Sealed
    gender: str  # a value of reference.genders()
    background: str  # a key of reference.expert_backgrounds()
    nationality: str  # ISO 3166-1 alpha-2
    themes: tuple[str, ...] = ()  # keys of reference.themes(): the expert's fields of expertise
    registered_on: date


class ExpertProfileUpdated(ExpertEvent):
    """The whole profile after the update, and which fields changed."""

    name: Sealed
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


class ExpertForgotten(ExpertEvent):
    """The expert's key was destroyed (crypto-shredding): their name can never be read again; their gender,
    background, nationality, deployments and evaluations stay, so every figure stays the same. No more
    deployments, profile updates or evaluations; the reason never names the person."""

    reason: str
    forgotten_on: date
