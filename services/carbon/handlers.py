"""Application layer of the carbon service: one plain function per command."""

from __future__ import annotations

from services.carbon.commands import (
    CalculateFlightEmissions,
    PurchaseOffsets,
    RecalculateFlightEmissions,
    RetireOffsets,
    ReverseFlightEmissions,
)
from services.carbon.domain import FlightEmissions, OffsetLot
from services.kernel.application import execute
from services.kernel.store import AppendResult, EventStore


async def calculate_flight_emissions(
    store: EventStore, cmd: CalculateFlightEmissions, causation_id: str = ""
) -> AppendResult:
    return await execute(
        store,
        FlightEmissions,
        cmd.stream_id,
        lambda a: a.calculate(cmd),
        cmd,
        must_exist=False,
        causation_id=causation_id,
    )


async def recalculate_flight_emissions(
    store: EventStore, cmd: RecalculateFlightEmissions, causation_id: str = ""
) -> AppendResult:
    return await execute(
        store,
        FlightEmissions,
        cmd.stream_id,
        lambda a: a.recalculate(cmd),
        cmd,
        must_exist=False,
        causation_id=causation_id,
    )


async def reverse_flight_emissions(
    store: EventStore, cmd: ReverseFlightEmissions, causation_id: str = ""
) -> AppendResult:
    return await execute(
        store,
        FlightEmissions,
        cmd.stream_id,
        lambda a: a.reverse(cmd),
        cmd,
        must_exist=False,
        causation_id=causation_id,
    )


async def purchase_offsets(store: EventStore, cmd: PurchaseOffsets) -> AppendResult:
    return await execute(
        store,
        OffsetLot,
        cmd.lot_id,
        lambda lot: lot.purchase(cmd),
        cmd,
        must_exist=False,
    )


async def retire_offsets(store: EventStore, cmd: RetireOffsets) -> AppendResult:
    return await execute(
        store,
        OffsetLot,
        cmd.lot_id,
        lambda lot: lot.retire(cmd),
        cmd,
    )
