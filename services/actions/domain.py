"""The action aggregate (an action and its activities), its rules and the naming of actions. Pure: no I/O.

Rules (DESIGN.md section 5), each a `check_...` guard raising RuleBroken (FAILED_PRECONDITION):
- an action is opened once, under a code `YYYY-NN` never given before (next number of the approval year);
- its title counts the partner's follow-ups: "Costa Rica", "Costa Rica II", "Costa Rica III" ...;
- the Action Fiche is agreed once, and activities are planned only after it is agreed (our call: the
  fiche "describes the set of activities", so there is nothing to plan before it); the fiche names the
  GAMM pillar(s) the action serves and its themes (none given: the action's own, from its request);
- at most seven activities per action; a cancelled activity does not count (our call: the seven are
  the activities the action delivers, and a cancelled one can be replaced);
- an activity is held once, only if planned (an unknown activity is NOT_FOUND) and not cancelled;
  a held activity cannot be cancelled;
- participants by gender are never negative;
- an action with activities still planned cannot be closed (hold or cancel them first);
- participants' feedback only for a held activity, once, not dated before it started, its respondents
  never more than its participants;
- a partner assessment (poor, fair, good, excellent) once per action, after one of its activities was
  held (our call: there is an experience to rate), not dated before that activity started;
- deliverables by kind (policy, strategy, action plan, handbook/manual, SOP, legislation, curriculum,
  other), not dated before the action was opened;
- nothing changes after closure (so feedback, the assessment and deliverables come before it).
Malformed input (unknown activity type, country not ISO 3166-1 alpha-2, airport not a real IATA code,
ends_on before starts_on, negative participants) is refused by the command models of commands.py
(INVALID_ARGUMENT).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Literal

from services.actions.events import (
    ActionClosed,
    ActionEvent,
    ActionFicheAgreed,
    ActionOpened,
    ActivityCancelled,
    ActivityHeld,
    ActivityPlanned,
    DeliverableRecorded,
    ParticipantFeedbackRecorded,
    PartnerAssessmentSubmitted,
)
from services.kernel import reference
from services.kernel.application import Aggregate
from services.kernel.envelope import Event
from services.kernel.errors import NotFound, RuleBroken

if TYPE_CHECKING:
    from services.actions.commands import (
        AgreeActionFiche,
        CancelActivity,
        CloseAction,
        OpenAction,
        PlanActivity,
        RecordActivityHeld,
        RecordDeliverable,
        RecordParticipantFeedback,
        SubmitPartnerAssessment,
    )

MAX_ACTIVITIES = 7
CODE_RE = re.compile(r"^(\d{4})-(\d{2,})$")
ACTIVITY_RE = re.compile(r"^(\d{4}-\d{2,})/A([1-9]\d*)$")

ActionStatus = Literal["opened", "fiche_agreed", "closed"]
ActivityStatus = Literal["planned", "held", "cancelled"]


# --- naming: codes and titles --------------------------------------------------------------------

_ROMAN = ((1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"), (40, "XL"),
          (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"))  # fmt: skip


def roman(n: int) -> str:
    if not 1 <= n <= 3999:
        raise ValueError(f"no Roman numeral for {n}")
    out: list[str] = []
    for value, letters in _ROMAN:
        count, n = divmod(n, value)
        out.append(letters * count)
    return "".join(out)


def short_name(partner: str, kind: str, name: str) -> str:
    """The name a title uses: a country's common name where ISO has one ("Bolivia", not "Bolivia,
    Plurinational State of"), else the partner's name as the request gave it."""
    if kind == "country":
        c = reference.country(partner)
        if c is not None:
            return getattr(c, "common_name", None) or name
    return name


def title_for(name: str, follow_up: int) -> str:
    """'Costa Rica' for a partner's first action, 'Costa Rica II' for the first follow-up ..."""
    return name if follow_up == 1 else f"{name} {roman(follow_up)}"


def code_for(year: int, number: int) -> str:
    return f"{year}-{number:02d}"


def next_code(existing: Iterable[str], year: int) -> str:
    """The next code of `year`: one more than the highest given (a gap is never filled: a code is never
    given twice)."""
    numbers = [int(m.group(2)) for c in existing if (m := CODE_RE.match(c)) and int(m.group(1)) == year]
    return code_for(year, max(numbers, default=0) + 1)


def parse_activity_id(activity_id: str) -> tuple[str, int]:
    m = ACTIVITY_RE.match(activity_id)
    if m is None:
        raise ValueError("not an activity id like 2017-03/A2")
    return m.group(1), int(m.group(2))


@dataclass(frozen=True)
class Register:
    """What opening an action needs to know of the actions already opened (read by the handler)."""

    codes: tuple[str, ...] = ()  # every code given so far
    partner_actions: int = 0  # actions already opened for this partner
    request_action: str | None = None  # the action already opened for this request, if any

    def numbering(self, year: int) -> tuple[str, int]:
        """(code, follow-up number) for the next action of this partner approved in `year`."""
        return next_code(self.codes, year), self.partner_actions + 1


# --- the aggregate -------------------------------------------------------------------------------


@dataclass
class ActivityState:
    planned: ActivityPlanned
    status: ActivityStatus = "planned"
    planned_version: int = 0
    held: ActivityHeld | None = None
    cancelled: ActivityCancelled | None = None
    feedback: ParticipantFeedbackRecorded | None = None


@dataclass
class ActionState:
    opened: ActionOpened | None = None
    fiche_agreed_on: date | None = None
    fiche_summary: str = ""
    pillars: tuple[str, ...] = ()
    themes: tuple[str, ...] = ()  # the fiche's (the action's own until a fiche names them)
    closed_on: date | None = None
    activities: dict[str, ActivityState] = field(default_factory=dict)
    assessment: PartnerAssessmentSubmitted | None = None
    deliverables: list[DeliverableRecorded] = field(default_factory=list)


class Action(Aggregate):
    folds = ActionEvent

    def __init__(self, stream_id: str) -> None:
        super().__init__(stream_id)
        self.state = ActionState()

    # --- fold ---

    def when_ActionOpened(self, e: ActionOpened) -> None:
        self.state.opened = e
        self.state.themes = e.themes

    def when_ActionFicheAgreed(self, e: ActionFicheAgreed) -> None:
        self.state.fiche_agreed_on = e.agreed_on
        self.state.fiche_summary = e.summary
        self.state.pillars = e.pillars
        self.state.themes = e.themes or self.state.themes

    def when_ActivityPlanned(self, e: ActivityPlanned) -> None:
        # `version` is still the count before this event: the planned event's own version is one more
        self.state.activities[e.activity_id] = ActivityState(planned=e, planned_version=self.version + 1)

    def when_ActivityHeld(self, e: ActivityHeld) -> None:
        a = self.state.activities[e.activity_id]
        a.status, a.held = "held", e

    def when_ActivityCancelled(self, e: ActivityCancelled) -> None:
        a = self.state.activities[e.activity_id]
        a.status, a.cancelled = "cancelled", e

    def when_ActionClosed(self, e: ActionClosed) -> None:
        self.state.closed_on = e.closed_on

    def when_ParticipantFeedbackRecorded(self, e: ParticipantFeedbackRecorded) -> None:
        self.state.activities[e.activity_id].feedback = e

    def when_PartnerAssessmentSubmitted(self, e: PartnerAssessmentSubmitted) -> None:
        self.state.assessment = e

    def when_DeliverableRecorded(self, e: DeliverableRecorded) -> None:
        self.state.deliverables.append(e)

    # --- views ---

    @property
    def status(self) -> ActionStatus:
        if self.state.closed_on is not None:
            return "closed"
        return "fiche_agreed" if self.state.fiche_agreed_on is not None else "opened"

    @property
    def opened(self) -> ActionOpened:
        if self.state.opened is None:
            raise NotFound(f"action {self.id} does not exist")
        return self.state.opened

    def activity(self, activity_id: str) -> ActivityState:
        a = self.state.activities.get(activity_id)
        if a is None:
            raise NotFound(f"activity {activity_id} was never planned in action {self.id}")
        return a

    def live_activities(self) -> int:
        return sum(1 for a in self.state.activities.values() if a.status != "cancelled")

    # --- guards ---

    def check_not_opened(self) -> None:
        if self.exists:
            raise RuleBroken(f"action {self.id} is already open: an action code is never given twice")

    def check_not_closed(self) -> None:
        if self.state.closed_on is not None:
            raise RuleBroken(f"action {self.id} was closed on {self.state.closed_on}: nothing changes after closure")

    def check_fiche_not_agreed(self) -> None:
        if self.state.fiche_agreed_on is not None:
            raise RuleBroken(f"the action fiche of {self.id} was already agreed on {self.state.fiche_agreed_on}")

    def check_fiche_agreed(self) -> None:
        if self.state.fiche_agreed_on is None:
            raise RuleBroken(f"activities are planned only after the action fiche is agreed; {self.id} has none yet")

    def check_room_for_activity(self) -> None:
        if self.live_activities() >= MAX_ACTIVITIES:
            raise RuleBroken(
                f"an action has at most {MAX_ACTIVITIES} activities; {self.id} already has "
                f"{self.live_activities()} that are not cancelled"
            )

    @staticmethod
    def check_not_held(a: ActivityState) -> None:
        if a.status == "held":
            raise RuleBroken(f"activity {a.planned.activity_id} was already held: an activity is held once")

    @staticmethod
    def check_not_cancelled(a: ActivityState) -> None:
        if a.status == "cancelled":
            raise RuleBroken(f"activity {a.planned.activity_id} was cancelled: only a planned activity can be held")

    @staticmethod
    def check_participants(male: int, female: int, other: int) -> None:
        if min(male, female, other) < 0:
            raise RuleBroken("participants by gender are never negative")

    @staticmethod
    def check_names_pillars_and_themes(pillars: tuple[str, ...], themes: tuple[str, ...]) -> None:
        if not pillars:
            raise RuleBroken("the action fiche names the GAMM pillar(s) the action serves: none given")
        if not themes:
            raise RuleBroken("the action fiche names the action's themes: none given, and its request named none")

    @staticmethod
    def check_held(a: ActivityState) -> ActivityHeld:
        if a.held is None:
            raise RuleBroken(
                f"activity {a.planned.activity_id} is {a.status}: feedback is recorded only for a held activity"
            )
        return a.held

    @staticmethod
    def check_no_feedback_yet(a: ActivityState) -> None:
        if a.feedback is not None:
            raise RuleBroken(
                f"the feedback of activity {a.planned.activity_id} was already recorded (once per activity)"
            )

    @staticmethod
    def check_respondents(held: ActivityHeld, respondents: int) -> None:
        participants = held.participants_male + held.participants_female + held.participants_other
        if respondents > participants:
            raise RuleBroken(
                f"activity {held.activity_id} had {participants} participants: {respondents} respondents are too many"
            )

    @staticmethod
    def check_not_before(what: str, on: date, start: date, since: str) -> None:
        if on < start:
            raise RuleBroken(f"{what} cannot be dated {on.isoformat()}, before {since} ({start.isoformat()})")

    def check_not_assessed(self) -> None:
        if self.state.assessment is not None:
            raise RuleBroken(
                f"the partner already assessed action {self.id} on {self.state.assessment.submitted_on} "
                "(once per action)"
            )

    def first_held(self) -> ActivityHeld:
        held = [a.held for a in self.state.activities.values() if a.held is not None]
        if not held:
            raise RuleBroken(f"action {self.id} has no activity held yet: there is no experience to assess")
        return min(held, key=lambda h: h.starts_on)

    def check_nothing_planned(self) -> None:
        planned = sorted(i for i, a in self.state.activities.items() if a.status == "planned")
        if planned:
            raise RuleBroken(
                f"action {self.id} still has planned activities ({', '.join(planned)}): hold or cancel them "
                "before closing it"
            )

    # --- decisions ---

    def open(self, cmd: OpenAction, follow_up: int) -> list[Event]:
        self.check_not_opened()
        m = CODE_RE.match(self.id)
        if m is None or int(m.group(1)) != cmd.approved_on.year:
            raise RuleBroken(f"an action approved in {cmd.approved_on.year} takes a code of that year, not {self.id}")
        if follow_up < 1:
            raise RuleBroken("titles count follow-ups from 1")
        name = short_name(cmd.partner, cmd.partner_kind, cmd.partner_name)
        return [
            ActionOpened(
                action_code=self.id,
                request_id=cmd.request_id,
                partner=cmd.partner,
                partner_kind=cmd.partner_kind,
                partner_name=cmd.partner_name,
                region=reference.region_of(cmd.partner) or cmd.region,
                themes=cmd.themes,
                title=title_for(name, follow_up),
                follow_up=follow_up,
                year=cmd.approved_on.year,
                opened_on=cmd.approved_on,
            )
        ]

    def agree_fiche(self, cmd: AgreeActionFiche) -> list[Event]:
        self.check_not_closed()
        self.check_fiche_not_agreed()
        themes = cmd.themes or self.opened.themes
        self.check_names_pillars_and_themes(cmd.pillars, themes)
        return [
            ActionFicheAgreed(
                action_code=self.id, agreed_on=cmd.agreed_on, summary=cmd.summary, pillars=cmd.pillars, themes=themes
            )
        ]

    def plan_activity(self, cmd: PlanActivity) -> list[Event]:
        self.check_not_closed()
        self.check_fiche_agreed()
        self.check_room_for_activity()
        number = len(self.state.activities) + 1
        opened = self.opened
        return [
            ActivityPlanned(
                action_code=self.id,
                activity_id=f"{self.id}/A{number}",
                number=number,
                title=cmd.title,
                activity_type=cmd.activity_type,
                starts_on=cmd.starts_on,
                ends_on=cmd.ends_on,
                country=cmd.country,
                city=cmd.city,
                airport=cmd.airport,
                partner=opened.partner,
                region=opened.region,
            )
        ]

    def record_held(self, cmd: RecordActivityHeld) -> list[Event]:
        self.check_not_closed()
        a = self.activity(cmd.activity_id)
        self.check_not_held(a)
        self.check_not_cancelled(a)
        self.check_participants(cmd.participants_male, cmd.participants_female, cmd.participants_other)
        p = a.planned
        starts_on = cmd.starts_on or p.starts_on
        ends_on = cmd.ends_on or max(p.ends_on, starts_on)
        if ends_on < starts_on:
            raise RuleBroken(f"activity {p.activity_id} cannot end ({ends_on}) before it starts ({starts_on})")
        return [
            ActivityHeld(
                action_code=self.id,
                activity_id=p.activity_id,
                activity_type=p.activity_type,
                starts_on=starts_on,
                ends_on=ends_on,
                country=p.country,
                partner=p.partner,
                region=p.region,
                participants_male=cmd.participants_male,
                participants_female=cmd.participants_female,
                participants_other=cmd.participants_other,
            )
        ]

    def cancel_activity(self, cmd: CancelActivity) -> list[Event]:
        self.check_not_closed()
        a = self.activity(cmd.activity_id)
        if a.status == "cancelled":
            raise RuleBroken(f"activity {cmd.activity_id} was already cancelled")
        if a.status == "held":
            raise RuleBroken(f"activity {cmd.activity_id} was held: a held activity cannot be cancelled")
        return [
            ActivityCancelled(
                action_code=self.id, activity_id=cmd.activity_id, cancelled_on=cmd.cancelled_on, reason=cmd.reason
            )
        ]

    def close(self, cmd: CloseAction) -> list[Event]:
        self.check_not_closed()
        self.check_nothing_planned()
        held = sum(1 for a in self.state.activities.values() if a.status == "held")
        return [ActionClosed(action_code=self.id, closed_on=cmd.closed_on, activities_held=held, summary=cmd.summary)]

    def record_feedback(self, cmd: RecordParticipantFeedback) -> list[Event]:
        self.check_not_closed()
        a = self.activity(cmd.activity_id)
        held = self.check_held(a)
        self.check_no_feedback_yet(a)
        self.check_respondents(held, cmd.respondents)
        self.check_not_before("feedback", cmd.recorded_on, held.starts_on, f"activity {held.activity_id} started")
        return [
            ParticipantFeedbackRecorded(
                action_code=self.id,
                activity_id=held.activity_id,
                activity_starts_on=held.starts_on,
                partner=held.partner,
                region=held.region,
                respondents=cmd.respondents,
                skills_enhanced=cmd.skills_enhanced,
                makes_a_difference=cmd.makes_a_difference,
                recorded_on=cmd.recorded_on,
            )
        ]

    def submit_assessment(self, cmd: SubmitPartnerAssessment) -> list[Event]:
        self.check_not_closed()
        self.check_not_assessed()
        first = self.first_held()
        self.check_not_before("an assessment", cmd.submitted_on, first.starts_on, "its first activity held")
        o = self.opened
        return [
            PartnerAssessmentSubmitted(
                action_code=self.id,
                partner=o.partner,
                region=o.region,
                rating=cmd.rating,
                submitted_on=cmd.submitted_on,
                comment=cmd.comment,
            )
        ]

    def record_deliverable(self, cmd: RecordDeliverable) -> list[Event]:
        self.check_not_closed()
        o = self.opened
        self.check_not_before("a deliverable", cmd.delivered_on, o.opened_on, f"action {self.id} was opened")
        return [
            DeliverableRecorded(
                action_code=self.id,
                deliverable_id=f"{self.id}/D{len(self.state.deliverables) + 1}",
                kind=cmd.kind,
                title=cmd.title,
                delivered_on=cmd.delivered_on,
                partner=o.partner,
                region=o.region,
            )
        ]
