"""A typed client of the stats service, for the CLI, the demo and tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mieux.stats.v1 import stats_pb2, stats_pb2_grpc

from services.kernel.grpckit import call_metadata, channel
from services.kernel.settings import Role, Settings, service_address


class StatsClient:
    def __init__(self, stub: stats_pb2_grpc.StatsStub, token: str, deadline: float) -> None:
        self.stub = stub
        self.token = token
        self.deadline = deadline

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, settings: Settings, role: Role = "ops", address: str | None = None
    ) -> AsyncIterator[StatsClient]:
        async with channel(address or service_address("stats")) as ch:
            yield cls(stats_pb2_grpc.StatsStub(ch), settings.client_token(role), settings.grpc_deadline_s)

    def _kw(self) -> dict[str, Any]:
        return {"metadata": call_metadata(self.token), "timeout": self.deadline}

    async def year_at_a_glance(self, year: int) -> stats_pb2.YearAtAGlance:
        return await self.stub.GetYearAtAGlance(stats_pb2.GetYearAtAGlanceQuery(year=year), **self._kw())

    async def region_report(self, year: int) -> stats_pb2.RegionReport:
        return await self.stub.GetRegionReport(stats_pb2.GetRegionReportQuery(year=year), **self._kw())

    async def requests_per_year(self) -> list[tuple[int, int]]:
        r = await self.stub.GetRequestsPerYear(stats_pb2.GetRequestsPerYearQuery(), **self._kw())
        return [(y.year, y.count) for y in r.years]

    async def years(self) -> list[int]:
        return list((await self.stub.ListYears(stats_pb2.ListYearsQuery(), **self._kw())).years)

    async def results(self, year: int) -> stats_pb2.Results:
        return await self.stub.GetResults(stats_pb2.GetResultsQuery(year=year), **self._kw())

    async def history(self, year: int) -> stats_pb2.History:
        return await self.stub.GetHistory(stats_pb2.GetHistoryQuery(year=year), **self._kw())

    async def report_page(self, year: int) -> str:
        """The annual report page of the year (HTML); roles finance, ops, admin."""
        # a page is a dozen queries of four services: thrice a query's deadline
        reply = await self.stub.GetReportPage(
            stats_pb2.GetReportPageQuery(year=year), metadata=call_metadata(self.token), timeout=3 * self.deadline
        )
        return reply.html

    async def open_report_session(self, year: int) -> stats_pb2.ReportSession:
        """A one-time link to the page over HTTP, for this client's principal."""
        return await self.stub.OpenReportSession(stats_pb2.OpenReportSessionQuery(year=year), **self._kw())
