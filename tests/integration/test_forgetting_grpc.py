"""ForgetExpert and ForgetTeamMember over gRPC: the experts and logistics services as child OS processes against
the test stack (logistics asks the real experts service about travellers; the actions service is a double).

Admin only; the event holds nothing of the person and the events before it are unchanged; the key is gone (a
tombstone row); the same command id again answers with the first result; queries (GetExpert, ListExperts,
GetTeamMember, ListTeam) say "(forgotten)"; what a forgotten person cannot do any more is FAILED_PRECONDITION and
stores nothing; a refused forgetting destroys nothing. The team members here are on the team in 2071 only, a
year no other test uses."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from mieux.actions.v1 import actions_pb2, actions_pb2_grpc
from mieux.common.v1 import common_pb2
from mieux.experts.v1 import experts_pb2, experts_pb2_grpc
from mieux.logistics.v1 import logistics_pb2, logistics_pb2_grpc
from support import eventually, grpc_double, grpc_stub, running_service

from services.kernel.db import Pool
from services.kernel.grpckit import call_metadata

pytestmark = pytest.mark.integration


def D(iso: str) -> common_pb2.Date:
    return common_pb2.Date(iso=iso)


class Actions(actions_pb2_grpc.ActionsServicer):
    async def GetActivity(self, request, context: grpc.aio.ServicerContext) -> actions_pb2.Activity:
        return actions_pb2.Activity(
            activity_id=request.activity_id,
            action_code=request.activity_id.split("/")[0],
            status="planned",
            starts_on=D("2071-03-01"),
            ends_on=D("2071-03-03"),
        )


@pytest.fixture(scope="module")
async def services(stack_env: dict[str, str]) -> AsyncIterator[tuple[int, int]]:
    async with grpc_double(actions_pb2_grpc.add_ActionsServicer_to_server, Actions()) as actions:
        async with running_service("experts", stack_env, MIEUX_ACTIONS_ADDR=f"127.0.0.1:{actions}") as ex:
            async with running_service("logistics", stack_env, MIEUX_EXPERTS_ADDR=ex.target) as lo:
                yield ex.port, lo.port


@pytest.fixture
async def experts(services: tuple[int, int]) -> AsyncIterator[experts_pb2_grpc.ExpertsStub]:
    async with grpc_stub(experts_pb2_grpc.ExpertsStub, services[0]) as s:
        yield s


@pytest.fixture
async def logistics(services: tuple[int, int]) -> AsyncIterator[logistics_pb2_grpc.LogisticsStub]:
    async with grpc_stub(logistics_pb2_grpc.LogisticsStub, services[1]) as s:
        yield s


def cid() -> str:
    return f"forget-{uuid.uuid4()}"


def md(token: str) -> dict[str, Any]:
    return {"metadata": call_metadata(token), "timeout": 20.0}


async def refused(coro: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value


async def events_of(pool: Pool, schema: str, stream: str) -> list[tuple]:
    rows = await pool.fetch(
        f"SELECT event_type, data::text FROM {schema}.events WHERE stream_id = $1 ORDER BY stream_version", stream
    )
    return [tuple(r) for r in rows]


# --- experts -------------------------------------------------------------------------------------------------


async def test_an_admin_forgets_an_expert_and_every_query_says_so(experts, tokens, pool) -> None:
    ops, admin = md(tokens["ops"]), md(tokens["admin"])
    expert = (
        await experts.RegisterExpert(
            experts_pb2.RegisterExpertCommand(
                command_id=cid(),
                name="Philippa Thistlewood-Marchbank",
                gender="female",
                background="ngo",
                nationality="IE",
                registered_on=D("2070-01-05"),
            ),
            **ops,
        )
    ).stream_id
    await experts.DeployExpert(
        experts_pb2.DeployExpertCommand(command_id=cid(), expert_id=expert, activity_id="2071-01/A1"), **ops
    )
    before = await events_of(pool, "experts", expert)
    assert "Philippa" not in str(before)  # sealed in the events from the start
    forget = experts_pb2.ForgetExpertCommand(
        command_id=cid(), expert_id=expert, reason="erasure request 2071/7", forgotten_on=D("2071-06-01")
    )
    for role in ("ops", "logistics", "finance"):  # admin only (logistics: the one service that asks experts)
        assert (await refused(experts.ForgetExpert(forget, **md(tokens[role])))).code() == (
            grpc.StatusCode.PERMISSION_DENIED
        )
    naming = experts_pb2.ForgetExpertCommand(
        command_id=cid(), expert_id=expert, reason="Ms Thistlewood-Marchbank asked", forgotten_on=D("2071-06-01")
    )
    e = await refused(experts.ForgetExpert(naming, **admin))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "names the person" in (e.details() or "")
    assert await events_of(pool, "experts", expert) == before  # a refusal stores and destroys nothing
    got = await experts.GetExpert(experts_pb2.GetExpertQuery(expert_id=expert), **ops)
    assert (got.name, got.forgotten) == ("Philippa Thistlewood-Marchbank", False)

    ack = await experts.ForgetExpert(forget, **admin)
    again = await experts.ForgetExpert(forget, **admin)  # the same command id: the first result
    assert again.duplicate and (again.position, again.last_version) == (ack.position, ack.last_version)
    after = await events_of(pool, "experts", expert)
    assert after[:-1] == before and after[-1][0] == "ExpertForgotten" and "Philippa" not in after[-1][1]
    row = await pool.fetchrow("SELECT * FROM experts.subject_keys WHERE subject_id = $1", expert)
    assert row["wrapped_key"] is None and row["destroyed_at"] is not None
    e = await refused(
        experts.ForgetExpert(experts_pb2.ForgetExpertCommand(**{**_fields(forget), "command_id": cid()}), **admin)
    )
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "forgotten again" in (e.details() or "")

    got = await experts.GetExpert(experts_pb2.GetExpertQuery(expert_id=expert), **md(tokens["ops"]))
    assert (got.name, got.forgotten, got.forgotten_on.iso) == ("(forgotten)", True, "2071-06-01")
    assert (got.gender, got.background, got.nationality, len(got.deployments)) == ("female", "ngo", "IE", 1)

    async def listed_as_forgotten() -> bool:
        page = await experts.ListExperts(experts_pb2.ListExpertsQuery(nationality="IE", page_size=500), **ops)
        mine = [x for x in page.experts if x.expert_id == expert]
        return bool(mine) and (mine[0].name, mine[0].forgotten, mine[0].forgotten_on.iso) == (
            "(forgotten)",
            True,
            "2071-06-01",
        )

    await eventually(listed_as_forgotten, 60, "the roster to show the expert as forgotten")

    async def redacted() -> bool:  # the query says so at once (the key is gone); the read model once applied
        row = await pool.fetchrow("SELECT name, forgotten_on FROM experts_views.experts WHERE expert_id = $1", expert)
        return row["name"] == "" and str(row["forgotten_on"]) == "2071-06-01"

    await eventually(redacted, 60, "the roster to redact the expert")

    # what a forgotten expert cannot do any more, refused, storing nothing
    for call in (
        experts.DeployExpert(
            experts_pb2.DeployExpertCommand(command_id=cid(), expert_id=expert, activity_id="2071-02/A1"), **ops
        ),
        experts.UpdateExpertProfile(
            experts_pb2.UpdateExpertProfileCommand(
                command_id=cid(), expert_id=expert, name="P. T.", updated_on=D("2071-07-01")
            ),
            **ops,
        ),
        experts.UpdateExpertProfile(
            experts_pb2.UpdateExpertProfileCommand(
                command_id=cid(), expert_id=expert, gender="other", updated_on=D("2071-07-01")
            ),
            **ops,
        ),
    ):
        e = await refused(call)
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "forgotten" in (e.details() or ""), e.details()
    assert await events_of(pool, "experts", expert) == after


async def test_forgetting_an_unknown_expert_is_not_found(experts, tokens) -> None:
    ghost = "expert-00000000-0000-5000-8000-00000000dead"
    forget = experts_pb2.ForgetExpertCommand(
        command_id=cid(), expert_id=ghost, reason="r", forgotten_on=D("2071-01-01")
    )
    assert (await refused(experts.ForgetExpert(forget, **md(tokens["admin"])))).code() == grpc.StatusCode.NOT_FOUND


def _fields(msg: Any) -> dict[str, Any]:
    return {f.name: v for f, v in msg.ListFields()}


# --- team members ----------------------------------------------------------------------------------------


async def test_an_admin_forgets_a_team_member_who_then_neither_travels_nor_rejoins(
    logistics, experts, tokens, pool
) -> None:
    ops, admin = md(tokens["ops"]), md(tokens["admin"])
    member = f"tm-{uuid.uuid4().hex[:10]}"
    await logistics.JoinTeam(
        logistics_pb2.JoinTeamCommand(
            command_id=cid(),
            member_id=member,
            name="Zebulon Quillfeather",
            gender="male",
            role="Chief Zeppelin Liaison",
            joined_on=D("2071-01-02"),
        ),
        **ops,
    )
    team_before = await pool.fetchval("SELECT data::text FROM logistics.events WHERE data->>'member_id' = $1", member)
    assert "Zebulon" not in team_before and "Zeppelin" not in team_before  # name and role sealed
    forget = logistics_pb2.ForgetTeamMemberCommand(
        command_id=cid(), member_id=member, reason="left in 2071, retention over", forgotten_on=D("2071-12-31")
    )
    assert (await refused(logistics.ForgetTeamMember(forget, **ops))).code() == grpc.StatusCode.PERMISSION_DENIED

    async def member_shown(name: str, forgotten: bool) -> bool:
        try:
            got = await logistics.GetTeamMember(logistics_pb2.GetTeamMemberQuery(member_id=member), **ops)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return False
        return (got.name, got.role, got.forgotten) == (name, name if forgotten else got.role, forgotten)

    await eventually(lambda: member_shown("Zebulon Quillfeather", False), 60, "the member in the team read model")
    got = await logistics.GetTeamMember(logistics_pb2.GetTeamMemberQuery(member_id=member), **ops)
    assert got.role == "Chief Zeppelin Liaison"

    ack = await logistics.ForgetTeamMember(forget, **admin)
    assert (await logistics.ForgetTeamMember(forget, **admin)).duplicate
    assert await pool.fetchval("SELECT event_type FROM logistics.events WHERE position = $1", ack.position) == (
        "TeamMemberForgotten"
    )
    await eventually(lambda: member_shown("(forgotten)", True), 60, "the member shown as forgotten")
    page = await logistics.ListTeam(logistics_pb2.ListTeamQuery(year=2071, page_size=500), **ops)
    [listed] = [m for m in page.members if m.member_id == member]
    assert (listed.name, listed.role, listed.forgotten, listed.gender) == ("(forgotten)", "(forgotten)", True, "male")

    async def redacted() -> bool:  # the query says so at once (the key is gone); the read model once applied
        row = await pool.fetchrow("SELECT * FROM logistics_views.team_members WHERE member_id = $1", member)
        return (row["name"], row["role"], str(row["forgotten_on"])) == ("", "", "2071-12-31")

    await eventually(redacted, 60, "the team read model to redact the member")

    count = await pool.fetchval("SELECT count(*) FROM logistics.events")
    book = logistics_pb2.BookFlightCommand(
        command_id=cid(),
        traveller_id=member,
        traveller_kind="team_member",
        segments=[logistics_pb2.Segment(origin="BRU", destination="VIE", departs_on=D("2071-05-02"))],
        cabin_class="economy",
        fare=common_pb2.Money(amount="100.00", currency="EUR"),
        booked_on=D("2071-04-01"),
    )
    rejoin = logistics_pb2.JoinTeamCommand(
        command_id=cid(), member_id=member, name="Z. Q.", gender="male", role="PO", joined_on=D("2072-01-01")
    )
    for call in (logistics.BookFlight(book, **ops), logistics.JoinTeam(rejoin, **ops)):
        e = await refused(call)
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "forgotten" in (e.details() or ""), e.details()
    assert await pool.fetchval("SELECT count(*) FROM logistics.events") == count
    # leaving holds nothing of the person and keeps the figures right: still possible
    await logistics.LeaveTeam(
        logistics_pb2.LeaveTeamCommand(command_id=cid(), member_id=member, left_on=D("2071-12-31")), **ops
    )


async def test_a_forgotten_expert_does_not_travel(logistics, experts, tokens) -> None:
    ops = md(tokens["ops"])
    expert = (
        await experts.RegisterExpert(
            experts_pb2.RegisterExpertCommand(
                command_id=cid(),
                name="Augustin Vellacourt",
                gender="male",
                background="academia",
                nationality="LU",
                registered_on=D("2070-01-05"),
            ),
            **ops,
        )
    ).stream_id
    await experts.ForgetExpert(
        experts_pb2.ForgetExpertCommand(
            command_id=cid(), expert_id=expert, reason="request", forgotten_on=D("2071-01-01")
        ),
        **md(tokens["admin"]),
    )
    book = logistics_pb2.BookFlightCommand(
        command_id=cid(),
        traveller_id=expert,
        traveller_kind="expert",
        segments=[logistics_pb2.Segment(origin="LUX", destination="VIE", departs_on=D("2071-05-02"))],
        cabin_class="economy",
        fare=common_pb2.Money(amount="100.00", currency="EUR"),
        booked_on=D("2071-04-01"),
    )
    e = await refused(logistics.BookFlight(book, **ops))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "forgotten" in (e.details() or "")
