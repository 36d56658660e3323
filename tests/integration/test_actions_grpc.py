"""The actions service as a child OS process against the test stack: RequestApproved on
`mieux.requests.events` opens actions (codes in order of approval, follow-up titles, redelivery opens
nothing), then every command and query over gRPC with its status codes, and nothing stored on refusal."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import date
from typing import Any

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaProducer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mieux.actions.v1 import actions_pb2, actions_pb2_grpc
from mieux.common.v1 import common_pb2
from support import (
    ServiceProcess,
    eventually,
    grpc_stub,
    make_envelope,
    mieux_cli,
    read_topic,
    running_service,
    signed,
)

from services.actions.client import ActionsClient
from services.kernel import bus
from services.kernel.db import Pool
from services.kernel.envelope import Envelope, topic_for
from services.kernel.grpckit import call_metadata, field_violations
from services.kernel.paging import encode_key
from services.kernel.settings import Settings
from services.kernel.signing import Signer, signer_for
from services.requests.events import RequestApproved

pytestmark = pytest.mark.integration

RPC_TIMEOUT = 15.0
REQUESTS_TOPIC = topic_for("requests")


# --- the service process and its inputs ----------------------------------------------------------


@pytest.fixture(scope="module")
async def service(stack_env: dict[str, str]) -> AsyncIterator[ServiceProcess]:
    async with running_service("actions", stack_env) as svc:
        yield svc


@pytest.fixture(scope="module")
def port(service: ServiceProcess) -> int:
    return service.port


@pytest.fixture(scope="module")
async def stub(service: ServiceProcess) -> AsyncIterator[actions_pb2_grpc.ActionsStub]:
    async with grpc_stub(actions_pb2_grpc.ActionsStub, service.target) as s:
        yield s


@pytest.fixture(scope="module")
async def producer(service: ServiceProcess) -> AsyncIterator[AIOKafkaProducer]:
    settings = Settings()
    await bus.ensure_topics(settings, [REQUESTS_TOPIC])
    p = bus.producer(settings)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def approval(partner: str, name: str, approved_on: str, themes: tuple[str, ...] = ()) -> Envelope:
    request_id = f"req-{uuid.uuid4()}"
    data = RequestApproved(
        request_id=request_id,
        partner=partner,
        partner_kind="regional_organisation" if len(partner) > 2 else "country",
        partner_name=name,
        region="",
        title=f"{name} request",
        themes=themes,
        approved_on=date.fromisoformat(approved_on),
    )
    return make_envelope(
        "RequestApproved",
        data.model_dump(mode="json"),
        stream_id=request_id,
        version=3,
        source="requests",
        position=1,
        correlation_id=f"corr-{request_id}",
        actor="test",
    )


async def publish(producer: AIOKafkaProducer, env: Envelope, key: str | None = None) -> None:
    """As the requests service's relay publishes it: signed with its key (the consumers park what is not)."""
    [m] = signed(REQUESTS_TOPIC, [env])
    await producer.send_and_wait(REQUESTS_TOPIC, m.value, key=key.encode() if key else m.key, headers=m.headers)


async def opened_for(pool: Pool, request_id: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT stream_id, data, causation_id, correlation_id, actor FROM actions.events "
        "WHERE event_type = 'ActionOpened' AND data->>'request_id' = $1",
        request_id,
    )


async def approve(pool: Pool, producer: AIOKafkaProducer, *args: Any, **kw: Any) -> asyncpg.Record:
    """Publish an approval and wait for its action; returns the ActionOpened row."""
    env = approval(*args, **kw)
    await publish(producer, env)

    async def opened() -> bool:
        return bool(await opened_for(pool, env.stream_id))

    await eventually(opened, 60, f"an action for {env.stream_id}")
    [row] = await opened_for(pool, env.stream_id)
    return row


async def count_events(pool: Pool, stream_id: str | None = None) -> int:
    if stream_id is None:
        return await pool.fetchval("SELECT count(*) FROM actions.events")
    return await pool.fetchval("SELECT count(*) FROM actions.events WHERE stream_id = $1", stream_id)


def md(tokens: dict[str, str], role: str = "ops") -> dict[str, Any]:
    return {"metadata": call_metadata(tokens[role]), "timeout": RPC_TIMEOUT}


def d(iso: str) -> common_pb2.Date:
    return common_pb2.Date(iso=iso)


def plan_cmd(code: str, **over: Any) -> actions_pb2.PlanActivityCommand:
    fields: dict[str, Any] = {
        "command_id": f"plan-{uuid.uuid4()}",
        "action_code": code,
        "title": "Workshop on labour migration",
        "activity_type": "workshop",
        "starts_on": d("2017-05-08"),
        "ends_on": d("2017-05-10"),
        "country": "MX",
        "city": "Mexico City",
        "airport": "MEX",
    }
    fields.update(over)
    return actions_pb2.PlanActivityCommand(**fields)


def fiche_cmd(
    code: str,
    command_id: str | None = None,
    agreed_on: str = "2017-04-01",
    pillars: Sequence[str] = ("irregular_migration",),
    themes: Sequence[str] = (),
) -> Any:
    return actions_pb2.AgreeActionFicheCommand(
        command_id=command_id or f"fiche-{uuid.uuid4()}",
        action_code=code,
        agreed_on=d(agreed_on),
        pillars=pillars,
        themes=themes,
    )


def held_cmd(activity_id: str, male: int = 20, female: int = 15, other: int = 1) -> Any:
    return actions_pb2.RecordActivityHeldCommand(
        command_id=f"held-{uuid.uuid4()}",
        activity_id=activity_id,
        participants_male=male,
        participants_female=female,
        participants_other=other,
    )


def cancel_cmd(activity_id: str) -> Any:
    return actions_pb2.CancelActivityCommand(
        command_id=f"cancel-{uuid.uuid4()}", activity_id=activity_id, cancelled_on=d("2017-04-20"), reason="floods"
    )


def close_cmd(code: str) -> Any:
    return actions_pb2.CloseActionCommand(
        command_id=f"close-{uuid.uuid4()}", action_code=code, closed_on=d("2018-01-31")
    )


async def refused(coro: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value


@pytest.fixture
async def action(pool, producer) -> str:
    """A fresh action of 2017 (Mexico), opened through the policy."""
    row = await approve(pool, producer, "MX", "Mexico", "2017-03-15", themes=("international_protection_and_asylum",))
    return row["stream_id"]


@pytest.fixture
async def agreed(action: str, stub, tokens) -> str:
    await stub.AgreeActionFiche(fiche_cmd(action), **md(tokens))
    return action


# --- opening by policy ---------------------------------------------------------------------------


async def test_approvals_open_actions_with_the_next_code_of_the_year_and_follow_up_titles(pool, producer) -> None:
    # years and partners no other test uses: the codes and titles below are exactly these
    first = await approve(pool, producer, "PE", "Peru", "2031-02-01", themes=("thb_and_som",))
    second = await approve(pool, producer, "GH", "Ghana", "2031-02-02")
    third = await approve(pool, producer, "PE", "Peru", "2031-05-20")
    fourth = await approve(pool, producer, "PE", "Peru", "2032-01-10")
    assert [r["stream_id"] for r in (first, second, third, fourth)] == ["2031-01", "2031-02", "2031-03", "2032-01"]
    assert [r["data"]["title"] for r in (first, second, third, fourth)] == ["Peru", "Ghana", "Peru II", "Peru III"]
    assert first["data"]["region"] == "lac" and second["data"]["region"] == "africa_west"
    assert first["data"]["themes"] == ["thb_and_som"] and first["data"]["follow_up"] == 1
    # the policy acted: its events name it, and follow the approval's correlation id
    assert first["actor"] == "policy:open_action_on_approval"
    assert first["correlation_id"].startswith("corr-req-") and first["causation_id"]


async def test_a_redelivered_approval_opens_nothing_new(pool, producer) -> None:
    env = approval("JO", "Jordan", "2033-03-03")
    await publish(producer, env)
    await publish(producer, env)  # redelivered
    sentinel = approval("TN", "Tunisia", "2033-03-04")
    await publish(producer, sentinel, key=env.stream_id)  # same partition: handled after the redelivery

    async def sentinel_opened() -> bool:
        return bool(await opened_for(pool, sentinel.stream_id))

    await eventually(sentinel_opened, 60, "the sentinel approval to open its action")
    assert [r["stream_id"] for r in await opened_for(pool, env.stream_id)] == ["2033-01"]
    assert [r["stream_id"] for r in await opened_for(pool, sentinel.stream_id)] == ["2033-02"]
    assert await pool.fetchval("SELECT count(*) FROM actions.events WHERE stream_id LIKE '2033-%'") == 2


# --- commands, the happy path --------------------------------------------------------------------


async def test_an_action_from_fiche_to_closure(action: str, stub, tokens, pool) -> None:
    ack = await stub.AgreeActionFiche(fiche_cmd(action), **md(tokens))
    assert (ack.stream_id, ack.first_version, ack.duplicate) == (action, 2, False)
    a1 = await stub.PlanActivity(plan_cmd(action), **md(tokens))
    a2 = await stub.PlanActivity(
        plan_cmd(action, activity_type="remote_support", city="", airport="", title="Remote review"), **md(tokens)
    )
    got = await stub.GetAction(actions_pb2.GetActionQuery(action_code=action), **md(tokens))
    assert [(a.activity_id, a.planned_version) for a in got.activities] == [
        (f"{action}/A1", a1.first_version),
        (f"{action}/A2", a2.first_version),
    ]
    await stub.RecordActivityHeld(held_cmd(f"{action}/A1"), **md(tokens))
    await stub.CancelActivity(cancel_cmd(f"{action}/A2"), **md(tokens))
    one = await stub.GetActivity(actions_pb2.GetActivityQuery(activity_id=f"{action}/A1"), **md(tokens, "experts"))
    assert (one.status, one.action_code, one.country, one.airport, one.starts_on.iso) == (
        "held",
        action,
        "MX",
        "MEX",
        "2017-05-08",
    )
    assert (one.participants_male, one.participants_female, one.participants_other) == (20, 15, 1)
    two = await stub.GetActivity(actions_pb2.GetActivityQuery(activity_id=f"{action}/A2"), **md(tokens, "experts"))
    assert (two.status, two.cancelled_on.iso) == ("cancelled", "2017-04-20")
    closed = await stub.CloseAction(close_cmd(action), **md(tokens))
    assert closed.last_version == 7
    got = await stub.GetAction(actions_pb2.GetActionQuery(action_code=action), **md(tokens))
    assert (got.status, got.closed_on.iso, got.partner, got.region, got.year) == (
        "closed",
        "2018-01-31",
        "MX",
        "lac",
        2017,
    )
    assert (got.activities_held, got.activities_cancelled, got.activities_planned) == (1, 1, 0)
    rows = await pool.fetch(
        "SELECT event_type FROM actions.events WHERE stream_id = $1 ORDER BY stream_version", action
    )
    types = [r["event_type"] for r in rows]
    assert types == ["ActionOpened", "ActionFicheAgreed", "ActivityPlanned", "ActivityPlanned", "ActivityHeld",
                     "ActivityCancelled", "ActionClosed"]  # fmt: skip


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"airport": "QQQ"}, "airport"),
        ({"country": "ZZ"}, "country"),
        ({"activity_type": "party"}, "activity_type"),
        ({"ends_on": d("2017-05-01")}, "ends_on"),
        ({"starts_on": d("2017-02-30")}, "starts_on"),
        ({"title": "  "}, "title"),
        ({"action_code": "17-3"}, "action_code"),
    ],
)
async def test_malformed_plans_are_invalid_argument_naming_the_field(
    agreed: str, stub, tokens, pool, over: dict[str, Any], field: str
) -> None:
    before = await count_events(pool)
    e = await refused(stub.PlanActivity(plan_cmd(agreed, **over), **md(tokens)))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [f for f, _ in field_violations(e)], field_violations(e)
    assert await count_events(pool) == before


async def test_other_malformed_input_names_the_field(agreed: str, stub, tokens, pool) -> None:
    before = await count_events(pool)
    await stub.PlanActivity(plan_cmd(agreed), **md(tokens))
    no_reason = actions_pb2.CancelActivityCommand(
        command_id="c", activity_id=f"{agreed}/A1", cancelled_on=d("2017-04-20")
    )
    cases = [
        (stub.RecordActivityHeld(held_cmd(f"{agreed}/A1", female=-3), **md(tokens)), "participants_female"),
        (stub.RecordActivityHeld(held_cmd(f"{agreed}-A1"), **md(tokens)), "activity_id"),
        (stub.GetActivity(actions_pb2.GetActivityQuery(activity_id="nope"), **md(tokens)), "activity_id"),
        (stub.GetAction(actions_pb2.GetActionQuery(action_code="x"), **md(tokens)), "action_code"),
        (stub.ListActions(actions_pb2.ListActionsQuery(page_size=-1), **md(tokens)), "page_size"),
        (stub.ListActions(actions_pb2.ListActionsQuery(page_token="!!"), **md(tokens)), "page_token"),
        (stub.ListActions(actions_pb2.ListActionsQuery(page_token=encode_key([2017, "1", "x"])), **md(tokens)),
         "page_token"),
        (stub.ListActions(actions_pb2.ListActionsQuery(page_token=encode_key([True, 1, "x"])), **md(tokens)),
         "page_token"),
        (stub.ListActions(actions_pb2.ListActionsQuery(page_token=encode_key([2**40, 1, "x"])), **md(tokens)),
         "page_token"),
        (stub.ListActions(actions_pb2.ListActionsQuery(page_token=encode_key([2017, 1, "x\x00"])), **md(tokens)),
         "page_token"),
        (stub.ListActivities(actions_pb2.ListActivitiesQuery(page_token="!!"), **md(tokens)), "page_token"),
        (stub.ListActivities(actions_pb2.ListActivitiesQuery(page_token=encode_key([2017, 1, "x"])), **md(tokens)),
         "page_token"),
        (stub.CancelActivity(no_reason, **md(tokens)), "reason"),
    ]  # fmt: skip
    for call, field in cases:
        e = await refused(call)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, e)
        assert field in [f for f, _ in field_violations(e)], (field, field_violations(e))
    assert await count_events(pool) == before + 1  # only the plan


async def test_broken_rules_are_failed_precondition_in_words_and_store_nothing(action: str, stub, tokens, pool) -> None:
    async def refused_rule(call: Any, words: str) -> None:
        before = await count_events(pool, action)
        e = await refused(call)
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
        assert words in (e.details() or ""), e.details()
        assert await count_events(pool, action) == before

    await refused_rule(stub.PlanActivity(plan_cmd(action), **md(tokens)), "only after the action fiche is agreed")
    await stub.AgreeActionFiche(fiche_cmd(action), **md(tokens))
    await refused_rule(stub.AgreeActionFiche(fiche_cmd(action), **md(tokens)), "already agreed")
    for _ in range(7):
        await stub.PlanActivity(plan_cmd(action), **md(tokens))
    await refused_rule(stub.PlanActivity(plan_cmd(action), **md(tokens)), "at most 7 activities")
    await stub.CancelActivity(cancel_cmd(f"{action}/A7"), **md(tokens))
    await refused_rule(stub.RecordActivityHeld(held_cmd(f"{action}/A7"), **md(tokens)), "was cancelled")
    await stub.RecordActivityHeld(held_cmd(f"{action}/A1"), **md(tokens))
    await refused_rule(stub.RecordActivityHeld(held_cmd(f"{action}/A1"), **md(tokens)), "held once")
    await refused_rule(stub.CloseAction(close_cmd(action), **md(tokens)), "still has planned activities")
    for n in range(2, 7):
        await stub.CancelActivity(cancel_cmd(f"{action}/A{n}"), **md(tokens))
    await stub.CloseAction(close_cmd(action), **md(tokens))
    await refused_rule(stub.PlanActivity(plan_cmd(action), **md(tokens)), "nothing changes after closure")
    await refused_rule(stub.CloseAction(close_cmd(action), **md(tokens)), "nothing changes after closure")


async def test_unknown_ids_are_not_found_and_store_nothing(action: str, stub, tokens, pool) -> None:
    before = await count_events(pool)
    calls = [
        stub.AgreeActionFiche(fiche_cmd("2099-99"), **md(tokens)),
        stub.GetAction(actions_pb2.GetActionQuery(action_code="2099-99"), **md(tokens)),
        stub.GetActivity(actions_pb2.GetActivityQuery(activity_id="2099-99/A1"), **md(tokens, "experts")),
        stub.GetActivity(actions_pb2.GetActivityQuery(activity_id=f"{action}/A5"), **md(tokens, "experts")),
        stub.RecordActivityHeld(held_cmd(f"{action}/A1"), **md(tokens)),
    ]
    for call in calls:
        e = await refused(call)
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
    assert await count_events(pool) == before


async def test_a_repeated_command_is_acknowledged_once_and_a_reused_id_is_already_exists(
    action: str, stub, tokens, pool
) -> None:
    cmd = fiche_cmd(action, command_id=f"fiche-{action}")
    first = await stub.AgreeActionFiche(cmd, **md(tokens))
    again = await stub.AgreeActionFiche(cmd, **md(tokens))
    assert not first.duplicate and again.duplicate
    assert (again.stream_id, again.first_version, again.last_version) == (action, 2, 2)
    assert await count_events(pool, action) == 2
    other = fiche_cmd(action, command_id=f"fiche-{action}", agreed_on="2017-04-02")
    e = await refused(stub.AgreeActionFiche(other, **md(tokens)))
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS
    # the same id on a plan (another command, another payload) is refused too
    e = await refused(stub.PlanActivity(plan_cmd(action, command_id=f"fiche-{action}"), **md(tokens)))
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await count_events(pool, action) == 2


async def test_finance_may_neither_read_the_records_nor_command(action: str, stub, tokens, pool) -> None:
    got = await stub.GetAction(actions_pb2.GetActionQuery(action_code=action), **md(tokens))
    assert got.action_code == action and got.title.startswith("Mexico")
    for call in (  # finance reads figures, ledgers and reports (stats, carbon), not the actions' records
        stub.GetAction(actions_pb2.GetActionQuery(action_code=action), **md(tokens, "finance")),
        stub.ListActions(actions_pb2.ListActionsQuery(year=2017), **md(tokens, "finance")),
        stub.ListActivities(actions_pb2.ListActivitiesQuery(year=2017), **md(tokens, "finance")),
    ):
        assert (await refused(call)).code() == grpc.StatusCode.PERMISSION_DENIED
    before = await count_events(pool, action)
    e = await refused(stub.AgreeActionFiche(fiche_cmd(action), **md(tokens, "finance")))
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED
    e = await refused(stub.AgreeActionFiche(fiche_cmd(action), metadata=call_metadata(None), timeout=RPC_TIMEOUT))
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED
    e = await refused(stub.GetAction(actions_pb2.GetActionQuery(action_code=action), metadata=call_metadata("no")))
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await count_events(pool, action) == before
    # a service may make only the calls of its flows: the experts service asks GetActivity, and commands nothing
    e = await refused(stub.AgreeActionFiche(fiche_cmd(action), **md(tokens, "experts")))
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED and "experts may not call AgreeActionFiche" in (
        e.details() or ""
    )
    assert await count_events(pool, action) == before
    await stub.AgreeActionFiche(fiche_cmd(action), **md(tokens, "admin"))  # admin is ops and more
    assert await count_events(pool, action) == before + 1


# --- results: participants' feedback, the partner's assessment, deliverables ---------------------------


def feedback_cmd(activity_id: str, respondents: int = 30, **over: Any) -> Any:
    fields = {
        "command_id": f"fb-{uuid.uuid4()}",
        "activity_id": activity_id,
        "respondents": respondents,
        "skills_enhanced": 27,
        "makes_a_difference": 26,
        "recorded_on": d("2017-05-12"),
    }
    return actions_pb2.RecordParticipantFeedbackCommand(**{**fields, **over})


def assessment_cmd(code: str, rating: str = "excellent", **over: Any) -> Any:
    fields = {
        "command_id": f"pa-{uuid.uuid4()}",
        "action_code": code,
        "rating": rating,
        "submitted_on": d("2017-06-01"),
    }
    return actions_pb2.SubmitPartnerAssessmentCommand(**{**fields, **over})


def deliverable_cmd(code: str, kind: str = "handbook", **over: Any) -> Any:
    fields = {
        "command_id": f"dl-{uuid.uuid4()}",
        "action_code": code,
        "kind": kind,
        "title": "Handbook on asylum interviews",
        "delivered_on": d("2017-06-15"),
    }
    return actions_pb2.RecordDeliverableCommand(**{**fields, **over})


async def test_the_results_of_an_action_are_recorded_and_read_back(agreed: str, stub, tokens) -> None:
    await stub.PlanActivity(plan_cmd(agreed), **md(tokens))
    await stub.RecordActivityHeld(held_cmd(f"{agreed}/A1"), **md(tokens))  # 36 participants
    ack = await stub.RecordParticipantFeedback(feedback_cmd(f"{agreed}/A1"), **md(tokens))
    assert (ack.stream_id, ack.first_version, ack.last_version) == (agreed, 5, 5)
    await stub.SubmitPartnerAssessment(assessment_cmd(agreed), **md(tokens))
    d1 = await stub.RecordDeliverable(deliverable_cmd(agreed), **md(tokens))
    d2 = await stub.RecordDeliverable(deliverable_cmd(agreed, kind="sop", title="SOPs"), **md(tokens))
    assert d2.first_version == d1.first_version + 1
    got = await stub.GetAction(actions_pb2.GetActionQuery(action_code=agreed), **md(tokens))
    assert (list(got.pillars), list(got.fiche_themes)) == (
        ["irregular_migration"],
        ["international_protection_and_asylum"],
    )
    assert (got.partner_rating, got.assessed_on.iso) == ("excellent", "2017-06-01")
    assert [(x.deliverable_id, x.kind) for x in got.deliverables] == [
        (f"{agreed}/D1", "handbook"),
        (f"{agreed}/D2", "sop"),
    ]
    one = await stub.GetActivity(actions_pb2.GetActivityQuery(activity_id=f"{agreed}/A1"), **md(tokens))
    assert (one.feedback_respondents, one.feedback_skills_enhanced, one.feedback_makes_a_difference) == (30, 27, 26)


async def test_results_refused_by_a_rule_are_failed_precondition_and_store_nothing(
    agreed: str, stub, tokens, pool
) -> None:
    async def refused_rule(call: Any, words: str) -> None:
        before = await count_events(pool)
        e = await refused(call)
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
        assert words in (e.details() or ""), e.details()
        assert await count_events(pool) == before

    await stub.PlanActivity(plan_cmd(agreed), **md(tokens))
    await refused_rule(stub.RecordParticipantFeedback(feedback_cmd(f"{agreed}/A1"), **md(tokens)), "only for a held")
    await refused_rule(stub.SubmitPartnerAssessment(assessment_cmd(agreed), **md(tokens)), "no activity held yet")
    await stub.RecordActivityHeld(held_cmd(f"{agreed}/A1"), **md(tokens))  # 36 participants
    await refused_rule(
        stub.RecordParticipantFeedback(feedback_cmd(f"{agreed}/A1", respondents=37), **md(tokens)), "too many"
    )
    await refused_rule(
        stub.RecordParticipantFeedback(feedback_cmd(f"{agreed}/A1", recorded_on=d("2017-05-07")), **md(tokens)),
        "before activity",
    )
    await stub.RecordParticipantFeedback(feedback_cmd(f"{agreed}/A1", respondents=36), **md(tokens))
    await refused_rule(stub.RecordParticipantFeedback(feedback_cmd(f"{agreed}/A1"), **md(tokens)), "once per activity")
    await stub.SubmitPartnerAssessment(assessment_cmd(agreed, rating="fair"), **md(tokens))
    await refused_rule(stub.SubmitPartnerAssessment(assessment_cmd(agreed), **md(tokens)), "once per action")
    await refused_rule(
        stub.RecordDeliverable(deliverable_cmd(agreed, delivered_on=d("2017-03-01")), **md(tokens)), "was opened"
    )
    await stub.CloseAction(close_cmd(agreed), **md(tokens))
    await refused_rule(stub.RecordDeliverable(deliverable_cmd(agreed), **md(tokens)), "nothing changes after closure")


async def test_malformed_results_and_fiches_name_the_field_and_store_nothing(action: str, stub, tokens, pool) -> None:
    before = await count_events(pool)
    a1 = f"{action}/A1"
    cases = [
        (stub.AgreeActionFiche(fiche_cmd(action, pillars=["labour"]), **md(tokens)), "pillars"),
        (stub.RecordParticipantFeedback(feedback_cmd(a1, skills_enhanced=31), **md(tokens)), "skills_enhanced"),
        (stub.RecordParticipantFeedback(feedback_cmd(a1, respondents=0), **md(tokens)), "respondents"),
        (stub.SubmitPartnerAssessment(assessment_cmd(action, rating="superb"), **md(tokens)), "rating"),
        (stub.RecordDeliverable(deliverable_cmd(action, kind="report"), **md(tokens)), "kind"),
        (stub.RecordDeliverable(deliverable_cmd(action, title=""), **md(tokens)), "title"),
    ]
    for call, field in cases:
        e = await refused(call)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, e)
        assert field in [f for f, _ in field_violations(e)], (field, field_violations(e))
    # a fiche naming no pillar breaks the rule (the pillars are the fiche's to name)
    e = await refused(stub.AgreeActionFiche(fiche_cmd(action, pillars=[]), **md(tokens)))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "GAMM pillar" in (e.details() or "")
    assert await count_events(pool) == before


async def test_finance_may_not_record_results(agreed: str, stub, tokens, pool) -> None:
    before = await count_events(pool, agreed)
    for call in (
        stub.SubmitPartnerAssessment(assessment_cmd(agreed), **md(tokens, "finance")),
        stub.RecordDeliverable(deliverable_cmd(agreed), **md(tokens, "finance")),
        stub.RecordParticipantFeedback(feedback_cmd(f"{agreed}/A1"), **md(tokens, "finance")),
    ):
        e = await refused(call)
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await count_events(pool, agreed) == before


# --- lists ---------------------------------------------------------------------------------------


async def test_list_actions_filters_and_pages(pool, producer, stub, tokens) -> None:
    year = 2034
    bo = await approve(pool, producer, "BO", "Bolivia, Plurinational State of", f"{year}-01-10",
                       themes=("return_and_readmission",))  # fmt: skip
    tj = await approve(pool, producer, "TJ", "Tajikistan", f"{year}-02-10", themes=("international_labour_migration",))
    eco = await approve(pool, producer, "ECOWAS", "ECOWAS", f"{year}-03-10", themes=("international_labour_migration",))
    codes = [r["stream_id"] for r in (bo, tj, eco)]
    assert codes == [f"{year}-01", f"{year}-02", f"{year}-03"]
    assert bo["data"]["title"] == "Bolivia"
    await stub.AgreeActionFiche(fiche_cmd(codes[1], agreed_on=f"{year}-03-01"), **md(tokens))
    dushanbe = {"country": "TJ", "city": "Dushanbe", "airport": "DYU"}
    dates = {"starts_on": d(f"{year}-04-01"), "ends_on": d(f"{year}-04-02")}
    await stub.PlanActivity(plan_cmd(codes[1], **dushanbe, **dates), **md(tokens))

    async def listed(**q: Any) -> list[str]:
        reply = await stub.ListActions(actions_pb2.ListActionsQuery(**q), **md(tokens))
        return [a.action_code for a in reply.actions]

    async def projected() -> bool:
        reply = await stub.ListActions(actions_pb2.ListActionsQuery(year=year, status="fiche_agreed"), **md(tokens))
        return [a.activities_planned for a in reply.actions] == [1]

    await eventually(projected, 60, "the projection to catch up")
    assert await listed(year=year) == codes
    assert await listed(year=year, region="asia") == [codes[1]]
    assert await listed(year=year, region="africa_west") == [codes[2]]
    assert await listed(year=year, partner="BO") == [codes[0]]
    assert await listed(year=year, status="fiche_agreed") == [codes[1]]
    assert await listed(year=year, status="opened") == [codes[0], codes[2]]
    assert await listed(year=year, theme="international_labour_migration") == [codes[1], codes[2]]
    assert await listed(year=year + 1) == []

    pages, token = [], ""
    while True:
        reply = await stub.ListActions(
            actions_pb2.ListActionsQuery(year=year, page_size=2, page_token=token), **md(tokens)
        )
        pages.append([a.action_code for a in reply.actions])
        token = reply.next_page_token
        if not token:
            break
    assert pages == [codes[:2], codes[2:]]

    acts = await stub.ListActivities(actions_pb2.ListActivitiesQuery(year=year, region="asia"), **md(tokens))
    assert [(a.activity_id, a.status, a.airport) for a in acts.activities] == [(f"{codes[1]}/A1", "planned", "DYU")]
    none = await stub.ListActivities(actions_pb2.ListActivitiesQuery(year=year, status="held"), **md(tokens))
    assert list(none.activities) == []


async def test_lists_page_by_key_so_rows_added_meanwhile_repeat_or_skip_nothing(pool, producer, stub, tokens) -> None:
    """A row added between two pages, sorting before the first page's last row, shifts no later page
    (paging by offset would show a row of the first page again)."""
    codes = [
        (await approve(pool, producer, "UG", "Uganda", f"{y}-03-01"))["stream_id"] for y in (2038, 2039, 2040, 2041)
    ]
    for code in codes:
        await stub.AgreeActionFiche(fiche_cmd(code, themes=["migration_data_management"]), **md(tokens))
    for code in codes[1:]:
        await stub.PlanActivity(plan_cmd(code), **md(tokens))

    async def codes_listed() -> list[str]:
        reply = await stub.ListActions(actions_pb2.ListActionsQuery(partner="UG"), **md(tokens))
        return [a.action_code for a in reply.actions]

    async def activities_listed() -> list[str]:
        reply = await stub.ListActivities(actions_pb2.ListActivitiesQuery(partner="UG"), **md(tokens))
        return [a.activity_id for a in reply.activities]

    async def projected(n_actions: int, n_activities: int) -> bool:
        return len(await codes_listed()) == n_actions and len(await activities_listed()) == n_activities

    await eventually(lambda: projected(4, 3), 60, "the projection to show the four actions and three activities")
    activities = [f"{code}/A1" for code in codes[1:]]
    assert (await codes_listed(), await activities_listed()) == (codes, activities)

    first_actions = await stub.ListActions(actions_pb2.ListActionsQuery(partner="UG", page_size=2), **md(tokens))
    first_activities = await stub.ListActivities(
        actions_pb2.ListActivitiesQuery(partner="UG", page_size=2), **md(tokens)
    )
    assert [a.action_code for a in first_actions.actions] == codes[:2]
    assert [a.activity_id for a in first_activities.activities] == activities[:2]

    # meanwhile: an action of an earlier year, and an activity of the first action, both before the pages' ends
    earlier = (await approve(pool, producer, "UG", "Uganda", "2036-03-01"))["stream_id"]
    await stub.PlanActivity(plan_cmd(codes[0]), **md(tokens))
    await eventually(lambda: projected(5, 4), 60, "the projection to show the action and activity added meanwhile")
    assert (await codes_listed())[0] == earlier and (await activities_listed())[0] == f"{codes[0]}/A1"

    async def rest(list_call, query, token: str, items: str, key: str) -> list[str]:  # type: ignore[no-untyped-def]
        """Every row of the pages after the first, following the page tokens."""
        rows = []
        while token:
            reply = await list_call(query(partner="UG", page_size=2, page_token=token), **md(tokens))
            rows.extend(getattr(r, key) for r in getattr(reply, items))
            token = reply.next_page_token
        return rows

    rest_actions = await rest(
        stub.ListActions, actions_pb2.ListActionsQuery, first_actions.next_page_token, "actions", "action_code"
    )
    rest_activities = await rest(
        stub.ListActivities,
        actions_pb2.ListActivitiesQuery,
        first_activities.next_page_token,
        "activities",
        "activity_id",
    )
    assert rest_actions == codes[2:]
    assert rest_activities == activities[2:]


async def test_get_activity_reads_its_own_writes(agreed: str, stub, tokens) -> None:
    """Other services check an activity right after it is planned: GetActivity reads the stream itself."""
    ack = await stub.PlanActivity(plan_cmd(agreed), **md(tokens))
    got = await stub.GetActivity(actions_pb2.GetActivityQuery(activity_id=f"{agreed}/A1"), **md(tokens, "experts"))
    assert (got.status, got.planned_version, got.activity_type) == ("planned", ack.first_version, "workshop")


async def test_an_approval_that_cannot_open_an_action_goes_to_the_dead_letter_queue(pool, producer) -> None:
    bad = approval("X", "Nowhere", "2035-01-01")  # a partner code no action can name
    await publish(producer, bad)
    sentinel = approval("SN", "Senegal", "2035-01-02")
    await publish(producer, sentinel, key=bad.stream_id)  # same partition: handled after the bad one

    async def sentinel_opened() -> bool:
        return bool(await opened_for(pool, sentinel.stream_id))

    await eventually(sentinel_opened, 60, "the approval after the bad one to open its action")
    assert await opened_for(pool, bad.stream_id) == []
    dead = await read_topic(
        Settings(),
        "mieux.actions.open_action_on_approval.dlq",
        until=lambda seen: any(Envelope.from_bytes(m.value).event_id == bad.event_id for m in seen),
        raw=True,
    )
    [record] = [m for m in dead if Envelope.from_bytes(m.value).event_id == bad.event_id]
    assert b"partner" in dict(record.headers)["reason"]


async def test_unsigned_forged_and_foreign_approvals_open_nothing_and_are_parked_with_their_reason(
    pool, producer, stack_env
) -> None:
    """Whoever can reach the broker can publish onto mieux.requests.events: an approval without a signature,
    one signed by a forger under the requests service's key id, one signed with the actions service's own key
    (valid, but not the topic's producer's) open no action; each is parked for the policy with its reason,
    which `mieux parked list` shows."""
    settings = Settings()
    unsigned, forged, foreign = (approval("MA", "Morocco", f"2036-01-0{day}") for day in (1, 2, 3))
    sentinel = approval("SN", "Senegal", "2036-01-04")
    requests_kid = signer_for(settings, "requests").key_id
    forger = Signer("requests", requests_kid, Ed25519PrivateKey.generate())
    actions_key = signer_for(settings, "actions")
    key = unsigned.stream_id.encode()  # one partition: the sentinel is handled after them
    await producer.send_and_wait(REQUESTS_TOPIC, unsigned.to_bytes(), key=key)
    for signer, env in ((forger, forged), (actions_key, foreign)):
        [m] = signer.seal([env])
        await producer.send_and_wait(REQUESTS_TOPIC, m.value, key=key, headers=m.headers)
    await publish(producer, sentinel, key=unsigned.stream_id)

    async def sentinel_opened() -> bool:
        return bool(await opened_for(pool, sentinel.stream_id))

    await eventually(sentinel_opened, 60, "the signed approval after them to open its action")
    for env in (unsigned, forged, foreign):
        assert await opened_for(pool, env.stream_id) == []
    code, out = await mieux_cli(stack_env, "parked", "list", "mieux.actions.open_action_on_approval", "--json")
    assert code == 0, out
    reasons = {r["stream_id"]: r["reason"] for r in map(json.loads, out.splitlines()) if r["stream_id"]}
    assert reasons[unsigned.stream_id] == "unsigned"
    assert reasons[forged.stream_id] == "signature does not verify"
    assert reasons[foreign.stream_id] == (
        f"signed with a key of actions ({actions_key.key_id}), not of requests, the topic's producer"
    )


async def snapshot(pool: Pool) -> tuple[list[tuple], list[tuple]]:
    """The read model of the actions in the store (other tests publish actions of their own onto the
    topic, which a rebuild from the store rightly does not bring back)."""
    stored = "SELECT stream_id FROM actions.events"
    actions = await pool.fetch(f"SELECT * FROM actions_views.actions WHERE action_code IN ({stored}) ORDER BY 1")
    activities = await pool.fetch(
        f"SELECT * FROM actions_views.activities WHERE split_part(activity_id, '/', 1) IN ({stored}) "
        "ORDER BY activity_id"
    )
    return [tuple(r) for r in actions], [tuple(r) for r in activities]


async def test_a_rebuild_gives_the_live_read_model(
    service: ServiceProcess, pool, stack_env, port, agreed, stub, tokens
) -> None:
    await stub.PlanActivity(plan_cmd(agreed), **md(tokens))
    await stub.RecordActivityHeld(held_cmd(f"{agreed}/A1"), **md(tokens))

    async def caught_up() -> bool:
        # the store's events only: other tests publish events of their own onto the actions topic
        applied = await pool.fetchval(
            "SELECT count(*) FROM actions.events e JOIN actions_projections.tracking t "
            "ON t.projection = 'actions_view' AND t.event_id = e.event_id"
        )
        return applied == await count_events(pool)

    await eventually(caught_up, 60, "the actions projection to catch up")
    live = await snapshot(pool)
    assert live[0] and live[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.ops.cli", "projections", "rebuild", "actions_view",
        env={**stack_env, "MIEUX_ACTIONS_PORT": str(port)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, out.decode()
    assert b"rebuilt" in out
    assert await snapshot(pool) == live


async def test_the_typed_client_returns_the_planned_activitys_id(agreed: str, stub, tokens) -> None:
    client = ActionsClient(stub, tokens["ops"], RPC_TIMEOUT)
    common = {"activity_type": "study_visit", "starts_on": "2017-06-01", "ends_on": "2017-06-03", "country": "ES"}
    _, first = await client.plan_activity(command_id=f"c-{agreed}-1", action_code=agreed, title="Visit", city="Madrid",
                                          airport="MAD", **common)  # fmt: skip
    _, second = await client.plan_activity(command_id=f"c-{agreed}-2", action_code=agreed, title="Visit 2",
                                             city="Madrid", airport="MAD", **common)  # fmt: skip
    assert (first, second) == (f"{agreed}/A1", f"{agreed}/A2")
    await client.record_held(command_id=f"h-{agreed}", activity_id=first, male=3, female=4)
    got = await client.get_activity(first)
    assert (got.status, got.participants_male, got.participants_female) == ("held", 3, 4)
