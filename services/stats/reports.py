"""The annual report pages of the stats service: built from its own RPCs' answers and the actions, logistics and
carbon services' (collaborators.py), served by GetReportPage and over HTTP (web.py)."""

from __future__ import annotations

from collections.abc import Callable

from services.kernel.settings import Settings
from services.stats.api import OwnReads
from services.stats.collaborators import collaborators
from services.stats.queries import StatsQueries
from services.stats.report import page


class Reports:
    def __init__(self, settings: Settings, queries: Callable[[], StatsQueries]) -> None:
        self.settings = settings
        self.reads = OwnReads(queries)

    async def page(self, year: int) -> str:
        async with collaborators(self.settings) as others:
            return await page.build(year, self.reads, others)
