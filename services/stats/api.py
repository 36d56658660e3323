"""gRPC servicer of the stats service: queries only, figures every reader (finance too) may see."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal

import grpc
from mieux.stats.v1 import stats_pb2, stats_pb2_grpc

from services.kernel.errors import RuleBroken
from services.kernel.grpckit import FIGURES, Registrar, principal_var
from services.kernel.protos import fields
from services.stats import queries as q
from services.stats import results as rs
from services.stats import web
from services.stats.sessions import READERS as PEOPLE
from services.stats.sessions import Sessions

SERVICE_NAME = "mieux.stats.v1.Stats"
QUERIES = ("GetYearAtAGlance", "GetRegionReport", "GetRequestsPerYear", "ListYears", "GetResults", "GetHistory")
PAGES = ("GetReportPage", "OpenReportSession")  # for people: finance, ops, admin
ACCESS = {
    **{f"/{SERVICE_NAME}/{name}": FIGURES for name in QUERIES},
    **{f"/{SERVICE_NAME}/{name}": PEOPLE for name in PAGES},
}


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
        satisfaction=[satisfaction_pb(s) for s in y.satisfaction],
    )


def share_pb(s: q.Share) -> stats_pb2.Share:
    return stats_pb2.Share(key=s.key, count=s.count, share_pct=dec(s.share_pct, "0.1"))


def satisfaction_pb(s: q.Satisfaction) -> stats_pb2.Satisfaction:
    return stats_pb2.Satisfaction(
        question=s.question, agreeing=s.agreeing, answers=s.answers, share_pct=dec(s.share_pct, "0.1")
    )


def region_shares_pb(by_region: dict[str, list[q.Share]]) -> list[stats_pb2.RegionShares]:
    return [
        stats_pb2.RegionShares(region=r, name=q.region_name(r), shares=shares_pb(items))
        for r, items in by_region.items()
    ]


def results_pb(r: rs.Results) -> stats_pb2.Results:
    o = r.origin
    return stats_pb2.Results(
        year=r.year,
        experts_agreeing=satisfaction_pb(r.experts_agreeing),
        partner_ratings=shares_pb(r.partner_ratings),
        partners_good_or_excellent=share_pb(r.partners_good_or_excellent),
        feedback_activities=r.feedback_activities,
        respondents=r.respondents,
        skills_enhanced=share_pb(q.Share("skills_enhanced", r.skills_enhanced, r.skills_enhanced_pct)),
        makes_a_difference=share_pb(q.Share("makes_a_difference", r.makes_a_difference, r.makes_a_difference_pct)),
        deliverables=[
            stats_pb2.Deliverable(
                deliverable_id=d["deliverable_id"],
                action_code=d["action_code"],
                kind=d["kind"],
                title=d["title"],
                delivered_on=d["delivered_on"].isoformat(),
                partner=d["partner"],
                region=d["region"],
            )
            for d in r.deliverables
        ],
        deliverables_by_kind_and_region=[
            stats_pb2.DeliverableCount(kind=kind, region=region, count=n)
            for (kind, region), n in sorted(r.deliverables_by("kind", "region").items())
        ],
        deliverables_by_region=[
            stats_pb2.RegionCount(region=region, name=q.region_name(region), area=q.area_of(region), count=n)
            for region, n in deliverables_by_region(r).items()
        ],
        interventions=r.interventions,
        policy_development=share_pb(q.Share("policy_development", r.policy_development, r.policy_development_pct)),
        pillars=shares_pb(r.pillars),
        themes_by_region=region_shares_pb(r.themes_by_region),
        activity_types_by_region=region_shares_pb(r.activity_types_by_region),
        other_backgrounds_from_europe=shares_pb(o.europe),
        other_backgrounds_outside_europe=shares_pb(o.outside),
        from_europe=share_pb(o.share(rs.m49.EUROPE)),
        outside_europe=share_pb(o.share(rs.m49.OUTSIDE)),
        origin_unknown=o.unknown,
        nationalities=r.nationalities,
    )


def deliverables_by_region(r: rs.Results) -> dict[str, int]:
    """Every region of reference.yaml (zero included), then any other region a deliverable names."""
    counts = {region: n for (region,), n in r.deliverables_by("region").items()}
    return {region: counts.get(region, 0) for region in q.regions_in_order(counts)}


def history_pb(h: rs.History) -> stats_pb2.History:
    def text(d: Decimal | None, exact: bool = False) -> str:
        """A decimal string; a figure's value without trailing zeros (a change keeps its one decimal)."""
        return "" if d is None else format(d if exact else d.normalize(), "f")

    return stats_pb2.History(
        year=h.year,
        first_year=h.first_year or 0,
        changes=[
            stats_pb2.Change(
                figure=c.figure,
                value=text(c.value),
                previous=text(c.previous),
                change_pct=text(c.change_pct, exact=True),
                change_points=text(c.change_points, exact=True),
            )
            for c in h.changes
        ],
        experts_deployed=h.experts_deployed,
        partners_served=h.partners_served,
        strategies_supported=h.strategies_supported,
        activities_per_year=[stats_pb2.YearCount(year=y, count=n) for y, n in h.activities_per_year],
        requests_per_year=[stats_pb2.YearCount(year=y, count=n) for y, n in h.requests_per_year],
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


class OwnReads:
    """This service's figures as its RPCs answer them (the report page's first source)."""

    def __init__(self, queries: Callable[[], q.StatsQueries]) -> None:
        self.queries = queries

    async def year_at_a_glance(self, year: int) -> stats_pb2.YearAtAGlance:
        return year_pb(await self.queries().year_at_a_glance(year))

    async def region_report(self, year: int) -> stats_pb2.RegionReport:
        regions, areas = await self.queries().region_report(year)
        return stats_pb2.RegionReport(
            year=year, regions=[region_row_pb(r) for r in regions], areas=[region_row_pb(a) for a in areas]
        )

    async def results(self, year: int) -> stats_pb2.Results:
        return results_pb(await rs.ResultsQueries(self.queries()).results(year))

    async def history(self, year: int) -> stats_pb2.History:
        return history_pb(await rs.ResultsQueries(self.queries()).history(year))


class StatsServicer(stats_pb2_grpc.StatsServicer):
    def __init__(
        self,
        queries: Callable[[], q.StatsQueries],
        page: Callable[[int], Awaitable[str]] | None = None,
        sessions: Sessions | None = None,
    ) -> None:
        self.queries = queries
        self.reads = OwnReads(queries)
        self.page = page
        self.sessions = sessions

    async def GetYearAtAGlance(
        self, request: stats_pb2.GetYearAtAGlanceQuery, context: grpc.aio.ServicerContext
    ) -> stats_pb2.YearAtAGlance:
        query = q.YearQuery.model_validate(fields(request, with_defaults=True))
        return year_pb(await self.queries().year_at_a_glance(query.year))

    async def GetRegionReport(
        self, request: stats_pb2.GetRegionReportQuery, context: grpc.aio.ServicerContext
    ) -> stats_pb2.RegionReport:
        query = q.YearQuery.model_validate(fields(request, with_defaults=True))
        return await self.reads.region_report(query.year)

    async def GetRequestsPerYear(
        self, request: stats_pb2.GetRequestsPerYearQuery, context: grpc.aio.ServicerContext
    ) -> stats_pb2.RequestsPerYear:
        rows = await self.queries().requests_per_year()
        return stats_pb2.RequestsPerYear(years=[stats_pb2.YearCount(year=y, count=n) for y, n in rows])

    async def GetResults(
        self, request: stats_pb2.GetResultsQuery, context: grpc.aio.ServicerContext
    ) -> stats_pb2.Results:
        query = q.YearQuery.model_validate(fields(request, with_defaults=True))
        return results_pb(await rs.ResultsQueries(self.queries()).results(query.year))

    async def GetHistory(
        self, request: stats_pb2.GetHistoryQuery, context: grpc.aio.ServicerContext
    ) -> stats_pb2.History:
        query = q.YearQuery.model_validate(fields(request, with_defaults=True))
        return history_pb(await rs.ResultsQueries(self.queries()).history(query.year))

    async def GetReportPage(
        self, request: stats_pb2.GetReportPageQuery, context: grpc.aio.ServicerContext
    ) -> stats_pb2.ReportPage:
        query = q.YearQuery.model_validate(fields(request, with_defaults=True))
        if self.page is None:
            raise RuleBroken("this stats server builds no report pages")
        return stats_pb2.ReportPage(year=query.year, html=await self.page(query.year))

    async def OpenReportSession(
        self, request: stats_pb2.OpenReportSessionQuery, context: grpc.aio.ServicerContext
    ) -> stats_pb2.ReportSession:
        query = q.YearQuery.model_validate(fields(request, with_defaults=True))
        principal = principal_var.get()
        if self.sessions is None or not self.sessions.settings.stats_http_port:
            raise RuleBroken("the report pages are not served over HTTP here: MIEUX_STATS_HTTP_PORT is 0")
        assert principal is not None  # the kit authenticated the call
        ticket, expires = self.sessions.ticket(principal.name, query.year)
        return stats_pb2.ReportSession(
            url=f"{web.base_url(self.sessions.settings)}/reports/{query.year}?ticket={ticket}",
            expires_at=datetime.fromtimestamp(expires, UTC).isoformat(),
        )

    async def ListYears(
        self, request: stats_pb2.ListYearsQuery, context: grpc.aio.ServicerContext
    ) -> stats_pb2.YearList:
        return stats_pb2.YearList(years=await self.queries().years())


def registrar(
    queries: Callable[[], q.StatsQueries],
    page: Callable[[int], Awaitable[str]] | None = None,
    sessions: Sessions | None = None,
) -> Registrar:
    def add(server: grpc.aio.Server) -> None:
        stats_pb2_grpc.add_StatsServicer_to_server(StatsServicer(queries, page, sessions), server)

    return add
