"""gRPC servicer of the carbon service: proto <-> pydantic at the edge (commands validated by the models
of commands.py, reads answered by queries.py); errors become status codes in the kit."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import grpc
from mieux.carbon.v1 import carbon_pb2, carbon_pb2_grpc
from mieux.common.v1 import common_pb2

from services.carbon import handlers
from services.carbon.commands import MAX_YEAR, MIN_YEAR, PurchaseOffsets, RetireOffsets
from services.carbon.queries import CarbonQueries
from services.kernel.errors import FieldViolation, InvalidArgument, NotFound
from services.kernel.grpckit import COMMANDERS, FIGURES, READERS, Registrar
from services.kernel.protos import ack, date_pb, fields
from services.kernel.settings import Role
from services.kernel.store import EventStore

SERVICE_NAME = "mieux.carbon.v1.Carbon"
FINANCE: frozenset[Role] = frozenset({"finance", "admin"})
# the finance views the stats service reads, as its own principal, to build the annual report page
FINANCE_AND_REPORTS: frozenset[Role] = FINANCE | {"service"}
ACCESS = {
    f"/{SERVICE_NAME}/PurchaseOffsets": COMMANDERS,
    f"/{SERVICE_NAME}/RetireOffsets": COMMANDERS,
    f"/{SERVICE_NAME}/GetFlightEmissions": READERS,
    f"/{SERVICE_NAME}/ListFlightEmissions": READERS,
    # the offset lots are the ledger (finance reads it); a flight's emissions name its traveller (finance does not)
    f"/{SERVICE_NAME}/GetOffsetLot": FIGURES,
    f"/{SERVICE_NAME}/ListOffsetLots": FIGURES,
    f"/{SERVICE_NAME}/GetFootprint": FINANCE_AND_REPORTS,
    f"/{SERVICE_NAME}/GetOffsetLedger": FINANCE_AND_REPORTS,
    f"/{SERVICE_NAME}/GetFootprintByMonth": FINANCE_AND_REPORTS,
}
TRAVELLER_KINDS = ("expert", "team_member")
EMISSION_STATUSES = ("recorded", "reversed", "cancelled")
LOT_STATUSES = ("open", "retired")


def dec(v: Decimal | None) -> str:
    """A decimal as a plain string (never exponent notation)."""
    return "" if v is None else format(v, "f")


def check_choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value and value not in allowed:
        raise InvalidArgument(FieldViolation(field, f"must be one of {', '.join(allowed)} (or empty for any)"))


def flight_emissions(r: asyncpg.Record) -> carbon_pb2.FlightEmissions:
    return carbon_pb2.FlightEmissions(
        booking_id=r["booking_id"],
        status=r["status"],
        traveller_id=r["traveller_id"],
        traveller_kind=r["traveller_kind"],
        action_code=r["action_code"] or "",
        activity_id=r["activity_id"] or "",
        cabin_class=r["cabin_class"],
        departure_year=r["departure_year"],
        distance_km=dec(r["distance_km"]),
        distance_miles=dec(r["distance_miles"]),
        kg_co2e=dec(r["kg_co2e"]),
        method=r["method"],
        factor_set=r["factor_set"],
        factor_year=r["factor_year"],
        radiative_forcing=r["radiative_forcing"],
        distance_uplift_applied=r["distance_uplift_applied"],
        segments=[
            carbon_pb2.SegmentEmissions(
                origin=s["origin"],
                destination=s["destination"],
                departs_on=date_pb(s["departs_on"]),
                distance_km=s["distance_km"],
                distance_miles=s["distance_miles"],
                haul=s["haul"],
                factor_cabin_class=s["factor_cabin_class"],
                factor_id=s["factor_id"],
                kg_co2e_per_pkm=s["kg_co2e_per_pkm"],
                kg_co2e=s["kg_co2e"],
                fallback=s.get("fallback") or "",
            )
            for s in r["segments"]
        ],
        calculated_on=date_pb(r["calculated_on"]),
        calculations=r["calculations"],
        reversals=r["reversals"],
        version=r["version"],
    )


def offset_lot(r: asyncpg.Record, retirements: list[asyncpg.Record]) -> carbon_pb2.OffsetLot:
    return carbon_pb2.OffsetLot(
        lot_id=r["lot_id"],
        registry=r["registry"],
        project=r["project"],
        vintage_year=r["vintage_year"],
        quantity=r["quantity"],
        retired=r["retired"],
        remaining=r["remaining"],
        unit_price=common_pb2.Money(amount=dec(r["unit_price"]), currency=r["currency"]),
        total_cost=common_pb2.Money(amount=dec(r["total_cost"]), currency=r["currency"]),
        purchased_on=date_pb(r["purchased_on"]),
        retirements=[
            carbon_pb2.Retirement(
                quantity=x["quantity"], against_year=x["against_year"], retired_on=date_pb(x["retired_on"])
            )
            for x in retirements
        ],
        version=r["version"],
    )


def check_year(year: int) -> int:
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise InvalidArgument(FieldViolation("year", f"must be between {MIN_YEAR} and {MAX_YEAR}"))
    return year


class FinanceServicer:
    """GetFootprint and GetOffsetLedger: figures computed from the read models, decimals as strings."""

    queries: CarbonQueries

    async def GetFootprint(
        self, request: carbon_pb2.GetFootprintQuery, context: grpc.aio.ServicerContext
    ) -> carbon_pb2.Footprint:
        year = check_year(request.year)
        rows = await self.queries.footprint_with_regions(year)
        by_kind: dict[str, Decimal] = {}
        by_region: dict[str, Decimal] = {}
        by_action: dict[str, Decimal] = {}
        for r in rows:
            by_kind[r["traveller_kind"]] = by_kind.get(r["traveller_kind"], Decimal(0)) + r["kg_co2e"]
            by_region[r["region"]] = by_region.get(r["region"], Decimal(0)) + r["kg_co2e"]
            by_action[r["action_code"]] = by_action.get(r["action_code"], Decimal(0)) + r["kg_co2e"]
        return carbon_pb2.Footprint(
            year=year,
            kg_co2e=dec(sum((r["kg_co2e"] for r in rows), Decimal(0))),
            rows=[
                carbon_pb2.FootprintRow(
                    traveller_kind=r["traveller_kind"],
                    action_code=r["action_code"],
                    region=r["region"],
                    flights=r["flights"],
                    distance_km=dec(r["distance_km"]),
                    distance_miles=dec(r["distance_miles"]),
                    kg_co2e=dec(r["kg_co2e"]),
                )
                for r in rows
            ],
            kg_co2e_by_traveller_kind={k: dec(v) for k, v in by_kind.items()},
            kg_co2e_by_region={k: dec(v) for k, v in by_region.items()},
            kg_co2e_by_action={k: dec(v) for k, v in by_action.items()},
        )

    async def GetFootprintByMonth(
        self, request: carbon_pb2.GetFootprintQuery, context: grpc.aio.ServicerContext
    ) -> carbon_pb2.FootprintByMonth:
        year = check_year(request.year)
        months = await self.queries.footprint_by_month(year)
        zero = (0, Decimal(0))
        return carbon_pb2.FootprintByMonth(
            year=year,
            kg_co2e=dec(sum((kg for _, kg in months.values()), Decimal(0))),
            months=[
                carbon_pb2.MonthFootprint(month=m, legs=months.get(m, zero)[0], kg_co2e=dec(months.get(m, zero)[1]))
                for m in range(1, 13)
            ],
        )

    async def GetOffsetLedger(
        self, request: carbon_pb2.GetOffsetLedgerQuery, context: grpc.aio.ServicerContext
    ) -> carbon_pb2.OffsetLedger:
        year = check_year(request.year)
        ledger = await self.queries.ledger(year)
        footprint = sum((r["kg_co2e"] for r in await self.queries.footprint_with_regions(year)), Decimal(0))
        coverage = ledger.coverage(footprint)
        page = await self.queries.list_offset_lots(year=year, registry="", status="", size=500, token="")
        retirements = await self.queries.retirements([r["lot_id"] for r in page.rows])
        return carbon_pb2.OffsetLedger(
            year=year,
            vers_purchased=ledger.purchased,
            vers_retired=ledger.retired_against,
            balance=ledger.balance,
            cost=[common_pb2.Money(amount=dec(v), currency=c) for c, v in ledger.cost.items()],
            footprint_kg_co2e=dec(footprint),
            coverage="" if coverage is None else dec(coverage),
            lots=[offset_lot(r, retirements[r["lot_id"]]) for r in page.rows],
        )


class CarbonServicer(FinanceServicer, carbon_pb2_grpc.CarbonServicer):
    def __init__(self, store: EventStore, queries: CarbonQueries) -> None:
        self.store = store
        self.queries = queries

    async def PurchaseOffsets(
        self, request: carbon_pb2.PurchaseOffsetsCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        cmd = PurchaseOffsets.model_validate(fields(request, with_defaults=True))
        return ack(await handlers.purchase_offsets(self.store, cmd))

    async def RetireOffsets(
        self, request: carbon_pb2.RetireOffsetsCommand, context: grpc.aio.ServicerContext
    ) -> common_pb2.CommandAck:
        cmd = RetireOffsets.model_validate(fields(request, with_defaults=True))
        return ack(await handlers.retire_offsets(self.store, cmd))

    async def GetFlightEmissions(
        self, request: carbon_pb2.GetFlightEmissionsQuery, context: grpc.aio.ServicerContext
    ) -> carbon_pb2.FlightEmissions:
        if not request.booking_id:
            raise InvalidArgument(FieldViolation("booking_id", "is required"))
        row = await self.queries.flight_emissions(request.booking_id)
        if row is None:
            raise NotFound(f"no emissions are recorded for booking {request.booking_id}")
        return flight_emissions(row)

    async def ListFlightEmissions(
        self, request: carbon_pb2.ListFlightEmissionsQuery, context: grpc.aio.ServicerContext
    ) -> carbon_pb2.FlightEmissionsPage:
        check_choice("traveller_kind", request.traveller_kind, TRAVELLER_KINDS)
        check_choice("status", request.status, EMISSION_STATUSES)
        page = await self.queries.list_flight_emissions(
            year=request.year,
            traveller_kind=request.traveller_kind,
            action_code=request.action_code,
            status=request.status,
            size=request.page_size,
            token=request.page_token,
        )
        return carbon_pb2.FlightEmissionsPage(
            flight_emissions=[flight_emissions(r) for r in page.rows], next_page_token=page.next_page_token
        )

    async def GetOffsetLot(
        self, request: carbon_pb2.GetOffsetLotQuery, context: grpc.aio.ServicerContext
    ) -> carbon_pb2.OffsetLot:
        if not request.lot_id:
            raise InvalidArgument(FieldViolation("lot_id", "is required"))
        found = await self.queries.offset_lot(request.lot_id)
        if found is None:
            raise NotFound(f"lot {request.lot_id} does not exist")
        return offset_lot(*found)

    async def ListOffsetLots(
        self, request: carbon_pb2.ListOffsetLotsQuery, context: grpc.aio.ServicerContext
    ) -> carbon_pb2.OffsetLotsPage:
        check_choice("status", request.status, LOT_STATUSES)
        page = await self.queries.list_offset_lots(
            year=request.year,
            registry=request.registry,
            status=request.status,
            size=request.page_size,
            token=request.page_token,
        )
        retirements = await self.queries.retirements([r["lot_id"] for r in page.rows])
        return carbon_pb2.OffsetLotsPage(
            lots=[offset_lot(r, retirements[r["lot_id"]]) for r in page.rows], next_page_token=page.next_page_token
        )


def registrar(store: EventStore, queries: CarbonQueries) -> Registrar:
    def add(server: grpc.aio.Server) -> None:
        carbon_pb2_grpc.add_CarbonServicer_to_server(CarbonServicer(store, queries), server)

    return add
