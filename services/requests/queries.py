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
        how many rows match the filters in all."""
        after = paging.key_after(token, date, str)
        where, args = ["true"], []
        for column, value in filters.items():
            if value in (None, "", 0):
                continue
            args.append(value)
            if column == "year":
                where.append(f"extract(year FROM received_on) = ${len(args)}")
            elif column == "theme":
                where.append(f"${len(args)} = ANY(themes)")
            else:
                where.append(f"{column} = ${len(args)}")
        total = await self.pool.fetchval(
            f"SELECT count(*) FROM requests_views.requests WHERE {' AND '.join(where)}", *args
        )
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
        return page, nxt, total
