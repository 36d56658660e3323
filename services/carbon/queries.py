"""Reading the carbon read models (their tables and how events fill them are in projections.py): flight
emissions by booking, offset lots and their retirements, pages of both, the offset ledger of a year and
the footprint of a year (by traveller kind and action, and with each action's region)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from services.kernel import paging
from services.kernel.db import Pool


@dataclass(frozen=True)
class Page:
    rows: list[asyncpg.Record]
    next_page_token: str


async def keyset_page(
    pool: Pool, table: str, key: str, where: list[str], args: list[Any], size: int, token: str
) -> Page:
    """Rows ordered by `key`, after the page token (the last key of the previous page, opaque)."""
    conds, params = list(where), list(args)
    n = paging.page_size(size)
    after = paging.key_after(token, str)
    if after:
        params.extend(after)
        conds.append(f"{key} > ${len(params)}")
    params.append(n + 1)
    sql = f"SELECT * FROM {table}"
    if conds:
        sql += " WHERE " + " AND ".join(conds)
    sql += f" ORDER BY {key} LIMIT ${len(params)}"
    rows = await pool.fetch(sql, *params)
    return Page(*paging.next_page(rows, n, lambda r: [r[key]]))


@dataclass(frozen=True)
class Ledger:
    year: int
    purchased: int
    retired_against: int
    balance: int
    cost: dict[str, Decimal]

    def coverage(self, footprint_kg: Decimal) -> Decimal | None:
        """Retired against the year / its footprint (one VER = one tonne CO2e); None without a footprint."""
        if footprint_kg <= 0:
            return None
        return (Decimal(self.retired_against) * 1000 / footprint_kg).quantize(Decimal("0.0001"))


class CarbonQueries:
    """The queries over the carbon read models (schema `carbon_views`)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    # --- flight emissions (FlightEmissionsView) ---

    async def flight_emissions(self, booking_id: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow("SELECT * FROM carbon_views.flight_emissions WHERE booking_id = $1", booking_id)

    async def list_flight_emissions(
        self,
        *,
        year: int = 0,
        traveller_kind: str = "",
        action_code: str = "",
        status: str = "",
        size: int = 0,
        token: str = "",
    ) -> Page:
        where: list[str] = []
        args: list[Any] = []
        if year:  # a booking is listed in the year of each of its legs (DESIGN.md section 6)
            args.append([year])
            # the expression of the GIN index flight_emissions_years (projections.py)
            where.append(f"carbon_views.departure_years(segments, departure_year) @> ${len(args)}::int[]")
        for column, value in (
            ("traveller_kind", traveller_kind),
            ("action_code", action_code),
            ("status", status),
        ):
            if value:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        return await keyset_page(self.pool, "carbon_views.flight_emissions", "booking_id", where, args, size, token)

    # --- offset lots (OffsetLotsView) ---

    async def offset_lot(self, lot_id: str) -> tuple[asyncpg.Record, list[asyncpg.Record]] | None:
        """A lot and its retirements in order, or None."""
        lot = await self.pool.fetchrow("SELECT * FROM carbon_views.offset_lots WHERE lot_id = $1", lot_id)
        if lot is None:
            return None
        retirements = await self.pool.fetch(
            "SELECT * FROM carbon_views.offset_retirements WHERE lot_id = $1 ORDER BY version", lot_id
        )
        return lot, retirements

    async def list_offset_lots(
        self,
        *,
        year: int = 0,
        registry: str = "",
        status: str = "",
        size: int = 0,
        token: str = "",
    ) -> Page:
        where: list[str] = []
        args: list[Any] = []
        if year:
            args.append(year)
            where.append(f"purchase_year = ${len(args)}")
        if registry:
            args.append(registry)
            where.append(f"registry = ${len(args)}")
        if status == "open":
            where.append("remaining > 0")
        elif status == "retired":
            where.append("remaining = 0")
        return await keyset_page(self.pool, "carbon_views.offset_lots", "lot_id", where, args, size, token)

    async def retirements(self, lot_ids: list[str]) -> dict[str, list[asyncpg.Record]]:
        """The retirements of each lot, in order (an empty list for a lot without any)."""
        out: dict[str, list[asyncpg.Record]] = {i: [] for i in lot_ids}
        for r in await self.pool.fetch(
            "SELECT * FROM carbon_views.offset_retirements WHERE lot_id = ANY($1::text[]) ORDER BY lot_id, version",
            lot_ids,
        ):
            out[r["lot_id"]].append(r)
        return out

    async def ledger(self, year: int) -> Ledger:
        """VERs purchased in `year` (and their cost, by currency), retired against it, and the balance
        held at its end (purchased up to then, less retired up to then)."""
        row = await self.pool.fetchrow(
            """
            SELECT
              (SELECT coalesce(sum(quantity), 0) FROM carbon_views.offset_lots WHERE purchase_year = $1) AS purchased,
              (SELECT coalesce(sum(quantity), 0) FROM carbon_views.offset_retirements WHERE against_year = $1)
                AS retired_against,
              (SELECT coalesce(sum(quantity), 0) FROM carbon_views.offset_lots WHERE purchase_year <= $1)
              - (SELECT coalesce(sum(quantity), 0) FROM carbon_views.offset_retirements
                 WHERE extract(year FROM retired_on) <= $1) AS balance
            """,
            year,
        )
        costs = await self.pool.fetch(
            "SELECT currency, sum(total_cost) AS cost FROM carbon_views.offset_lots WHERE purchase_year = $1 "
            "GROUP BY currency ORDER BY currency",
            year,
        )
        return Ledger(
            year=year,
            purchased=int(row["purchased"]),
            retired_against=int(row["retired_against"]),
            balance=int(row["balance"]),
            cost={r["currency"]: r["cost"] for r in costs},
        )

    # --- the footprint (FootprintView, with ActionRegions) ---

    async def footprint_total_kg(self, year: int) -> Decimal:
        return await self.pool.fetchval(
            "SELECT coalesce(sum(kg_co2e), 0) FROM carbon_views.footprint WHERE year = $1", year
        )

    async def footprint(self, year: int) -> list[asyncpg.Record]:
        """The footprint rows of a year, by traveller kind and action."""
        return await self.pool.fetch(
            "SELECT * FROM carbon_views.footprint WHERE year = $1 ORDER BY traveller_kind, action_code", year
        )

    async def footprint_with_regions(self, year: int) -> list[asyncpg.Record]:
        """The footprint rows of a year that count flights, each with the region of its action ("" if the
        action is not known here)."""
        return await self.pool.fetch(
            "SELECT f.*, coalesce(r.region, '') AS region FROM carbon_views.footprint f "
            "LEFT JOIN carbon_views.action_regions r ON r.action_code = f.action_code "
            "WHERE f.year = $1 AND f.flights <> 0 ORDER BY f.traveller_kind, f.action_code",
            year,
        )

    async def footprint_by_month(self, year: int) -> dict[int, tuple[int, Decimal]]:
        """month -> (legs, kg CO2e) of the legs departing in that month of `year`, of every booking's emissions
        in force (a reversed or cancelled booking's are taken back, as in the footprint): the same legs and
        kg as the footprint of the year, month by month."""
        rows = await self.pool.fetch(
            """SELECT extract(month FROM (s->>'departs_on')::date)::int AS month, count(*) AS legs,
                coalesce(sum((s->>'kg_co2e')::numeric), 0) AS kg
            FROM carbon_views.flight_emissions f, jsonb_array_elements(f.segments) s
            WHERE f.status = 'recorded' AND extract(year FROM (s->>'departs_on')::date) = $1
            GROUP BY 1""",
            year,
        )
        return {r["month"]: (r["legs"], r["kg"]) for r in rows}
