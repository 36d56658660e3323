"""Application layer of the logistics service: one plain function per command.

JoinTeam seals the name and role with the member's key (`keys.key_for`, made with their first event) and hashes
them keyed; ForgetTeamMember destroys the key before it records TeamMemberForgotten, so a failure between the
two leaves the person forgotten (a retry with the same command id records it)."""

from __future__ import annotations

from services.kernel.application import execute, first_result, load
from services.kernel.personal import Keyring
from services.kernel.store import AppendResult, EventStore
from services.logistics.commands import BookFlight, CancelFlight, ChangeFlight, ForgetTeamMember, JoinTeam, LeaveTeam
from services.logistics.domain import TEAM_STREAM, Booking, ExpertRecord, Team
from services.logistics.experts import ExpertDirectory


async def join_team(store: EventStore, keys: Keyring, cmd: JoinTeam) -> AppendResult:
    key = await keys.key_for(cmd.member_id)
    cmd = cmd.keyed(key)
    return await execute(store, Team, TEAM_STREAM, lambda t: t.join(cmd, key), cmd, must_exist=False)


async def leave_team(store: EventStore, cmd: LeaveTeam) -> AppendResult:
    return await execute(store, Team, TEAM_STREAM, lambda t: t.leave(cmd), cmd, must_exist=False)


async def forget_team_member(store: EventStore, keys: Keyring, cmd: ForgetTeamMember) -> AppendResult:
    """Decide first (refusals destroy nothing), then destroy the key, then record TeamMemberForgotten."""
    first = await first_result(store, cmd)
    if first is not None:
        return first
    team = await load(store, Team, TEAM_STREAM)
    key = await keys.find(cmd.member_id)
    member = team.members.get(cmd.member_id)
    team.forget(cmd, key.reveal(member.name) if key is not None and member is not None else None)
    await keys.destroy(cmd.member_id)
    return await execute(store, Team, TEAM_STREAM, lambda t: t.forget(cmd, None), cmd, must_exist=False)


async def book_flight(store: EventStore, experts: ExpertDirectory, cmd: BookFlight) -> AppendResult:
    """A retry answers with the first result before anyone is asked again; otherwise the traveller is
    checked (the experts service, or the team stream) and the booking decided on its own stream."""
    first = await first_result(store, cmd)
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
        cmd,
        must_exist=False,
    )


async def change_flight(store: EventStore, cmd: ChangeFlight) -> AppendResult:
    return await execute(store, Booking, cmd.booking_id, lambda b: b.change(cmd), cmd)


async def cancel_flight(store: EventStore, cmd: CancelFlight) -> AppendResult:
    return await execute(store, Booking, cmd.booking_id, lambda b: b.cancel(cmd), cmd)
