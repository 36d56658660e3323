"""What the actions service's API reads from its read models (projections.py): the actions and the
activities lists, filtered and paged.

Both lists page by keyset on an immutable total order (year, seq, action code; then activity number,
activity id): the page token is the last row's key (paging.encode_key, opaque to clients), so a page
never repeats or skips a row when rows are added or changed between pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import asyncpg

from services.kernel.db import Pool
from services.kernel.paging import DEFAULT_PAGE_SIZE, key_after, next_page


@dataclass(frozen=True)
class ActionFilter:
    """ListActions: the filters (empty or 0: any) and the page asked for."""

    year: int = 0
    region: str = ""
    partner: str = ""
    status: str = ""
    theme: str = ""
    size: int = DEFAULT_PAGE_SIZE
    page_token: str = ""
    active_in: int = 0  # open at any time in that year: opened by its end, not closed before it began


@dataclass(frozen=True)
class ActivityFilter:
    """ListActivities: the filters (empty or 0: any; `year` is the year an activity starts) and the page
    asked for."""

    year: int = 0
    region: str = ""
    partner: str = ""
    status: str = ""
    action_code: str = ""
    activity_type: str = ""
    country: str = ""
    size: int = DEFAULT_PAGE_SIZE
    page_token: str = ""


class ActionsQueries:
    """The queries over the actions read models (schema `actions_views`)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def list_actions(self, f: ActionFilter) -> tuple[list[asyncpg.Record], str]:
        """A page of actions, each with its activities counted by status, and the next page's token ("" at
        the end)."""
        where, args = ["true"], []
        for column, value in (("year", f.year), ("region", f.region), ("partner", f.partner), ("status", f.status)):
            if value:
                args.append(value)
                where.append(f"a.{column} = ${len(args)}")
        if f.theme:
            args.append(f.theme)
            where.append(f"a.themes @> ARRAY[${len(args)}]::text[]")  # GIN-served; = ANY() is not
        if f.active_in:
            args.append(f.active_in)
            n = len(args)
            where.append(f"a.opened_on <= make_date(${n}, 12, 31)")
            where.append(f"(a.closed_on IS NULL OR a.closed_on >= make_date(${n}, 1, 1))")
        after = key_after(f.page_token, int, int, str)
        if after:
            args.extend(after)
            where.append(f"(a.year, a.seq, a.action_code) > (${len(args) - 2}, ${len(args) - 1}, ${len(args)})")
        args.append(f.size + 1)
        rows = await self.pool.fetch(
            "SELECT a.*, "
            "(SELECT count(*) FROM actions_views.activities t WHERE t.action_code = a.action_code "
            " AND t.status = 'planned') AS activities_planned, "
            "(SELECT count(*) FROM actions_views.activities t WHERE t.action_code = a.action_code "
            " AND t.status = 'held') AS activities_held, "
            "(SELECT count(*) FROM actions_views.activities t WHERE t.action_code = a.action_code "
            " AND t.status = 'cancelled') AS activities_cancelled "
            f"FROM actions_views.actions a WHERE {' AND '.join(where)} ORDER BY a.year, a.seq, a.action_code "
            f"LIMIT ${len(args)}",
            *args,
        )
        return next_page(rows, f.size, lambda r: [r["year"], r["seq"], r["action_code"]])

    async def list_activities(self, f: ActivityFilter) -> tuple[list[asyncpg.Record], str]:
        """A page of activities, in their actions' order, and the next page's token ("" at the end)."""
        where, args = ["true"], []
        for column, value in (
            ("region", f.region),
            ("partner", f.partner),
            ("status", f.status),
            ("action_code", f.action_code),
            ("activity_type", f.activity_type),
            ("country", f.country),
        ):
            if value:
                args.append(value)
                where.append(f"t.{column} = ${len(args)}")
        if f.year and not date.min.year <= f.year <= date.max.year:
            where.append("false")  # no activity can start in a year no date has
        elif f.year:
            # a range on starts_on, which its index serves (extract(year FROM ...) no index does)
            args.extend((date(f.year, 1, 1), date(f.year, 12, 31)))
            where.append(f"t.starts_on BETWEEN ${len(args) - 1} AND ${len(args)}")
        after = key_after(f.page_token, int, int, int, str)
        if after:
            args.extend(after)
            n = len(args)
            where.append(f"(a.year, a.seq, t.number, t.activity_id) > (${n - 3}, ${n - 2}, ${n - 1}, ${n})")
        args.append(f.size + 1)
        rows = await self.pool.fetch(
            "SELECT t.*, a.year AS action_year, a.seq AS action_seq "
            "FROM actions_views.activities t JOIN actions_views.actions a USING (action_code) "
            f"WHERE {' AND '.join(where)} ORDER BY a.year, a.seq, t.number, t.activity_id "
            f"LIMIT ${len(args)}",
            *args,
        )
        return next_page(rows, f.size, lambda r: [r["action_year"], r["action_seq"], r["number"], r["activity_id"]])
