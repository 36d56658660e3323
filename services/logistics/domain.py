"""The team and booking aggregates: their folds, their rules (`check_...`) and their decisions. Pure: no I/O.

The commands they decide on are in commands.py; reference data (airports, currencies, genders, distances)
come from services.kernel.reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from services.kernel.application import Aggregate
from services.kernel.errors import RuleBroken
from services.logistics.commands import BookFlight, CancelFlight, ChangeFlight, JoinTeam, LeaveTeam
from services.logistics.events import (
    BookingEvent,
    FlightBooked,
    FlightCancelled,
    FlightChanged,
    TeamEvent,
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
    name: str
    stints: list[Stint]

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

    def join(self, cmd: JoinTeam) -> list[TeamMemberJoined]:
        self.check_not_on_team(cmd.member_id)
        self.check_rejoins_after_leaving(cmd.member_id, cmd.joined_on)
        return [
            TeamMemberJoined(
                member_id=cmd.member_id, name=cmd.name, gender=cmd.gender, role=cmd.role, joined_on=cmd.joined_on
            )
        ]

    def leave(self, cmd: LeaveTeam) -> list[TeamMemberLeft]:
        m = self.check_on_team(cmd.member_id)
        self.check_leaves_after_joining(m, cmd.left_on)
        return [TeamMemberLeft(member_id=cmd.member_id, left_on=cmd.left_on)]


# --- bookings -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpertRecord:
    """What the experts service says about an expert (None when it does not know them)."""

    expert_id: str
    active: bool


def check_traveller(
    kind: TravellerKind, traveller_id: str, on: date, *, expert: ExpertRecord | None, team: Team
) -> None:
    """The traveller is an active expert, or a team member on the team on the booking date."""
    if kind == "expert":
        if expert is None:
            raise RuleBroken(f"traveller {traveller_id} is not an expert of the roster")
        if not expert.active:
            raise RuleBroken(f"expert {traveller_id} is deactivated: only active experts may travel")
    elif not team.on_team_on(traveller_id, on):
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
