"""Forgetting a person, given / when / then: ForgetExpert and ForgetTeamMember, each rule with an accepting and a
refusing case, and what a forgotten person may and may not do afterwards. Pure: no I/O."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from support import given_when_then, violated_fields

from services.experts.commands import (
    CancelDeployment,
    DeactivateExpert,
    DeployExpert,
    ForgetExpert,
    SubmitEvaluation,
    UpdateExpertProfile,
)
from services.experts.domain import ActivityFacts, Expert
from services.experts.events import (
    ExpertDeactivated,
    ExpertDeployed,
    ExpertDeploymentCancelled,
    ExpertForgotten,
    ExpertRegistered,
)
from services.kernel.errors import NotFound, RuleBroken
from services.kernel.personal import SubjectKey
from services.logistics.commands import BookFlight, ForgetTeamMember, JoinTeam, LeaveTeam
from services.logistics.domain import TEAM_STREAM, Booking, ExpertRecord, Team
from services.logistics.events import TeamMemberForgotten, TeamMemberJoined, TeamMemberLeft

EXPERT = "expert-00000000-0000-5000-8000-0000000000f1"
DEP = "dep-00000000-0000-5000-8000-0000000000f1"
KEY = SubjectKey.new(EXPERT)
NAME = "Philippa Thistlewood"
REGISTERED = ExpertRegistered(
    expert_id=EXPERT,
    name=KEY.seal(NAME),
    gender="female",
    background="ngo",
    nationality="IE",
    registered_on=date(2016, 1, 4),
)
DEPLOYED = ExpertDeployed(
    expert_id=EXPERT,
    deployment_id=DEP,
    action_code="2018-01",
    activity_id="2018-01/A1",
    starts_on=date(2018, 2, 5),
    ends_on=date(2018, 2, 7),
)
FORGOTTEN = ExpertForgotten(expert_id=EXPERT, reason="erasure request", forgotten_on=date(2017, 6, 1))


def forget(**over: Any) -> ForgetExpert:
    return ForgetExpert.model_validate(
        {"command_id": "cmd-forget", "expert_id": EXPERT, "reason": "erasure request", "forgotten_on": "2017-06-01"}
        | over
    )


# --- ForgetExpert ----------------------------------------------------------------------------------------


def test_forgetting_an_expert_records_expert_forgotten_with_nothing_of_the_person() -> None:
    [e] = given_when_then(Expert, EXPERT, [REGISTERED, DEPLOYED], lambda x: x.forget(forget(), NAME))
    assert e == FORGOTTEN
    assert "Philippa" not in e.model_dump_json() and set(e.model_dump()) == {"expert_id", "reason", "forgotten_on"}
    folded = Expert.fold(EXPERT, [REGISTERED, DEPLOYED, e])
    assert folded.forgotten_on == date(2017, 6, 1) and folded.profile is not None and folded.profile.name == ""
    # what the statistics count stays
    assert (folded.profile.gender, folded.profile.background, folded.profile.nationality) == ("female", "ngo", "IE")
    assert list(folded.deployments) == [DEP] and folded.active


def test_forgetting_once_the_key_is_gone_needs_no_name() -> None:
    assert given_when_then(Expert, EXPERT, [REGISTERED], lambda x: x.forget(forget(), None)) == [FORGOTTEN]


def test_forgetting_twice_breaks_a_rule() -> None:
    with pytest.raises(RuleBroken, match="forgotten on 2017-06-01 and cannot be forgotten again"):
        given_when_then(Expert, EXPERT, [REGISTERED, FORGOTTEN], lambda x: x.forget(forget(command_id="c2"), None))


def test_forgetting_before_the_registration_breaks_a_rule() -> None:
    with pytest.raises(RuleBroken, match="cannot precede"):
        given_when_then(Expert, EXPERT, [REGISTERED], lambda x: x.forget(forget(forgotten_on="2015-12-31"), NAME))


@pytest.mark.parametrize("reason", ["Philippa asked by phone", "request of Ms THISTLEWOOD", "philippa thistlewood"])
def test_a_reason_that_names_the_person_breaks_a_rule(reason: str) -> None:
    with pytest.raises(RuleBroken, match="the reason names the person"):
        given_when_then(Expert, EXPERT, [REGISTERED], lambda x: x.forget(forget(reason=reason), NAME))


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"reason": ""}, "reason"),
        ({"expert_id": "tm-1"}, "expert_id"),
        ({"forgotten_on": "2017-02-30"}, "forgotten_on"),
    ],
)
def test_forget_expert_validation_names_the_field(over: dict[str, Any], field: str) -> None:
    data = {"command_id": "c", "expert_id": EXPERT, "reason": "r", "forgotten_on": "2017-06-01", **over}
    assert violated_fields(ForgetExpert, data) == [field]


ACTIVITY = ActivityFacts("2018-02/A1", "2018-02", "planned", date(2018, 3, 1), date(2018, 3, 2))


@pytest.mark.parametrize(
    ("decide", "doing"),
    [
        (
            lambda x: x.deploy(DeployExpert(command_id="c", expert_id=EXPERT, activity_id="2018-02/A1"), ACTIVITY),
            "deployed",
        ),
        (
            lambda x: x.update_profile(
                UpdateExpertProfile(command_id="c", expert_id=EXPERT, gender="male", updated_on="2018-01-01"), KEY
            ),
            "updated",
        ),
        (
            lambda x: x.submit_evaluation(
                SubmitEvaluation.model_validate(
                    {
                        "command_id": "c",
                        "expert_id": EXPERT,
                        "deployment_id": DEP,
                        "answers": [{"question": "peer_to_peer_beneficial", "score": 5}],
                        "submitted_on": "2018-02-08",
                    }
                )
            ),
            "evaluated",
        ),
    ],
    ids=["deploy", "update", "evaluate"],
)
def test_a_forgotten_expert_is_not_deployed_updated_or_evaluated(decide: Any, doing: str) -> None:
    given_when_then(Expert, EXPERT, [REGISTERED, DEPLOYED], decide)  # accepted before
    with pytest.raises(RuleBroken, match=f"was forgotten on 2017-06-01 and cannot be {doing}"):
        given_when_then(Expert, EXPERT, [REGISTERED, DEPLOYED, FORGOTTEN], decide)


def test_a_forgotten_experts_deployment_may_still_be_cancelled_and_the_expert_deactivated() -> None:
    given = [REGISTERED, DEPLOYED, FORGOTTEN]
    cancel = CancelDeployment(
        command_id="c", expert_id=EXPERT, deployment_id=DEP, reason="person gone", cancelled_on="2017-06-02"
    )
    [c] = given_when_then(Expert, EXPERT, given, lambda x: x.cancel_deployment(cancel))
    assert isinstance(c, ExpertDeploymentCancelled)
    deactivate = DeactivateExpert(command_id="d", expert_id=EXPERT, reason="forgotten", deactivated_on="2017-06-02")
    [d] = given_when_then(Expert, EXPERT, [*given, c], lambda x: x.deactivate(deactivate))
    assert isinstance(d, ExpertDeactivated)


# --- ForgetTeamMember ------------------------------------------------------------------------------------

MEMBER = "tm-f1"
MKEY = SubjectKey.new(MEMBER)
JOINED = TeamMemberJoined(
    member_id=MEMBER,
    name=MKEY.seal("Zebulon Quillfeather"),
    gender="male",
    role=MKEY.seal("Chief Zeppelin Liaison"),
    joined_on=date(2015, 3, 2),
)
LEFT = TeamMemberLeft(member_id=MEMBER, left_on=date(2016, 12, 31))
MEMBER_FORGOTTEN = TeamMemberForgotten(member_id=MEMBER, reason="retention over", forgotten_on=date(2017, 6, 1))


def forget_member(**over: Any) -> ForgetTeamMember:
    return ForgetTeamMember.model_validate(
        {"command_id": "cmd-fm", "member_id": MEMBER, "reason": "retention over", "forgotten_on": "2017-06-01"} | over
    )


def test_forgetting_a_team_member_records_team_member_forgotten_and_keeps_the_stints() -> None:
    [e] = given_when_then(
        Team, TEAM_STREAM, [JOINED, LEFT], lambda t: t.forget(forget_member(), "Zebulon Quillfeather")
    )
    assert e == MEMBER_FORGOTTEN and "Zebulon" not in e.model_dump_json()
    team = Team.fold(TEAM_STREAM, [JOINED, LEFT, e])
    m = team.members[MEMBER]
    assert (m.forgotten_on, m.name) == (date(2017, 6, 1), "") and team.on_team_on(MEMBER, date(2016, 6, 1))


def test_forgetting_a_member_who_never_joined_is_not_found() -> None:
    with pytest.raises(NotFound):
        given_when_then(Team, TEAM_STREAM, [JOINED], lambda t: t.forget(forget_member(member_id="tm-x"), None))


def test_forgetting_a_member_twice_or_before_they_joined_or_naming_them_breaks_a_rule() -> None:
    with pytest.raises(RuleBroken, match="cannot be forgotten again"):
        given_when_then(Team, TEAM_STREAM, [JOINED, MEMBER_FORGOTTEN], lambda t: t.forget(forget_member(), None))
    with pytest.raises(RuleBroken, match="cannot precede"):
        given_when_then(Team, TEAM_STREAM, [JOINED], lambda t: t.forget(forget_member(forgotten_on="2015-03-01"), None))
    with pytest.raises(RuleBroken, match="names the person"):
        given_when_then(
            Team,
            TEAM_STREAM,
            [JOINED],
            lambda t: t.forget(forget_member(reason="Quillfeather left"), "Zebulon Quillfeather"),
        )


def test_a_forgotten_member_does_not_join_again_or_travel_but_may_leave() -> None:
    join = JoinTeam(command_id="j", member_id=MEMBER, name="Z", gender="male", role="PO", joined_on="2017-09-01")
    given_when_then(Team, TEAM_STREAM, [JOINED, LEFT], lambda t: t.join(join, MKEY))  # accepted before
    with pytest.raises(RuleBroken, match="was forgotten on 2017-06-01 and cannot join again"):
        given_when_then(Team, TEAM_STREAM, [JOINED, LEFT, MEMBER_FORGOTTEN], lambda t: t.join(join, MKEY))
    leave = LeaveTeam(command_id="l", member_id=MEMBER, left_on="2017-12-31")
    [left] = given_when_then(Team, TEAM_STREAM, [JOINED, MEMBER_FORGOTTEN], lambda t: t.leave(leave))
    assert isinstance(left, TeamMemberLeft)
    book = BookFlight.model_validate(
        {
            "command_id": "b",
            "traveller_id": MEMBER,
            "traveller_kind": "team_member",
            "segments": [{"origin": "BRU", "destination": "VIE", "departs_on": "2016-05-02"}],
            "cabin_class": "economy",
            "fare": {"amount": "100", "currency": "EUR"},
            "booked_on": "2016-04-01",
        }
    )
    on_team = Team.fold(TEAM_STREAM, [JOINED])
    given_when_then(Booking, book.booking_id, [], lambda b: b.book(book, expert=None, team=on_team))
    forgotten = Team.fold(TEAM_STREAM, [JOINED, MEMBER_FORGOTTEN])
    with pytest.raises(RuleBroken, match="cannot travel"):
        given_when_then(Booking, book.booking_id, [], lambda b: b.book(book, expert=None, team=forgotten))


def test_a_forgotten_expert_does_not_travel() -> None:
    book = BookFlight.model_validate(
        {
            "command_id": "b2",
            "traveller_id": EXPERT,
            "traveller_kind": "expert",
            "segments": [{"origin": "BRU", "destination": "VIE", "departs_on": "2018-05-02"}],
            "cabin_class": "economy",
            "fare": {"amount": "100", "currency": "EUR"},
            "booked_on": "2018-04-01",
        }
    )
    active = ExpertRecord(EXPERT, active=True)
    given_when_then(Booking, book.booking_id, [], lambda b: b.book(book, expert=active, team=Team()))
    gone = ExpertRecord(EXPERT, active=True, forgotten=True)
    with pytest.raises(RuleBroken, match="forgotten person does not travel"):
        given_when_then(Booking, book.booking_id, [], lambda b: b.book(book, expert=gone, team=Team()))
