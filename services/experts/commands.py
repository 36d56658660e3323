"""The commands of the experts service: what may be asked of an expert, validated at the edge (pydantic).

Each command derives from the kernel's `Command` (a client-chosen `command_id`, frozen, stripped, no
extra fields). The checks here are pure input checks (forms, reference data); the rules that depend on
an expert's history are the aggregate's (domain.py). The ids of new streams and entities are uuid5s of
the command id, so a retried command lands on the same ones.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from services.experts.events import EVALUATION_QUESTIONS
from services.kernel import reference
from services.kernel.command import Command
from services.kernel.limits import ID, Day, Id, Name, Reason, shown
from services.kernel.personal import PersonalCommand

EXPERT_NAMESPACE = uuid.UUID("b3a4f0f2-8c1e-4d57-9f5e-2f0c8e1d7a31")
DEPLOYMENT_NAMESPACE = uuid.UUID("0c9d5f6e-3b2a-4e71-8d4c-5a6b7c8d9e0f")
EVALUATION_NAMESPACE = uuid.UUID("7e1a2b3c-4d5e-4f60-9a1b-2c3d4e5f6a7b")

ExpertId = Annotated[str, StringConstraints(strip_whitespace=True, max_length=ID, pattern=r"^expert-[0-9a-f-]{36}$")]
DeploymentId = Annotated[str, StringConstraints(strip_whitespace=True, max_length=ID, pattern=r"^dep-[0-9a-f-]{36}$")]
ActivityId = Annotated[str, StringConstraints(strip_whitespace=True, max_length=ID, pattern=r"^\d{4}-\d{2,}/A\d+$")]
MAX_THEMES = 20


def canonical_gender(v: str) -> str:
    if v not in reference.genders():
        raise ValueError(f"must be one of {', '.join(reference.genders())}")
    return v


def canonical_background(v: str) -> str:
    backgrounds = reference.expert_backgrounds()
    if v not in backgrounds:
        raise ValueError(f"must be one of {', '.join(backgrounds)}")
    return v


def canonical_themes(v: tuple[str, ...]) -> tuple[str, ...]:
    known = reference.themes()
    unknown = [t for t in v if t not in known]
    if unknown:
        raise ValueError(f"unknown themes {shown(', '.join(unknown))}: must be keys of the reference themes")
    return tuple(dict.fromkeys(v))  # in order, each once


Gender = Annotated[Id, AfterValidator(canonical_gender)]
Background = Annotated[Id, AfterValidator(canonical_background)]
# ISO 3166-1 alpha-2, upper case (`be` becomes `BE`, so one country is never counted twice)
Nationality = Annotated[Id, AfterValidator(reference.country_code)]
Themes = Annotated[tuple[Id, ...], Field(max_length=MAX_THEMES), AfterValidator(canonical_themes)]


class RegisterExpert(PersonalCommand):
    personal = ("name",)
    name: Name
    gender: Gender
    background: Background
    nationality: Nationality
    themes: Themes = ()
    registered_on: Day

    @property
    def expert_id(self) -> str:
        """Derived from the command id, so a retried registration lands on the same stream."""
        return f"expert-{uuid.uuid5(EXPERT_NAMESPACE, self.command_id)}"


class UpdateExpertProfile(PersonalCommand):
    """Only the fields given change; `themes`, when given, replaces the list."""

    personal = ("name",)
    expert_id: ExpertId
    name: Name | None = None
    gender: Gender | None = None
    background: Background | None = None
    nationality: Nationality | None = None
    themes: Themes | None = None
    updated_on: Day


class DeployExpert(Command):
    expert_id: ExpertId
    activity_id: ActivityId

    @property
    def deployment_id(self) -> str:
        return f"dep-{uuid.uuid5(DEPLOYMENT_NAMESPACE, self.command_id)}"


class CancelDeployment(Command):
    expert_id: ExpertId
    deployment_id: DeploymentId
    reason: Reason
    cancelled_on: Day


class AnswerInput(BaseModel):
    """One answer of SubmitEvaluation: a question of EVALUATION_QUESTIONS and a score from 1 to 5."""

    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, extra="forbid")
    question: Id
    score: int = Field(ge=1, le=5)

    @field_validator("question")
    @classmethod
    def known_question(cls, v: str) -> str:
        if v not in EVALUATION_QUESTIONS:
            raise ValueError(f"must be one of {', '.join(EVALUATION_QUESTIONS)}")
        return v


class SubmitEvaluation(Command):
    expert_id: ExpertId
    deployment_id: DeploymentId
    answers: tuple[AnswerInput, ...] = Field(max_length=2 * len(EVALUATION_QUESTIONS))
    submitted_on: Day

    @field_validator("answers")
    @classmethod
    def each_question_once(cls, v: tuple[AnswerInput, ...]) -> tuple[AnswerInput, ...]:
        if not v:
            raise ValueError("at least one answer")
        seen = [a.question for a in v]
        twice = sorted({q for q in seen if seen.count(q) > 1})
        if twice:
            raise ValueError(f"question {shown(', '.join(twice))} answered more than once")
        return v

    @property
    def evaluation_id(self) -> str:
        return f"eval-{uuid.uuid5(EVALUATION_NAMESPACE, self.command_id)}"


class DeactivateExpert(Command):
    expert_id: ExpertId
    reason: Reason
    deactivated_on: Day


class ForgetExpert(Command):
    """Admin only: destroy the expert's key (their name is gone everywhere for good). The reason stays readable:
    it must not name the person."""

    expert_id: ExpertId
    reason: Reason
    forgotten_on: Day
