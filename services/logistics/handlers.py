"""Application layer of the logistics service: one plain function per command."""

from __future__ import annotations

from services.kernel.application import execute, load
from services.kernel.store import AppendResult, EventStore, payload_hash
from services.logistics.domain import (
    TEAM_STREAM,
    BookFlight,
    Booking,
    CancelFlight,
    ChangeFlight,
    ExpertRecord,
    JoinTeam,
    LeaveTeam,
    Team,
)
from services.logistics.experts import ExpertDirectory


async def join_team(store: EventStore, cmd: JoinTeam) -> AppendResult:
    return await execute(
        store, Team, TEAM_STREAM, lambda t: t.join(cmd), command_id=cmd.command_id, payload=cmd, must_exist=False
    )


async def leave_team(store: EventStore, cmd: LeaveTeam) -> AppendResult:
    return await execute(
        store, Team, TEAM_STREAM, lambda t: t.leave(cmd), command_id=cmd.command_id, payload=cmd, must_exist=False
    )


async def book_flight(store: EventStore, experts: ExpertDirectory, cmd: BookFlight) -> AppendResult:
    """A retry answers with the first result before anyone is asked again; otherwise the traveller is
    checked (the experts service, or the team stream) and the booking decided on its own stream."""
    first = await store.command_result(cmd.command_id, payload_hash(cmd.model_dump(mode="json")))
    if first is not None:
        return first
    expert: ExpertRecord | None = None
    team = Team()
    if cmd.traveller_kind == "expert":
        expert = await experts.get(cmd.traveller_id)
    else:
        team = await load(store, Team, TEAM_STREAM)
    return await execute(
        store,
        Booking,
        cmd.booking_id,
        lambda b: b.book(cmd, expert=expert, team=team),
        command_id=cmd.command_id,
        payload=cmd,
        must_exist=False,
    )


async def change_flight(store: EventStore, cmd: ChangeFlight) -> AppendResult:
    return await execute(
        store, Booking, cmd.booking_id, lambda b: b.change(cmd), command_id=cmd.command_id, payload=cmd
    )


async def cancel_flight(store: EventStore, cmd: CancelFlight) -> AppendResult:
    return await execute(
        store, Booking, cmd.booking_id, lambda b: b.cancel(cmd), command_id=cmd.command_id, payload=cmd
    )
