"""The results of an action, given / when / then on events (pure): participants' feedback of a held activity,
the partner's assessment, deliverables; each rule accepting and refusing, and the malformed inputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

import pytest
from support import given_when_then, make_envelope, violated_fields
from test_actions_domain import CLOSED, CODE, FICHE, cancelled, held, opened, planned

from services.actions.commands import RecordDeliverable, RecordParticipantFeedback, SubmitPartnerAssessment
from services.actions.domain import Action
from services.actions.events import (
    DeliverableRecorded,
    ParticipantFeedbackRecorded,
    PartnerAssessmentSubmitted,
)
from services.kernel.envelope import Event, registry
from services.kernel.errors import NotFound, RuleBroken

HELD = [opened(), FICHE, planned(1), held(1, male=10, female=12, other=1)]  # 23 participants, from 2017-12-01


def feedback(n: int = 1, **over: Any) -> RecordParticipantFeedback:
    data = {
        "command_id": f"fb-{n}",
        "activity_id": f"{CODE}/A{n}",
        "respondents": 20,
        "skills_enhanced": 18,
        "makes_a_difference": 17,
        "recorded_on": "2017-12-05",
    }
    return RecordParticipantFeedback.model_validate({**data, **over})


def assessment(**over: Any) -> SubmitPartnerAssessment:
    data = {"command_id": "pa", "action_code": CODE, "rating": "excellent", "submitted_on": "2017-12-20"}
    return SubmitPartnerAssessment.model_validate({**data, **over})


def deliverable(**over: Any) -> RecordDeliverable:
    data = {
        "command_id": "dl",
        "action_code": CODE,
        "kind": "action_plan",
        "title": "Protocol of the Special Migration Situations Team",
        "delivered_on": "2017-12-15",
    }
    return RecordDeliverable.model_validate({**data, **over})


# --- participants' feedback --------------------------------------------------------------------------


def test_feedback_of_a_held_activity_is_recorded_with_its_date_partner_and_region() -> None:
    [e] = given_when_then(Action, CODE, HELD, lambda a: a.record_feedback(feedback()))
    assert e == ParticipantFeedbackRecorded(
        action_code=CODE,
        activity_id=f"{CODE}/A1",
        activity_starts_on=date(2017, 12, 1),
        partner="CR",
        region="lac",
        respondents=20,
        skills_enhanced=18,
        makes_a_difference=17,
        recorded_on=date(2017, 12, 5),
    )
    assert Action.fold(CODE, [*HELD, e]).state.activities[f"{CODE}/A1"].feedback == e


def test_feedback_may_come_from_every_participant_but_no_more() -> None:
    given_when_then(Action, CODE, HELD, lambda a: a.record_feedback(feedback(respondents=23, skills_enhanced=23)))
    with pytest.raises(RuleBroken, match="23 participants: 24 respondents"):
        given_when_then(Action, CODE, HELD, lambda a: a.record_feedback(feedback(respondents=24)))


@pytest.mark.parametrize(
    ("given", "status"),
    [([opened(), FICHE, planned(1)], "planned"), ([opened(), FICHE, planned(1), cancelled(1)], "cancelled")],
)
def test_feedback_only_for_a_held_activity(given: list[Event], status: str) -> None:
    with pytest.raises(RuleBroken, match=f"is {status}: feedback is recorded only for a held activity"):
        given_when_then(Action, CODE, given, lambda a: a.record_feedback(feedback()))


def test_feedback_of_an_activity_never_planned_is_not_found() -> None:
    with pytest.raises(NotFound):
        given_when_then(Action, CODE, HELD, lambda a: a.record_feedback(feedback(2)))


def test_feedback_is_recorded_once_per_activity() -> None:
    first = given_when_then(Action, CODE, HELD, lambda a: a.record_feedback(feedback()))
    with pytest.raises(RuleBroken, match="already recorded"):
        given_when_then(Action, CODE, [*HELD, *first], lambda a: a.record_feedback(feedback(command_id="again")))


def test_feedback_is_not_dated_before_its_activity_started() -> None:
    given_when_then(Action, CODE, HELD, lambda a: a.record_feedback(feedback(recorded_on="2017-12-01")))
    with pytest.raises(RuleBroken, match="before activity"):
        given_when_then(Action, CODE, HELD, lambda a: a.record_feedback(feedback(recorded_on="2017-11-30")))


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"respondents": 0}, "respondents"),
        ({"respondents": -1}, "respondents"),
        ({"skills_enhanced": 21}, "skills_enhanced"),
        ({"makes_a_difference": 21}, "makes_a_difference"),
        ({"skills_enhanced": -1}, "skills_enhanced"),
        ({"activity_id": "2017-03"}, "activity_id"),
        ({"recorded_on": "05/12/2017"}, "recorded_on"),
    ],
)
def test_malformed_feedback_names_the_field(over: dict[str, Any], field: str) -> None:
    data = feedback().model_dump(mode="json")
    assert field in violated_fields(RecordParticipantFeedback, {**data, **over})


# --- the partner's assessment ------------------------------------------------------------------------


@pytest.mark.parametrize("rating", ["poor", "fair", "good", "excellent"])
def test_the_partner_assesses_an_action_with_a_held_activity(rating: str) -> None:
    [e] = given_when_then(Action, CODE, HELD, lambda a: a.submit_assessment(assessment(rating=rating)))
    assert e == PartnerAssessmentSubmitted(
        action_code=CODE, partner="CR", region="lac", rating=rating, submitted_on=date(2017, 12, 20)
    )


def test_an_action_is_assessed_once() -> None:
    first = given_when_then(Action, CODE, HELD, lambda a: a.submit_assessment(assessment()))
    with pytest.raises(RuleBroken, match="once per action"):
        given_when_then(Action, CODE, [*HELD, *first], lambda a: a.submit_assessment(assessment(rating="good")))


def test_an_action_without_a_held_activity_has_no_experience_to_assess() -> None:
    with pytest.raises(RuleBroken, match="no activity held yet"):
        given_when_then(Action, CODE, [opened(), FICHE, planned(1)], lambda a: a.submit_assessment(assessment()))


def test_an_assessment_is_not_dated_before_the_first_activity_held() -> None:
    with pytest.raises(RuleBroken, match="before its first activity held"):
        given_when_then(Action, CODE, HELD, lambda a: a.submit_assessment(assessment(submitted_on="2017-11-30")))


@pytest.mark.parametrize(("over", "field"), [({"rating": "very good"}, "rating"), ({"rating": ""}, "rating")])
def test_a_rating_is_poor_fair_good_or_excellent(over: dict[str, Any], field: str) -> None:
    data = assessment().model_dump(mode="json")
    assert field in violated_fields(SubmitPartnerAssessment, {**data, **over})


# --- deliverables ------------------------------------------------------------------------------------


def test_deliverables_are_numbered_in_their_action() -> None:
    [d1] = given_when_then(Action, CODE, HELD, lambda a: a.record_deliverable(deliverable()))
    assert d1 == DeliverableRecorded(
        action_code=CODE,
        deliverable_id=f"{CODE}/D1",
        kind="action_plan",
        title="Protocol of the Special Migration Situations Team",
        delivered_on=date(2017, 12, 15),
        partner="CR",
        region="lac",
    )
    [d2] = given_when_then(Action, CODE, [*HELD, d1], lambda a: a.record_deliverable(deliverable(kind="other")))
    assert isinstance(d2, DeliverableRecorded) and d2.deliverable_id == f"{CODE}/D2"


def test_a_deliverable_is_not_dated_before_its_action_was_opened() -> None:
    given_when_then(Action, CODE, HELD, lambda a: a.record_deliverable(deliverable(delivered_on="2017-11-20")))
    with pytest.raises(RuleBroken, match="before action"):
        given_when_then(Action, CODE, HELD, lambda a: a.record_deliverable(deliverable(delivered_on="2017-11-19")))


@pytest.mark.parametrize(
    ("over", "field"),
    [({"kind": "report"}, "kind"), ({"title": ""}, "title"), ({"title": "x" * 301}, "title")],
)
def test_malformed_deliverables_name_the_field(over: dict[str, Any], field: str) -> None:
    data = deliverable().model_dump(mode="json")
    assert field in violated_fields(RecordDeliverable, {**data, **over})


def test_every_kind_of_deliverable_of_the_design_is_known() -> None:
    for kind in ("policy", "strategy", "action_plan", "handbook", "sop", "legislation", "curriculum", "other"):
        assert deliverable(kind=kind).kind == kind


# --- after closure; a fiche stored before fiches named pillars -----------------------------------------


@pytest.mark.parametrize(
    "when",
    [
        lambda a: a.record_feedback(feedback()),
        lambda a: a.submit_assessment(assessment()),
        lambda a: a.record_deliverable(deliverable()),
    ],
    ids=["feedback", "assessment", "deliverable"],
)
def test_no_result_is_recorded_after_closure(when: Callable[[Action], Sequence[Event]]) -> None:
    with pytest.raises(RuleBroken, match="nothing changes after closure"):
        given_when_then(Action, CODE, [*HELD, CLOSED], when)
    assert given_when_then(Action, CODE, HELD, when)


def test_a_version_1_fiche_is_upcast_without_pillars_and_themes_and_the_action_keeps_its_own() -> None:
    data = {"action_code": CODE, "agreed_on": "2017-11-30", "summary": "agreed"}
    old = make_envelope("ActionFicheAgreed", data, stream_id=CODE, version=2, source="actions", schema_version=1)
    e = registry.decode(old)
    assert isinstance(e, type(FICHE)) and (e.pillars, e.themes) == ((), ())
    assert Action.fold(CODE, [opened(), e]).state.themes == ("thb_and_som",)
