"""What the requests service's API reads from its read models (projections.py): the requests received per
year, and the register of requests filtered and paged.

The register pages by keyset on an immutable total order (received_on, request_id): the page token is
the last row's key (paging.encode_key, opaque to clients), so a request added or changed between two
pages never makes a page repeat or skip a row.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import asyncpg

from services.kernel import paging
from services.kernel.db import Pool


class RequestsQueries:
    """The queries over the requests read models (schema `requests_views`)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def per_year(self) -> list[tuple[int, int]]:
        """(year, requests received that year), in year order."""
        rows = await self.pool.fetch("SELECT year, count FROM requests_views.requests_per_year ORDER BY year")
        return [(r["year"], r["count"]) for r in rows]

    async def page(self, filters: dict[str, Any], token: str, limit: int) -> tuple[list[asyncpg.Record], str, int]:
        """A page of at most `limit` rows after `token`, the token of the next page ("" at the end), and
        the total (paging.estimated_total: exact when the first page holds every match, otherwise the
        planner's estimate: a page never counts the table).

        Every filter is served by an index (projections.py): the year as a range on received_on (the
        paging index; extract(year FROM received_on) could use none), region, partner and status by an
        index on (that column, received_on, request_id), which gives the rows already in page order, and a
        theme by the GIN index on themes (`@>`; `= ANY(themes)` could use none)."""
        after = paging.key_after(token, date, str)
        where, args = ["true"], []
        for column, value in filters.items():
            if value in (None, "", 0):
                continue
            if column == "year":
                if not date.min.year <= value <= date.max.year:
                    where.append("false")  # no date of that year can have been received
                    continue
                args.extend((date(value, 1, 1), date(value, 12, 31)))
                where.append(f"received_on BETWEEN ${len(args) - 1} AND ${len(args)}")
            elif column == "theme":
                args.append([value])
                where.append(f"themes @> ${len(args)}::text[]")
            else:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        filtered = f"FROM requests_views.requests WHERE {' AND '.join(where)}"
        n_filter_args = len(args)
        if after:
            args.extend(after)
            where.append(f"(received_on, request_id) > (${len(args) - 1}, ${len(args)})")
        args.append(limit + 1)
        rows = await self.pool.fetch(
            f"SELECT * FROM requests_views.requests WHERE {' AND '.join(where)} "
            f"ORDER BY received_on, request_id LIMIT ${len(args)}",
            *args,
        )
        page, nxt = paging.next_page(rows, limit, lambda r: [r["received_on"], r["request_id"]])
        total = await paging.estimated_total(
            self.pool, filtered, args[:n_filter_args], first_page=not after, shown=len(page), more=bool(nxt)
        )
        return page, nxt, total
