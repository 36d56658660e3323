"""The experts service as a child OS process against the real test stack (PostgreSQL + broker).

The actions service it asks about activities is a test double reached over real gRPC: a small
`mieux.actions.v1.Actions/GetActivity` server in this process with fixed activities, passed to the
child as MIEUX_ACTIONS_ADDR (the lead's end-to-end test runs the real chain).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from mieux.actions.v1 import actions_pb2, actions_pb2_grpc
from mieux.common.v1 import common_pb2
from mieux.experts.v1 import experts_pb2, experts_pb2_grpc
from support import eventually, grpc_double, grpc_stub, running_service

from services.kernel.db import Pool
from services.kernel.grpckit import call_metadata, field_violations
from services.kernel.paging import encode_key

pytestmark = pytest.mark.integration

RPC_TIMEOUT = 20.0
UNAVAILABLE_ACTIVITY = "2017-99/A1"


def D(iso: str) -> common_pb2.Date:
    return common_pb2.Date(iso=iso)


ACTIVITIES = {
    a.activity_id: a
    for a in (
        actions_pb2.Activity(
            activity_id="2017-03/A1",
            action_code="2017-03",
            status="planned",
            starts_on=D("2017-05-15"),
            ends_on=D("2017-05-19"),
            title="Costa Rica III",
            activity_type="workshop",
        ),
        actions_pb2.Activity(  # overlaps 2017-03/A1
            activity_id="2017-03/A2",
            action_code="2017-03",
            status="held",
            starts_on=D("2017-05-18"),
            ends_on=D("2017-05-20"),
        ),
        actions_pb2.Activity(
            activity_id="2017-03/A3",
            action_code="2017-03",
            status="cancelled",
            starts_on=D("2017-09-01"),
            ends_on=D("2017-09-02"),
        ),
        actions_pb2.Activity(
            activity_id="2017-04/A1",
            action_code="2017-04",
            status="planned",
            starts_on=D("2017-06-01"),
            ends_on=D("2017-06-03"),
        ),
        actions_pb2.Activity(
            activity_id="2018-01/A1",
            action_code="2018-01",
            status="planned",
            starts_on=D("2018-02-05"),
            ends_on=D("2018-02-07"),
        ),
    )
}


class FakeActions(actions_pb2_grpc.ActionsServicer):
    """GetActivity over fixed activities; demands the experts service's own token, as the real one would."""

    def __init__(self, service_token: str) -> None:
        self.service_token = service_token
        self.calls: list[tuple[str, str]] = []

    async def GetActivity(self, request, context: grpc.aio.ServicerContext) -> actions_pb2.Activity:
        auth = dict(context.invocation_metadata() or ()).get("authorization", "")
        self.calls.append((request.activity_id, auth))
        if auth != f"Bearer {self.service_token}":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not the service token")
        if request.activity_id == UNAVAILABLE_ACTIVITY:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "actions is restarting")
        activity = ACTIVITIES.get(request.activity_id)
        if activity is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no activity {request.activity_id}")
        return activity


@pytest.fixture(scope="module")
async def actions(tokens: dict[str, str]) -> AsyncIterator[tuple[FakeActions, int]]:
    fake = FakeActions(tokens["experts"])
    async with grpc_double(actions_pb2_grpc.add_ActionsServicer_to_server, fake) as port:
        yield fake, port


@pytest.fixture(scope="module")
async def service(stack_env: dict[str, str], actions: tuple[FakeActions, int]) -> AsyncIterator[int]:
    async with running_service("experts", stack_env, MIEUX_ACTIONS_ADDR=f"127.0.0.1:{actions[1]}") as svc:
        yield svc.port


@pytest.fixture
async def stub(service: int) -> AsyncIterator[experts_pb2_grpc.ExpertsStub]:
    async with grpc_stub(experts_pb2_grpc.ExpertsStub, service) as s:
        yield s


# --- helpers -----------------------------------------------------------------------------------------


def cid() -> str:
    return f"test-{uuid.uuid4()}"


def md(token: str | None) -> dict[str, Any]:
    return {"metadata": call_metadata(token), "timeout": RPC_TIMEOUT}


def registration(**over: Any) -> experts_pb2.RegisterExpertCommand:
    fields: dict[str, Any] = {
        "command_id": cid(),
        "name": "Tanja van Veldhuizen",
        "gender": "female",
        "background": "academia",
        "nationality": "NL",
        "registered_on": D("2016-05-02"),
        "themes": ["international_protection_and_asylum"],
    }
    fields.update(over)
    return experts_pb2.RegisterExpertCommand(**fields)


async def register(stub: experts_pb2_grpc.ExpertsStub, token: str, **over: Any) -> str:
    return (await stub.RegisterExpert(registration(**over), **md(token))).stream_id


async def deploy(
    stub: experts_pb2_grpc.ExpertsStub, token: str, expert_id: str, activity_id: str, command_id: str | None = None
) -> common_pb2.CommandAck:
    return await stub.DeployExpert(
        experts_pb2.DeployExpertCommand(command_id=command_id or cid(), expert_id=expert_id, activity_id=activity_id),
        **md(token),
    )


async def deployment_of(stub: experts_pb2_grpc.ExpertsStub, token: str, expert_id: str, activity_id: str) -> str:
    expert = await stub.GetExpert(experts_pb2.GetExpertQuery(expert_id=expert_id), **md(token))
    [d] = [d for d in expert.deployments if d.activity_id == activity_id and d.status == "deployed"]
    return d.deployment_id


async def refused(coro: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value


async def event_count(pool: Pool, stream_id: str | None = None) -> int:
    if stream_id is None:
        return await pool.fetchval("SELECT count(*) FROM experts.events")
    return await pool.fetchval("SELECT count(*) FROM experts.events WHERE stream_id = $1", stream_id)


async def command_rows(pool: Pool, command_id: str) -> int:
    return await pool.fetchval("SELECT count(*) FROM experts.commands WHERE command_id = $1", command_id)


# --- register, get, auth -----------------------------------------------------------------------------


async def test_a_registered_expert_is_got_by_every_reader(stub, tokens, pool) -> None:
    cmd = registration(nationality="nl")
    ack = await stub.RegisterExpert(cmd, **md(tokens["ops"]))
    assert ack.stream_id.startswith("expert-") and (ack.first_version, ack.last_version) == (1, 1)
    [row] = await pool.fetch("SELECT * FROM experts.events WHERE stream_id = $1", ack.stream_id)
    assert row["event_type"] == "ExpertRegistered" and row["actor"] == "dev-ops" and row["position"] == ack.position
    e = await refused(stub.GetExpert(experts_pb2.GetExpertQuery(expert_id=ack.stream_id), **md(tokens["finance"])))
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED  # an expert's record names a person: not finance's
    for role in ("logistics", "ops", "admin"):  # logistics: the one service whose flows ask for an expert
        e = await stub.GetExpert(experts_pb2.GetExpertQuery(expert_id=ack.stream_id), **md(tokens[role]))
        assert (e.expert_id, e.name, e.gender, e.background, e.nationality) == (
            ack.stream_id,
            "Tanja van Veldhuizen",
            "female",
            "academia",
            "NL",
        )
        assert e.active and e.registered_on.iso == "2016-05-02" and not e.HasField("deactivated_on")
        assert list(e.themes) == ["international_protection_and_asylum"] and e.version == 1


async def test_finance_may_neither_read_nor_command_and_a_token_is_needed(stub, tokens, pool) -> None:
    cmd = registration()
    before = await event_count(pool)
    e = await refused(stub.RegisterExpert(cmd, **md(tokens["finance"])))
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED and "RegisterExpert" in (e.details() or "")
    e = await refused(stub.RegisterExpert(cmd, **md(None)))
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED
    e = await refused(stub.ListExperts(experts_pb2.ListExpertsQuery(), **md("not-a-token")))
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED
    expert = await register(stub, tokens["ops"])
    for call in (
        stub.DeployExpert(
            experts_pb2.DeployExpertCommand(command_id=cid(), expert_id=expert, activity_id="2017-03/A1"),
            **md(tokens["finance"]),
        ),
        stub.DeactivateExpert(
            experts_pb2.DeactivateExpertCommand(
                command_id=cid(), expert_id=expert, reason="x", deactivated_on=D("2017-01-01")
            ),
            **md(tokens["finance"]),
        ),
    ):
        assert (await refused(call)).code() == grpc.StatusCode.PERMISSION_DENIED
    assert await event_count(pool) == before + 1  # only the ops registration
    assert await command_rows(pool, cmd.command_id) == 0
    # the lists name people: finance reads figures (stats), not them
    for call in (
        stub.ListExperts(experts_pb2.ListExpertsQuery(), **md(tokens["finance"])),
        stub.ListDeployments(experts_pb2.ListDeploymentsQuery(), **md(tokens["finance"])),
    ):
        assert (await refused(call)).code() == grpc.StatusCode.PERMISSION_DENIED


# --- invalid input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"gender": "unknown"}, "gender"),
        ({"background": "EU MS administration"}, "background"),
        ({"nationality": "XX"}, "nationality"),
        ({"name": "  "}, "name"),
        ({"themes": ["astrology"]}, "themes"),
        ({"registered_on": D("2017-02-30")}, "registered_on"),
        ({"registered_on": None}, "registered_on"),
    ],
)
async def test_invalid_registration_is_invalid_argument_naming_the_field(stub, tokens, pool, over, field) -> None:
    cmd = registration(**over)
    before = await event_count(pool)
    e = await refused(stub.RegisterExpert(cmd, **md(tokens["ops"])))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(e)] == [field]
    assert await event_count(pool) == before and await command_rows(pool, cmd.command_id) == 0


async def test_an_evaluation_score_outside_one_to_five_names_the_answer(stub, tokens, pool) -> None:
    expert = await register(stub, tokens["ops"])
    await deploy(stub, tokens["ops"], expert, "2017-04/A1")
    dep = await deployment_of(stub, tokens["ops"], expert, "2017-04/A1")
    before = await event_count(pool)
    cmd = experts_pb2.SubmitEvaluationCommand(
        command_id=cid(),
        expert_id=expert,
        deployment_id=dep,
        answers=[
            experts_pb2.Answer(question="overall_experience", score=4),
            experts_pb2.Answer(question="peer_to_peer_beneficial", score=6),
        ],
        submitted_on=D("2017-06-03"),
    )
    e = await refused(stub.SubmitEvaluation(cmd, **md(tokens["ops"])))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(e)] == ["answers.1.score"]
    assert await event_count(pool) == before
    del cmd.answers[1]
    ack = await stub.SubmitEvaluation(cmd, **md(tokens["ops"]))
    [row] = await pool.fetch("SELECT * FROM experts.events WHERE position = $1", ack.position)
    assert row["event_type"] == "ExpertEvaluationSubmitted"
    assert row["data"]["answers"] == [{"question": "overall_experience", "score": 4}]


async def test_malformed_ids_and_list_filters_are_invalid_argument(stub, tokens) -> None:
    e = await refused(stub.GetExpert(experts_pb2.GetExpertQuery(expert_id="bob"), **md(tokens["ops"])))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and [f for f, _ in field_violations(e)] == ["expert_id"]
    e = await refused(stub.ListExperts(experts_pb2.ListExpertsQuery(background="astronaut"), **md(tokens["ops"])))
    assert [f for f, _ in field_violations(e)] == ["background"]
    for token in ("garbage!", encode_key(["x", "y"]), encode_key([1, "y"]), encode_key(["2017-01-01", 2])):
        for call in (
            stub.ListExperts(experts_pb2.ListExpertsQuery(page_token=token), **md(tokens["ops"])),
            stub.ListDeployments(experts_pb2.ListDeploymentsQuery(page_token=token), **md(tokens["ops"])),
        ):
            e = await refused(call)
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, token
            assert [f for f, _ in field_violations(e)] == ["page_token"], token
    e = await refused(stub.ListDeployments(experts_pb2.ListDeploymentsQuery(page_size=1000), **md(tokens["ops"])))
    assert [f for f, _ in field_violations(e)] == ["page_size"]


# --- not found ---------------------------------------------------------------------------------------


async def test_unknown_expert_or_deployment_is_not_found_and_stores_nothing(stub, tokens, pool, actions) -> None:
    ghost = f"expert-{uuid.uuid4()}"
    e = await refused(stub.GetExpert(experts_pb2.GetExpertQuery(expert_id=ghost), **md(tokens["ops"])))
    assert e.code() == grpc.StatusCode.NOT_FOUND and ghost in (e.details() or "")
    before, calls = await event_count(pool), len(actions[0].calls)
    e = await refused(deploy(stub, tokens["ops"], ghost, "2017-03/A1"))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    assert len(actions[0].calls) == calls  # refused before asking the actions service
    e = await refused(
        stub.UpdateExpertProfile(
            experts_pb2.UpdateExpertProfileCommand(
                command_id=cid(), expert_id=ghost, name="X", updated_on=D("2017-01-01")
            ),
            **md(tokens["ops"]),
        )
    )
    assert e.code() == grpc.StatusCode.NOT_FOUND
    expert = await register(stub, tokens["ops"])
    e = await refused(
        stub.CancelDeployment(
            experts_pb2.CancelDeploymentCommand(
                command_id=cid(),
                expert_id=expert,
                deployment_id=f"dep-{uuid.uuid4()}",
                reason="x",
                cancelled_on=D("2017-01-01"),
            ),
            **md(tokens["ops"]),
        )
    )
    assert e.code() == grpc.StatusCode.NOT_FOUND
    assert await event_count(pool) == before + 1


# --- deployments and the actions service -------------------------------------------------------------


async def test_deploying_asks_actions_with_the_service_token_and_takes_the_activity_dates(
    stub, tokens, pool, actions
) -> None:
    fake = actions[0]
    expert = await register(stub, tokens["ops"])
    ack = await deploy(stub, tokens["ops"], expert, "2017-03/A1")
    assert ack.stream_id == expert and (ack.first_version, ack.last_version) == (2, 2)
    assert fake.calls[-1] == ("2017-03/A1", f"Bearer {tokens['experts']}")
    e = await stub.GetExpert(experts_pb2.GetExpertQuery(expert_id=expert), **md(tokens["ops"]))
    [d] = e.deployments
    assert (d.action_code, d.activity_id, d.starts_on.iso, d.ends_on.iso, d.status) == (
        "2017-03",
        "2017-03/A1",
        "2017-05-15",
        "2017-05-19",
        "deployed",
    )
    [row] = await pool.fetch("SELECT * FROM experts.events WHERE position = $1", ack.position)
    assert row["event_type"] == "ExpertDeployed" and row["data"]["deployment_id"] == d.deployment_id


@pytest.mark.parametrize(
    ("activity_id", "words"),
    [
        ("2099-01/A1", "activity 2099-01/A1 does not exist"),
        ("2017-03/A3", "activity 2017-03/A3 is cancelled"),
        ("2017-03/A2", "cannot overlap"),
    ],
)
async def test_a_refused_deployment_is_failed_precondition_in_words_and_stores_nothing(
    stub, tokens, pool, activity_id, words
) -> None:
    expert = await register(stub, tokens["ops"])
    await deploy(stub, tokens["ops"], expert, "2017-03/A1")
    before = await event_count(pool)
    command_id = cid()
    e = await refused(deploy(stub, tokens["ops"], expert, activity_id, command_id))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert words in (e.details() or "")
    assert await event_count(pool) == before and await command_rows(pool, command_id) == 0


async def test_an_unavailable_actions_service_is_unavailable_and_the_command_can_be_retried(stub, tokens, pool) -> None:
    expert = await register(stub, tokens["ops"])
    before = await event_count(pool)
    command_id = cid()
    e = await refused(deploy(stub, tokens["ops"], expert, UNAVAILABLE_ACTIVITY, command_id))
    assert e.code() == grpc.StatusCode.UNAVAILABLE and "actions" in (e.details() or "")
    assert await event_count(pool) == before and await command_rows(pool, command_id) == 0


async def test_a_deactivated_expert_cannot_be_deployed(stub, tokens, pool) -> None:
    expert = await register(stub, tokens["ops"])
    await stub.DeactivateExpert(
        experts_pb2.DeactivateExpertCommand(
            command_id=cid(), expert_id=expert, reason="retired", deactivated_on=D("2017-01-31")
        ),
        **md(tokens["ops"]),
    )
    before = await event_count(pool, expert)
    e = await refused(deploy(stub, tokens["ops"], expert, "2017-04/A1"))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "deactivated on 2017-01-31" in (e.details() or "")
    assert await event_count(pool, expert) == before == 2
    got = await stub.GetExpert(experts_pb2.GetExpertQuery(expert_id=expert), **md(tokens["ops"]))
    assert not got.active and got.deactivated_on.iso == "2017-01-31"


async def test_concurrent_overlapping_deployments_never_both_succeed(stub, tokens, pool) -> None:
    """Both decide on the same version; the store takes one, the other is ABORTED (or sees the first)."""
    for _ in range(3):
        expert = await register(stub, tokens["ops"])
        results = await asyncio.gather(
            deploy(stub, tokens["ops"], expert, "2017-03/A1"),
            deploy(stub, tokens["ops"], expert, "2017-03/A2"),
            return_exceptions=True,
        )
        ok = [r for r in results if isinstance(r, common_pb2.CommandAck)]
        failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(ok) == 1 and len(failed) == 1, results
        assert failed[0].code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.FAILED_PRECONDITION)
        assert await event_count(pool, expert) == 2


# --- idempotency -------------------------------------------------------------------------------------


async def test_the_same_command_twice_is_one_set_of_events_and_a_duplicate_ack(stub, tokens, pool, actions) -> None:
    cmd = registration()
    first = await stub.RegisterExpert(cmd, **md(tokens["ops"]))
    again = await stub.RegisterExpert(cmd, **md(tokens["ops"]))
    assert not first.duplicate and again.duplicate
    assert (again.stream_id, again.first_version, again.last_version, again.position) == (
        first.stream_id,
        first.first_version,
        first.last_version,
        first.position,
    )
    command_id = cid()
    d1 = await deploy(stub, tokens["ops"], first.stream_id, "2017-04/A1", command_id)
    calls = len(actions[0].calls)
    d2 = await deploy(stub, tokens["ops"], first.stream_id, "2017-04/A1", command_id)
    assert d2.duplicate and (d2.position, d2.last_version) == (d1.position, d1.last_version)
    assert len(actions[0].calls) == calls  # answered from the store, not asked again
    assert await event_count(pool, first.stream_id) == 2


async def test_a_reused_command_id_with_another_payload_is_already_exists(stub, tokens, pool) -> None:
    cmd = registration()
    first = await stub.RegisterExpert(cmd, **md(tokens["ops"]))
    other = registration(command_id=cmd.command_id, name="Someone Else")
    e = await refused(stub.RegisterExpert(other, **md(tokens["ops"])))
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS
    [row] = await pool.fetch("SELECT data FROM experts.events WHERE stream_id = $1", first.stream_id)
    assert row["data"]["name"].startswith(f"enc:v1:{first.stream_id}:") and "Tanja" not in str(row["data"])
    got = await stub.GetExpert(experts_pb2.GetExpertQuery(expert_id=first.stream_id), **md(tokens["ops"]))
    assert got.name == "Tanja van Veldhuizen"  # the first payload's, sealed in the event, opened by the query
    e = await refused(deploy(stub, tokens["ops"], first.stream_id, "2017-04/A1", cmd.command_id))
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await event_count(pool, first.stream_id) == 1


# --- the rest of the life of an expert ---------------------------------------------------------------


async def test_update_cancel_evaluate_and_deactivate(stub, tokens, pool) -> None:
    ops = tokens["ops"]
    expert = await register(stub, ops)
    await stub.UpdateExpertProfile(
        experts_pb2.UpdateExpertProfileCommand(
            command_id=cid(),
            expert_id=expert,
            background="private_consultant",
            themes=experts_pb2.Themes(values=[]),
            updated_on=D("2017-01-10"),
        ),
        **md(ops),
    )
    e = await refused(
        stub.UpdateExpertProfile(
            experts_pb2.UpdateExpertProfileCommand(
                command_id=cid(), expert_id=expert, background="private_consultant", updated_on=D("2017-01-11")
            ),
            **md(ops),
        )
    )
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "changes nothing" in (e.details() or "")
    await deploy(stub, ops, expert, "2017-03/A1")
    await deploy(stub, ops, expert, "2018-01/A1")
    later = await deployment_of(stub, ops, expert, "2018-01/A1")
    e = await refused(
        stub.DeactivateExpert(
            experts_pb2.DeactivateExpertCommand(
                command_id=cid(), expert_id=expert, reason="retired", deactivated_on=D("2017-12-31")
            ),
            **md(ops),
        )
    )
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "cancel deployment" in (e.details() or "")
    cancel = experts_pb2.CancelDeploymentCommand(
        command_id=cid(), expert_id=expert, deployment_id=later, reason="visa refused", cancelled_on=D("2017-12-01")
    )
    await stub.CancelDeployment(cancel, **md(ops))
    e = await refused(
        stub.CancelDeployment(
            experts_pb2.CancelDeploymentCommand(**{**_fields(cancel), "command_id": cid()}), **md(ops)
        )
    )
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "already cancelled" in (e.details() or "")
    first = await deployment_of(stub, ops, expert, "2017-03/A1")
    await stub.SubmitEvaluation(
        experts_pb2.SubmitEvaluationCommand(
            command_id=cid(),
            expert_id=expert,
            deployment_id=first,
            answers=[experts_pb2.Answer(question="peer_to_peer_beneficial", score=5)],
            submitted_on=D("2017-05-19"),
        ),
        **md(ops),
    )
    await stub.DeactivateExpert(
        experts_pb2.DeactivateExpertCommand(
            command_id=cid(), expert_id=expert, reason="retired", deactivated_on=D("2017-12-31")
        ),
        **md(ops),
    )
    got = await stub.GetExpert(experts_pb2.GetExpertQuery(expert_id=expert), **md(tokens["ops"]))
    assert got.background == "private_consultant" and list(got.themes) == [] and not got.active
    assert [(d.activity_id, d.status, d.evaluated) for d in got.deployments] == [
        ("2017-03/A1", "deployed", True),
        ("2018-01/A1", "cancelled", False),
    ]
    types = [
        r["event_type"]
        for r in await pool.fetch(
            "SELECT event_type FROM experts.events WHERE stream_id = $1 ORDER BY stream_version", expert
        )
    ]
    assert types == [
        "ExpertRegistered",
        "ExpertProfileUpdated",
        "ExpertDeployed",
        "ExpertDeployed",
        "ExpertDeploymentCancelled",
        "ExpertEvaluationSubmitted",
        "ExpertDeactivated",
    ]


def _fields(msg: Any) -> dict[str, Any]:
    return {f.name: v for f, v in msg.ListFields()}


# --- lists: filters and paging (read models fed through the broker) ----------------------------------


async def list_all(stub, token: str, method: str, query: Any, page_size: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    pages = 0
    while True:
        query.page_size = page_size
        reply = await getattr(stub, method)(query, **md(token))
        pages += 1
        items.extend(reply.experts if method == "ListExperts" else reply.deployments)
        if not reply.next_page_token:
            return items, pages
        query.page_token = reply.next_page_token


async def test_list_experts_filters_and_pages(stub, tokens) -> None:
    ops = tokens["ops"]
    country = "IS"  # a nationality no other test uses
    people = [
        ("female", "academia", "2015-01-01"),
        ("male", "academia", "2015-02-01"),
        ("female", "ngo", "2015-03-01"),
        ("male", "eu_ms_administration", "2015-04-01"),
        ("female", "icmpd", "2015-05-01"),
    ]
    ids = [
        await register(
            stub,
            ops,
            gender=g,
            background=b,
            nationality=country,
            registered_on=D(on),
            themes=["diaspora_engagement"] if b == "ngo" else [],
        )
        for g, b, on in people
    ]
    await stub.DeactivateExpert(
        experts_pb2.DeactivateExpertCommand(
            command_id=cid(), expert_id=ids[1], reason="left", deactivated_on=D("2016-01-01")
        ),
        **md(ops),
    )

    async def projected() -> bool:
        r = await stub.ListExperts(experts_pb2.ListExpertsQuery(nationality=country), **md(ops))
        return [(e.expert_id, e.active) for e in r.experts] == [(i, i != ids[1]) for i in ids]

    await eventually(projected, 60, "the roster to show the deactivated expert")
    everyone, pages = await list_all(
        stub, tokens["ops"], "ListExperts", experts_pb2.ListExpertsQuery(nationality="is"), 2
    )
    assert [e.expert_id for e in everyone] == ids and pages == 3  # registration order, no repeats
    assert [e.active for e in everyone] == [True, False, True, True, True]

    async def ids_of(**filters: Any) -> list[str]:
        found, _ = await list_all(
            stub, ops, "ListExperts", experts_pb2.ListExpertsQuery(nationality=country, **filters), 50
        )
        return [e.expert_id for e in found]

    assert await ids_of(gender="female") == [ids[0], ids[2], ids[4]]
    assert await ids_of(background="academia") == [ids[0], ids[1]]
    assert await ids_of(background="academia", active=True) == [ids[0]]
    assert await ids_of(active=True) == [ids[0], ids[2], ids[3], ids[4]]
    assert await ids_of(theme="diaspora_engagement") == [ids[2]]
    assert await ids_of(gender="other") == []


async def test_list_deployments_filters_by_year_action_expert_and_status_and_pages(stub, tokens) -> None:
    ops = tokens["ops"]
    a, b = await register(stub, ops), await register(stub, ops)
    for activity in ("2017-03/A1", "2017-04/A1", "2018-01/A1"):
        await deploy(stub, ops, a, activity)
    await deploy(stub, ops, b, "2017-04/A1")
    cancelled = await deployment_of(stub, ops, a, "2018-01/A1")
    await stub.CancelDeployment(
        experts_pb2.CancelDeploymentCommand(
            command_id=cid(), expert_id=a, deployment_id=cancelled, reason="postponed", cancelled_on=D("2018-01-10")
        ),
        **md(ops),
    )

    async def projected() -> bool:
        mine = await stub.ListDeployments(experts_pb2.ListDeploymentsQuery(expert_id=a), **md(ops))
        theirs = await stub.ListDeployments(experts_pb2.ListDeploymentsQuery(expert_id=b), **md(ops))
        statuses = [d.status for d in mine.deployments]
        return statuses == ["deployed", "deployed", "cancelled"] and len(theirs.deployments) == 1

    await eventually(projected, 60, "the deployments read model to show the cancellation")
    mine, pages = await list_all(
        stub, tokens["ops"], "ListDeployments", experts_pb2.ListDeploymentsQuery(expert_id=a), 1
    )
    assert [d.activity_id for d in mine] == ["2017-03/A1", "2017-04/A1", "2018-01/A1"] and pages == 3
    assert [d.status for d in mine] == ["deployed", "deployed", "cancelled"]

    async def of(**filters: Any) -> list[tuple[str, str]]:
        found, _ = await list_all(stub, ops, "ListDeployments", experts_pb2.ListDeploymentsQuery(**filters), 500)
        return [(d.expert_id, d.activity_id) for d in found if d.expert_id in (a, b)]

    assert await of(year=2017, expert_id=a) == [(a, "2017-03/A1"), (a, "2017-04/A1")]
    assert await of(year=2018) == [(a, "2018-01/A1")]
    assert sorted(await of(action_code="2017-04")) == sorted([(a, "2017-04/A1"), (b, "2017-04/A1")])
    assert await of(expert_id=a, status="deployed") == [(a, "2017-03/A1"), (a, "2017-04/A1")]


# --- rebuild -----------------------------------------------------------------------------------------


async def roster_tables(pool: Pool) -> tuple[list[tuple], list[tuple]]:
    experts = await pool.fetch("SELECT * FROM experts_views.experts ORDER BY expert_id")
    deployments = await pool.fetch("SELECT * FROM experts_views.deployments ORDER BY deployment_id")
    return [tuple(r) for r in experts], [tuple(r) for r in deployments]


async def test_rebuilding_the_roster_from_read_all_gives_the_live_read_model(
    stub, tokens, pool, stack_env, service
) -> None:
    expert = await register(stub, tokens["ops"], nationality="MT")
    await deploy(stub, tokens["ops"], expert, "2017-04/A1")

    async def caught_up() -> bool:
        applied = await pool.fetchval(
            "SELECT count(*) FROM experts_projections.tracking WHERE projection = 'experts_roster'"
        )
        return applied == await event_count(pool)

    await eventually(caught_up, 60, "the roster projection to apply every stored event")
    live = await roster_tables(pool)
    assert any(r[0] == expert for r in live[0])
    out = subprocess.run(
        [sys.executable, "-m", "services.ops.cli", "projections", "rebuild", "experts_roster"],
        env={**stack_env, "MIEUX_EXPERTS_ADDR": f"127.0.0.1:{service}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rebuilt" in out.stdout
    assert await roster_tables(pool) == live
