"""The team and booking aggregates and the logistics commands, given / when / then. Pure: no I/O."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from support import given_when_then, violated_fields

from services.kernel.envelope import Event
from services.kernel.errors import RuleBroken
from services.kernel.personal import SubjectKey
from services.kernel.reference import geodesic_km, statute_miles
from services.logistics.commands import BookFlight, CancelFlight, ChangeFlight, JoinTeam, LeaveTeam, booking_id_for
from services.logistics.domain import TEAM_STREAM, Booking, ExpertRecord, Team
from services.logistics.events import (
    Fare,
    FlightBooked,
    FlightCancelled,
    FlightChanged,
    Segment,
    TeamMemberJoined,
    TeamMemberLeft,
)

BOOKING = booking_id_for("cmd-book-1")
ACTIVE = ExpertRecord("exp-1", active=True)

KEY = SubjectKey.new("tm-1")  # the member's own key, as the logistics service keeps it
JOINED = TeamMemberJoined(
    member_id="tm-1",
    name=KEY.seal("Ana Pérez"),
    gender="female",
    role=KEY.seal("Project Officer"),
    joined_on=date(2016, 9, 1),
)
LEFT = TeamMemberLeft(member_id="tm-1", left_on=date(2017, 6, 30))

BOOK: dict[str, Any] = {
    "command_id": "cmd-book-1",
    "traveller_id": "exp-1",
    "traveller_kind": "expert",
    "action_code": "2017-03",
    "activity_id": "act-1",
    "segments": [
        {"origin": "BRU", "destination": "SJO", "departs_on": "2017-03-12"},
        {"origin": "SJO", "destination": "BRU", "departs_on": "2017-03-18"},
    ],
    "cabin_class": "economy",
    "fare": {"amount": "1234.50", "currency": "EUR"},
    "booked_on": "2017-02-20",
}
BOOKED = FlightBooked(
    booking_id=BOOKING,
    traveller_id="exp-1",
    traveller_kind="expert",
    action_code="2017-03",
    activity_id="act-1",
    segments=(
        Segment(origin="BRU", destination="SJO", departs_on=date(2017, 3, 12)),
        Segment(origin="SJO", destination="BRU", departs_on=date(2017, 3, 18)),
    ),
    cabin_class="economy",
    fare=Fare(amount="1234.50", currency="EUR"),
    booked_on=date(2017, 2, 20),
)
CHANGE: dict[str, Any] = {
    "command_id": "cmd-change-1",
    "booking_id": BOOKING,
    "segments": [{"origin": "BRU", "destination": "SJO", "departs_on": "2017-03-13"}],
    "cabin_class": "business",
    "fare": {"amount": "2100", "currency": "EUR"},
    "changed_on": "2017-03-01",
}
CANCEL: dict[str, Any] = {
    "command_id": "cmd-cancel-1",
    "booking_id": BOOKING,
    "reason": "activity postponed",
    "cancelled_on": "2017-03-02",
}


def book(**over: Any) -> BookFlight:
    return BookFlight.model_validate({**BOOK, **over})


def team_given(*events: Event) -> Team:
    return Team.fold(TEAM_STREAM, events)


# --- the team ---------------------------------------------------------------------------------------


def test_joining_the_team_records_team_member_joined_with_name_and_role_sealed() -> None:
    cmd = JoinTeam(
        command_id="c1",
        member_id="tm-1",
        name="Ana Pérez",
        gender="female",
        role="Project Officer",
        joined_on="2016-09-01",
    )
    [e] = given_when_then(Team, TEAM_STREAM, [], lambda t: t.join(cmd, KEY))
    assert isinstance(e, TeamMemberJoined) and e.model_copy(update={"name": JOINED.name, "role": JOINED.role}) == JOINED
    assert (KEY.reveal(e.name), KEY.reveal(e.role)) == ("Ana Pérez", "Project Officer")
    assert "Ana" not in e.model_dump_json() and "Officer" not in e.model_dump_json()


def test_a_member_cannot_join_twice() -> None:
    cmd = JoinTeam(command_id="c2", member_id="tm-1", name="Ana", gender="female", role="PO", joined_on="2017-01-01")
    with pytest.raises(RuleBroken, match="cannot join twice"):
        given_when_then(Team, TEAM_STREAM, [JOINED], lambda t: t.join(cmd, KEY))


def test_a_member_who_left_may_rejoin_after_the_day_they_left() -> None:
    cmd = JoinTeam(command_id="c3", member_id="tm-1", name="Ana", gender="female", role="PO", joined_on="2017-09-01")
    [ev] = given_when_then(Team, TEAM_STREAM, [JOINED, LEFT], lambda t: t.join(cmd, KEY))
    assert isinstance(ev, TeamMemberJoined) and ev.joined_on == date(2017, 9, 1)


def test_a_member_cannot_rejoin_on_or_before_the_day_they_left() -> None:
    cmd = JoinTeam(command_id="c4", member_id="tm-1", name="Ana", gender="female", role="PO", joined_on="2017-06-30")
    with pytest.raises(RuleBroken, match="rejoin only after"):
        given_when_then(Team, TEAM_STREAM, [JOINED, LEFT], lambda t: t.join(cmd, KEY))


def test_leaving_the_team_records_team_member_left() -> None:
    cmd = LeaveTeam(command_id="c5", member_id="tm-1", left_on="2017-06-30")
    assert given_when_then(Team, TEAM_STREAM, [JOINED], lambda t: t.leave(cmd)) == [LEFT]


@pytest.mark.parametrize("given", [[], [JOINED, LEFT]], ids=["never joined", "already left"])
def test_a_member_cannot_leave_if_not_on_the_team(given: list[Event]) -> None:
    cmd = LeaveTeam(command_id="c6", member_id="tm-1", left_on="2017-12-31")
    with pytest.raises(RuleBroken, match="not on the team"):
        given_when_then(Team, TEAM_STREAM, given, lambda t: t.leave(cmd))


def test_a_member_cannot_leave_before_joining() -> None:
    cmd = LeaveTeam(command_id="c7", member_id="tm-1", left_on="2016-08-31")
    with pytest.raises(RuleBroken, match="cannot leave before"):
        given_when_then(Team, TEAM_STREAM, [JOINED], lambda t: t.leave(cmd))


def test_join_team_input_is_validated_field_by_field() -> None:
    data = {"command_id": "c8", "member_id": "", "name": "Ana", "gender": "f", "role": "PO", "joined_on": "2017-02-30"}
    assert set(violated_fields(JoinTeam, data)) == {"member_id", "gender", "joined_on"}


def test_on_team_on_covers_the_days_from_joining_to_leaving() -> None:
    team = team_given(JOINED, LEFT)
    assert not team.on_team_on("tm-1", date(2016, 8, 31))
    assert team.on_team_on("tm-1", date(2016, 9, 1))
    assert team.on_team_on("tm-1", date(2017, 6, 30))
    assert not team.on_team_on("tm-1", date(2017, 7, 1))
    assert not team.on_team_on("tm-2", date(2017, 1, 1))


# --- booking: the traveller -------------------------------------------------------------------------


def test_booking_a_flight_for_an_active_expert_records_flight_booked() -> None:
    cmd = book()
    assert cmd.booking_id == BOOKING
    assert given_when_then(Booking, BOOKING, [], lambda b: b.book(cmd, expert=ACTIVE, team=Team())) == [BOOKED]


def test_an_unknown_expert_cannot_travel() -> None:
    with pytest.raises(RuleBroken, match="not an expert"):
        given_when_then(Booking, BOOKING, [], lambda b: b.book(book(), expert=None, team=Team()))


def test_a_deactivated_expert_cannot_travel() -> None:
    with pytest.raises(RuleBroken, match="deactivated"):
        given_when_then(
            Booking, BOOKING, [], lambda b: b.book(book(), expert=ExpertRecord("exp-1", active=False), team=Team())
        )


def test_a_team_member_on_the_team_on_the_booking_date_may_travel() -> None:
    cmd = book(traveller_id="tm-1", traveller_kind="team_member", booked_on="2017-06-30")
    [ev] = given_when_then(Booking, BOOKING, [], lambda b: b.book(cmd, expert=None, team=team_given(JOINED, LEFT)))
    assert isinstance(ev, FlightBooked) and ev.traveller_kind == "team_member" and ev.traveller_id == "tm-1"


@pytest.mark.parametrize(
    ("given", "booked_on"),
    [([], "2017-02-20"), ([JOINED, LEFT], "2017-07-01"), ([JOINED], "2016-08-31")],
    ids=["never joined", "after leaving", "before joining"],
)
def test_someone_not_on_the_team_on_the_booking_date_cannot_travel_as_a_team_member(
    given: list[Event], booked_on: str
) -> None:
    cmd = book(traveller_id="tm-1", traveller_kind="team_member", booked_on=booked_on)
    with pytest.raises(RuleBroken, match="not on the team"):
        given_when_then(Booking, BOOKING, [], lambda b: b.book(cmd, expert=None, team=team_given(*given)))


def test_an_expert_is_not_a_team_member() -> None:
    """Being an active expert does not make anyone a team member."""
    cmd = book(traveller_kind="team_member")
    with pytest.raises(RuleBroken, match="not on the team"):
        given_when_then(Booking, BOOKING, [], lambda b: b.book(cmd, expert=ACTIVE, team=Team()))


def test_a_booking_is_made_once() -> None:
    with pytest.raises(RuleBroken, match="already made"):
        given_when_then(Booking, BOOKING, [BOOKED], lambda b: b.book(book(), expert=ACTIVE, team=Team()))


# --- booking: input -----------------------------------------------------------------------------------


def test_airport_and_currency_codes_are_upper_cased() -> None:
    cmd = book(
        segments=[{"origin": "bru", "destination": " sjo ", "departs_on": "2017-03-12"}],
        fare={"amount": "99.90", "currency": "usd"},
    )
    assert (cmd.segments[0].origin, cmd.segments[0].destination, cmd.fare.currency) == ("BRU", "SJO", "USD")


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"segments": [{"origin": "XQX", "destination": "BRU", "departs_on": "2017-03-12"}]}, "segments.0.origin"),
        (
            {"segments": [{"origin": "BRU", "destination": "ZZZZ", "departs_on": "2017-03-12"}]},
            "segments.0.destination",
        ),
        ({"segments": [{"origin": "BRU", "destination": "bru", "departs_on": "2017-03-12"}]}, "segments.0.destination"),
        ({"segments": [{"origin": "BRU", "destination": "SJO", "departs_on": "2017-02-30"}]}, "segments.0.departs_on"),
        ({"segments": []}, "segments"),
        (
            {
                "segments": [
                    {"origin": "BRU", "destination": "SJO", "departs_on": "2017-03-12"},
                    {"origin": "SJO", "destination": "BRU", "departs_on": "2017-03-11"},
                ]
            },
            "segments",
        ),
        ({"cabin_class": "premium"}, "cabin_class"),
        ({"fare": {"amount": "0", "currency": "EUR"}}, "fare.amount"),
        ({"fare": {"amount": "-10", "currency": "EUR"}}, "fare.amount"),
        ({"fare": {"amount": "1e3", "currency": "EUR"}}, "fare.amount"),
        ({"fare": {"amount": "NaN", "currency": "EUR"}}, "fare.amount"),
        ({"fare": {"amount": "100", "currency": "EUX"}}, "fare.currency"),
        ({"fare": {"amount": "100"}}, "fare.currency"),
        ({"traveller_kind": "consultant"}, "traveller_kind"),
        ({"traveller_id": ""}, "traveller_id"),
        ({"action_code": "Costa Rica III"}, "action_code"),
        ({"booked_on": "yesterday"}, "booked_on"),
    ],
)
def test_book_flight_input_names_the_offending_field(over: dict[str, Any], field: str) -> None:
    assert violated_fields(BookFlight, {**BOOK, **over}) == [field]


def test_every_cabin_class_is_accepted() -> None:
    for cabin in ("economy", "premium_economy", "business", "first"):
        assert book(cabin_class=cabin).cabin_class == cabin


def test_booking_id_must_be_a_booking_stream() -> None:
    """Otherwise a change could be appended to another stream (the team's)."""
    assert violated_fields(ChangeFlight, {**CHANGE, "booking_id": TEAM_STREAM}) == ["booking_id"]
    assert violated_fields(CancelFlight, {**CANCEL, "booking_id": "booking-1"}) == ["booking_id"]


def test_cancel_flight_needs_a_reason() -> None:
    assert violated_fields(CancelFlight, {**CANCEL, "reason": "  "}) == ["reason"]


# --- booking: change and cancel -----------------------------------------------------------------------


def test_changing_a_booking_records_the_new_itinerary_for_the_same_traveller() -> None:
    cmd = ChangeFlight.model_validate(CHANGE)
    assert given_when_then(Booking, BOOKING, [BOOKED], lambda b: b.change(cmd)) == [
        FlightChanged(
            booking_id=BOOKING,
            traveller_id="exp-1",
            traveller_kind="expert",
            segments=(Segment(origin="BRU", destination="SJO", departs_on=date(2017, 3, 13)),),
            cabin_class="business",
            fare=Fare(amount="2100", currency="EUR"),
            changed_on=date(2017, 3, 1),
        )
    ]


def test_a_change_cannot_predate_the_booking() -> None:
    cmd = ChangeFlight.model_validate({**CHANGE, "changed_on": "2017-02-19"})
    with pytest.raises(RuleBroken, match="cannot be changed before"):
        given_when_then(Booking, BOOKING, [BOOKED], lambda b: b.change(cmd))


def test_cancelling_a_booking_records_flight_cancelled() -> None:
    cmd = CancelFlight.model_validate(CANCEL)
    assert given_when_then(Booking, BOOKING, [BOOKED], lambda b: b.cancel(cmd)) == [
        FlightCancelled(
            booking_id=BOOKING, traveller_id="exp-1", reason="activity postponed", cancelled_on=date(2017, 3, 2)
        )
    ]


def test_a_cancellation_cannot_predate_the_booking() -> None:
    cmd = CancelFlight.model_validate({**CANCEL, "cancelled_on": "2017-01-01"})
    with pytest.raises(RuleBroken, match="cannot be cancelled before"):
        given_when_then(Booking, BOOKING, [BOOKED], lambda b: b.cancel(cmd))


def test_a_cancelled_booking_cannot_be_changed() -> None:
    cancelled = FlightCancelled(booking_id=BOOKING, traveller_id="exp-1", reason="x", cancelled_on=date(2017, 3, 2))
    with pytest.raises(RuleBroken, match="cancelled booking is final"):
        given_when_then(Booking, BOOKING, [BOOKED, cancelled], lambda b: b.change(ChangeFlight.model_validate(CHANGE)))


def test_a_cancelled_booking_cannot_be_cancelled_again() -> None:
    cancelled = FlightCancelled(booking_id=BOOKING, traveller_id="exp-1", reason="x", cancelled_on=date(2017, 3, 2))
    with pytest.raises(RuleBroken, match="cancelled booking is final"):
        given_when_then(Booking, BOOKING, [BOOKED, cancelled], lambda b: b.cancel(CancelFlight.model_validate(CANCEL)))


def test_a_changed_booking_can_still_be_cancelled() -> None:
    changed = given_when_then(Booking, BOOKING, [BOOKED], lambda b: b.change(ChangeFlight.model_validate(CHANGE)))
    [ev] = given_when_then(
        Booking, BOOKING, [BOOKED, *changed], lambda b: b.cancel(CancelFlight.model_validate(CANCEL))
    )
    assert isinstance(ev, FlightCancelled)


# --- distances ------------------------------------------------------------------------------------------


def test_distance_is_geodesic_on_wgs84_between_airports() -> None:
    # Brussels - San José (Costa Rica): about 9,050 km on the ellipsoid
    km = geodesic_km("BRU", "SJO")
    assert Decimal(9000) < km < Decimal(9100)
    assert geodesic_km("SJO", "BRU") == km
    assert statute_miles("BRU", "SJO") == (km / Decimal("1.609344")).quantize(Decimal("0.001"))


def test_statute_miles_of_a_known_route() -> None:
    # London Heathrow - New York JFK: 5,555 km on WGS84, i.e. about 3,451 statute miles
    assert Decimal(3440) < statute_miles("LHR", "JFK") < Decimal(3460)


def test_a_booking_has_from_one_to_twelve_segments() -> None:
    leg = {"origin": "BRU", "destination": "SJO", "departs_on": "2017-03-12"}
    assert len(book(segments=[leg] * 12).segments) == 12
    assert violated_fields(BookFlight, {**BOOK, "segments": [leg] * 13}) == ["segments"]
    assert violated_fields(BookFlight, {**BOOK, "segments": []}) == ["segments"]
