"""gRPC servicer of the logistics service: proto <-> pydantic; errors become status codes in the kit."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import grpc
from mieux.common.v1 import common_pb2
from mieux.logistics.v1 import logistics_pb2, logistics_pb2_grpc
from pydantic import BaseModel, ConfigDict, Field

from services.kernel.errors import NotFound
from services.kernel.grpckit import COMMANDERS, READERS
from services.kernel.protos import ack, fields
from services.kernel.store import EventStore
from services.logistics import handlers
from services.logistics import projections as views
from services.logistics.domain import BookFlight, CancelFlight, ChangeFlight, JoinTeam, LeaveTeam
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
}


def pdate(d: date | None) -> common_pb2.Date | None:
    return common_pb2.Date(iso=d.isoformat()) if d is not None else None


def miles(d: Decimal | None) -> str:
    return format(Decimal(d or 0).quantize(Decimal("0.001")), "f")


class _ById(BaseModel):
    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, extra="forbid")


class GetBooking(_ById):
    booking_id: str = Field(min_length=1, max_length=100)


class GetTeamMember(_ById):
    member_id: str = Field(min_length=1, max_length=100)


def booking_pb(b: views.BookingRow) -> logistics_pb2.Booking:
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
                departs_on=pdate(leg["departs_on"]),
                statute_miles=miles(leg["statute_miles"]),
            )
            for leg in b.legs
        ],
        cabin_class=r["cabin_class"],
        fare=common_pb2.Money(amount=r["fare_amount"], currency=r["fare_currency"]),
        booked_on=pdate(r["booked_on"]),
        status=r["status"],
        changes=r["changes"],
        changed_on=pdate(r["changed_on"]),
        cancelled_on=pdate(r["cancelled_on"]),
        cancel_reason=r["cancel_reason"] or "",
        year=r["year"],
        statute_miles=miles(r["statute_miles"]),
    )


def member_pb(m: views.MemberRow) -> logistics_pb2.TeamMember:
    r = m.row
    return logistics_pb2.TeamMember(
        member_id=r["member_id"],
        name=r["name"],
        gender=r["gender"],
        role=r["role"],
        status=m.status,
        stints=[logistics_pb2.Stint(joined_on=pdate(s["joined_on"]), left_on=pdate(s["left_on"])) for s in m.stints],
    )


class LogisticsServicer(logistics_pb2_grpc.LogisticsServicer):
    def __init__(self, store: EventStore, experts: ExpertDirectory) -> None:
        self.store = store
        self.experts = experts

    # --- commands ---

    async def JoinTeam(self, request, context: grpc.aio.ServicerContext) -> common_pb2.CommandAck:
        return ack(await handlers.join_team(self.store, JoinTeam.model_validate(fields(request))))

    async def LeaveTeam(self, request, context: grpc.aio.ServicerContext) -> common_pb2.CommandAck:
        return ack(await handlers.leave_team(self.store, LeaveTeam.model_validate(fields(request))))

    async def BookFlight(self, request, context: grpc.aio.ServicerContext) -> common_pb2.CommandAck:
        cmd = BookFlight.model_validate(fields(request))
        try:
            return ack(await handlers.book_flight(self.store, self.experts, cmd))
        except ExpertsUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
            raise  # pragma: no cover - abort raises

    async def ChangeFlight(self, request, context: grpc.aio.ServicerContext) -> common_pb2.CommandAck:
        return ack(await handlers.change_flight(self.store, ChangeFlight.model_validate(fields(request))))

    async def CancelFlight(self, request, context: grpc.aio.ServicerContext) -> common_pb2.CommandAck:
        return ack(await handlers.cancel_flight(self.store, CancelFlight.model_validate(fields(request))))

    # --- queries ---

    async def GetBooking(self, request, context: grpc.aio.ServicerContext) -> logistics_pb2.Booking:
        q = GetBooking.model_validate(fields(request))
        b = await views.get_booking(self.store.pool, q.booking_id)
        if b is None:
            raise NotFound(f"booking {q.booking_id} does not exist")
        return booking_pb(b)

    async def ListBookings(self, request, context: grpc.aio.ServicerContext) -> logistics_pb2.BookingPage:
        rows, token = await views.list_bookings(self.store.pool, views.ListBookings.model_validate(fields(request)))
        return logistics_pb2.BookingPage(bookings=[booking_pb(b) for b in rows], next_page_token=token)

    async def GetTeamMember(self, request, context: grpc.aio.ServicerContext) -> logistics_pb2.TeamMember:
        q = GetTeamMember.model_validate(fields(request))
        m = await views.get_team_member(self.store.pool, q.member_id)
        if m is None:
            raise NotFound(f"team member {q.member_id} does not exist")
        return member_pb(m)

    async def ListTeam(self, request, context: grpc.aio.ServicerContext) -> logistics_pb2.TeamPage:
        rows, token = await views.list_team(self.store.pool, views.ListTeam.model_validate(fields(request)))
        return logistics_pb2.TeamPage(members=[member_pb(m) for m in rows], next_page_token=token)

    async def ListItineraries(self, request, context: grpc.aio.ServicerContext) -> logistics_pb2.ItineraryPage:
        q = views.ListItineraries.model_validate(fields(request))
        rows, token = await views.list_itineraries(self.store.pool, q)
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
                    departs_on=pdate(r["departs_on"]),
                    statute_miles=miles(r["statute_miles"]),
                    cabin_class=r["cabin_class"],
                    cancelled=r["cancelled"],
                )
                for r in rows
            ],
            next_page_token=token,
        )

    async def ListTravellerMiles(self, request, context: grpc.aio.ServicerContext) -> logistics_pb2.TravellerMilesList:
        q = views.ListTravellerMiles.model_validate(fields(request))
        rows = await views.list_traveller_miles(self.store.pool, q)
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
        self, request, context: grpc.aio.ServicerContext
    ) -> logistics_pb2.AirMilesPerTeamMember:
        q = views.AirMilesQuery.model_validate(fields(request))
        a = await views.air_miles_per_team_member(self.store.pool, q.year)
        return logistics_pb2.AirMilesPerTeamMember(
            year=a.year,
            team_statute_miles=miles(a.team_statute_miles),
            team_members=a.team_members,
            miles_per_member=format(a.per_member, "f"),
        )


def registrar(store: EventStore, experts: ExpertDirectory):  # type: ignore[no-untyped-def]
    def add(server: grpc.aio.Server) -> None:
        logistics_pb2_grpc.add_LogisticsServicer_to_server(LogisticsServicer(store, experts), server)

    return add
