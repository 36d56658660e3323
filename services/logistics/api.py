"""gRPC servicer of the logistics service: proto <-> pydantic; errors become status codes in the kit."""

from __future__ import annotations

from decimal import Decimal

import grpc
from mieux.common.v1 import common_pb2
from mieux.logistics.v1 import logistics_pb2, logistics_pb2_grpc

from services.kernel.errors import NotFound
from services.kernel.grpckit import ADMINS, COMMANDERS, FIGURES, READERS, Registrar
from services.kernel.personal import FORGOTTEN, Keyring
from services.kernel.protos import ack, date_pb, fields
from services.kernel.store import EventStore
from services.logistics import handlers
from services.logistics import queries as q
from services.logistics.commands import BookFlight, CancelFlight, ChangeFlight, ForgetTeamMember, JoinTeam, LeaveTeam
from services.logistics.experts import ExpertDirectory, ExpertsUnavailable

SERVICE_NAME = "mieux.logistics.v1.Logistics"
COMMANDS = ("JoinTeam", "LeaveTeam", "BookFlight", "ChangeFlight", "CancelFlight")
QUERIES = (
    "GetBooking",
    "ListBookings",
    "GetTeamMember",
    "ListTeam",
    "ListItineraries",
    "ListTravellerMiles",
    "GetAirMilesPerTeamMember",
)
ACCESS = {
    **{f"/{SERVICE_NAME}/{name}": COMMANDERS for name in COMMANDS},
    **{f"/{SERVICE_NAME}/{name}": READERS for name in QUERIES},
    f"/{SERVICE_NAME}/ForgetTeamMember": ADMINS,
    f"/{SERVICE_NAME}/GetAirMilesPerTeamMember": FIGURES,  # a figure: finance reads it too
}


def miles(d: Decimal | None) -> str:
    return format(Decimal(d or 0).quantize(Decimal("0.001")), "f")


def booking_pb(b: q.BookingRow) -> logistics_pb2.Booking:
    r = b.row
    return logistics_pb2.Booking(
        booking_id=r["booking_id"],
        traveller_id=r["traveller_id"],
        traveller_kind=r["traveller_kind"],
        action_code=r["action_code"] or "",
        activity_id=r["activity_id"] or "",
        segments=[
            logistics_pb2.SegmentView(
                origin=leg["origin"],
                destination=leg["destination"],
                departs_on=date_pb(leg["departs_on"]),
                statute_miles=miles(leg["statute_miles"]),
            )
            for leg in b.legs
        ],
        cabin_class=r["cabin_class"],
        fare=common_pb2.Money(amount=r["fare_amount"], currency=r["fare_currency"]),
        booked_on=date_pb(r["booked_on"]),
        status=r["status"],
        changes=r["changes"],
        changed_on=date_pb(r["changed_on"]),
        cancelled_on=date_pb(r["cancelled_on"]),
        cancel_reason=r["cancel_reason"] or "",
        year=r["year"],
        statute_miles=miles(r["statute_miles"]),
    )


def member_pb(m: q.MemberRow, clear: dict[str, str | None]) -> logistics_pb2.TeamMember:
    """`clear`: the sealed names and roles opened (Keyring.reveal_all); a destroyed key opens to None."""
    r = m.row
    forgotten = r["forgotten_on"] is not None or clear.get(r["name"], "") is None
    return logistics_pb2.TeamMember(
        member_id=r["member_id"],
        name=FORGOTTEN if forgotten else clear.get(r["name"]) or FORGOTTEN,
        gender=r["gender"],
        role=FORGOTTEN if forgotten else clear.get(r["role"]) or FORGOTTEN,
        status=m.status,
        stints=[
            logistics_pb2.Stint(joined_on=date_pb(s["joined_on"]), left_on=date_pb(s["left_on"])) for s in m.stints
        ],
        forgotten=forgotten,
        forgotten_on=date_pb(r["forgotten_on"]),
    )


async def members_pb(keys: Keyring, members: list[q.MemberRow]) -> list[logistics_pb2.TeamMember]:
    clear = await keys.reveal_all(v for m in members for v in (m.row["name"], m.row["role"]))
    return [member_pb(m, clear) for m in members]


class LogisticsServicer(logistics_pb2_grpc.LogisticsServicer):
    def __init__(self, store: EventStore, queries: q.LogisticsQueries, experts: ExpertDirectory, keys: Keyring) -> None:
        self.store = store
        self.queries = queries
        self.experts = experts
        self.keys = keys

    # --- commands ---

    async def JoinTeam(
        self, request: logistics_pb2.JoinTeamCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        return ack(await handlers.join_team(self.store, self.keys, JoinTeam.model_validate(fields(request))))

    async def LeaveTeam(
        self, request: logistics_pb2.LeaveTeamCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        return ack(await handlers.leave_team(self.store, LeaveTeam.model_validate(fields(request))))

    async def ForgetTeamMember(
        self, request: logistics_pb2.ForgetTeamMemberCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        cmd = ForgetTeamMember.model_validate(fields(request))
        return ack(await handlers.forget_team_member(self.store, self.keys, cmd))

    async def BookFlight(
        self, request: logistics_pb2.BookFlightCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        cmd = BookFlight.model_validate(fields(request))
        try:
            return ack(await handlers.book_flight(self.store, self.experts, cmd))
        except ExpertsUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
            raise  # pragma: no cover - abort raises

    async def ChangeFlight(
        self, request: logistics_pb2.ChangeFlightCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        return ack(await handlers.change_flight(self.store, ChangeFlight.model_validate(fields(request))))

    async def CancelFlight(
        self, request: logistics_pb2.CancelFlightCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        return ack(await handlers.cancel_flight(self.store, CancelFlight.model_validate(fields(request))))

    # --- queries ---

    async def GetBooking(
        self, request: logistics_pb2.GetBookingQuery, context: grpc.aio.ServicerContext
    ) -> logistics_pb2.Booking:
        query = q.GetBooking.model_validate(fields(request))
        b = await self.queries.get_booking(query.booking_id)
        if b is None:
            raise NotFound(f"booking {query.booking_id} does not exist")
        return booking_pb(b)

    async def ListBookings(
        self, request: logistics_pb2.ListBookingsQuery, context: grpc.aio.ServicerContext
    ) -> logistics_pb2.BookingPage:
        rows, token = await self.queries.list_bookings(q.ListBookings.model_validate(fields(request)))
        return logistics_pb2.BookingPage(bookings=[booking_pb(b) for b in rows], next_page_token=token)

    async def GetTeamMember(
        self, request: logistics_pb2.GetTeamMemberQuery, context: grpc.aio.ServicerContext
    ) -> logistics_pb2.TeamMember:
        query = q.GetTeamMember.model_validate(fields(request))
        m = await self.queries.get_team_member(query.member_id)
        if m is None:
            raise NotFound(f"team member {query.member_id} does not exist")
        return (await members_pb(self.keys, [m]))[0]

    async def ListTeam(
        self, request: logistics_pb2.ListTeamQuery, context: grpc.aio.ServicerContext
    ) -> logistics_pb2.TeamPage:
        rows, token = await self.queries.list_team(q.ListTeam.model_validate(fields(request)))
        return logistics_pb2.TeamPage(members=await members_pb(self.keys, rows), next_page_token=token)

    async def ListItineraries(
        self, request: logistics_pb2.ListItinerariesQuery, context: grpc.aio.ServicerContext
    ) -> logistics_pb2.ItineraryPage:
        rows, token = await self.queries.list_itineraries(q.ListItineraries.model_validate(fields(request)))
        return logistics_pb2.ItineraryPage(
            legs=[
                logistics_pb2.ItineraryLeg(
                    booking_id=r["booking_id"],
                    leg=r["leg"],
                    traveller_id=r["traveller_id"],
                    traveller_kind=r["traveller_kind"],
                    action_code=r["action_code"] or "",
                    activity_id=r["activity_id"] or "",
                    origin=r["origin"],
                    destination=r["destination"],
                    departs_on=date_pb(r["departs_on"]),
                    statute_miles=miles(r["statute_miles"]),
                    cabin_class=r["cabin_class"],
                    cancelled=r["cancelled"],
                )
                for r in rows
            ],
            next_page_token=token,
        )

    async def ListTravellerMiles(
        self, request: logistics_pb2.ListTravellerMilesQuery, context: grpc.aio.ServicerContext
    ) -> logistics_pb2.TravellerMilesList:
        rows = await self.queries.list_traveller_miles(q.ListTravellerMiles.model_validate(fields(request)))
        return logistics_pb2.TravellerMilesList(
            rows=[
                logistics_pb2.TravellerMiles(
                    traveller_id=r["traveller_id"],
                    traveller_kind=r["traveller_kind"],
                    year=r["year"],
                    flights=r["flights"],
                    statute_miles=miles(r["statute_miles"]),
                )
                for r in rows
            ]
        )

    async def GetAirMilesPerTeamMember(
        self, request: logistics_pb2.GetAirMilesPerTeamMemberQuery, context: grpc.aio.ServicerContext
    ) -> logistics_pb2.AirMilesPerTeamMember:
        query = q.AirMilesQuery.model_validate(fields(request))
        a = await self.queries.air_miles_per_team_member(query.year)
        return logistics_pb2.AirMilesPerTeamMember(
            year=a.year,
            team_statute_miles=miles(a.team_statute_miles),
            team_members=a.team_members,
            miles_per_member=format(a.per_member, "f"),
        )


def registrar(store: EventStore, queries: q.LogisticsQueries, experts: ExpertDirectory, keys: Keyring) -> Registrar:
    def add(server: grpc.aio.Server) -> None:
        logistics_pb2_grpc.add_LogisticsServicer_to_server(LogisticsServicer(store, queries, experts, keys), server)

    return add
