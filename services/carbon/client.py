"""A typed client of the carbon service, for the CLI, the demo, tests and other services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mieux.carbon.v1 import carbon_pb2, carbon_pb2_grpc
from mieux.common.v1 import common_pb2

from services.kernel.grpckit import call_metadata, channel
from services.kernel.protos import date_pb
from services.kernel.settings import Role, Settings, service_address


class CarbonClient:
    def __init__(self, stub: carbon_pb2_grpc.CarbonStub, token: str, deadline: float) -> None:
        self.stub = stub
        self.token = token
        self.deadline = deadline

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, settings: Settings, role: Role = "ops", address: str | None = None
    ) -> AsyncIterator[CarbonClient]:
        async with channel(address or service_address("carbon")) as ch:
            yield cls(carbon_pb2_grpc.CarbonStub(ch), settings.client_token(role), settings.grpc_deadline_s)

    def _md(self) -> tuple[tuple[str, str], ...]:
        return call_metadata(self.token)

    async def purchase_offsets(
        self,
        *,
        command_id: str,
        registry: str,
        project: str,
        vintage_year: int,
        quantity: int,
        unit_price: str,
        currency: str,
        purchased_on: str,
    ) -> common_pb2.CommandAck:
        return await self.stub.PurchaseOffsets(
            carbon_pb2.PurchaseOffsetsCommand(
                command_id=command_id,
                registry=registry,
                project=project,
                vintage_year=vintage_year,
                quantity=quantity,
                unit_price=common_pb2.Money(amount=unit_price, currency=currency),
                purchased_on=date_pb(purchased_on),
            ),
            metadata=self._md(),
            timeout=self.deadline,
        )

    async def retire_offsets(
        self, *, command_id: str, lot_id: str, quantity: int, against_year: int, retired_on: str
    ) -> common_pb2.CommandAck:
        return await self.stub.RetireOffsets(
            carbon_pb2.RetireOffsetsCommand(
                command_id=command_id,
                lot_id=lot_id,
                quantity=quantity,
                against_year=against_year,
                retired_on=date_pb(retired_on),
            ),
            metadata=self._md(),
            timeout=self.deadline,
        )

    async def flight_emissions(self, booking_id: str) -> carbon_pb2.FlightEmissions:
        return await self.stub.GetFlightEmissions(
            carbon_pb2.GetFlightEmissionsQuery(booking_id=booking_id), metadata=self._md(), timeout=self.deadline
        )

    async def list_flight_emissions(
        self,
        *,
        year: int = 0,
        traveller_kind: str = "",
        action_code: str = "",
        status: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> carbon_pb2.FlightEmissionsPage:
        return await self.stub.ListFlightEmissions(
            carbon_pb2.ListFlightEmissionsQuery(
                year=year,
                traveller_kind=traveller_kind,
                action_code=action_code,
                status=status,
                page_size=page_size,
                page_token=page_token,
            ),
            metadata=self._md(),
            timeout=self.deadline,
        )

    async def offset_lot(self, lot_id: str) -> carbon_pb2.OffsetLot:
        return await self.stub.GetOffsetLot(
            carbon_pb2.GetOffsetLotQuery(lot_id=lot_id), metadata=self._md(), timeout=self.deadline
        )

    async def list_offset_lots(
        self, *, year: int = 0, registry: str = "", status: str = "", page_size: int = 0, page_token: str = ""
    ) -> carbon_pb2.OffsetLotsPage:
        return await self.stub.ListOffsetLots(
            carbon_pb2.ListOffsetLotsQuery(
                year=year, registry=registry, status=status, page_size=page_size, page_token=page_token
            ),
            metadata=self._md(),
            timeout=self.deadline,
        )

    async def footprint(self, year: int) -> carbon_pb2.Footprint:
        """For finance: kg CO2e of the year's flights by traveller kind, action and region."""
        return await self.stub.GetFootprint(
            carbon_pb2.GetFootprintQuery(year=year), metadata=self._md(), timeout=self.deadline
        )

    async def ledger(self, year: int) -> carbon_pb2.OffsetLedger:
        """For finance: VERs purchased, retired against the year, balance, cost, coverage."""
        return await self.stub.GetOffsetLedger(
            carbon_pb2.GetOffsetLedgerQuery(year=year), metadata=self._md(), timeout=self.deadline
        )

    async def footprint_by_month(self, year: int) -> carbon_pb2.FootprintByMonth:
        """kg CO2e of the legs departing in each month of the year (twelve entries)."""
        return await self.stub.GetFootprintByMonth(
            carbon_pb2.GetFootprintQuery(year=year), metadata=self._md(), timeout=self.deadline
        )
