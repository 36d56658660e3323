"""The expert aggregate: its fold, its rules (`check_...`) and its decisions. Pure: no I/O.

Stream: `expert-<uuid>`, a uuid5 of the RegisterExpert command id (a retried registration lands on
the same stream). Deployment and evaluation ids are uuid5s of their command ids too (commands.py).

Whether an activity exists and is not cancelled is asked of the actions service by the application
layer (handlers.py); the answer comes into `Expert.deploy` as an `ActivityFacts` value.

The name is sealed with the expert's own key (services.kernel.personal): the decisions that write or compare
it are given that key (`register`, `update_profile`); the fold keeps the sealed text. A forgotten expert
(ExpertForgotten) is not deployed, updated or evaluated again; cancelling a deployment and deactivating, which
hold nothing of the person and keep the figures right, stay possible.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date

from services.experts.commands import (
    CancelDeployment,
    DeactivateExpert,
    DeployExpert,
    ForgetExpert,
    RegisterExpert,
    SubmitEvaluation,
    UpdateExpertProfile,
)
from services.experts.events import (
    Answer,
    ExpertDeactivated,
    ExpertDeployed,
    ExpertDeploymentCancelled,
    ExpertEvaluationSubmitted,
    ExpertEvent,
    ExpertForgotten,
    ExpertProfileUpdated,
    ExpertRegistered,
)
from services.kernel.application import Aggregate
from services.kernel.errors import NotFound, RuleBroken
from services.kernel.personal import SubjectKey, names_the_person


@dataclass(frozen=True)
class ActivityFacts:
    """What the actions service says of an activity (mieux.actions.v1.Activity)."""

    activity_id: str
    action_code: str
    status: str
    starts_on: date | None
    ends_on: date | None


@dataclass
class Deployment:
    deployment_id: str
    action_code: str
    activity_id: str
    starts_on: date
    ends_on: date
    cancelled_on: date | None = None
    evaluation_id: str | None = None

    @property
    def live(self) -> bool:
        return self.cancelled_on is None

    def overlaps(self, starts_on: date, ends_on: date) -> bool:
        return self.starts_on <= ends_on and starts_on <= self.ends_on


@dataclass
class Profile:
    name: str  # sealed with the expert's key
    gender: str
    background: str
    nationality: str
    themes: tuple[str, ...] = ()


@dataclass
class Evaluation:
    evaluation_id: str
    deployment_id: str
    answers: tuple[Answer, ...]
    submitted_on: date


class Expert(Aggregate):
    folds = ExpertEvent

    def __init__(self, stream_id: str) -> None:
        super().__init__(stream_id)
        self.profile: Profile | None = None
        self.registered_on: date | None = None
        self.deactivated_on: date | None = None
        self.deactivation_reason: str = ""
        self.forgotten_on: date | None = None
        self.deployments: dict[str, Deployment] = {}
        self.evaluations: list[Evaluation] = []

    # --- fold ------------------------------------------------------------------------------------

    def when_ExpertRegistered(self, e: ExpertRegistered) -> None:
        self.profile = Profile(e.name, e.gender, e.background, e.nationality, e.themes)
        self.registered_on = e.registered_on

    def when_ExpertProfileUpdated(self, e: ExpertProfileUpdated) -> None:
        self.profile = Profile(e.name, e.gender, e.background, e.nationality, e.themes)

    def when_ExpertDeployed(self, e: ExpertDeployed) -> None:
        self.deployments[e.deployment_id] = Deployment(
            e.deployment_id, e.action_code, e.activity_id, e.starts_on, e.ends_on
        )

    def when_ExpertDeploymentCancelled(self, e: ExpertDeploymentCancelled) -> None:
        self.deployments[e.deployment_id].cancelled_on = e.cancelled_on

    def when_ExpertEvaluationSubmitted(self, e: ExpertEvaluationSubmitted) -> None:
        self.deployments[e.deployment_id].evaluation_id = e.evaluation_id
        self.evaluations.append(Evaluation(e.evaluation_id, e.deployment_id, e.answers, e.submitted_on))

    def when_ExpertDeactivated(self, e: ExpertDeactivated) -> None:
        self.deactivated_on = e.deactivated_on
        self.deactivation_reason = e.reason

    def when_ExpertForgotten(self, e: ExpertForgotten) -> None:
        self.forgotten_on = e.forgotten_on
        if self.profile is not None:
            self.profile.name = ""  # the sealed text cannot be opened any more

    # --- guards ----------------------------------------------------------------------------------

    def check_not_forgotten(self, doing: str) -> None:
        if self.forgotten_on is not None:
            raise RuleBroken(f"expert {self.id} was forgotten on {self.forgotten_on.isoformat()} and cannot be {doing}")

    @property
    def active(self) -> bool:
        return self.exists and self.deactivated_on is None

    def check_not_registered(self) -> None:
        if self.exists:
            raise RuleBroken(f"expert {self.id} is already registered")

    def check_active(self, doing: str) -> None:
        if self.deactivated_on is not None:
            raise RuleBroken(
                f"expert {self.id} was deactivated on {self.deactivated_on.isoformat()} and cannot be {doing}"
            )

    def deployment(self, deployment_id: str) -> Deployment:
        d = self.deployments.get(deployment_id)
        if d is None:
            raise NotFound(f"expert {self.id} has no deployment {deployment_id}")
        return d

    def check_activity_deployable(self, activity: ActivityFacts) -> tuple[date, date]:
        if activity.status == "cancelled":
            raise RuleBroken(f"activity {activity.activity_id} is cancelled: no expert can be deployed to it")
        if activity.status not in ("planned", "held"):
            raise RuleBroken(f"activity {activity.activity_id} has an unknown status {activity.status!r}")
        if activity.starts_on is None or activity.ends_on is None:
            raise RuleBroken(f"activity {activity.activity_id} has no dates: an expert is deployed for its dates")
        if activity.ends_on < activity.starts_on:
            raise RuleBroken(f"activity {activity.activity_id} ends before it starts")
        return activity.starts_on, activity.ends_on

    def check_no_overlap(self, activity_id: str, starts_on: date, ends_on: date) -> None:
        for d in self.deployments.values():
            if not d.live:
                continue
            if d.activity_id == activity_id:
                raise RuleBroken(f"expert {self.id} is already deployed to activity {activity_id}")
            if d.overlaps(starts_on, ends_on):
                raise RuleBroken(
                    f"expert {self.id} is already deployed to activity {d.activity_id} from "
                    f"{d.starts_on.isoformat()} to {d.ends_on.isoformat()}: deployments of one expert "
                    f"cannot overlap ({activity_id} runs {starts_on.isoformat()} to {ends_on.isoformat()})"
                )

    # --- decisions -------------------------------------------------------------------------------

    def register(self, cmd: RegisterExpert, key: SubjectKey) -> list[ExpertEvent]:
        self.check_not_registered()
        return [
            ExpertRegistered(
                expert_id=self.id,
                name=key.seal(cmd.name),
                gender=cmd.gender,
                background=cmd.background,
                nationality=cmd.nationality,
                themes=cmd.themes,
                registered_on=cmd.registered_on,
            )
        ]

    def update_profile(self, cmd: UpdateExpertProfile, key: SubjectKey) -> list[ExpertEvent]:
        """`key`: the expert's, to compare the name given with the one held, and to seal the new one."""
        self.check_not_forgotten("updated")
        assert self.profile is not None and self.registered_on is not None
        if cmd.updated_on < self.registered_on:
            raise RuleBroken(
                f"expert {self.id} was registered on {self.registered_on.isoformat()}: "
                f"a profile update cannot precede it"
            )
        old = replace(self.profile, name=key.reveal(self.profile.name))
        new = Profile(
            name=cmd.name if cmd.name is not None else old.name,
            gender=cmd.gender if cmd.gender is not None else old.gender,
            background=cmd.background if cmd.background is not None else old.background,
            nationality=cmd.nationality if cmd.nationality is not None else old.nationality,
            themes=cmd.themes if cmd.themes is not None else old.themes,
        )
        changed = tuple(
            f for f in ("name", "gender", "background", "nationality", "themes") if getattr(old, f) != getattr(new, f)
        )
        if not changed:
            raise RuleBroken(f"the update changes nothing in the profile of expert {self.id}")
        return [
            ExpertProfileUpdated(
                expert_id=self.id,
                name=key.seal(new.name) if "name" in changed else self.profile.name,
                gender=new.gender,
                background=new.background,
                nationality=new.nationality,
                themes=new.themes,
                changed=changed,
                updated_on=cmd.updated_on,
            )
        ]

    def check_deployable(self) -> None:
        """What can be said before asking the actions service about the activity."""
        self.check_not_forgotten("deployed")
        self.check_active("deployed")

    def deploy(self, cmd: DeployExpert, activity: ActivityFacts) -> list[ExpertEvent]:
        self.check_deployable()
        starts_on, ends_on = self.check_activity_deployable(activity)
        self.check_no_overlap(activity.activity_id, starts_on, ends_on)
        return [
            ExpertDeployed(
                expert_id=self.id,
                deployment_id=cmd.deployment_id,
                action_code=activity.action_code,
                activity_id=activity.activity_id,
                starts_on=starts_on,
                ends_on=ends_on,
            )
        ]

    def cancel_deployment(self, cmd: CancelDeployment) -> list[ExpertEvent]:
        d = self.deployment(cmd.deployment_id)
        if not d.live:
            assert d.cancelled_on is not None
            raise RuleBroken(f"deployment {d.deployment_id} was already cancelled on {d.cancelled_on.isoformat()}")
        if d.evaluation_id is not None:
            raise RuleBroken(f"deployment {d.deployment_id} was evaluated: a mission that took place is not cancelled")
        return [
            ExpertDeploymentCancelled(
                expert_id=self.id,
                deployment_id=d.deployment_id,
                action_code=d.action_code,
                activity_id=d.activity_id,
                reason=cmd.reason,
                cancelled_on=cmd.cancelled_on,
            )
        ]

    def submit_evaluation(self, cmd: SubmitEvaluation) -> list[ExpertEvent]:
        self.check_not_forgotten("evaluated")
        d = self.deployment(cmd.deployment_id)
        if not d.live:
            raise RuleBroken(f"deployment {d.deployment_id} was cancelled: there is no mission to evaluate")
        if d.evaluation_id is not None:
            raise RuleBroken(f"deployment {d.deployment_id} was already evaluated (one evaluation per deployment)")
        if cmd.submitted_on < d.starts_on:
            raise RuleBroken(
                f"deployment {d.deployment_id} starts on {d.starts_on.isoformat()}: "
                f"it cannot be evaluated before it takes place"
            )
        return [
            ExpertEvaluationSubmitted(
                expert_id=self.id,
                evaluation_id=cmd.evaluation_id,
                deployment_id=d.deployment_id,
                action_code=d.action_code,
                activity_id=d.activity_id,
                answers=tuple(Answer(question=a.question, score=a.score) for a in cmd.answers),
                submitted_on=cmd.submitted_on,
            )
        ]

    def deactivate(self, cmd: DeactivateExpert) -> list[ExpertEvent]:
        self.check_active("deactivated again")
        assert self.registered_on is not None
        if cmd.deactivated_on < self.registered_on:
            raise RuleBroken(
                f"expert {self.id} was registered on {self.registered_on.isoformat()}: deactivation cannot precede it"
            )
        for d in sorted(self.deployments.values(), key=lambda d: d.starts_on):
            if d.live and d.ends_on > cmd.deactivated_on:
                raise RuleBroken(
                    f"expert {self.id} is deployed to activity {d.activity_id} until {d.ends_on.isoformat()}: "
                    f"cancel deployment {d.deployment_id} before deactivating the expert"
                )
        return [ExpertDeactivated(expert_id=self.id, reason=cmd.reason, deactivated_on=cmd.deactivated_on)]

    def forget(self, cmd: ForgetExpert, name: str | None) -> list[ExpertEvent]:
        """`name`: the name held, to check the reason (kept in clear) does not name the person; None once the
        key is gone (a retry after the key was destroyed)."""
        self.check_not_forgotten("forgotten again")
        assert self.registered_on is not None
        if cmd.forgotten_on < self.registered_on:
            raise RuleBroken(
                f"expert {self.id} was registered on {self.registered_on.isoformat()}: forgetting cannot precede it"
            )
        if name is not None and names_the_person(cmd.reason, name):
            raise RuleBroken("the reason names the person: it stays readable once they are forgotten")
        return [ExpertForgotten(expert_id=self.id, reason=cmd.reason, forgotten_on=cmd.forgotten_on)]
