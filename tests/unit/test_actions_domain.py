"""The action aggregate and its commands, given / when / then on events. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

import pytest
from pydantic import ValidationError
from support import given_when_then, violated_fields

from services.actions.commands import (
    AgreeActionFiche,
    CancelActivity,
    CloseAction,
    OpenAction,
    PlanActivity,
    RecordActivityHeld,
)
from services.actions.domain import Action, Register, next_code, roman, short_name, title_for
from services.actions.events import (
    ActionClosed,
    ActionFicheAgreed,
    ActionOpened,
    ActivityCancelled,
    ActivityHeld,
    ActivityPlanned,
)
from services.kernel.envelope import Event
from services.kernel.errors import NotFound, RuleBroken

CODE = "2017-03"

OPEN: dict[str, Any] = {
    "command_id": "policy-cmd-1",
    "request_id": "req-1",
    "partner": "CR",
    "partner_kind": "country",
    "partner_name": "Costa Rica",
    "region": "lac",
    "themes": ["thb_and_som"],
    "approved_on": "2017-11-20",
}
PLAN: dict[str, Any] = {
    "command_id": "plan-1",
    "action_code": CODE,
    "title": "Workshop on special migration situations",
    "activity_type": "workshop",
    "starts_on": "2017-12-04",
    "ends_on": "2017-12-06",
    "country": "CR",
    "city": "San José",
    "airport": "SJO",
}


def opened(code: str = CODE, partner: str = "CR", follow_up: int = 3) -> ActionOpened:
    return ActionOpened(
        action_code=code,
        request_id="req-1",
        partner=partner,
        partner_kind="country",
        partner_name="Costa Rica",
        region="lac",
        themes=("thb_and_som",),
        title=title_for("Costa Rica", follow_up),
        follow_up=follow_up,
        year=int(code[:4]),
        opened_on=date(2017, 11, 20),
    )


FICHE = ActionFicheAgreed(
    action_code=CODE, agreed_on=date(2017, 11, 30), pillars=("irregular_migration",), themes=("thb_and_som",)
)


def fiche(**over: Any) -> AgreeActionFiche:
    """AgreeActionFiche naming a pillar and, unless told, no theme (the action's own)."""
    return AgreeActionFiche.model_validate(
        {"command_id": "f", "action_code": CODE, "agreed_on": "2017-11-30", "pillars": ["irregular_migration"], **over}
    )


def planned(n: int) -> ActivityPlanned:
    return ActivityPlanned(
        action_code=CODE,
        activity_id=f"{CODE}/A{n}",
        number=n,
        title=f"activity {n}",
        activity_type="workshop",
        starts_on=date(2017, 12, n),
        ends_on=date(2017, 12, n + 1),
        country="CR",
        city="San José",
        airport="SJO",
        partner="CR",
        region="lac",
    )


def held(n: int, male: int = 10, female: int = 12, other: int = 0) -> ActivityHeld:
    p = planned(n)
    return ActivityHeld(
        action_code=CODE,
        activity_id=p.activity_id,
        activity_type=p.activity_type,
        starts_on=p.starts_on,
        ends_on=p.ends_on,
        country="CR",
        partner="CR",
        region="lac",
        participants_male=male,
        participants_female=female,
        participants_other=other,
    )


def cancelled(n: int) -> ActivityCancelled:
    return ActivityCancelled(
        action_code=CODE, activity_id=f"{CODE}/A{n}", cancelled_on=date(2017, 11, 1), reason="venue unavailable"
    )


CLOSED = ActionClosed(action_code=CODE, closed_on=date(2018, 6, 30), activities_held=0)


def plan(**over: Any) -> PlanActivity:
    return PlanActivity.model_validate({**PLAN, **over})


def hold(n: int = 1, **over: Any) -> RecordActivityHeld:
    return RecordActivityHeld.model_validate(
        {
            "command_id": f"hold-{n}",
            "activity_id": f"{CODE}/A{n}",
            "participants_male": 10,
            "participants_female": 12,
            **over,
        }
    )


def cancel(n: int = 1) -> CancelActivity:
    return CancelActivity.model_validate(
        {
            "command_id": f"cancel-{n}",
            "activity_id": f"{CODE}/A{n}",
            "cancelled_on": "2017-11-01",
            "reason": "venue unavailable",
        }
    )


def close() -> CloseAction:
    return CloseAction.model_validate({"command_id": "close", "action_code": CODE, "closed_on": "2018-06-30"})


# --- opening: codes and titles -------------------------------------------------------------------


def test_opening_records_action_opened_with_region_title_and_year() -> None:
    cmd = OpenAction.model_validate(OPEN)
    events = given_when_then(Action, CODE, [], lambda a: a.open(cmd, follow_up=3))
    assert events == [opened()]
    assert events[0].title == "Costa Rica III"  # type: ignore[attr-defined]


def test_an_action_code_is_never_given_twice() -> None:
    cmd = OpenAction.model_validate(OPEN)
    with pytest.raises(RuleBroken, match="never given twice"):
        given_when_then(Action, CODE, [opened()], lambda a: a.open(cmd, follow_up=1))


def test_an_action_takes_a_code_of_its_approval_year() -> None:
    cmd = OpenAction.model_validate(OPEN)
    with pytest.raises(RuleBroken, match="code of that year"):
        given_when_then(Action, "2018-01", [], lambda a: a.open(cmd, follow_up=1))


def test_region_comes_from_the_reference_data_of_the_partner() -> None:
    cmd = OpenAction.model_validate({**OPEN, "partner": "GH", "partner_name": "Ghana", "region": "whatever"})
    [ev] = given_when_then(Action, CODE, [], lambda a: a.open(cmd, follow_up=1))
    assert isinstance(ev, ActionOpened)
    assert (ev.region, ev.title) == ("africa_west", "Ghana")


def test_next_code_counts_within_the_year_and_never_reuses_a_gap() -> None:
    assert next_code([], 2017) == "2017-01"
    assert next_code(["2017-01", "2017-02"], 2017) == "2017-03"
    assert next_code(["2017-01", "2017-04"], 2017) == "2017-05"  # a gap is never filled
    assert next_code(["2016-09", "2016-10"], 2017) == "2017-01"
    assert next_code([f"2017-{i:02d}" for i in range(1, 100)], 2017) == "2017-100"


@pytest.mark.parametrize(
    ("follow_up", "title"),
    [
        (1, "Costa Rica"),
        (2, "Costa Rica II"),
        (3, "Costa Rica III"),
        (4, "Costa Rica IV"),
        (9, "Costa Rica IX"),
        (14, "Costa Rica XIV"),
    ],
)
def test_titles_count_follow_ups_in_roman_numerals(follow_up: int, title: str) -> None:
    assert title_for("Costa Rica", follow_up) == title


def test_roman_numerals_refuse_zero() -> None:
    assert roman(1994) == "MCMXCIV"
    with pytest.raises(ValueError):
        roman(0)


def test_register_numbers_the_partners_next_action() -> None:
    assert Register().numbering(2017) == ("2017-01", 1)
    assert Register(codes=("2017-01", "2016-04"), partner_actions=2).numbering(2017) == ("2017-02", 3)


def test_titles_use_a_countrys_common_name() -> None:
    assert short_name("BO", "country", "Bolivia, Plurinational State of") == "Bolivia"
    assert short_name("CR", "country", "Costa Rica") == "Costa Rica"
    assert short_name("IberRed", "regional_organisation", "IberRed") == "IberRed"


def test_follow_up_numbers_start_at_one() -> None:
    cmd = OpenAction.model_validate(OPEN)
    with pytest.raises(RuleBroken, match="from 1"):
        given_when_then(Action, CODE, [], lambda a: a.open(cmd, follow_up=0))


# --- the action fiche ----------------------------------------------------------------------------


def test_agreeing_the_fiche_records_it_with_the_actions_themes_when_it_names_none() -> None:
    assert given_when_then(Action, CODE, [opened()], lambda a: a.agree_fiche(fiche())) == [FICHE]


def test_the_fiche_names_its_own_themes_and_several_pillars() -> None:
    cmd = fiche(pillars=["irregular_migration", "international_protection"], themes=["policy_development"])
    [e] = given_when_then(Action, CODE, [opened()], lambda a: a.agree_fiche(cmd))
    assert isinstance(e, ActionFicheAgreed)
    assert (e.pillars, e.themes) == (("irregular_migration", "international_protection"), ("policy_development",))
    a = Action.fold(CODE, [opened(), e])
    assert (a.state.pillars, a.state.themes) == (e.pillars, e.themes)


def test_a_fiche_naming_no_gamm_pillar_is_refused() -> None:
    with pytest.raises(RuleBroken, match="GAMM pillar"):
        given_when_then(Action, CODE, [opened()], lambda a: a.agree_fiche(fiche(pillars=[])))


def test_a_fiche_without_themes_of_an_action_without_themes_is_refused() -> None:
    bare = opened().model_copy(update={"themes": ()})
    with pytest.raises(RuleBroken, match="themes"):
        given_when_then(Action, CODE, [bare], lambda a: a.agree_fiche(fiche()))
    assert given_when_then(Action, CODE, [bare], lambda a: a.agree_fiche(fiche(themes=["thb_and_som"]))) == [FICHE]


@pytest.mark.parametrize(("over", "field"), [({"pillars": ["labour"]}, "pillars"), ({"themes": ["x"]}, "themes")])
def test_unknown_pillars_and_themes_are_malformed(over: dict[str, Any], field: str) -> None:
    data = {"command_id": "f", "action_code": CODE, "agreed_on": "2017-11-30", "pillars": ["irregular_migration"]}
    assert field in violated_fields(AgreeActionFiche, {**data, **over})


def test_the_fiche_is_agreed_once() -> None:
    with pytest.raises(RuleBroken, match="already agreed"):
        given_when_then(Action, CODE, [opened(), FICHE], lambda a: a.agree_fiche(fiche(agreed_on="2017-12-01")))


# --- planning ------------------------------------------------------------------------------------


def test_activities_are_planned_only_after_the_fiche_is_agreed() -> None:
    with pytest.raises(RuleBroken, match="only after the action fiche is agreed"):
        given_when_then(Action, CODE, [opened()], lambda a: a.plan_activity(plan()))


def test_planning_numbers_activities_in_the_action() -> None:
    [ev] = given_when_then(Action, CODE, [opened(), FICHE, planned(1)], lambda a: a.plan_activity(plan()))
    assert isinstance(ev, ActivityPlanned)
    assert (ev.activity_id, ev.number, ev.partner, ev.region, ev.airport) == (f"{CODE}/A2", 2, "CR", "lac", "SJO")


def test_at_most_seven_activities() -> None:
    seven = [planned(n) for n in range(1, 8)]
    with pytest.raises(RuleBroken, match="at most 7 activities"):
        given_when_then(Action, CODE, [opened(), FICHE, *seven], lambda a: a.plan_activity(plan()))
    [ev] = given_when_then(Action, CODE, [opened(), FICHE, *seven[:6]], lambda a: a.plan_activity(plan()))
    assert isinstance(ev, ActivityPlanned) and ev.number == 7


def test_a_cancelled_activity_does_not_count_towards_the_seven() -> None:
    given = [opened(), FICHE, *[planned(n) for n in range(1, 8)], cancelled(3)]
    [ev] = given_when_then(Action, CODE, given, lambda a: a.plan_activity(plan()))
    assert isinstance(ev, ActivityPlanned) and ev.activity_id == f"{CODE}/A8"


# --- holding -------------------------------------------------------------------------------------


def test_holding_a_planned_activity_records_participants_by_gender() -> None:
    events = given_when_then(Action, CODE, [opened(), FICHE, planned(1)], lambda a: a.record_held(hold(1)))
    assert events == [held(1)]


def test_holding_records_the_actual_dates_when_given() -> None:
    cmd = hold(1, starts_on="2017-12-10", ends_on="2017-12-11")
    [ev] = given_when_then(Action, CODE, [opened(), FICHE, planned(1)], lambda a: a.record_held(cmd))
    assert isinstance(ev, ActivityHeld) and (ev.starts_on, ev.ends_on) == (date(2017, 12, 10), date(2017, 12, 11))


def test_an_activity_is_held_once() -> None:
    with pytest.raises(RuleBroken, match="held once"):
        given_when_then(Action, CODE, [opened(), FICHE, planned(1), held(1)], lambda a: a.record_held(hold(1)))


def test_a_cancelled_activity_cannot_be_held() -> None:
    with pytest.raises(RuleBroken, match="was cancelled"):
        given_when_then(Action, CODE, [opened(), FICHE, planned(1), cancelled(1)], lambda a: a.record_held(hold(1)))


def test_an_activity_never_planned_cannot_be_held() -> None:
    with pytest.raises(NotFound, match="never planned"):
        given_when_then(Action, CODE, [opened(), FICHE, planned(1)], lambda a: a.record_held(hold(2)))


def test_participants_by_gender_are_never_negative() -> None:
    bad = {"command_id": "h", "activity_id": f"{CODE}/A1", "participants_female": -1}
    assert violated_fields(RecordActivityHeld, bad) == ["participants_female"]
    with pytest.raises(RuleBroken, match="never negative"):
        Action.check_participants(3, 0, -2)
    Action.check_participants(0, 0, 0)
    with pytest.raises(ValidationError):
        held(1, male=-5)


# --- cancelling ----------------------------------------------------------------------------------


def test_cancelling_a_planned_activity() -> None:
    assert given_when_then(Action, CODE, [opened(), FICHE, planned(1)], lambda a: a.cancel_activity(cancel(1))) == [
        cancelled(1)
    ]


def test_a_held_activity_cannot_be_cancelled() -> None:
    with pytest.raises(RuleBroken, match="cannot be cancelled"):
        given_when_then(Action, CODE, [opened(), FICHE, planned(1), held(1)], lambda a: a.cancel_activity(cancel(1)))


def test_an_activity_is_cancelled_once() -> None:
    with pytest.raises(RuleBroken, match="already cancelled"):
        given_when_then(
            Action, CODE, [opened(), FICHE, planned(1), cancelled(1)], lambda a: a.cancel_activity(cancel(1))
        )


# --- closing -------------------------------------------------------------------------------------


def test_closing_counts_the_activities_held() -> None:
    given = [opened(), FICHE, planned(1), held(1), planned(2), cancelled(2)]
    [ev] = given_when_then(Action, CODE, given, lambda a: a.close(close()))
    assert isinstance(ev, ActionClosed) and ev.activities_held == 1


def test_an_action_with_planned_activities_cannot_be_closed() -> None:
    with pytest.raises(RuleBroken, match="still has planned activities"):
        given_when_then(Action, CODE, [opened(), FICHE, planned(1)], lambda a: a.close(close()))


@pytest.mark.parametrize(
    "when",
    [
        lambda a: a.close(close()),
        lambda a: a.plan_activity(plan()),
        lambda a: a.record_held(hold(1)),
        lambda a: a.cancel_activity(cancel(2)),
        lambda a: a.agree_fiche(fiche(command_id="f2", agreed_on="2018-07-01")),
    ],
    ids=["close", "plan", "hold", "cancel", "fiche"],
)
def test_nothing_changes_after_closure(when: Callable[[Action], Sequence[Event]]) -> None:
    given: list[Event] = [opened(), FICHE, planned(1), held(1), planned(2), cancelled(2), CLOSED]
    with pytest.raises(RuleBroken, match="nothing changes after closure"):
        given_when_then(Action, CODE, given, when)
    given.pop()  # the same command is accepted, or refused for another reason, before closure
    try:
        given_when_then(Action, CODE, given, when)
    except RuleBroken as e:
        assert "closure" not in str(e)


def test_the_fold_tracks_status() -> None:
    a = Action.fold(CODE, [opened()])
    assert a.status == "opened"
    a = Action.fold(CODE, [opened(), FICHE, planned(1), held(1), planned(2), cancelled(2), CLOSED])
    assert a.status == "closed"
    assert {k: v.status for k, v in a.state.activities.items()} == {f"{CODE}/A1": "held", f"{CODE}/A2": "cancelled"}
    assert a.state.activities[f"{CODE}/A2"].planned_version == 5


# --- malformed input -----------------------------------------------------------------------------


def test_a_well_formed_plan_is_canonicalised() -> None:
    cmd = plan(country="cr", airport="sjo")
    assert (cmd.country, cmd.airport) == ("CR", "SJO")


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"activity_type": "party"}, "activity_type"),
        ({"country": "ZZ"}, "country"),
        ({"country": "CRI"}, "country"),
        ({"airport": "QQQ"}, "airport"),
        ({"airport": ""}, "airport"),
        ({"city": ""}, "city"),
        ({"ends_on": "2017-12-01"}, "ends_on"),
        ({"action_code": "2017/3"}, "action_code"),
        ({"title": ""}, "title"),
        ({"starts_on": "not a date"}, "starts_on"),
    ],
)
def test_malformed_plans_name_the_field(over: dict[str, Any], field: str) -> None:
    assert field in violated_fields(PlanActivity, {**PLAN, **over})


def test_remote_support_needs_no_city_nor_airport() -> None:
    cmd = plan(activity_type="remote_support", city="", airport="")
    assert (cmd.city, cmd.airport) == ("", "")


def test_activity_ids_are_code_slash_a_number() -> None:
    assert "activity_id" in violated_fields(RecordActivityHeld, {"command_id": "h", "activity_id": "2017-03-A1"})
    assert "activity_id" in violated_fields(
        CancelActivity, {"command_id": "c", "activity_id": "2017-03/A0", "cancelled_on": "2017-01-01", "reason": "r"}
    )
    assert hold(1).action_code == CODE


def test_held_dates_in_order() -> None:
    bad = {"command_id": "h", "activity_id": f"{CODE}/A1", "starts_on": "2017-12-10", "ends_on": "2017-12-09"}
    assert violated_fields(RecordActivityHeld, bad) == ["ends_on"]
