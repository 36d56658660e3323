"""A typed client of the logistics service, for the CLI, the demo, tests and other services."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from mieux.common.v1 import common_pb2
from mieux.logistics.v1 import logistics_pb2, logistics_pb2_grpc

from services.kernel.grpckit import call_metadata, channel
from services.kernel.protos import date_pb
from services.kernel.settings import Role, Settings, service_address

SegmentSpec = tuple[str, str, str]  # origin, destination, departs_on (ISO)


def segments_pb(segments: Sequence[SegmentSpec]) -> list[logistics_pb2.Segment]:
    return [logistics_pb2.Segment(origin=o, destination=d, departs_on=date_pb(on)) for o, d, on in segments]


class LogisticsClient:
    def __init__(self, stub: logistics_pb2_grpc.LogisticsStub, token: str, deadline: float) -> None:
        self.stub = stub
        self.token = token
        self.deadline = deadline

    @classmethod
    @asynccontextmanager
    async def connect(cls, settings: Settings, role: Role = "ops") -> AsyncIterator[LogisticsClient]:
        async with channel(service_address("logistics")) as ch:
            yield cls(logistics_pb2_grpc.LogisticsStub(ch), settings.client_token(role), settings.grpc_deadline_s)

    def _kw(self) -> dict[str, Any]:
        return {"metadata": call_metadata(self.token), "timeout": self.deadline}

    async def join_team(
        self, *, command_id: str, member_id: str, name: str, gender: str, role: str, joined_on: str
    ) -> common_pb2.CommandAck:
        return await self.stub.JoinTeam(
            logistics_pb2.JoinTeamCommand(
                command_id=command_id,
                member_id=member_id,
                name=name,
                gender=gender,
                role=role,
                joined_on=date_pb(joined_on),
            ),
            **self._kw(),
        )

    async def leave_team(self, *, command_id: str, member_id: str, left_on: str) -> common_pb2.CommandAck:
        return await self.stub.LeaveTeam(
            logistics_pb2.LeaveTeamCommand(command_id=command_id, member_id=member_id, left_on=date_pb(left_on)),
            **self._kw(),
        )

    async def book_flight(
        self,
        *,
        command_id: str,
        traveller_id: str,
        traveller_kind: str,
        segments: Sequence[SegmentSpec],
        cabin_class: str,
        amount: str,
        currency: str,
        booked_on: str,
        action_code: str = "",
        activity_id: str = "",
    ) -> common_pb2.CommandAck:
        return await self.stub.BookFlight(
            logistics_pb2.BookFlightCommand(
                command_id=command_id,
                traveller_id=traveller_id,
                traveller_kind=traveller_kind,
                action_code=action_code,
                activity_id=activity_id,
                segments=segments_pb(segments),
                cabin_class=cabin_class,
                fare=common_pb2.Money(amount=amount, currency=currency),
                booked_on=date_pb(booked_on),
            ),
            **self._kw(),
        )

    async def change_flight(
        self,
        *,
        command_id: str,
        booking_id: str,
        segments: Sequence[SegmentSpec],
        cabin_class: str,
        amount: str,
        currency: str,
        changed_on: str,
    ) -> common_pb2.CommandAck:
        return await self.stub.ChangeFlight(
            logistics_pb2.ChangeFlightCommand(
                command_id=command_id,
                booking_id=booking_id,
                segments=segments_pb(segments),
                cabin_class=cabin_class,
                fare=common_pb2.Money(amount=amount, currency=currency),
                changed_on=date_pb(changed_on),
            ),
            **self._kw(),
        )

    async def cancel_flight(
        self, *, command_id: str, booking_id: str, reason: str, cancelled_on: str
    ) -> common_pb2.CommandAck:
        return await self.stub.CancelFlight(
            logistics_pb2.CancelFlightCommand(
                command_id=command_id,
                booking_id=booking_id,
                reason=reason,
                cancelled_on=date_pb(cancelled_on),
            ),
            **self._kw(),
        )

    async def forget_team_member(
        self, *, command_id: str, member_id: str, reason: str, forgotten_on: str
    ) -> common_pb2.CommandAck:
        """Admin only (connect with role="admin")."""
        return await self.stub.ForgetTeamMember(
            logistics_pb2.ForgetTeamMemberCommand(
                command_id=command_id, member_id=member_id, reason=reason, forgotten_on=date_pb(forgotten_on)
            ),
            **self._kw(),
        )

    async def get_booking(self, booking_id: str) -> logistics_pb2.Booking:
        return await self.stub.GetBooking(logistics_pb2.GetBookingQuery(booking_id=booking_id), **self._kw())

    async def list_bookings(self, **filters: object) -> logistics_pb2.BookingPage:
        return await self.stub.ListBookings(logistics_pb2.ListBookingsQuery(**filters), **self._kw())

    async def get_team_member(self, member_id: str) -> logistics_pb2.TeamMember:
        return await self.stub.GetTeamMember(logistics_pb2.GetTeamMemberQuery(member_id=member_id), **self._kw())

    async def list_team(self, **filters: object) -> logistics_pb2.TeamPage:
        return await self.stub.ListTeam(logistics_pb2.ListTeamQuery(**filters), **self._kw())

    async def list_itineraries(self, **filters: object) -> logistics_pb2.ItineraryPage:
        return await self.stub.ListItineraries(logistics_pb2.ListItinerariesQuery(**filters), **self._kw())

    async def traveller_miles(self, **filters: object) -> logistics_pb2.TravellerMilesList:
        return await self.stub.ListTravellerMiles(logistics_pb2.ListTravellerMilesQuery(**filters), **self._kw())

    async def air_miles_per_team_member(self, year: int) -> logistics_pb2.AirMilesPerTeamMember:
        return await self.stub.GetAirMilesPerTeamMember(
            logistics_pb2.GetAirMilesPerTeamMemberQuery(year=year), **self._kw()
        )
