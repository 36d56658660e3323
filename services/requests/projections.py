"""Read models of the requests service."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import asyncpg

from services.kernel.envelope import Envelope, Event, topic_for
from services.kernel.projection import Projection
from services.requests.events import RequestReceived


class RequestsPerYear(Projection):
    """How many requests were received in each year (by the date the request was received)."""

    name = "requests_per_year"
    topics = (topic_for("requests"),)
    tables = ("requests_views.requests_per_year",)
    setup_sql = """
    CREATE SCHEMA IF NOT EXISTS requests_views;
    CREATE TABLE IF NOT EXISTS requests_views.requests_per_year (
        year    integer PRIMARY KEY,
        count   bigint NOT NULL
    );
    """

    async def apply_many(self, conn: asyncpg.Connection, items: Sequence[tuple[Envelope, Event]]) -> None:
        years = Counter(e.received_on.year for _, e in items if isinstance(e, RequestReceived))
        if years:
            await conn.executemany(
                "INSERT INTO requests_views.requests_per_year (year, count) VALUES ($1, $2) "
                "ON CONFLICT (year) DO UPDATE SET count = requests_per_year.count + EXCLUDED.count",
                sorted(years.items()),
            )

    async def query(self, pool: asyncpg.Pool) -> list[tuple[int, int]]:
        rows = await pool.fetch("SELECT year, count FROM requests_views.requests_per_year ORDER BY year")
        return [(r["year"], r["count"]) for r in rows]
