"""The services the stats service calls, as its own principal (its `stats` token), to build the annual report
page: the actions of the year (actions), the team's air miles (logistics), the footprint by month and region and
the offset ledger (carbon); CALLS lists them, the stats principal's allow-list. Each call has the settings'
deadline; a service that cannot answer fails the page (UNAVAILABLE), never a page with a section silently
missing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from mieux.actions.v1 import actions_pb2, actions_pb2_grpc
from mieux.carbon.v1 import carbon_pb2, carbon_pb2_grpc
from mieux.logistics.v1 import logistics_pb2, logistics_pb2_grpc

from services.kernel.grpckit import call_metadata, channel
from services.kernel.settings import Settings, service_address

PAGE = 500  # ListActions' largest page
CALLS = (
    "/mieux.actions.v1.Actions/ListActions",
    "/mieux.logistics.v1.Logistics/GetAirMilesPerTeamMember",
    "/mieux.carbon.v1.Carbon/GetFootprint",
    "/mieux.carbon.v1.Carbon/GetFootprintByMonth",
    "/mieux.carbon.v1.Carbon/GetOffsetLedger",
)


@dataclass
class Collaborators:
    actions: actions_pb2_grpc.ActionsStub
    logistics: logistics_pb2_grpc.LogisticsStub
    carbon: carbon_pb2_grpc.CarbonStub
    token: str
    deadline: float

    def _kw(self) -> dict:
        return {"metadata": call_metadata(self.token), "timeout": self.deadline}

    async def actions_active_in(self, year: int) -> list[actions_pb2.Action]:
        """Every action open at some time in the year, in code order (all pages)."""
        out: list[actions_pb2.Action] = []
        token = ""
        while True:
            page = await self.actions.ListActions(
                actions_pb2.ListActionsQuery(active_in=year, page_size=PAGE, page_token=token), **self._kw()
            )
            out.extend(page.actions)
            token = page.next_page_token
            if not token:
                return out

    async def air_miles(self, year: int) -> logistics_pb2.AirMilesPerTeamMember:
        return await self.logistics.GetAirMilesPerTeamMember(
            logistics_pb2.GetAirMilesPerTeamMemberQuery(year=year), **self._kw()
        )

    async def footprint(self, year: int) -> carbon_pb2.Footprint:
        return await self.carbon.GetFootprint(carbon_pb2.GetFootprintQuery(year=year), **self._kw())

    async def footprint_by_month(self, year: int) -> carbon_pb2.FootprintByMonth:
        return await self.carbon.GetFootprintByMonth(carbon_pb2.GetFootprintQuery(year=year), **self._kw())

    async def ledger(self, year: int) -> carbon_pb2.OffsetLedger:
        return await self.carbon.GetOffsetLedger(carbon_pb2.GetOffsetLedgerQuery(year=year), **self._kw())


@asynccontextmanager
async def collaborators(settings: Settings) -> AsyncIterator[Collaborators]:
    """Channels to the actions, logistics and carbon services (TLS when the settings say so), closed after."""
    async with (
        channel(service_address("actions")) as a,
        channel(service_address("logistics")) as lg,
        channel(service_address("carbon")) as c,
    ):
        yield Collaborators(
            actions_pb2_grpc.ActionsStub(a),
            logistics_pb2_grpc.LogisticsStub(lg),
            carbon_pb2_grpc.CarbonStub(c),
            settings.client_token("stats"),  # its own principal
            settings.grpc_deadline_s,
        )
