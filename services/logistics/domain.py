"""The team and booking aggregates: their folds, their rules (`check_...`) and their decisions. Pure: no I/O.

The commands they decide on are in commands.py; reference data (airports, currencies, genders, distances)
come from services.kernel.reference.

A member's name and role are sealed with the member's own key (services.kernel.personal), given to `join`. A
forgotten member (TeamMemberForgotten) does not join again or travel; leaving, which holds nothing of the person
and keeps the figures right, stays possible. A forgotten expert does not travel either.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from services.kernel.application import Aggregate
from services.kernel.errors import NotFound, RuleBroken
from services.kernel.personal import SubjectKey, names_the_person
from services.logistics.commands import BookFlight, CancelFlight, ChangeFlight, ForgetTeamMember, JoinTeam, LeaveTeam
from services.logistics.events import (
    BookingEvent,
    FlightBooked,
    FlightCancelled,
    FlightChanged,
    TeamEvent,
    TeamMemberForgotten,
    TeamMemberJoined,
    TeamMemberLeft,
    TravellerKind,
)

TEAM_STREAM = "team"


# --- the team -----------------------------------------------------------------------------------------


@dataclass
class Stint:
    joined_on: date
    left_on: date | None = None

    def covers(self, day: date) -> bool:
        """On the team that day: from the day joined up to and including the day left."""
        return self.joined_on <= day and (self.left_on is None or day <= self.left_on)


@dataclass
class Member:
    member_id: str
    name: str  # sealed with the member's key
    stints: list[Stint]
    forgotten_on: date | None = None

    @property
    def on_team(self) -> bool:
        return bool(self.stints) and self.stints[-1].left_on is None


class Team(Aggregate):
    """The MIEUX team (one stream): members join and leave, and may come back after leaving."""

    folds = TeamEvent

    def __init__(self, stream_id: str = TEAM_STREAM) -> None:
        super().__init__(stream_id)
        self.members: dict[str, Member] = {}

    def when_TeamMemberJoined(self, e: TeamMemberJoined) -> None:
        m = self.members.setdefault(e.member_id, Member(e.member_id, e.name, []))
        m.name = e.name
        m.stints.append(Stint(e.joined_on))

    def when_TeamMemberLeft(self, e: TeamMemberLeft) -> None:
        self.members[e.member_id].stints[-1].left_on = e.left_on

    def when_TeamMemberForgotten(self, e: TeamMemberForgotten) -> None:
        m = self.members[e.member_id]
        m.forgotten_on, m.name = e.forgotten_on, ""

    def check_not_forgotten(self, member_id: str, doing: str) -> None:
        m = self.members.get(member_id)
        if m is not None and m.forgotten_on is not None:
            raise RuleBroken(f"team member {member_id} was forgotten on {m.forgotten_on} and cannot {doing}")

    def on_team_on(self, member_id: str, day: date) -> bool:
        m = self.members.get(member_id)
        return m is not None and any(s.covers(day) for s in m.stints)

    def check_not_on_team(self, member_id: str) -> None:
        m = self.members.get(member_id)
        if m is not None and m.on_team:
            raise RuleBroken(f"team member {member_id} is already on the team: a member cannot join twice")

    def check_rejoins_after_leaving(self, member_id: str, joined_on: date) -> None:
        m = self.members.get(member_id)
        if m is not None and m.stints:
            left_on = m.stints[-1].left_on
            if left_on is not None and joined_on <= left_on:
                raise RuleBroken(f"team member {member_id} left on {left_on}: they can rejoin only after that day")

    def check_on_team(self, member_id: str) -> Member:
        m = self.members.get(member_id)
        if m is None or not m.on_team:
            raise RuleBroken(f"{member_id} is not on the team: only a member on the team can leave it")
        return m

    def check_leaves_after_joining(self, m: Member, left_on: date) -> None:
        joined_on = m.stints[-1].joined_on
        if left_on < joined_on:
            raise RuleBroken(f"team member {m.member_id} joined on {joined_on}: they cannot leave before that")

    def join(self, cmd: JoinTeam, key: SubjectKey) -> list[TeamMemberJoined]:
        """`key`: the member's, to seal their name and role."""
        self.check_not_forgotten(cmd.member_id, "join again")
        self.check_not_on_team(cmd.member_id)
        self.check_rejoins_after_leaving(cmd.member_id, cmd.joined_on)
        return [
            TeamMemberJoined(
                member_id=cmd.member_id,
                name=key.seal(cmd.name),
                gender=cmd.gender,
                role=key.seal(cmd.role),
                joined_on=cmd.joined_on,
            )
        ]

    def leave(self, cmd: LeaveTeam) -> list[TeamMemberLeft]:
        m = self.check_on_team(cmd.member_id)
        self.check_leaves_after_joining(m, cmd.left_on)
        return [TeamMemberLeft(member_id=cmd.member_id, left_on=cmd.left_on)]

    def forget(self, cmd: ForgetTeamMember, name: str | None) -> list[TeamMemberForgotten]:
        """`name`: the name held, to check the reason (kept in clear) does not name the person; None once the
        key is gone (a retry after the key was destroyed)."""
        m = self.members.get(cmd.member_id)
        if m is None:
            raise NotFound(f"team member {cmd.member_id} does not exist")
        self.check_not_forgotten(cmd.member_id, "be forgotten again")
        if cmd.forgotten_on < m.stints[0].joined_on:
            raise RuleBroken(
                f"team member {cmd.member_id} joined on {m.stints[0].joined_on}: forgetting cannot precede it"
            )
        if name is not None and names_the_person(cmd.reason, name):
            raise RuleBroken("the reason names the person: it stays readable once they are forgotten")
        return [TeamMemberForgotten(member_id=cmd.member_id, reason=cmd.reason, forgotten_on=cmd.forgotten_on)]


# --- bookings -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpertRecord:
    """What the experts service says about an expert (None when it does not know them)."""

    expert_id: str
    active: bool
    forgotten: bool = False


def check_traveller(
    kind: TravellerKind, traveller_id: str, on: date, *, expert: ExpertRecord | None, team: Team
) -> None:
    """The traveller is an active expert, or a team member on the team on the booking date."""
    if kind == "expert":
        if expert is None:
            raise RuleBroken(f"traveller {traveller_id} is not an expert of the roster")
        if expert.forgotten:
            raise RuleBroken(f"expert {traveller_id} was forgotten: a forgotten person does not travel")
        if not expert.active:
            raise RuleBroken(f"expert {traveller_id} is deactivated: only active experts may travel")
        return
    team.check_not_forgotten(traveller_id, "travel")
    if not team.on_team_on(traveller_id, on):
        raise RuleBroken(f"traveller {traveller_id} is not on the team on {on}: only team members may travel as such")


class Booking(Aggregate):
    """One flight booking (possibly several segments). A cancelled booking is final."""

    folds = BookingEvent
    ignores = (FlightChanged,)  # a change replaces the itinerary, which no rule of the booking reads

    def __init__(self, stream_id: str) -> None:
        super().__init__(stream_id)
        self.traveller_id = ""
        self.traveller_kind: TravellerKind = "expert"
        self.booked_on: date | None = None
        self.cancelled = False

    def when_FlightBooked(self, e: FlightBooked) -> None:
        self.traveller_id = e.traveller_id
        self.traveller_kind = e.traveller_kind
        self.booked_on = e.booked_on

    def when_FlightCancelled(self, e: FlightCancelled) -> None:
        self.cancelled = True

    def check_not_booked(self) -> None:
        if self.exists:
            raise RuleBroken(f"booking {self.id} was already made")

    def check_not_cancelled(self) -> None:
        if self.cancelled:
            raise RuleBroken(f"booking {self.id} is cancelled: a cancelled booking is final")

    def check_not_before_booking(self, day: date, what: str) -> None:
        if self.booked_on is not None and day < self.booked_on:
            raise RuleBroken(f"booking {self.id} was made on {self.booked_on}: it cannot be {what} before that")

    def book(self, cmd: BookFlight, *, expert: ExpertRecord | None, team: Team) -> list[FlightBooked]:
        self.check_not_booked()
        check_traveller(cmd.traveller_kind, cmd.traveller_id, cmd.booked_on, expert=expert, team=team)
        return [
            FlightBooked(
                booking_id=self.id,
                traveller_id=cmd.traveller_id,
                traveller_kind=cmd.traveller_kind,
                action_code=cmd.action_code,
                activity_id=cmd.activity_id,
                segments=tuple(s.to_event() for s in cmd.segments),
                cabin_class=cmd.cabin_class,
                fare=cmd.fare.to_event(),
                booked_on=cmd.booked_on,
            )
        ]

    def change(self, cmd: ChangeFlight) -> list[FlightChanged]:
        self.check_not_cancelled()
        self.check_not_before_booking(cmd.changed_on, "changed")
        return [
            FlightChanged(
                booking_id=self.id,
                traveller_id=self.traveller_id,
                traveller_kind=self.traveller_kind,
                segments=tuple(s.to_event() for s in cmd.segments),
                cabin_class=cmd.cabin_class,
                fare=cmd.fare.to_event(),
                changed_on=cmd.changed_on,
            )
        ]

    def cancel(self, cmd: CancelFlight) -> list[FlightCancelled]:
        self.check_not_cancelled()
        self.check_not_before_booking(cmd.cancelled_on, "cancelled")
        return [
            FlightCancelled(
                booking_id=self.id, traveller_id=self.traveller_id, reason=cmd.reason, cancelled_on=cmd.cancelled_on
            )
        ]
