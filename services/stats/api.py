"""gRPC servicer of the stats service: queries only, every one open to READERS."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import grpc
from mieux.stats.v1 import stats_pb2, stats_pb2_grpc

from services.kernel.grpckit import READERS, Registrar
from services.kernel.protos import fields
from services.stats import queries as q

SERVICE_NAME = "mieux.stats.v1.Stats"
QUERIES = ("GetYearAtAGlance", "GetRegionReport", "GetRequestsPerYear", "ListYears")
ACCESS = {f"/{SERVICE_NAME}/{name}": READERS for name in QUERIES}


def dec(d: Decimal, places: str = "0.001") -> str:
    return format(Decimal(d).quantize(Decimal(places)), "f")


def shares_pb(items: list[q.Share]) -> list[stats_pb2.Share]:
    return [stats_pb2.Share(key=s.key, count=s.count, share_pct=dec(s.share_pct, "0.1")) for s in items]


def year_pb(y: q.YearAtAGlance) -> stats_pb2.YearAtAGlance:
    growth = y.expert_pool_growth_pct
    return stats_pb2.YearAtAGlance(
        year=y.year,
        new_requests=y.new_requests,
        activities=y.activities,
        activities_by_region=[
            stats_pb2.RegionCount(region=r, name=q.region_name(r), area=q.area_of(r), count=n)
            for r, n in y.activities_by_region.items()
        ],
        activities_by_area=shares_pb(y.activities_by_area),
        experts_deployed=y.experts_deployed,
        experts_by_gender=shares_pb(y.experts_by_gender),
        experts_by_background=shares_pb(y.experts_by_background),
        countries_benefitted=y.countries_benefitted,
        participants=y.participants,
        participants_by_gender=shares_pb(y.participants_by_gender),
        expert_pool=y.expert_pool,
        expert_pool_previous=y.expert_pool_previous,
        expert_pool_growth_pct="" if growth is None else dec(growth, "0.1"),
        air_miles_per_team_member=dec(y.air_miles_per_team_member, "1"),
        team_statute_miles=dec(y.team_statute_miles),
        team_members=y.team_members,
        footprint_kg_co2e=dec(y.footprint_kg_co2e),
        vers_purchased=y.vers_purchased,
        vers_retired=y.vers_retired,
        satisfaction=[
            stats_pb2.Satisfaction(
                question=s.question, agreeing=s.agreeing, answers=s.answers, share_pct=dec(s.share_pct, "0.1")
            )
            for s in y.satisfaction
        ],
    )


def region_row_pb(r: q.RegionRow) -> stats_pb2.RegionRow:
    return stats_pb2.RegionRow(
        region=r.region,
        name=r.name,
        area=r.area,
        activities=r.activities,
        countries_benefitted=len(r.partners),
        partners=sorted(r.partners),
        participants=r.participants,
        participants_male=r.male,
        participants_female=r.female,
        participants_other=r.other,
        experts_deployed=len(r.experts),
    )


class StatsServicer(stats_pb2_grpc.StatsServicer):
    def __init__(self, queries: Callable[[], q.StatsQueries]) -> None:
        self.queries = queries

    async def GetYearAtAGlance(
        self, request: stats_pb2.GetYearAtAGlanceQuery, context: grpc.aio.ServicerContext
    ) -> stats_pb2.YearAtAGlance:
        query = q.YearQuery.model_validate(fields(request, with_defaults=True))
        return year_pb(await self.queries().year_at_a_glance(query.year))

    async def GetRegionReport(
        self, request: stats_pb2.GetRegionReportQuery, context: grpc.aio.ServicerContext
    ) -> stats_pb2.RegionReport:
        query = q.YearQuery.model_validate(fields(request, with_defaults=True))
        regions, areas = await self.queries().region_report(query.year)
        return stats_pb2.RegionReport(
            year=query.year, regions=[region_row_pb(r) for r in regions], areas=[region_row_pb(a) for a in areas]
        )

    async def GetRequestsPerYear(
        self, request: stats_pb2.GetRequestsPerYearQuery, context: grpc.aio.ServicerContext
    ) -> stats_pb2.RequestsPerYear:
        rows = await self.queries().requests_per_year()
        return stats_pb2.RequestsPerYear(years=[stats_pb2.YearCount(year=y, count=n) for y, n in rows])

    async def ListYears(
        self, request: stats_pb2.ListYearsQuery, context: grpc.aio.ServicerContext
    ) -> stats_pb2.YearList:
        return stats_pb2.YearList(years=await self.queries().years())


def registrar(queries: Callable[[], q.StatsQueries]) -> Registrar:
    def add(server: grpc.aio.Server) -> None:
        stats_pb2_grpc.add_StatsServicer_to_server(StatsServicer(queries), server)

    return add
