"""The expert aggregate and its commands, given / when / then on events. Pure: no I/O."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from mieux.actions.v1 import actions_pb2
from mieux.common.v1 import common_pb2
from pydantic import BaseModel, ValidationError
from support import fields_of, given_when_then, violated_fields

from services.experts.actions import facts_of
from services.experts.commands import (
    CancelDeployment,
    DeactivateExpert,
    DeployExpert,
    RegisterExpert,
    SubmitEvaluation,
    UpdateExpertProfile,
)
from services.experts.domain import ActivityFacts, Expert
from services.experts.events import (
    Answer,
    ExpertDeactivated,
    ExpertDeployed,
    ExpertDeploymentCancelled,
    ExpertEvaluationSubmitted,
    ExpertProfileUpdated,
    ExpertRegistered,
)
from services.experts.queries import ListDeploymentsQuery, ListExpertsQuery
from services.kernel.errors import NotFound, RuleBroken
from services.kernel.personal import PersonalDataError, SubjectKey, is_sealed

EXPERT = "expert-00000000-0000-5000-8000-000000000001"
DEP1 = "dep-00000000-0000-5000-8000-0000000000d1"
DEP2 = "dep-00000000-0000-5000-8000-0000000000d2"

REGISTER: dict[str, Any] = {
    "command_id": "cmd-register-1",
    "name": "Tanja van Veldhuizen",
    "gender": "female",
    "background": "academia",
    "nationality": "NL",
    "themes": ["international_protection_and_asylum"],
    "registered_on": "2016-05-02",
}

KEY = SubjectKey.new(EXPERT)  # the expert's own key, as the experts service keeps it

REGISTERED = ExpertRegistered(
    expert_id=EXPERT,
    name=KEY.seal("Tanja van Veldhuizen"),
    gender="female",
    background="academia",
    nationality="NL",
    themes=("international_protection_and_asylum",),
    registered_on=date(2016, 5, 2),
)


def deployed(dep: str = DEP1, activity: str = "2016-01/A4", starts: str = "2017-03-06", ends: str = "2017-03-10"):
    return ExpertDeployed(
        expert_id=EXPERT,
        deployment_id=dep,
        action_code=activity.split("/")[0],
        activity_id=activity,
        starts_on=date.fromisoformat(starts),
        ends_on=date.fromisoformat(ends),
    )


def activity(
    activity_id: str = "2017-03/A2",
    status: str = "planned",
    starts: str | None = "2017-05-15",
    ends: str | None = "2017-05-19",
) -> ActivityFacts:
    return ActivityFacts(
        activity_id=activity_id,
        action_code=activity_id.split("/")[0],
        status=status,
        starts_on=date.fromisoformat(starts) if starts else None,
        ends_on=date.fromisoformat(ends) if ends else None,
    )


# --- RegisterExpert ------------------------------------------------------------------------------


def test_registering_records_expert_registered_with_the_canonical_nationality_and_the_name_sealed() -> None:
    cmd = RegisterExpert.model_validate({**REGISTER, "nationality": "nl"})
    [e] = given_when_then(Expert, EXPERT, [], lambda e: e.register(cmd, KEY))
    assert isinstance(e, ExpertRegistered) and e.model_copy(update={"name": REGISTERED.name}) == REGISTERED
    assert "Tanja" not in e.model_dump_json() and is_sealed(e.name) and KEY.reveal(e.name) == "Tanja van Veldhuizen"
    assert e.name != REGISTERED.name  # a fresh nonce each time


def test_an_event_with_a_name_in_clear_cannot_be_made() -> None:
    with pytest.raises(ValidationError, match="sealed"):
        ExpertRegistered.model_validate({**REGISTERED.model_dump(), "name": "Tanja van Veldhuizen"})


def test_registering_twice_breaks_a_rule() -> None:
    cmd = RegisterExpert.model_validate(REGISTER)
    with pytest.raises(RuleBroken, match="already registered"):
        given_when_then(Expert, EXPERT, [REGISTERED], lambda e: e.register(cmd, KEY))


def test_a_registration_is_hashed_with_the_name_keyed_so_its_hash_cannot_confirm_a_guessed_name() -> None:
    cmd = RegisterExpert.model_validate(REGISTER)
    with pytest.raises(RuntimeError, match="keyed"):
        cmd.digest()
    keyed = cmd.keyed(KEY)
    assert keyed.digest() == cmd.keyed(KEY).digest()  # a retry compares equal
    assert keyed.digest() != cmd.keyed(SubjectKey.new(EXPERT)).digest()  # another key: nothing to compare with
    other = RegisterExpert.model_validate({**REGISTER, "name": "Someone else"}).keyed(KEY)
    assert other.digest() != keyed.digest()  # another payload is still told apart (ALREADY_EXISTS)


def test_the_expert_id_is_a_uuid5_of_the_command_id() -> None:
    a = RegisterExpert.model_validate(REGISTER)
    b = RegisterExpert.model_validate({**REGISTER, "name": "Someone else"})
    c = RegisterExpert.model_validate({**REGISTER, "command_id": "cmd-register-2"})
    assert a.expert_id == b.expert_id != c.expert_id
    assert a.expert_id == "expert-f96a9bf9-53b4-5935-98fb-e39cbb81140c"


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"gender": "unknown"}, "gender"),
        ({"background": "eu_ms"}, "background"),
        ({"background": "EU MS administration"}, "background"),
        ({"nationality": "XX"}, "nationality"),
        ({"nationality": "NLD"}, "nationality"),
        ({"themes": ["astrology"]}, "themes"),
        ({"name": "  "}, "name"),
        ({"registered_on": "2017-02-30"}, "registered_on"),
        ({"registered_on": ""}, "registered_on"),
        ({"command_id": ""}, "command_id"),
    ],
)
def test_register_expert_validation_names_the_field(over: dict[str, Any], field: str) -> None:
    assert violated_fields(RegisterExpert, {**REGISTER, **over}) == [field]


def test_every_reference_background_and_gender_is_accepted() -> None:
    from services.kernel import reference

    for b in reference.expert_backgrounds():
        for g in reference.genders():
            assert RegisterExpert.model_validate({**REGISTER, "background": b, "gender": g}).background == b


# --- UpdateExpertProfile -------------------------------------------------------------------------


def update(**over: Any) -> UpdateExpertProfile:
    return UpdateExpertProfile.model_validate(
        {"command_id": "cmd-update", "expert_id": EXPERT, "updated_on": "2017-01-10", **over}
    )


def test_a_profile_update_records_the_whole_profile_and_what_changed() -> None:
    [e] = given_when_then(
        Expert, EXPERT, [REGISTERED], lambda x: x.update_profile(update(background="private_consultant"), KEY)
    )
    assert e == ExpertProfileUpdated(
        expert_id=EXPERT,
        name=REGISTERED.name,
        gender="female",
        background="private_consultant",
        nationality="NL",
        themes=REGISTERED.themes,
        changed=("background",),
        updated_on=date(2017, 1, 10),
    )
    folded = Expert.fold(EXPERT, [REGISTERED, e])
    assert folded.profile is not None and folded.profile.background == "private_consultant"


def test_themes_given_replace_the_list_and_may_clear_it() -> None:
    [e] = given_when_then(Expert, EXPERT, [REGISTERED], lambda x: x.update_profile(update(themes=[]), KEY))
    assert isinstance(e, ExpertProfileUpdated) and e.themes == () and e.changed == ("themes",)


def test_an_update_that_changes_nothing_breaks_a_rule() -> None:
    with pytest.raises(RuleBroken, match="changes nothing"):
        given_when_then(
            Expert,
            EXPERT,
            [REGISTERED],
            lambda x: x.update_profile(update(name="Tanja van Veldhuizen", gender="female", nationality="nl"), KEY),
        )


def test_a_new_name_is_sealed_and_listed_as_changed() -> None:
    [e] = given_when_then(
        Expert, EXPERT, [REGISTERED], lambda x: x.update_profile(update(name="T. van Veldhuizen"), KEY)
    )
    assert isinstance(e, ExpertProfileUpdated) and e.changed == ("name",)
    assert KEY.reveal(e.name) == "T. van Veldhuizen" and "Veldhuizen" not in e.model_dump_json()


def test_an_update_with_another_key_than_the_experts_does_not_open_the_name() -> None:
    with pytest.raises(PersonalDataError):
        given_when_then(
            Expert, EXPERT, [REGISTERED], lambda x: x.update_profile(update(gender="male"), SubjectKey.new(EXPERT))
        )


def test_an_update_before_the_registration_breaks_a_rule() -> None:
    with pytest.raises(RuleBroken, match="registered on 2016-05-02"):
        given_when_then(
            Expert,
            EXPERT,
            [REGISTERED],
            lambda x: x.update_profile(update(name="T. v. V.", updated_on="2016-01-01"), KEY),
        )


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"gender": "x"}, "gender"),
        ({"background": "ngos"}, "background"),
        ({"nationality": "ZZ"}, "nationality"),
        ({"expert_id": "someone"}, "expert_id"),
        ({"name": ""}, "name"),
    ],
)
def test_update_validation_names_the_field(over: dict[str, Any], field: str) -> None:
    data = {"command_id": "c", "expert_id": EXPERT, "updated_on": "2017-01-10", **over}
    assert violated_fields(UpdateExpertProfile, data) == [field]


# --- DeployExpert --------------------------------------------------------------------------------


def deploy(activity_id: str = "2017-03/A2", command_id: str = "cmd-deploy") -> DeployExpert:
    return DeployExpert(command_id=command_id, expert_id=EXPERT, activity_id=activity_id)


def test_deploying_to_a_planned_activity_takes_the_activity_dates() -> None:
    cmd = deploy()
    [e] = given_when_then(Expert, EXPERT, [REGISTERED], lambda x: x.deploy(cmd, activity()))
    assert e == ExpertDeployed(
        expert_id=EXPERT,
        deployment_id=cmd.deployment_id,
        action_code="2017-03",
        activity_id="2017-03/A2",
        starts_on=date(2017, 5, 15),
        ends_on=date(2017, 5, 19),
    )
    assert cmd.deployment_id.startswith("dep-") and cmd.deployment_id == deploy().deployment_id


def test_deploying_to_a_held_activity_is_allowed() -> None:
    [e] = given_when_then(Expert, EXPERT, [REGISTERED], lambda x: x.deploy(deploy(), activity(status="held")))
    assert isinstance(e, ExpertDeployed)


def test_deploying_to_a_cancelled_activity_breaks_a_rule() -> None:
    with pytest.raises(RuleBroken, match="activity 2017-03/A2 is cancelled"):
        given_when_then(Expert, EXPERT, [REGISTERED], lambda x: x.deploy(deploy(), activity(status="cancelled")))


def test_deploying_to_an_activity_without_dates_breaks_a_rule() -> None:
    with pytest.raises(RuleBroken, match="has no dates"):
        given_when_then(Expert, EXPERT, [REGISTERED], lambda x: x.deploy(deploy(), activity(starts=None)))


def test_a_deactivated_expert_cannot_be_deployed() -> None:
    gone = ExpertDeactivated(expert_id=EXPERT, reason="retired", deactivated_on=date(2017, 1, 31))
    with pytest.raises(RuleBroken, match="deactivated on 2017-01-31"):
        given_when_then(Expert, EXPERT, [REGISTERED, gone], lambda x: x.deploy(deploy(), activity()))
    with pytest.raises(RuleBroken):
        Expert.fold(EXPERT, [REGISTERED, gone]).check_deployable()


def test_overlapping_deployments_of_one_expert_break_a_rule() -> None:
    first = deployed(starts="2017-05-12", ends="2017-05-15")  # ends the day the new activity starts
    with pytest.raises(RuleBroken, match="cannot overlap"):
        given_when_then(Expert, EXPERT, [REGISTERED, first], lambda x: x.deploy(deploy(), activity()))


def test_deploying_twice_to_one_activity_breaks_a_rule() -> None:
    first = deployed(activity="2017-03/A2", starts="2017-05-15", ends="2017-05-19")
    with pytest.raises(RuleBroken, match="already deployed to activity 2017-03/A2"):
        given_when_then(Expert, EXPERT, [REGISTERED, first], lambda x: x.deploy(deploy(command_id="other"), activity()))


def test_back_to_back_deployments_are_allowed() -> None:
    first = deployed(starts="2017-05-10", ends="2017-05-14")  # ends the day before
    [e] = given_when_then(Expert, EXPERT, [REGISTERED, first], lambda x: x.deploy(deploy(), activity()))
    assert isinstance(e, ExpertDeployed)


def test_a_cancelled_deployment_does_not_block_the_dates() -> None:
    first = deployed(starts="2017-05-15", ends="2017-05-19")
    cancelled = ExpertDeploymentCancelled(
        expert_id=EXPERT,
        deployment_id=DEP1,
        action_code="2016-01",
        activity_id="2016-01/A4",
        reason="ill",
        cancelled_on=date(2017, 5, 1),
    )
    [e] = given_when_then(Expert, EXPERT, [REGISTERED, first, cancelled], lambda x: x.deploy(deploy(), activity()))
    assert isinstance(e, ExpertDeployed)


@pytest.mark.parametrize("activity_id", ["2017-03", "A2", "2017-3/A2", "2017-03/2", ""])
def test_deploy_validation_names_the_activity_id(activity_id: str) -> None:
    assert violated_fields(DeployExpert, {"command_id": "c", "expert_id": EXPERT, "activity_id": activity_id}) == [
        "activity_id"
    ]


def test_the_activity_facts_come_from_the_actions_contract() -> None:
    a = actions_pb2.Activity(
        activity_id="2017-03/A2",
        action_code="2017-03",
        status="held",
        starts_on=common_pb2.Date(iso="2017-05-15"),
        ends_on=common_pb2.Date(iso="2017-05-19"),
    )
    assert facts_of(a, "2017-03/A2") == activity(status="held")
    undated = facts_of(actions_pb2.Activity(activity_id="2017-03/A2", status="planned"), "2017-03/A2")
    assert (undated.starts_on, undated.ends_on, undated.action_code) == (None, None, "2017-03")


# --- CancelDeployment ----------------------------------------------------------------------------


def cancel(dep: str = DEP1) -> CancelDeployment:
    return CancelDeployment(
        command_id="cmd-cancel",
        expert_id=EXPERT,
        deployment_id=dep,
        reason="visa refused",
        cancelled_on=date(2017, 3, 1),
    )


def test_cancelling_a_deployment_records_it_and_frees_the_dates() -> None:
    [e] = given_when_then(Expert, EXPERT, [REGISTERED, deployed()], lambda x: x.cancel_deployment(cancel()))
    assert e == ExpertDeploymentCancelled(
        expert_id=EXPERT,
        deployment_id=DEP1,
        action_code="2016-01",
        activity_id="2016-01/A4",
        reason="visa refused",
        cancelled_on=date(2017, 3, 1),
    )
    assert not Expert.fold(EXPERT, [REGISTERED, deployed(), e]).deployments[DEP1].live


def test_cancelling_an_unknown_deployment_is_not_found() -> None:
    with pytest.raises(NotFound, match=DEP2):
        given_when_then(Expert, EXPERT, [REGISTERED, deployed()], lambda x: x.cancel_deployment(cancel(DEP2)))


def test_cancelling_twice_breaks_a_rule() -> None:
    [c] = given_when_then(Expert, EXPERT, [REGISTERED, deployed()], lambda x: x.cancel_deployment(cancel()))
    with pytest.raises(RuleBroken, match="already cancelled"):
        given_when_then(Expert, EXPERT, [REGISTERED, deployed(), c], lambda x: x.cancel_deployment(cancel()))


def test_an_evaluated_deployment_cannot_be_cancelled() -> None:
    [ev] = given_when_then(Expert, EXPERT, [REGISTERED, deployed()], lambda x: x.submit_evaluation(evaluate()))
    with pytest.raises(RuleBroken, match="was evaluated"):
        given_when_then(Expert, EXPERT, [REGISTERED, deployed(), ev], lambda x: x.cancel_deployment(cancel()))


def test_cancel_validation_names_the_field() -> None:
    data = {"command_id": "c", "expert_id": EXPERT, "deployment_id": "d1", "reason": "", "cancelled_on": "x"}
    assert sorted(violated_fields(CancelDeployment, data)) == ["cancelled_on", "deployment_id", "reason"]


# --- SubmitEvaluation ----------------------------------------------------------------------------


def evaluate(dep: str = DEP1, on: str = "2017-03-10", **answers: int) -> SubmitEvaluation:
    return SubmitEvaluation.model_validate(
        {
            "command_id": "cmd-eval",
            "expert_id": EXPERT,
            "deployment_id": dep,
            "answers": [{"question": q, "score": s} for q, s in (answers or {"peer_to_peer_beneficial": 5}).items()],
            "submitted_on": on,
        }
    )


def test_an_evaluation_records_the_answers_and_the_deployment() -> None:
    cmd = evaluate(peer_to_peer_beneficial=4, overall_experience=2)
    [e] = given_when_then(Expert, EXPERT, [REGISTERED, deployed()], lambda x: x.submit_evaluation(cmd))
    assert e == ExpertEvaluationSubmitted(
        expert_id=EXPERT,
        evaluation_id=cmd.evaluation_id,
        deployment_id=DEP1,
        action_code="2016-01",
        activity_id="2016-01/A4",
        answers=(Answer(question="peer_to_peer_beneficial", score=4), Answer(question="overall_experience", score=2)),
        submitted_on=date(2017, 3, 10),
    )


@pytest.mark.parametrize("score", [0, 6, -1])
def test_scores_outside_one_to_five_name_the_answer(score: int) -> None:
    with pytest.raises(ValidationError) as info:
        evaluate(peer_to_peer_beneficial=score)
    assert fields_of(info.value) == ["answers.0.score"]


@pytest.mark.parametrize("score", [1, 5])
def test_scores_one_and_five_are_accepted(score: int) -> None:
    assert evaluate(peer_to_peer_beneficial=score).answers[0].score == score


def test_an_unknown_question_a_repeated_question_or_no_answer_is_invalid() -> None:
    base = {"command_id": "c", "expert_id": EXPERT, "deployment_id": DEP1, "submitted_on": "2017-03-10"}
    assert violated_fields(SubmitEvaluation, {**base, "answers": [{"question": "food", "score": 3}]}) == [
        "answers.0.question"
    ]
    twice = [{"question": "overall_experience", "score": 3}, {"question": "overall_experience", "score": 4}]
    assert violated_fields(SubmitEvaluation, {**base, "answers": twice}) == ["answers"]
    assert violated_fields(SubmitEvaluation, {**base, "answers": []}) == ["answers"]


def test_evaluating_a_cancelled_deployment_breaks_a_rule() -> None:
    [c] = given_when_then(Expert, EXPERT, [REGISTERED, deployed()], lambda x: x.cancel_deployment(cancel()))
    with pytest.raises(RuleBroken, match="was cancelled"):
        given_when_then(Expert, EXPERT, [REGISTERED, deployed(), c], lambda x: x.submit_evaluation(evaluate()))


def test_a_deployment_is_evaluated_once() -> None:
    [ev] = given_when_then(Expert, EXPERT, [REGISTERED, deployed()], lambda x: x.submit_evaluation(evaluate()))
    with pytest.raises(RuleBroken, match="already evaluated"):
        given_when_then(Expert, EXPERT, [REGISTERED, deployed(), ev], lambda x: x.submit_evaluation(evaluate()))


def test_an_evaluation_before_the_deployment_starts_breaks_a_rule() -> None:
    with pytest.raises(RuleBroken, match="before it takes place"):
        given_when_then(
            Expert, EXPERT, [REGISTERED, deployed()], lambda x: x.submit_evaluation(evaluate(on="2017-03-05"))
        )


def test_evaluating_an_unknown_deployment_is_not_found() -> None:
    with pytest.raises(NotFound):
        given_when_then(Expert, EXPERT, [REGISTERED, deployed()], lambda x: x.submit_evaluation(evaluate(dep=DEP2)))


# --- DeactivateExpert ----------------------------------------------------------------------------


def deactivate(on: str = "2017-12-31") -> DeactivateExpert:
    return DeactivateExpert(command_id="cmd-deactivate", expert_id=EXPERT, reason="retired", deactivated_on=on)


def test_deactivating_records_the_date_and_the_expert_is_inactive() -> None:
    [e] = given_when_then(Expert, EXPERT, [REGISTERED, deployed()], lambda x: x.deactivate(deactivate()))
    assert e == ExpertDeactivated(expert_id=EXPERT, reason="retired", deactivated_on=date(2017, 12, 31))
    folded = Expert.fold(EXPERT, [REGISTERED, deployed(), e])
    assert folded.exists and not folded.active and folded.version == 3


def test_deactivating_twice_breaks_a_rule() -> None:
    [e] = given_when_then(Expert, EXPERT, [REGISTERED], lambda x: x.deactivate(deactivate()))
    with pytest.raises(RuleBroken, match="deactivated on 2017-12-31"):
        given_when_then(Expert, EXPERT, [REGISTERED, e], lambda x: x.deactivate(deactivate()))


def test_deactivating_before_the_registration_breaks_a_rule() -> None:
    with pytest.raises(RuleBroken, match="cannot precede"):
        given_when_then(Expert, EXPERT, [REGISTERED], lambda x: x.deactivate(deactivate("2016-01-01")))


def test_deactivating_while_deployed_later_breaks_a_rule_until_the_deployment_is_cancelled() -> None:
    later = deployed(starts="2018-02-01", ends="2018-02-03")
    with pytest.raises(RuleBroken, match="cancel deployment"):
        given_when_then(Expert, EXPERT, [REGISTERED, later], lambda x: x.deactivate(deactivate()))
    [c] = given_when_then(Expert, EXPERT, [REGISTERED, later], lambda x: x.cancel_deployment(cancel()))
    [e] = given_when_then(Expert, EXPERT, [REGISTERED, later, c], lambda x: x.deactivate(deactivate()))
    assert isinstance(e, ExpertDeactivated)


# --- queries -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "data", "field"),
    [
        (ListExpertsQuery, {"background": "astronaut"}, "background"),
        (ListExpertsQuery, {"gender": "x"}, "gender"),
        (ListExpertsQuery, {"nationality": "XX"}, "nationality"),
        (ListExpertsQuery, {"theme": "astrology"}, "theme"),
        (ListExpertsQuery, {"page_size": 501}, "page_size"),
        (ListExpertsQuery, {"page_size": -1}, "page_size"),
        (ListDeploymentsQuery, {"year": 17}, "year"),
        (ListDeploymentsQuery, {"action_code": "17-1"}, "action_code"),
        (ListDeploymentsQuery, {"status": "held"}, "status"),
    ],
)
def test_query_filters_are_validated(model: type[BaseModel], data: dict[str, Any], field: str) -> None:
    assert violated_fields(model, data) == [field]


def test_empty_filters_mean_any_and_a_page_has_a_default_size() -> None:
    q = ListExpertsQuery.model_validate({"background": "", "gender": "", "nationality": "", "theme": ""})
    assert (q.background, q.size, q.active) == ("", 50, None)
    assert ListExpertsQuery.model_validate({"nationality": "be"}).nationality == "BE"
